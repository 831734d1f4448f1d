"""The per-request (or per-WebSocket-connection) context every resolver receives."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket

from ..errors import BadInput
from ..events.fanout import Seat
from ..events.single_flight import SingleFlight
from ..services import Services
from ..settings import Settings
from .auth import Caller
from .loaders import Loaders


@dataclass
class Context:
    services: Services
    request: Request | WebSocket | None = None
    response: Any = None
    # Who is calling (resolvers/auth.py). Code that runs operations in-process (the seed
    # command, tests) acts as an open caller unless it says otherwise.
    caller: Caller = field(default_factory=Caller.open)
    # The WebSocket connection_init payload; strawberry sets it before on_ws_connect.
    connection_params: dict[str, Any] | None = None
    subscriptions: int = 0
    # The running subscription's seat in a fan-out group (events/fanout.py), when its
    # transport can write shared events itself (api/broadcast.py); else None.
    fan_out_seat: Callable[[], Seat | None] = field(default=lambda: None, repr=False)

    @cached_property
    def loaders(self) -> Loaders:
        """Made on first use (most requests read one row or none through them).

        A WebSocket connection shares one context across operations and over time, so its
        loaders batch but never cache: each subscription event must see fresh rows."""
        return Loaders(self.services, cache=not isinstance(self.request, WebSocket))

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def shared_results(self) -> SingleFlight[Any]:
        """Subscription results rendered once per event for all subscribers (api/shared_results.py)."""
        return self.services.shared_results

    @property
    def result_scope(self) -> Hashable:
        """Part of the key under which subscription results are shared: only subscribers
        who may see the same things share an execution."""
        return self.caller.scope

    def page_size(self, first: int | None, *, default: int = 50) -> int:
        """`first` checked against 0..MAX_PAGE_SIZE."""
        limit = self.settings.max_page_size
        if first is None:
            return min(default, limit)
        if first < 0 or first > limit:
            raise BadInput(f"first must be between 0 and {limit} (MAX_PAGE_SIZE); got {first}")
        return first
