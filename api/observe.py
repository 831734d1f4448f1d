"""Every GraphQL operation observed once: a request id, one log line and the request metrics.

The extension runs outermost (first in the schema's list), so the errors it sees already
carry their contract code (api/errors.py). Subscriptions are logged when they end; their
live numbers are the subscription gauges and counters (resolvers/subscriptions.py).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from ..observability.logs import log_request, request_id

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_caller(context: Any) -> str:
    """Who made the request, for the request log (never a credential): `agent:<name>` for an
    agent token, else the role (`admin`, `open`, `anonymous`)."""
    caller = getattr(context, "caller", None)
    if caller is None:
        return "unknown"
    if caller.agent_name is not None:
        return f"agent:{caller.agent_name}"
    return str(caller.role.value)


def _new_request_id(context: Any) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    request = getattr(context, "request", None)
    return request_id_from(request.headers.get(REQUEST_ID_HEADER) if request is not None else None)


def request_id_from(given: object) -> str:
    """`given` (a client's X-Request-ID) when it is a sane token, else a fresh id."""
    if isinstance(given, str) and _CLIENT_REQUEST_ID.fullmatch(given):
        return given
    # 128 random bits as 32 hex digits, the shape of uuid4().hex at a fifth of its cost.
    return secrets.token_hex(16)


class RequestObserver(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        context = self.execution_context.context
        rid = _new_request_id(context)
        headers = getattr(getattr(context, "response", None), "headers", None)
        if hasattr(type(headers), "__setitem__"):  # an HTTP response (a WebSocket's are fixed)
            headers["X-Request-ID"] = rid  # type: ignore[index]
        token = request_id.set(rid)
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self._record(context, seconds)
            # A subscription may be closed from another task, whose context never had it set.
            with contextlib.suppress(ValueError):
                request_id.reset(token)

    def _record(self, context: Any, seconds: float) -> None:
        execution = self.execution_context
        try:
            operation_type = execution.operation_type
        except Exception:  # no operation to name: the document did not parse or is empty
            operation_type = None
        result = execution.result
        errors = list(getattr(result, "errors", None) or []) or list(execution.pre_execution_errors or [])
        record_operation(context, operation_type, execution.operation_name, errors, seconds)


def record_operation(
    context: Any, operation_type: OperationType | None, name: str | None, errors: list[Any], seconds: float
) -> None:
    """The request log line and the request metrics of one operation (`errors` as sent,
    already carrying their codes)."""
    kind = operation_type.value if operation_type is not None else "unknown"
    outcome = _outcome(errors)
    request = getattr(context, "request", None)
    client = getattr(getattr(request, "client", None), "host", None)
    log_request(
        operation=name,
        operation_type=kind,
        caller=request_caller(context),
        outcome=outcome,
        duration_ms=seconds * 1000,
        client=client,
    )
    services = getattr(context, "services", None)
    if services is not None and operation_type is not OperationType.SUBSCRIPTION:
        metrics = services.metrics
        metrics.observe_request(metrics.operation_label(name), kind, outcome, seconds)


def _outcome(errors: list[Any]) -> str:
    """ "ok", or the first error's contract code."""
    if not errors:
        return "ok"
    code = (errors[0].extensions or {}).get("code")
    return str(code) if code else "INTERNAL"
