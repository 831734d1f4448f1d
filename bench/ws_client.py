"""A minimal WebSocket client (RFC 6455) for the load generator of b3_fanout.py.

The `websockets` library costs the client more CPU per received message than the server
spends sending it (its asyncio connection, frame objects, a queue and a task switch per
message), so with thousands of subscribers on two cores the load generator starved the
server it measured. This client is an asyncio.Protocol: one `data_received` call parses
every frame that arrived in the chunk and hands each complete text message to a callback.

Enough of the protocol for a subscriber: the opening handshake (Sec-WebSocket-Accept and
the subprotocol checked), unmasked server frames of any length, fragmented messages,
permessage-deflate (RFC 7692) on received messages when the server accepts it (what the
client sends is never compressed, which the extension allows), pings answered with pongs,
and the closing handshake. Frames the client sends are masked, as the RFC requires.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HANDSHAKE_BYTES = 16384
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(RuntimeError):
    pass


class ProtocolError(RuntimeError):
    pass


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class WebSocketClient(asyncio.Protocol):
    """One client connection. `on_message(data, received)` gets each complete text or binary
    message (bytes) with the `time.time()`-like stamp `clock()` took when its last chunk
    arrived. `handshake` resolves when the connection is open; `closed` when it is gone
    (close code and reason in `close_code` / `close_reason`, None when the TCP connection
    just ended)."""

    def __init__(
        self,
        url: str,
        *,
        subprotocol: str | None,
        on_message: Callable[[bytes, float], None],
        clock: Callable[[], float],
        compression: bool = False,
    ):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.subprotocol = subprotocol
        self.on_message = on_message
        self.clock = clock
        self.compression = compression
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.close_reason = ""
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False
        self._close_sent = False
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_compressed = False
        self._inflate: zlib._Decompress | None = None  # set when the server accepts permessage-deflate
        self._inflate_reset = False  # server_no_context_takeover

    @property
    def open(self) -> bool:
        return self._open and not self._close_sent

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not an asyncio.Transport)
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.subprotocol}")
        if self.compression:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HANDSHAKE_BYTES:
                    self._fail(HandshakeError("no end of the handshake response"))
                return
            try:
                self._accept(bytes(buffer[:end]).decode("latin-1"))
            except HandshakeError as exc:
                self._fail(exc)
                return
            del buffer[: end + 4]
        try:
            self._frames(self.clock())
        except Exception as exc:  # a bad frame, or on_message failed: this connection is done
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending -------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self._transport is not None and not self._close_sent:
            self._transport.write(encode_frame(OP_TEXT, text.encode()))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the server answers and closes the TCP connection."""
        if self._transport is None or self._transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self._transport.write(encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- receiving -----------------------------------------------------------------

    def _accept(self, response: str) -> None:
        status, *header_lines = response.split("\r\n")
        if status.split(" ", 2)[1:2] != ["101"]:
            raise HandshakeError(f"the server refused the upgrade: {status!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(self._key.encode() + GUID).digest()).decode()  # noqa: S324 (the RFC's)
        if headers.get("sec-websocket-accept") != expected:
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        if self.subprotocol and headers.get("sec-websocket-protocol") != self.subprotocol:
            raise HandshakeError(f"the server chose subprotocol {headers.get('sec-websocket-protocol')!r}")
        extensions = headers.get("sec-websocket-extensions", "")
        if extensions:
            params = [p.strip() for p in extensions.split(";")]
            if params[0] != "permessage-deflate" or not self.compression or "," in extensions:
                raise HandshakeError(f"unexpected extensions {extensions!r}")
            self._inflate = zlib.decompressobj(-15)
            self._inflate_reset = "server_no_context_takeover" in params
        self._open = True
        self.handshake.set_result(None)

    def _frames(self, received: float) -> None:
        buffer = self._buffer
        size = len(buffer)
        at = 0
        while size - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            if second & 0x80:
                raise ProtocolError("the server masked a frame")
            length = second & 0x7F
            start = at + 2
            if length == 126:
                if size - start < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, start)
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, start)
                start += 8
            if length > MAX_MESSAGE_BYTES:
                raise ProtocolError(f"a frame of {length} bytes")
            end = start + length
            if end > size:
                break
            payload = bytes(buffer[start:end])
            at = end
            self._frame(first, payload, received)
        if at:
            del buffer[:at]

    def _frame(self, first: int, payload: bytes, received: float) -> None:
        fin, compressed, opcode = first & 0x80, first & 0x40, first & 0x0F
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments:
                raise ProtocolError("a new message inside a fragmented one")
            if fin:
                self._message(payload, compressed, received)
                return
            self._fragments, self._fragment_opcode, self._fragment_compressed = [payload], opcode, bool(compressed)
        elif opcode == OP_CONTINUATION:
            if not self._fragments:
                raise ProtocolError("a continuation frame outside a message")
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self._message(whole, self._fragment_compressed, received)
        elif opcode == OP_PING:
            if self._transport is not None and not self._close_sent:
                self._transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            if len(payload) >= 2:
                (self.close_code,) = struct.unpack_from("!H", payload)
                self.close_reason = payload[2:].decode(errors="replace")
            else:
                self.close_code = 1005
            if not self._close_sent and self._transport is not None:
                self._close_sent = True
                self._transport.write(encode_frame(OP_CLOSE, payload[:2]))
            self._open = False
            if self._transport is not None:
                self._transport.close()
        else:
            raise ProtocolError(f"unknown opcode {opcode}")

    def _message(self, payload: bytes, compressed: int | bool, received: float) -> None:
        if compressed:
            if self._inflate is None:
                raise ProtocolError("a compressed message without permessage-deflate")
            payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
            if self._inflate_reset:
                self._inflate = zlib.decompressobj(-15)
        self.on_message(payload, received)

    def _fail(self, exc: Exception) -> None:
        self._open = False
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        self.close_reason = f"{type(exc).__name__}: {exc}"
        if self._transport is not None:
            self._transport.abort()


async def connect(
    url: str,
    *,
    subprotocol: str | None,
    on_message: Callable[[bytes, float], None],
    clock: Callable[[], float],
    compression: bool = False,
    timeout: float = 20.0,
) -> WebSocketClient:
    """Open a TCP connection and complete the WebSocket handshake within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    client = WebSocketClient(url, subprotocol=subprotocol, on_message=on_message, clock=clock, compression=compression)
    async with asyncio.timeout(timeout):
        transport, _ = await loop.create_connection(lambda: client, client.host, client.port)
        try:
            await client.handshake
        except BaseException:
            transport.abort()
            raise
    return client
