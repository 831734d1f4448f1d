"""GraphQL over HTTP and WebSocket: Strawberry's ASGI app, with the service's front door.

- Each request (or WebSocket connection) is authenticated once: resolvers/auth.py turns its
  credentials into the Context's Caller. With API_KEY set, an HTTP request without a valid
  credential is refused before its body is parsed; a WebSocket without one is closed at
  connection_init (4403 on graphql-transport-ws, connection_error on graphql-ws).
- Every refusal made here is shaped like a GraphQL error, with a 4xx status:
  `{"errors": [{"message": ..., "extensions": {"code": ...}}]}`.
- Bodies are read up to MAX_BODY_BYTES (by Content-Length, and counted while reading, so a
  chunked body cannot go around it); POST bodies must be application/json (a browser cannot
  send that cross-site without CORS, so this is the CSRF defence); JSON may nest at most
  MAX_JSON_DEPTH levels; a batch holds at most MAX_BATCH_OPERATIONS operations; mutations
  are never accepted over GET.
- WebSocket connections must send connection_init within WS_INIT_TIMEOUT_SECONDS, messages
  are bounded like bodies, and idle subscriptions get protocol pings (WS_KEEPALIVE_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, cast

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message as TransportWSMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from ..errors import ErrorCode
from ..resolvers.auth import Caller, authenticate, header_credentials
from ..resolvers.context import Context
from ..services import Services
from ..settings import Settings
from .broadcast import current_seat, open_seat
from .shared_results import shared_payloads
from .ws_frames import SCOPE_KEY, FrameWriter

log = logging.getLogger(__name__)

# The static dashboard and GraphiQL's page, with their vendored libraries (web/vendor/).
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@cache
def _graphiql_page() -> str:
    return (WEB_DIR / "graphiql.html").read_text(encoding="utf-8")


class TransportError(Exception):
    """A request refused before (or instead of) execution; rendered as a GraphQL error."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class JSONTooDeep(json.JSONDecodeError):
    """Nesting beyond MAX_JSON_DEPTH. A JSONDecodeError, so that Strawberry's WebSocket
    handlers treat it like any other unparsable message."""


# What each member of a request body may be (Strawberry checks some of them, and not in batches).
_OPERATION_FIELDS = {"query": str, "variables": dict, "operationName": str, "extensions": dict}


def _check_operation_shape(operation: Any) -> None:
    """A body (or each item of a batch) is {"query": "...", "variables": {...}, ...}."""
    if not isinstance(operation, dict):
        raise TransportError(
            400, ErrorCode.BAD_USER_INPUT, 'each operation must be a JSON object: {"query": "...", "variables": {...}}'
        )
    for name, kind in _OPERATION_FIELDS.items():
        value = operation.get(name)
        if value is not None and not isinstance(value, kind):
            expected = "a string" if kind is str else "an object"
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, f"{name} must be {expected} or null")


def unauthenticated(caller: Caller) -> TransportError:
    """The 401 for a caller whose credentials were refused (`caller.problem` says why)."""
    return TransportError(401, ErrorCode.UNAUTHENTICATED, caller.problem or "", headers={"WWW-Authenticate": "Bearer"})


def error_response(error: TransportError) -> Response:
    body = {"errors": [{"message": error.message, "extensions": {"code": error.code.value}}]}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` (parsed JSON) nests more than `limit` arrays/objects deep. Iterative,
    so no input can exhaust the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class _BodyTooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` that fails once the body passes `limit` bytes, however it is framed."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return wrapped


@lru_cache(maxsize=4096)
def _next_prefix(operation_id: str) -> bytes:
    """A `next` message's text up to its payload (operation ids repeat once per event)."""
    return f'{{"id":{json.dumps(operation_id)},"type":"next","payload":'.encode()


_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 413: ErrorCode.BAD_USER_INPUT}


class KeepAliveTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with server keep-alives. Strawberry sends them ("ka") only on the
    legacy graphql-ws protocol; here the server sends a protocol `ping` every
    WS_KEEPALIVE_SECONDS after the connection is acknowledged, so proxies and load balancers
    do not drop an idle subscription (clients answer with `pong`)."""

    _keep_alive_task: asyncio.Task[None] | None = None
    _frames: FrameWriter | None = None
    _socket: WebSocket | None = None

    def on_request_accepted(self) -> None:
        super().on_request_accepted()
        socket = getattr(self.websocket, "ws", None)  # Strawberry's ASGI adapter's socket
        if isinstance(socket, WebSocket):
            self._socket = socket
            self._frames = socket.scope.get(SCOPE_KEY)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        """Strawberry's, with a seat for taskEvents' fan-out (api/broadcast.py) when this
        connection's frames can be written directly (uncompressed)."""
        frames, socket = self._frames, self._socket
        if frames is not None and socket is not None and not frames.compressed:
            open_seat(_next_prefix(operation.id), frames, socket, cast(GraphQLApp, self.view).shared_data)
        await super().run_operation(operation)

    async def send_message(self, message: TransportWSMessage) -> None:
        """Strawberry's, except that a `next` message carrying a shared result is written to
        the socket directly when uvicorn allows it (api/ws_frames.py): the same bytes, fewer
        layers, once per subscriber and event."""
        frames, socket = self._frames, self._socket
        if frames is not None and socket is not None and message["type"] == "next":
            text = cast(GraphQLApp, self.view).shared_next(message)
            if text is not None and socket.application_state is WebSocketState.CONNECTED and frames.write_text(text):
                return
        await super().send_message(message)

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

    async def handle_task_exception(self, error: Exception) -> None:
        """Strawberry logs an operation task's exception as an error with its traceback. A
        subscriber that went away while its next event was being sent is not one: the
        connection is gone and its operations end with it (a debug line, no traceback).
        Anything else is still logged as Strawberry does."""
        if isinstance(error, WebSocketDisconnected):
            log.debug("a subscriber disconnected while an event was being sent to it")
            return
        await super().handle_task_exception(error)

    async def shutdown(self) -> None:
        task, self._keep_alive_task = self._keep_alive_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().shutdown()


class InitTimeoutWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol, with the same connection_init deadline as
    graphql-transport-ws (Strawberry has none for it): a socket that never initialises
    would otherwise be held open forever."""

    async def handle(self) -> None:
        deadline = asyncio.create_task(self._close_unless_initialised(), name="ws-init-deadline")
        try:
            await super().handle()
        finally:
            deadline.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await deadline

    async def handle_async_results(
        self, operation_id: str, query: str, operation_name: str | None, variables: dict[str, object] | None
    ) -> None:
        """Strawberry's, except that a subscriber gone while an event was being sent ends the
        operation quietly (a debug line), as on graphql-transport-ws, instead of leaving an
        exception in a task nobody awaits (asyncio logs those as errors)."""
        try:
            await super().handle_async_results(operation_id, query, operation_name, variables)
        except WebSocketDisconnected:
            log.debug("a subscriber disconnected while an event was being sent to it")

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self.connection_acknowledged:
            await self.websocket.close(code=4408, reason="Connection initialisation timeout")


class GraphQLApp(GraphQL[Context, None]):
    """Strawberry's ASGI app; `services` is set by the lifespan before the first request."""

    graphql_transport_ws_handler_class = KeepAliveTransportWSHandler
    graphql_ws_handler_class = InitTimeoutWSHandler

    def __init__(self, schema: BaseSchema, *, settings: Settings):
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            allow_queries_via_get=True,
            keep_alive=True,
            keep_alive_interval=settings.ws_keepalive_seconds,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
            connection_init_wait_timeout=timedelta(seconds=settings.ws_init_timeout_seconds),
            allowed_origins=settings.cors_origins,
        )
        self.settings = settings
        self.services: Services | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                frames = FrameWriter.for_connection(receive)
                if frames is not None:
                    scope = {**scope, SCOPE_KEY: frames}
            await super().__call__(scope, receive, send)
            return
        limit = self.settings.max_body_bytes
        try:
            declared = int(Request(scope).headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                raise _BodyTooLarge
            response = await self.run(Request(scope, receive=_limited(receive, limit)))
        except _BodyTooLarge:
            response = error_response(
                TransportError(
                    413, ErrorCode.BAD_USER_INPUT, f"the request body is over {limit} bytes (MAX_BODY_BYTES)"
                )
            )
        except TransportError as error:
            response = error_response(error)
        except HTTPException as error:
            code = _HTTP_CODES.get(error.status_code, ErrorCode.BAD_USER_INPUT)
            response = error_response(TransportError(error.status_code, code, error.reason))
        await response(scope, receive, send)

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        """Our GraphiQL page (web/graphiql.html): it loads only the service's own files, where
        Strawberry's page loads its scripts from a CDN and stays blank offline."""
        return HTMLResponse(_graphiql_page())

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        assert self.services is not None, "the app's lifespan has not started"
        api_key, authorization = header_credentials(request.headers)
        client_ip = request.client.host if request.client else None
        caller = await authenticate(self.services, api_key, authorization, client_ip=client_ip)
        if isinstance(request, Request) and not caller.authenticated:
            if not self.should_render_graphql_ide(self.request_adapter_class(request)):
                raise unauthenticated(caller)
        if isinstance(request, WebSocket):
            return Context(
                services=self.services, request=request, response=response, caller=caller, fan_out_seat=current_seat
            )
        return Context(services=self.services, request=request, response=response, caller=caller)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        assert self.services is not None
        api_key, authorization = header_credentials(context.connection_params or {})
        if api_key is not None or authorization is not None:
            context.caller = await authenticate(
                self.services, api_key, authorization, client_ip=context.caller.client_ip
            )
        if not context.caller.authenticated:
            raise ConnectionRejectionError(
                {"message": context.caller.problem, "extensions": {"code": ErrorCode.UNAUTHENTICATED.value}}
            )
        return cast(UnsetType, UNSET)  # no payload in connection_ack

    def shared_next(self, message: Mapping[str, Any]) -> bytes | None:
        """The encoded text of a `next` message carrying a shared subscription result, made
        from that result's payload, encoded once for all its subscribers
        (api/shared_results.py): only the operation id differs per subscriber. None for any
        other message."""
        if message.get("type") != "next":
            return None
        payload = message.get("payload")
        if type(payload) is not dict or len(payload) != 1 or "data" not in payload:
            return None
        encoded = self.shared_data(payload["data"])
        if encoded is None:
            return None
        return _next_prefix(message["id"]) + encoded + b"}"

    def shared_data(self, data: object) -> bytes | None:
        """The encoded `{"data": data}` of a shared subscription result (encoded once for
        all its subscribers, api/shared_results.py); None for any other data."""
        return shared_payloads.encoded_bytes(data, super().encode_json)

    def encode_json(self, data: object) -> str | bytes:
        """Strawberry's, except for `next` messages carrying a shared result (shared_next)."""
        if type(data) is dict:
            shared = self.shared_next(data)
            if shared is not None:
                return shared.decode()
        return super().encode_json(data)

    def decode_json(self, data: str | bytes) -> object:
        if len(data) > self.settings.max_body_bytes:
            raise json.JSONDecodeError(f"message over {self.settings.max_body_bytes} bytes (MAX_BODY_BYTES)", "", 0)
        try:
            value = json.loads(data)
        except UnicodeDecodeError as error:
            # Bytes that are not UTF-8 (nor UTF-16/32) are as unparsable as bad JSON.
            raise json.JSONDecodeError(f"not UTF-8 text ({error.reason} at byte {error.start})", "", 0) from None
        except RecursionError:
            value = None
            too_deep = True
        else:
            too_deep = json_depth_exceeds(value, self.settings.max_json_depth)
        if too_deep:
            raise JSONTooDeep(f"JSON nested deeper than {self.settings.max_json_depth} levels (MAX_JSON_DEPTH)", "", 0)
        return value

    def parse_json(self, data: str | bytes) -> Any:
        try:
            value = self.decode_json(data)
        except JSONTooDeep as error:
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, error.msg) from None
        except json.JSONDecodeError as error:
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, f"the body is not valid JSON: {error}") from None
        for operation in value if isinstance(value, list) else [value]:
            _check_operation_shape(operation)
        return value

    async def parse_http_body(self, request: Any) -> Any:
        if request.method == "POST":
            content_type = (request.content_type or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                raise TransportError(
                    415,
                    ErrorCode.BAD_USER_INPUT,
                    f"POST bodies must be application/json, not {content_type or 'unspecified'}: "
                    '{"query": "...", "variables": {...}}',
                )
        return await super().parse_http_body(request)

    def _validate_batch_request(self, request_data: list[Any], protocol: Any) -> None:
        limit = self.settings.max_batch_operations
        if not request_data:
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, "an empty batch holds no operation")
        if len(request_data) > limit:
            raise TransportError(
                400,
                ErrorCode.QUERY_TOO_COMPLEX,
                f"a batch may hold at most {limit} operations (MAX_BATCH_OPERATIONS); got {len(request_data)}",
            )
        super()._validate_batch_request(request_data, protocol)

    async def execute_single(
        self,
        request: Any,
        request_adapter: Any,
        sub_response: Any,
        context: Context,
        root_value: Any,
        request_data: Any,
    ) -> ExecutionResult:
        """Strawberry's, except that HTTP never carries subscriptions (they run over the
        WebSocket: a subscription executed as a plain request would fail inside), GET
        carries only queries, and every refusal is a GraphQL-shaped error."""
        allowed = (
            {OperationType.QUERY} if request_adapter.method == "GET" else {OperationType.QUERY, OperationType.MUTATION}
        )
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise TransportError(
                    400,
                    ErrorCode.BAD_USER_INPUT,
                    "subscriptions run over a WebSocket at /graphql (graphql-transport-ws or graphql-ws), not HTTP",
                ) from None
            raise TransportError(
                405,
                ErrorCode.BAD_USER_INPUT,
                "only queries may use GET; POST mutations as application/json",
                headers={"Allow": "POST"},
            ) from None
        except CannotGetOperationTypeError as error:
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, error.as_http_error_reason()) from None
        except MissingQueryError:
            raise TransportError(400, ErrorCode.BAD_USER_INPUT, "no GraphQL query in the request") from None
