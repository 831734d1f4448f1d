"""GraphQL over HTTP, direct: the common request executed without strawberry's HTTP view.

Nearly every request an agent or a dashboard makes is a POST of one query or mutation
whose text the service has seen before. For those, strawberry's view and its extension
runner (a context manager per extension and hook, a request adapter, a sub-response, a
Starlette Response) cost about as much CPU as the work itself (bench/PROFILE.md, fourth
round). This middleware, in front of the /graphql route, runs such a request itself:

- the document comes from the schema's ValidDocuments (api/schema.py), which holds only
  texts strawberry has already parsed and validated with every rule and limit;
- the caller is authenticated as GraphQLApp.get_context does, and a mutation is counted
  against the rate limit as MutationRateLimit does (api/guard.py);
- graphql-core executes it with the schema's execution context class, as strawberry would;
- the errors go through the same ErrorMapper, the request is logged and measured as
  RequestObserver does (api/observe.py), and the body is encoded by GraphQLApp.encode_json.

Everything else goes, untouched, to strawberry's view (api/transport.py): GET, batches,
other content types, bodies that are not plain JSON objects, operation extensions,
streaming Accept types, first sightings of a text, and whatever would be refused. Its
body, already read, is handed on as it came. tests/api/test_direct.py sends the same
requests both ways and compares the answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any, cast

from graphql import ExecutionResult, GraphQLError, OperationType, execute, get_operation_ast
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxTokensLimiter,
    ValidationCache,
)
from strawberry.types.graphql import OperationType as StrawberryOperationType

from ..observability.logs import request_id
from ..resolvers.auth import authenticate
from ..resolvers.context import Context
from .errors import ErrorMapper
from .guard import MutationRateLimit, rate_limit_refusal
from .observe import REQUEST_ID_HEADER, RequestObserver, record_operation, request_id_from
from .schema import DocumentCache, RememberValidDocuments, Schema
from .transport import GraphQLApp, error_response, json_depth_exceeds, unauthenticated

# The schema extensions whose work this path does itself (the ones that act at parse and
# validation time have already accepted every document it runs). Any other extension
# would be skipped here, so the service refuses to start with one (DirectGraphQL.__init__).
HANDLED_EXTENSIONS = (
    RequestObserver,
    MaxTokensLimiter,
    AddValidationRules,
    DocumentCache,
    ValidationCache,
    MutationRateLimit,
    RememberValidDocuments,
    ErrorMapper,
    DisableIntrospection,
)
# The request headers this path reads; every other one is left to strawberry's view.
_HEADERS = {b"content-type", b"content-length", b"accept", b"authorization", b"x-api-key", REQUEST_ID_HEADER.encode()}
_OPERATIONS = {
    OperationType.QUERY: StrawberryOperationType.QUERY,
    OperationType.MUTATION: StrawberryOperationType.MUTATION,
}


class SubResponse(Response):
    """What a resolver or extension may set on an HTTP response (status, headers), as
    strawberry's ASGI view gives it: a Starlette Response that is never sent itself."""

    def __init__(self) -> None:
        self.status_code = None  # type: ignore[assignment]
        self.background = None
        self.raw_headers = []


