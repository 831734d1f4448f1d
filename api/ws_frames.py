"""Shared `next` messages written straight to uvicorn's socket, as WebSocket text frames.

During fan-out every delivery went through the same layers for one small message: the
Strawberry adapter's send_json, Starlette's WebSocket.send_text and send, Starlette's
exception-handler wrapper, uvicorn's ASGI send, then websockets' Protocol.send_text,
Frame.serialize and data_to_send: 15 % of the server's py-spy samples at 1,000 subscribers,
besides the write itself (bench/PROFILE.md), for bytes that differ between subscribers only
in the operation id.
A shared result's message is known in advance (api/shared_results.py), so its frame is
built here and handed to the connection's transport in one write.

This relies on uvicorn's websockets-sansio implementation (uvicorn 0.54.0, websockets 17.4,
what `ws="auto"` picks when websockets is installed): the protocol object is found as the
`receive` callable's `__self__`, and its connection state is read from the attributes its
own `send` reads. Whenever anything is unusual (another implementation or a wrapped
`receive`, per-message compression negotiated, the socket paused for back-pressure, closing
or closed, bytes of websockets' own still to send) the writer declines and the message goes
the ASGI way, so back-pressure, close and disconnect behave exactly as before.
tests/api/test_ws_frames.py fails if these internals change.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

# Where GraphQLApp leaves a connection's writer in its ASGI scope.
SCOPE_KEY = "task_service.ws_frame_writer"

_TEXT_FIN = 0x81  # FIN + opcode 1 (text); a server's frames are not masked


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked, uncompressed text frame carrying `payload` (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((_TEXT_FIN, length))
    elif length < 65536:
        header = struct.pack("!BBH", _TEXT_FIN, 126, length)
    else:
        header = struct.pack("!BBQ", _TEXT_FIN, 127, length)
    return header + payload


class FrameWriter:
    """Writes text frames to one uvicorn WebSocket connection, when that is safe."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol):
        self._protocol = protocol

    @classmethod
    def for_connection(cls, receive: Callable[[], Any]) -> FrameWriter | None:
        """The writer for the connection whose ASGI `receive` this is; None when it is not
        uvicorn's websockets-sansio protocol itself."""
        protocol = getattr(receive, "__self__", None)
        if type(protocol) is not WebSocketsSansIOProtocol:
            return None
        return cls(protocol)

    @property
    def compressed(self) -> bool:
        """Whether the connection negotiated per-message compression (fixed once open): this
        writer then declines every message."""
        return bool(self._protocol.conn.extensions)

    def write_text(self, payload: bytes) -> bool:
        """Write `payload` as one text frame and return True; or write nothing and return
        False when the message must go through ASGI's send (see the module docstring)."""
        protocol = self._protocol
        conn = protocol.conn
        if not (
            protocol.writable.is_set()
            and protocol.handshake_complete
            and not protocol.close_sent
            and not protocol.disconnected
            and protocol.initial_response is None
            and conn.state is State.OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not conn.writes
        ):
            return False
        transport = protocol.transport
        if transport.is_closing():
            return False
        transport.write(text_frame(payload))
        return True


__all__ = ["SCOPE_KEY", "FrameWriter", "text_frame"]
