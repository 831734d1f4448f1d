"""The one place where exceptions become GraphQL errors with a contract ErrorCode."""

from __future__ import annotations

import logging

from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from ..errors import DomainError, ErrorCode

log = logging.getLogger("task_service.errors")

# The exact wording of the limiters we install (schema/root.py): strawberry's
# QueryDepthLimiter and MaxAliasesLimiter, and graphql-core's parser for MaxTokensLimiter.
_COMPLEXITY_MARKERS = (
    "exceeds maximum operation depth",
    "aliases found. Allowed:",
    "Document contains more than",
)


def error_code(error: GraphQLError) -> ErrorCode:
    original = error.original_error
    if isinstance(original, DomainError):
        return original.code
    if original is None:
        # Parse, validation and variable-coercion errors: the request itself is wrong.
        if any(marker in error.message for marker in _COMPLEXITY_MARKERS):
            return ErrorCode.QUERY_TOO_COMPLEX
        return ErrorCode.BAD_USER_INPUT
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
    """Puts `extensions.code` on every error; masks anything unexpected as INTERNAL."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=self._unexpected, error_message="Internal server error.")

    @staticmethod
    def _unexpected(error: GraphQLError) -> bool:
        return error_code(error) is ErrorCode.INTERNAL

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed: list[GraphQLError] = []
        for error in errors:
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
            error.extensions = {**extensions, "code": code.value}
            processed.append(error)
        return processed