class DirectGraphQL:
    def __init__(self, app: ASGIApp, graphql: GraphQLApp):
        self.app = app
        self.graphql = graphql
        schema = graphql.schema
        assert isinstance(schema, Schema)
        self.schema = schema
        extensions = schema.get_extensions()
        unknown = [type(e).__name__ for e in extensions if not isinstance(e, HANDLED_EXTENSIONS)]
        if unknown:
            raise RuntimeError(f"api/direct.py does not do the work of the schema extension(s) {', '.join(unknown)}")
        resolving = [type(e).__name__ for e in extensions if e._implements_resolve()]
        if resolving:
            raise RuntimeError(f"api/direct.py runs no resolver middleware, and {', '.join(resolving)} is one")
        self.mappers = [e for e in extensions if isinstance(e, ErrorMapper)]
        self.max_body_bytes = graphql.settings.max_body_bytes
        self.max_json_depth = graphql.settings.max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != "/graphql":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            if raw_name in _HEADERS:
                # The first of a repeated header, as Starlette's Headers.get gives it.
                headers.setdefault(raw_name.decode("latin-1"), raw_value.decode("latin-1"))
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        accept = headers.get("accept", "")
        try:
            declared = int(headers["content-length"])
        except (KeyError, ValueError):
            declared = -1
        if (
            content_type != "application/json"
            or "multipart/mixed" in accept
            or "text/event-stream" in accept
            or not 0 <= declared <= self.max_body_bytes
        ):
            await self.app(scope, receive, send)
            return
        messages, body = await self._read_body(receive)
        prepared = self._prepare(body) if body is not None else None
        if prepared is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        await self._run(scope, receive, send, headers, *prepared)

    async def _read_body(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages received and the body; None when the body is over MAX_BODY_BYTES or
        the client went away (strawberry's view answers those)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return messages, None
            if not message.get("more_body", False):
                break
        if len(messages) == 1:
            return messages, messages[0].get("body", b"")
        return messages, b"".join(m.get("body", b"") for m in messages)

    def _prepare(self, body: bytes) -> tuple[Any, Any, dict[str, Any] | None, str | None] | None:
        """(document, operation, variables, operation name), or None for anything but a
        query or mutation of a known-valid text in a well-formed body."""
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if type(value) is not dict:
            return None
        query = value.get("query")
        variables = value.get("variables")
        name = value.get("operationName")
        if (
            type(query) is not str
            or not (variables is None or type(variables) is dict)
            or not (name is None or type(name) is str)
            or value.get("extensions") is not None
            or json_depth_exceeds(value, self.max_json_depth)
        ):
            return None
        document = self.schema.valid_documents.get(query)
        if document is None:
            return None
        operation = get_operation_ast(document, name)
        if operation is None or operation.operation not in _OPERATIONS:
            return None
        return document, operation, variables, name

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        document: Any,
        operation: Any,
        variables: dict[str, Any] | None,
        name: str | None,
    ) -> None:
        services = self.graphql.services
        assert services is not None, "the app's lifespan has not started"
        client = scope.get("client")
        caller = await authenticate(
            services, headers.get("x-api-key"), headers.get("authorization"), client_ip=client[0] if client else None
        )
        if not caller.authenticated:
            # As GraphQLApp.get_context refuses it (a POST never renders GraphiQL).
            await error_response(unauthenticated(caller))(scope, receive, send)
            return
        response = SubResponse()
        context = Context(services=services, request=Request(scope, receive), response=response, caller=caller)
        operation_name = operation.name.value if operation.name is not None else None
        rid = request_id_from(headers.get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        started = time.perf_counter()
        try:
            result = await self._execute(context, document, operation, variables, name)
            seconds = time.perf_counter() - started
            record_operation(context, _OPERATIONS[operation.operation], operation_name, result.errors or [], seconds)
        finally:
            request_id.reset(token)
        data: dict[str, Any] = {"data": result.data}
        if result.errors:
            data["errors"] = [error.formatted for error in result.errors]
        encoded = self.graphql.encode_json(data)
        payload = encoded.encode() if isinstance(encoded, str) else encoded
        raw = [
            (b"content-length", str(len(payload)).encode()),
            (b"content-type", b"application/json"),
            (b"x-request-id", rid.encode()),
            *response.raw_headers,
        ]
        await send({"type": "http.response.start", "status": response.status_code or 200, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def _execute(
        self, context: Context, document: Any, operation: Any, variables: dict[str, Any] | None, name: str | None
    ) -> ExecutionResult:
        """What strawberry's Schema.execute does for a document already validated: the rate
        limit, graphql-core's execution, and the error mapping."""
        try:
            result = None
            if operation.operation is OperationType.MUTATION:
                result = await rate_limit_refusal(context, document, name)
            if result is None:
                outcome = execute(
                    self.schema._schema,
                    document,
                    context_value=context,
                    variable_values=variables,
                    operation_name=name,
                    executor_class=self.schema.execution_context_class,
                    is_awaitable=cast(Any, optimized_is_awaitable),
                    operation_extensions=None,
                )
                if optimized_is_awaitable(outcome):
                    outcome = await cast(Awaitable[ExecutionResult], outcome)
                result = cast(ExecutionResult, outcome)
        except Exception as exc:  # as strawberry: an error of the operation, never a crash
            error = exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
            result = ExecutionResult(data=None, errors=[error])
        for mapper in self.mappers:
            mapper._process_result(result)
        return result


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy mounts the service under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that first gives back the messages already read."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


__all__ = ["HANDLED_EXTENSIONS", "DirectGraphQL"]
