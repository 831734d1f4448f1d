"""The per-request context and the Strawberry ASGI app that builds it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.schema import BaseSchema
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from ..errors import BadInput
from ..events.single_flight import SingleFlight
from ..services import Services
from ..settings import Settings
from .loaders import Loaders

# The static dashboard and GraphiQL's page, with their vendored libraries (web/vendor/).
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@cache
def _graphiql_page() -> str:
    return (WEB_DIR / "graphiql.html").read_text(encoding="utf-8")


@dataclass
class Context:
    services: Services
    request: Request | WebSocket | None = None
    response: Any = None
    loaders: Loaders = field(init=False)
    subscriptions: int = 0

    def __post_init__(self) -> None:
        # A WebSocket connection shares one context across operations and over time, so its
        # loaders batch but never cache: each subscription event must see fresh rows.
        self.loaders = Loaders(self.services, cache=not isinstance(self.request, WebSocket))

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def shared_results(self) -> SingleFlight[Any]:
        """Subscription results rendered once per event for all subscribers (schema/shared_results.py)."""
        return self.services.shared_results

    def page_size(self, first: int | None, *, default: int = 50) -> int:
        """`first` checked against 0..MAX_PAGE_SIZE."""
        limit = self.settings.max_page_size
        if first is None:
            return min(default, limit)
        if first < 0 or first > limit:
            raise BadInput(f"first must be between 0 and {limit} (MAX_PAGE_SIZE); got {first}")
        return first

    def caller(self, agent: str | None = None) -> str:
        """Who is acting, for idempotency keys and event actors (authentication comes later:
        until then the named agent, else anonymous)."""
        return f"agent:{agent}" if agent else "anonymous"


class KeepAliveTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with server keep-alives. Strawberry sends them ("ka") only on the
    legacy graphql-ws protocol; here the server sends a protocol `ping` every
    WS_KEEPALIVE_SECONDS after the connection is acknowledged, so proxies and load balancers
    do not drop an idle subscription (clients answer with `pong`)."""

    _keep_alive_task: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._keep_alive_task is None:
            self._keep_alive_task = asyncio.create_task(self._keep_alive(), name="ws-keep-alive")

    async def _keep_alive(self) -> None:
        interval = float(getattr(self.view, "keep_alive_interval", None) or 15.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.send_message({"type": "ping"})
            except Exception:  # the socket is gone; shutdown() follows
                return

    async def shutdown(self) -> None:
        task, self._keep_alive_task = self._keep_alive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().shutdown()


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app; `services` is set by the lifespan before the first request."""

    graphql_transport_ws_handler_class = KeepAliveTransportWSHandler

    def __init__(self, schema: BaseSchema, *, settings: Settings):
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            allow_queries_via_get=True,
            keep_alive=True,
            keep_alive_interval=settings.ws_keepalive_seconds,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        )
        self.services: Services | None = None

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        """Our GraphiQL page (web/graphiql.html): it loads only the service's own files, where
        Strawberry's page loads its scripts from a CDN and stays blank offline."""
        return HTMLResponse(_graphiql_page())

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        assert self.services is not None, "the app's lifespan has not started"
        return Context(services=self.services, request=request, response=response)
