"""uvicorn's HTTP protocol, with a response's writes sent to the socket as one.

uvicorn writes a response's status line and headers, then its body, each with its own
`transport.write`: two send(2) calls, two TCP segments, two wake-ups of the client. On this
machine (a VM) those writes were 16 % of the server's CPU under B2 (bench/PROFILE.md,
fourth round). Here the writes made during one turn of the event loop are joined and go out
as one at the end of that turn: a response sent as start + body (every GraphQL answer)
costs one write. Nothing waits longer than that turn, and the order is kept.

A connection upgraded to a WebSocket gets the transport as it is: its frames are written
when they are sent, as before (their number and timing are the fan-out's own business).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """`transport`, except that the writes of one event-loop turn are sent as one; a pass-
    through once the connection is handed to another protocol (a WebSocket upgrade)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._coalescing = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._coalescing:
            self._transport.write(data)
        elif self._pending is None:
            self._pending = [data if type(data) is bytes else bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data if type(data) is bytes else bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._coalescing = False
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a CoalescingTransport (`task-service serve` runs it)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
