"""Errors of the SDK: one exception class per contract ErrorCode, plus transport failures.

The server puts a contract code in every GraphQL error's `extensions.code`; `from_graphql`
turns the first error of a response into the matching class so callers can write
`except ConflictError:` instead of comparing strings.
"""

from __future__ import annotations

from typing import Any


class TaskServiceError(Exception):
    """Base of every error the SDK raises; `code` is the contract's ErrorCode string."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, extensions: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extensions = extensions or {}


class BadUserInputError(TaskServiceError):
    code = "BAD_USER_INPUT"


class NotFoundError(TaskServiceError):
    code = "NOT_FOUND"


class ConflictError(TaskServiceError):
    code = "CONFLICT"


class InvalidTransitionError(TaskServiceError):
    code = "INVALID_TRANSITION"


class DependenciesNotMetError(TaskServiceError):
    code = "DEPENDENCIES_NOT_MET"


class CycleDetectedError(TaskServiceError):
    code = "CYCLE_DETECTED"


class LimitReachedError(TaskServiceError):
    code = "LIMIT_REACHED"


class StaleAttemptError(TaskServiceError):
    code = "STALE_ATTEMPT"


class UnauthenticatedError(TaskServiceError):
    code = "UNAUTHENTICATED"


class ForbiddenError(TaskServiceError):
    code = "FORBIDDEN"


class RateLimitedError(TaskServiceError):
    """The server refused the call for now; `retry_after` is its advice in seconds."""

    code = "RATE_LIMITED"

    @property
    def retry_after(self) -> float | None:
        value = self.extensions.get("retryAfter")
        try:
            return max(0.0, float(value)) if value is not None else None
        except (TypeError, ValueError):
            return None


class QueryTooComplexError(TaskServiceError):
    code = "QUERY_TOO_COMPLEX"


class InternalError(TaskServiceError):
    code = "INTERNAL"


class TransportFailure(TaskServiceError):
    """The server could not be reached or its answer was lost (after the SDK's retries).

    `code` is NETWORK_ERROR: not a contract code, since no server answered with one.
    """

    code = "NETWORK_ERROR"


class ConfigurationError(TaskServiceError):
    """The client is missing a setting it needs (e.g. an agent name without a token)."""

    code = "CONFIGURATION"


ERRORS_BY_CODE: dict[str, type[TaskServiceError]] = {
    cls.code: cls
    for cls in (
        BadUserInputError,
        NotFoundError,
        ConflictError,
        InvalidTransitionError,
        DependenciesNotMetError,
        CycleDetectedError,
        LimitReachedError,
        StaleAttemptError,
        UnauthenticatedError,
        ForbiddenError,
        RateLimitedError,
        QueryTooComplexError,
        InternalError,
    )
}


def from_graphql(errors: list[dict[str, Any]] | None) -> TaskServiceError:
    """The exception for a GraphQL `errors` list (its first error decides the class)."""
    first = (errors or [{}])[0] if errors else {}
    if not isinstance(first, dict):
        return InternalError(str(first))
    extensions = first.get("extensions") or {}
    code = str(extensions.get("code") or "INTERNAL")
    message = str(first.get("message") or code)
    cls = ERRORS_BY_CODE.get(code, TaskServiceError)
    return cls(message, code=code, extensions=extensions)
