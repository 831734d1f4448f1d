"""The one place where exceptions become GraphQL errors with a contract ErrorCode."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql.error import GraphQLError
from graphql.validation.validate import ValidationAbortedError
from strawberry.extensions import MaskErrors
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types.execution import StreamExecutionResult

from ..db.health import unreachable
from ..errors import DomainError, ErrorCode

log = logging.getLogger("task_service.errors")

# graphql-core's own refusals of documents too big or too deep to handle: more than
# MAX_TOKENS (MaxTokensLimiter), nesting beyond its parser's reach, and its introspection
# depth rule. Our own limits (api/limits.py) say QUERY_TOO_COMPLEX in their extensions.
_TOO_COMPLEX_MARKERS = (
    "Document contains more than",
    "Document is nested too deeply",
    "Maximum introspection depth exceeded",
)
# Text PostgreSQL cannot store, whatever the argument: a NUL character in a string
# (22021) or a \u0000 escape in a JSON value (22P05). The caller sent it; nothing was changed.
_UNSTORABLE_INPUT = {"22021", "22P05"}
_SUGGESTION = re.compile(r" Did you mean .*\?$")
# A failure the caller should simply retry says so in `extensions.retryable` (the contract's
# code stays INTERNAL: the contract has no code of its own for it).
DATABASE_UNAVAILABLE = (
    "the database could not be reached (connection refused or lost); try again shortly. A mutation in flight "
    "may or may not have been applied: repeat it with the same idempotencyKey where it takes one"
)
STATEMENT_TIMEOUT = "the database did not answer within STATEMENT_TIMEOUT_SECONDS; nothing was changed, try again"


def error_code(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if isinstance(error, ValidationAbortedError):
        return ErrorCode.QUERY_TOO_COMPLEX  # graphql-core gave up: too many errors or comparisons
    if original is None:
        # Parse, validation and variable-coercion errors: the request itself is wrong.
        declared = (error.extensions or {}).get("code")
        if isinstance(declared, str) and declared in ErrorCode.__members__:
            return ErrorCode(declared)
        if any(marker in error.message for marker in _TOO_COMPLEX_MARKERS):
            return ErrorCode.QUERY_TOO_COMPLEX
        return ErrorCode.BAD_USER_INPUT
    if isinstance(original, InvalidOperationTypeError):
        return ErrorCode.BAD_USER_INPUT  # e.g. a query sent over graphql-ws, which carries subscriptions only
    if isinstance(original, RecursionError):
        return ErrorCode.QUERY_TOO_COMPLEX  # a document nested deeper than the parser can follow
    if isinstance(original, GraphQLError):
        return error_code(original)
    if isinstance(original, ValueError | TypeError) and _is_coercion(error):
        return ErrorCode.BAD_USER_INPUT
    if _sqlstate(original) in _UNSTORABLE_INPUT:
        return ErrorCode.BAD_USER_INPUT
    return ErrorCode.INTERNAL


def _is_coercion(error: GraphQLError) -> bool:
    # Scalars (DateTime, JSON, ID) raise ValueError while parsing literals or variables;
    # graphql-core reports those without a path, before any resolver runs.
    return not error.path


class ErrorMapper(MaskErrors):
    """Puts `extensions.code` on every error; masks anything unexpected as INTERNAL; reports
    each distinct error once; with `hide_suggestions` (when introspection is off) drops the
    "Did you mean ...?" hints that would reveal the schema."""

    def __init__(self, *, hide_suggestions: bool = False) -> None:
        super().__init__(should_mask_error=self._unexpected, error_message="Internal server error.")
        self.hide_suggestions = hide_suggestions

    @staticmethod
    def _unexpected(error: GraphQLError) -> bool:
        return error_code(error) is ErrorCode.INTERNAL

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        self.mask_stream_result(result)
        yield None

    def mask_stream_result(self, result: StreamExecutionResult) -> None:
        """What on_stream_result does before a streamed result is sent (mask its errors),
        callable without strawberry's per-result context managers (api/schema.py's
        ExtensionsRunner does so for every subscription event)."""
        self._stream_result_processed = True
        self._process_stream_result(result)

    def _process_result(self, result: object) -> None:
        # Strawberry's first asks isinstance() of a runtime Protocol, which costs more than the
        # rest of a small subscription event; nearly every result has no errors at all.
        if getattr(result, "errors", None):
            super()._process_result(result)

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed: list[GraphQLError] = []
        seen: set[tuple[str, str]] = set()
        for error in errors:
            key = (error.message, repr(error.path))
            if key in seen:
                continue
            seen.add(key)
            code = error_code(error)
            if code is ErrorCode.INTERNAL and _is_statement_timeout(error.original_error):
                log.warning("a statement ran past STATEMENT_TIMEOUT_SECONDS in %s", _where(error))
                error = GraphQLError(STATEMENT_TIMEOUT, nodes=error.nodes, path=error.path)
                extensions: dict[str, Any] = {"retryable": True}
            elif code is ErrorCode.INTERNAL and _is_unavailable(error.original_error):
                log.warning("the database could not be reached in %s: %r", _where(error), error.original_error)
                error = GraphQLError(DATABASE_UNAVAILABLE, nodes=error.nodes, path=error.path)
                extensions = {"retryable": True}
            elif _sqlstate(error.original_error) in _UNSTORABLE_INPUT:
                error = GraphQLError(
                    "an argument holds text that cannot be stored (a NUL character, or \\u0000 in JSON); "
                    "remove it and try again",
                    nodes=error.nodes,
                    path=error.path,
                )
                extensions = {}
            elif code is ErrorCode.INTERNAL:
                log.error("unexpected error in %s", _where(error), exc_info=error.original_error or error)
                error = self.anonymise_error(error)
                extensions = {}
            else:
                original = error.original_error
                extensions = dict(error.extensions or {})
                if isinstance(original, InvalidOperationTypeError):
                    error = GraphQLError(
                        f"{original.operation_type.value}s are not allowed here; over WebSocket the legacy "
                        "graphql-ws protocol carries only subscriptions (use graphql-transport-ws or HTTP)",
                        nodes=error.nodes,
                        original_error=original,
                    )
                if isinstance(original, DomainError):
                    extensions.update(original.extensions)
                    error = GraphQLError(
                        original.message,
                        nodes=error.nodes,
                        source=error.source,
                        positions=error.positions,
                        path=error.path,
                        original_error=original,
                    )
            if isinstance(error, ValidationAbortedError):
                error.message = (
                    "the document is too large or repetitive to validate (repeated fields, fragments, "
                    "or too many errors); simplify it"
                )
            if self.hide_suggestions:
                error.message = _SUGGESTION.sub("", error.message)
            error.extensions = {**extensions, "code": code.value}
            processed.append(error)
        return _complexity_first(processed)


def _where(error: GraphQLError) -> str:
    return ".".join(map(str, error.path or [])) or "operation"


def _sqlstate(original: BaseException | None) -> str | None:
    """The PostgreSQL SQLSTATE behind a (wrapped) database error, else None."""
    while original is not None:
        state = getattr(original, "sqlstate", None)
        if state:
            return str(state)
        original = getattr(original, "orig", None) or original.__cause__
    return None


def _is_statement_timeout(original: BaseException | None) -> bool:
    """PostgreSQL cancelled a statement at statement_timeout (SQLSTATE 57014)."""
    return _sqlstate(original) == "57014"


def _is_unavailable(original: BaseException | None) -> bool:
    """The database was unreachable: refused, closed or shut down under the operation."""
    while original is not None:
        if unreachable(original):
            return True
        original = getattr(original, "orig", None) or original.__cause__
    return False


def _complexity_first(errors: list[GraphQLError]) -> list[GraphQLError]:
    """A document refused as too complex gets that one reason, not a page of validation
    errors that its size also caused."""
    too_complex = [e for e in errors if (e.extensions or {}).get("code") == ErrorCode.QUERY_TOO_COMPLEX.value]
    return too_complex[:1] if too_complex and all(e.path is None for e in errors) else errors
