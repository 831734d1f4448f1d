"""A graphql-transport-ws subscription's seat in a taskEvents fan-out group (events/fanout.py).

Riding a group, a subscriber's events skip its own pipeline (its follow_events loop,
graphql-core's and Strawberry's generators, the operation's send_next): the group renders
each event once, here on a member's own executor, and each member's seat writes the shared
`next` message to its socket as api/ws_frames.py does, with the member's operation id.

A seat exists only for graphql-transport-ws operations on uvicorn's websockets-sansio
connection (where a FrameWriter was found). The transport handler opens it when an
operation starts (`open_seat`, in the operation's task, whose context carries it to the
resolver) and the operation's executor introduces itself when graphql-core maps the
subscription's source stream (`SharingExecutionContext.cancellable_iterable`); until both
happened the resolver gets no seat and runs alone. A seat renders only results without
errors, through the same shared execution and encoding as the normal path
(api/shared_results.py), so its bytes are the ones the normal path would send; the
service's schema extensions add no `extensions` to subscription results (api/schema.py),
which the shared payload could not carry.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Hashable
from typing import Any

from graphql import ExecutionResult
from starlette.websockets import WebSocket, WebSocketState

from .ws_frames import FrameWriter

_seat: contextvars.ContextVar[WebSocketSeat | None] = contextvars.ContextVar("fan_out_seat", default=None)


class WebSocketSeat:
    """events/fanout.py's Seat for one operation of one WebSocket connection."""

    __slots__ = ("_encode", "_frames", "_key", "_prefix", "_socket", "executor")

    def __init__(self, prefix: bytes, frames: FrameWriter, socket: WebSocket, encode: Callable[[object], bytes | None]):
        self._prefix = prefix
        self._frames = frames
        self._socket = socket
        self._encode = encode
        self._key: Hashable | None = None
        self.executor: Any = None  # the operation's SharingExecutionContext, once it exists

    @property
    def key(self) -> Hashable:
        """The operation's selection (with the variables it uses) and the caller's scope:
        what api/shared_results.py shares a result under, less the event."""
        if self._key is None:
            executor = self.executor
            self._key = (executor.selection_key(), getattr(executor.context_value, "result_scope", None))
        return self._key

    async def render(self, payload: Any) -> bytes | None:
        executor = self.executor
        result = executor.build_per_event_executor(payload).execute_operation(False)
        if executor.is_awaitable(result):
            result = await result
        if not isinstance(result, ExecutionResult) or result.errors or result.extensions:
            return None
        return self._encode(result.data)

    def send(self, rendered: bytes) -> bool:
        if self._socket.application_state is not WebSocketState.CONNECTED:
            return False
        return self._frames.write_text(self._prefix + rendered + b"}")


def open_seat(prefix: bytes, frames: FrameWriter, socket: WebSocket, encode: Callable[[object], bytes | None]) -> None:
    """Give the operation running in this task a seat (its `next` messages start with
    `prefix`; `encode` gives a shared result's encoded `{"data": ...}`, or None)."""
    _seat.set(WebSocketSeat(prefix, frames, socket, encode))


def introduce(executor: Any) -> None:
    """The running operation's executor: its seat renders with it."""
    seat = _seat.get()
    if seat is not None and seat.executor is None:
        seat.executor = executor


def current_seat() -> WebSocketSeat | None:
    """The running operation's seat, once its executor is known (the Context's
    fan_out_seat)."""
    seat = _seat.get()
    return seat if seat is not None and seat.executor is not None else None


__all__ = ["WebSocketSeat", "current_seat", "introduce", "open_seat"]
