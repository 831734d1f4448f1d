"""The Schema: root types merged from resolvers/, limits, and error mapping."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, cast

import strawberry
from graphql import ASTValidationRule, DocumentNode, GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.context import StreamResultContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext
from strawberry.types.execution import StreamExecutionResult
from strawberry.utils.await_maybe import await_maybe

from ..resolvers.agents import AgentMutation, AgentQuery
from ..resolvers.lifecycle import LifecycleMutation
from ..resolvers.projects import ProjectMutation, ProjectQuery
from ..resolvers.stats import StatsQuery
from ..resolvers.subscriptions import Subscription
from ..resolvers.tasks import TaskMutation, TaskQuery
from ..schema.agents import AgentPresenceEvent
from ..schema.enums import ErrorCode
from ..settings import Settings
from .errors import ErrorMapper, error_code
from .guard import MutationRateLimit
from .limits import Limits, complexity_rule, directives_rule
from .observe import RequestObserver
from .shared_results import SharingExecutionContext

Query = merge_types("Query", (TaskQuery, ProjectQuery, AgentQuery, StatsQuery))
Mutation = merge_types("Mutation", (ProjectMutation, TaskMutation, AgentMutation, LifecycleMutation))
DOCUMENT_CACHE_SIZE = 1024  # distinct operation texts whose parse and validation are kept


class DocumentCache(ParserCache):
    """strawberry's ParserCache, except that a document that does not parse is left to the
    schema's own parsing, which reports the syntax error like any other bad request."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(context.query, **context.parse_options)
        yield


class ValidDocuments:
    """Operation texts that parsed and passed validation, with their documents (the most
    recently used `capacity` of them): api/direct.py executes these without parsing or
    validating again. Validity depends only on the text (the schema and its rules are fixed
    for the process), and only RememberValidDocuments adds to it."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()

    def get(self, query: str) -> DocumentNode | None:
        document = self._documents.get(query)
        if document is not None:
            self._documents.move_to_end(query)
        return document

    def add(self, query: str, document: DocumentNode) -> None:
        self._documents[query] = document
        self._documents.move_to_end(query)
        while len(self._documents) > self._capacity:
            self._documents.popitem(last=False)

    def __len__(self) -> int:
        return len(self._documents)


class RememberValidDocuments(SchemaExtension):
    """Adds each operation text to the schema's ValidDocuments once strawberry has parsed
    and validated it: strawberry calls on_execute only after both succeeded."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        known = getattr(context.schema, "valid_documents", None)
        if isinstance(known, ValidDocuments) and context.query and context.graphql_document is not None:
            known.add(context.query, context.graphql_document)
        yield


class ExtensionsRunner(SchemaExtensionsRunner):
    """strawberry's runner, except that the hooks run for every subscription event (the
    results' extensions, on_stream_result) visit only the extensions that implement them:
    strawberry asks all of them, for each event and subscriber, and only ErrorMapper has an
    on_stream_result and none of ours has results. Same hooks, same order."""

    _with_results: list[SchemaExtension] | None = None
    _on_stream_result: list[SchemaExtension] | None = None
    _masks_only: bool = False

    async def get_extensions_results(self, ctx: ExecutionContext) -> dict[str, Any]:
        if self._with_results is None:
            self._with_results = _overriding(self.extensions, "get_results")
        data: dict[str, Any] = {}
        for extension in self._with_results:
            data.update(await await_maybe(extension.get_results()))
        data.update(ctx.extensions_results)
        return data

    def on_stream_result(self, result: StreamExecutionResult) -> StreamResultContextManager:
        if self._on_stream_result is None:
            self._on_stream_result = _overriding(self.extensions, "on_stream_result")
            self._masks_only = all(isinstance(e, ErrorMapper) for e in self._on_stream_result)
        if self._masks_only:
            return _MaskedStreamResult(cast(list[ErrorMapper], self._on_stream_result), result)
        return StreamResultContextManager(self._on_stream_result, result)


class _MaskedStreamResult(StreamResultContextManager):
    """The on_stream_result hooks when ErrorMapper's is the only one: it masks the result's
    errors before the result is sent and does nothing after, so it is called directly rather
    than through a contextmanager and an AsyncExitStack built for each event and subscriber
    (7 % of the server's CPU during fan-out)."""

    def __init__(self, mappers: list[ErrorMapper], result: StreamExecutionResult) -> None:
        self.result = result
        self.mappers = mappers

    def _mask(self) -> None:
        for mapper in self.mappers:
            mapper.mask_stream_result(self.result)

    def __enter__(self) -> None:
        self._mask()

    def __exit__(self, *exc_info: object) -> None:
        return None

    async def __aenter__(self) -> None:
        self._mask()

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _overriding(extensions: list[SchemaExtension], hook: str) -> list[SchemaExtension]:
    default = getattr(SchemaExtension, hook)
    return [extension for extension in extensions if getattr(type(extension), hook) is not default]


class Schema(strawberry.Schema):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.valid_documents = ValidDocuments(DOCUMENT_CACHE_SIZE)

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        # Expected errors (bad input, conflicts...) are the caller's business, not the
        # server log's; ErrorMapper logs the unexpected ones with their traceback.
        return None

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return ExtensionsRunner(execution_context=execution_context, extensions=extensions)


def build_schema(settings: Settings | None = None) -> Schema:
    from ..settings import load_settings

    settings = settings or load_settings()
    # The limits are validation rules built once: with fixed rule classes, a document seen
    # before is neither parsed nor validated again (the caches are keyed by the query text
    # and by the parsed document). api/limits.py says what each limit counts.
    limits = Limits(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_aliases,
        max_cost=settings.max_query_cost,
        max_directives=settings.max_directives,
        max_page_size=settings.max_page_size,
    )
    rules: list[type[ASTValidationRule]] = [complexity_rule(limits), directives_rule(settings.max_directives)]
    extensions: list[Any] = [
        RequestObserver,  # first, so it sees the errors with their codes
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: AddValidationRules(rules),
        lambda: DocumentCache(maxsize=DOCUMENT_CACHE_SIZE),
        lambda: ValidationCache(maxsize=DOCUMENT_CACHE_SIZE),
        MutationRateLimit,
        RememberValidDocuments,
        lambda: ErrorMapper(hide_suggestions=not settings.introspection),
    ]
    if not settings.introspection:
        extensions.append(DisableIntrospection)
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[ErrorCode, AgentPresenceEvent],
        extensions=extensions,
        config=StrawberryConfig(
            auto_camel_case=True, batching_config={"max_operations": settings.max_batch_operations}
        ),
        execution_context_class=SharingExecutionContext,
    )


__all__ = ["Schema", "build_schema", "error_code"]
