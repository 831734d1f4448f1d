"""Shared `next` messages written straight to uvicorn's socket (api/ws_frames.py).

The writer relies on uvicorn's websockets-sansio internals; the first tests run a real
uvicorn server in this process, as `serve` configures it, so they fail when those internals
change: the protocol found from `receive`, the frames a websockets client reads, and every
case where the writer must decline (compression, a closed socket, another implementation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import GraphQL
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from task_service.api import transport
from task_service.api.schema import build_schema
from task_service.api.shared_results import shared_payloads
from task_service.api.transport import GraphQLApp, KeepAliveTransportWSHandler
from task_service.api.ws_frames import SCOPE_KEY, FrameWriter, text_frame
from task_service.settings import Settings

Scenario = Callable[[FrameWriter | None, Any], Awaitable[None]]


@contextlib.asynccontextmanager
async def uvicorn_ws(scenario: Scenario, *, compression: bool = False) -> AsyncIterator[str]:
    """A uvicorn server (ws="auto", as `serve` runs it) whose one WebSocket endpoint accepts,
    then runs `scenario(writer, receive)`; yields its ws:// URL."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await scenario(FrameWriter.for_connection(receive), receive)
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1000})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, ws_per_message_deflate=compression)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


class TestOnUvicorn:
    async def test_frames_arrive_as_the_text_messages_written(self) -> None:
        texts = ['{"a":"é"}', "x" * 125, "y" * 126, "z" * 65535, "w" * 70_000]
        written: list[bool] = []

        async def scenario(writer: FrameWriter | None, receive: Any) -> None:
            assert writer is not None, "uvicorn's ws='auto' is no longer websockets-sansio"
            written.extend(writer.write_text(text.encode()) for text in texts)
            await receive()  # until the client closes

        async with uvicorn_ws(scenario) as url, websockets.connect(url, compression=None) as client:
            received = [await asyncio.wait_for(client.recv(), 10) for _ in texts]
        assert received == texts
        assert written == [True] * len(texts)

    async def test_declines_when_compression_was_negotiated(self) -> None:
        outcome: list[bool] = []

        async def scenario(writer: FrameWriter | None, receive: Any) -> None:
            assert writer is not None
            outcome.append(writer.write_text(b"{}"))

        async with uvicorn_ws(scenario, compression=True) as url, websockets.connect(url) as client:
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(client.recv(), 10)
        assert outcome == [False]

    async def test_declines_once_the_client_has_gone(self) -> None:
        outcome: list[bool] = []

        async def scenario(writer: FrameWriter | None, receive: Any) -> None:
            assert writer is not None
            assert (await receive())["type"] == "websocket.disconnect"
            outcome.append(writer.write_text(b"{}"))

        async with uvicorn_ws(scenario) as url:
            async with websockets.connect(url, compression=None):
                pass
            for _ in range(200):
                if outcome:
                    break
                await asyncio.sleep(0.02)
        assert outcome == [False]

    def test_another_receive_gets_no_writer(self) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        assert FrameWriter.for_connection(receive) is None


def test_text_frame_headers_follow_rfc_6455() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


class _Writer:
    def __init__(self, accept: bool):
        self.accept = accept
        self.texts: list[bytes] = []

    def write_text(self, payload: bytes) -> bool:
        self.texts.append(payload)
        return self.accept


class _Adapter:
    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.sent: list[object] = []

    async def send_json(self, message: object) -> None:
        self.sent.append(message)


async def _send(
    app: GraphQLApp, writer: _Writer, *messages: dict[str, Any], state: WebSocketState = WebSocketState.CONNECTED
) -> list[object]:
    """Send `messages` through a transport handler whose connection has `writer` (and whose
    Starlette socket is in `state`); returns what went the ASGI way (Strawberry's send_json)."""
    scope: dict[str, Any] = {"type": "websocket", "headers": [], "path": "/graphql", SCOPE_KEY: writer}
    ws = WebSocket(scope, receive=None, send=None)  # type: ignore[arg-type]
    ws.application_state = state
    adapter = _Adapter(ws)
    handler = KeepAliveTransportWSHandler(
        view=app,
        websocket=adapter,  # type: ignore[arg-type]
        context=None,
        root_value=None,
        schema=app.schema,
        connection_init_wait_timeout=app.connection_init_wait_timeout,
    )
    handler.on_request_accepted()
    for message in messages:
        await handler.send_message(message)  # type: ignore[arg-type]
    await handler.shutdown()
    return adapter.sent


def _shared_next(operation_id: str, event_id: str) -> dict[str, Any]:
    data = {"taskEvents": {"id": event_id, "type": "CREATED"}}
    shared_payloads.register(data)
    return {"id": operation_id, "type": "next", "payload": {"data": data}}


class TestTransportHandler:
    @pytest.fixture
    def app(self) -> GraphQLApp:
        settings = Settings(database_url="sqlite+aiosqlite:///:memory:")
        return GraphQLApp(build_schema(settings), settings=settings)

    async def test_a_shared_next_message_is_written_as_strawberry_would_encode_it(self, app: GraphQLApp) -> None:
        writer = _Writer(accept=True)
        message = _shared_next('op"1', "9")
        assert await _send(app, writer, message) == []
        assert writer.texts == [json.dumps(message, separators=(",", ":")).encode()]

    async def test_everything_else_goes_through_strawberry(self, app: GraphQLApp) -> None:
        writer = _Writer(accept=True)
        alone = {"id": "1", "type": "next", "payload": {"data": {"taskEvents": {"id": "10"}}}}
        ping = {"type": "ping"}
        assert await _send(app, writer, alone, ping) == [alone, ping]
        assert writer.texts == []

    async def test_a_declined_write_goes_through_strawberry(self, app: GraphQLApp) -> None:
        message = _shared_next("1", "11")
        assert await _send(app, _Writer(accept=False), message) == [message]

    async def test_a_socket_starlette_saw_close_goes_through_strawberry(self, app: GraphQLApp) -> None:
        # Starlette then refuses the send, as it did before the direct path existed.
        writer = _Writer(accept=True)
        message = _shared_next("1", "12")
        assert await _send(app, writer, message, state=WebSocketState.DISCONNECTED) == [message]
        assert writer.texts == []


async def test_the_app_hands_uvicorns_protocol_to_the_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:")
    app = GraphQLApp(build_schema(settings), settings=settings)
    seen: list[dict[str, Any]] = []

    async def strawberry_call(self: GraphQL[Any, Any], scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    monkeypatch.setattr(transport.GraphQL, "__call__", strawberry_call)
    protocol = WebSocketsSansIOProtocol(config=uvicorn.Config(app), server_state=ServerState(), app_state={})

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    await app({"type": "websocket", "headers": []}, protocol.receive, send)
    await app({"type": "websocket", "headers": []}, _Adapter.send_json, send)
    assert isinstance(seen[0][SCOPE_KEY], FrameWriter)
    assert SCOPE_KEY not in seen[1]
