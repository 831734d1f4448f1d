"""api/http_protocol.py: a response's writes reach the socket as one, in order, and nothing
else about the connection changes (keep-alive, streaming, closing, WebSocket upgrades).

A real uvicorn server in this process, on a free port, with the protocol `serve` uses,
counting the writes that reach the real transport.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from task_service.api.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport


class CountingTransport(CoalescingTransport):
    writes: list[bytes] = []

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        real_write = transport.write

        def counted(data: Any) -> None:
            CountingTransport.writes.append(bytes(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        super().__init__(transport, loop)


class CountingProtocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super(CoalescingHttpToolsProtocol, self).connection_made(CountingTransport(transport, self.loop))  # type: ignore[arg-type]


async def json_answer(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


async def streamed(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"chunk {i};".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def closing(request: Request) -> Response:
    return Response(b"bye", headers={"connection": "close"})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)
        await websocket.send_text(text.upper())


APP = Starlette(
    routes=[
        Route("/json", json_answer),
        Route("/stream", streamed),
        Route("/close", closing),
        WebSocketRoute("/ws", echo),
    ]
)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=port, http=CountingProtocol, log_level="warning", lifespan="off"
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    for _ in range(200):
        if uv.started:
            break
        await asyncio.sleep(0.02)
    CountingTransport.writes = []
    yield f"127.0.0.1:{port}"
    uv.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_a_response_is_one_write_and_keep_alive_still_works(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}", trust_env=False) as client:
        for _ in range(3):
            response = await client.get("/json")
            assert response.json() == {"hello": "world"}
    assert len(CountingTransport.writes) == 3
    for write in CountingTransport.writes:
        assert write.startswith(b"HTTP/1.1 200 OK\r\n")
        assert write.endswith(b'\r\n\r\n{"hello":"world"}')


async def test_a_streamed_response_arrives_whole_and_in_order(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}", trust_env=False) as client:
        response = await client.get("/stream")
    assert response.text == "chunk 0;chunk 1;chunk 2;"
    joined = b"".join(CountingTransport.writes)
    assert joined.index(b"chunk 0;") < joined.index(b"chunk 1;") < joined.index(b"chunk 2;")


async def test_a_closing_response_is_sent_before_the_connection_closes(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}", trust_env=False) as client:
        response = await client.get("/close")
    assert response.text == "bye"
    assert len(CountingTransport.writes) == 1


async def test_a_websocket_upgrade_gets_the_transport_as_it_is(server: str) -> None:
    async with websockets.connect(f"ws://{server}/ws") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), 10) == "hi"
        assert await asyncio.wait_for(ws.recv(), 10) == "HI"
    assert CountingTransport.writes[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # Each frame written when sent: the text frames "hi" and "HI" (opcode 1) are two writes.
    text_frames = [w for w in CountingTransport.writes[1:] if w[0] & 0x0F == 1]
    assert len(text_frames) == 2
