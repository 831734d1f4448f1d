"""The per-request context and the Strawberry ASGI app that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.schema import BaseSchema

from ..errors import BadInput
from ..services import Services
from ..settings import Settings
from .loaders import Loaders


@dataclass
class Context:
    services: Services
    request: Request | WebSocket | None = None
    response: Any = None
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.services)

    @property
    def settings(self) -> Settings:
        return self.services.settings

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


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app; `services` is set by the lifespan before the first request."""

    def __init__(self, schema: BaseSchema, *, settings: Settings):
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            allow_queries_via_get=True,
        )
        self.services: Services | None = None

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        assert self.services is not None, "the app's lifespan has not started"
        return Context(services=self.services, request=request, response=response)
