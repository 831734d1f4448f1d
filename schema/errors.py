"""The one place where exceptions become GraphQL errors with a contract ErrorCode."""

from __future__ import annotations

import logging
import re

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors
from strawberry.schema.exceptions import InvalidOperationTypeError

from ..errors import DomainError, ErrorCode

log = logging.getLogger("task_service.errors")

# graphql-core's parser refusing a document over MAX_TOKENS (MaxTokensLimiter). Our own
# limits (schema/limits.py) say QUERY_TOO_COMPLEX in their extensions.
_TOO_MANY_TOKENS = "Document contains more than"
_SUGGESTION = re.compile(r" Did you mean .*\?$")


def error_code(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if original is None:
        # Parse, validation and variable-coercion errors: the request itself is wrong.
        declared = (error.extensions or {}).get("code")
        if declared in ErrorCode.__members__:
            return ErrorCode(declared)
        if _TOO_MANY_TOKENS in error.message:
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

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed: list[GraphQLError] = []
        seen: set[tuple[str, str]] = set()
        for error in errors:
            key = (error.message, repr(error.path))
            if key in seen:
                continue
            seen.add(key)
            code = error_code(error)
            if code is ErrorCode.INTERNAL:
                log.error(
                    "unexpected error in %s",
                    ".".join(map(str, error.path or [])) or "operation",
                    exc_info=error.original_error or error,
                )
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
            if self.hide_suggestions:
                error.message = _SUGGESTION.sub("", error.message)
            error.extensions = {**extensions, "code": code.value}
            processed.append(error)
        return processed
