"""The Schema: root types merged from resolvers/, limits, and error mapping."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from ..resolvers.agents import AgentMutation, AgentQuery
from ..resolvers.lifecycle import LifecycleMutation
from ..resolvers.projects import ProjectMutation, ProjectQuery
from ..resolvers.stats import StatsQuery
from ..resolvers.subscriptions import Subscription
from ..resolvers.tasks import TaskMutation, TaskQuery
from ..settings import Settings
from .agents import AgentPresenceEvent
from .enums import ErrorCode
from .errors import ErrorMapper, error_code
from .shared_results import SharingExecutionContext

Query = merge_types("Query", (TaskQuery, ProjectQuery, AgentQuery, StatsQuery))
Mutation = merge_types("Mutation", (ProjectMutation, TaskMutation, AgentMutation, LifecycleMutation))


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # Expected errors (bad input, conflicts...) are the caller's business, not the
        # server log's; ErrorMapper logs the unexpected ones with their traceback.
        return None


def build_schema(settings: Settings | None = None) -> Schema:
    from ..settings import load_settings

    settings = settings or load_settings()
    extensions: list[Any] = [
        lambda: QueryDepthLimiter(max_depth=settings.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        ErrorMapper,
    ]
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[ErrorCode, AgentPresenceEvent],
        extensions=extensions,
        config=StrawberryConfig(auto_camel_case=True),
        execution_context_class=SharingExecutionContext,
    )


__all__ = ["Schema", "build_schema", "error_code"]
