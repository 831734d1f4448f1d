"""Clients for the security tests: GraphQL over HTTP with a credential, and one operation
over a raw WebSocket (graphql-transport-ws or graphql-ws) whose close codes we can see."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import websockets

from tests.e2e.conftest import Server

ADMIN_KEY = "admin-key-for-tests-0123456789"
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


def admin_headers() -> dict[str, str]:
    return {"X-API-Key": ADMIN_KEY}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Outcome:
    """What an operation came back with: its data, or the first error's code."""

    data: Any = None
    code: str | None = None
    message: str | None = None
    status: int | None = None  # HTTP status, or the WebSocket close code when it closed

    @property
    def ok(self) -> bool:
        return self.code is None and self.data is not None


_clients: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.AsyncClient] = {}


def _client(server: Server, headers: dict[str, str]) -> httpx.AsyncClient:
    """One keep-alive client per server and credential: a connection per call would make the
    matrix slow."""
    key = (server.url, tuple(sorted(headers.items())))
    client = _clients.get(key)
    if client is None or client.is_closed:
        client = _clients[key] = httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False, headers=headers)
    return client


async def http_operation(
    server: Server, headers: dict[str, str], query: str, variables: dict[str, Any] | None = None
) -> Outcome:
    response = await _client(server, headers).post("/graphql", json={"query": query, "variables": variables or {}})
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        first = errors[0]
        return Outcome(
            code=(first.get("extensions") or {}).get("code"), message=first.get("message"), status=response.status_code
        )
    return Outcome(data=body.get("data"), status=response.status_code)


async def ws_operation(
    server: Server,
    payload: dict[str, Any] | None,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    protocol: str = TRANSPORT_WS,
    headers: dict[str, str] | None = None,
    results: int = 1,
    before_results: Any = None,
    within: float = 20.0,
) -> Outcome:
    """Run one operation over a fresh WebSocket: connection_init with `payload`, then the
    operation; the first `results` results are read (a subscription), `before_results`
    (an async callable) runs once the operation is sent. A closed socket gives its code."""
    url = server.url.replace("http://", "ws://", 1) + "/graphql"
    start, data_type = ("subscribe", "next") if protocol == TRANSPORT_WS else ("start", "data")
    try:
        async with asyncio.timeout(within):
            async with websockets.connect(url, subprotocols=[protocol], additional_headers=headers or {}) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "connection_ack":
                        break
                    if message["type"] == "connection_error":
                        error = message.get("payload") or {}
                        return Outcome(code=(error.get("extensions") or {}).get("code"), message=error.get("message"))
                await ws.send(
                    json.dumps({"id": "1", "type": start, "payload": {"query": query, "variables": variables or {}}})
                )
                if before_results is not None:
                    await before_results()
                values = []
                while len(values) < results:
                    message = json.loads(await ws.recv())
                    if message["type"] in {"ka", "ping", "pong"}:
                        if message["type"] == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                        continue
                    if message["type"] == "error" or (
                        message["type"] == data_type and message["payload"].get("errors")
                    ):
                        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
                        first = errors[0] if isinstance(errors, list) else errors
                        return Outcome(code=(first.get("extensions") or {}).get("code"), message=first.get("message"))
                    if message["type"] == data_type:
                        values.append(message["payload"]["data"])
                    elif message["type"] == "complete":
                        break
                return Outcome(data=values[0] if results == 1 and values else values)
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        return Outcome(code="CLOSED", status=code, message=closed.rcvd.reason if closed.rcvd else None)


async def close_clients() -> None:
    while _clients:
        _, client = _clients.popitem()
        await client.aclose()
