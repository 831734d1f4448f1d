"""Domain errors: an ErrorCode from the contract and a message that says what to do."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    DEPENDENCIES_NOT_MET = "DEPENDENCIES_NOT_MET"
    CYCLE_DETECTED = "CYCLE_DETECTED"
    LIMIT_REACHED = "LIMIT_REACHED"
    STALE_ATTEMPT = "STALE_ATTEMPT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
    INTERNAL = "INTERNAL"


class DomainError(Exception):
    """A failure the caller can act on; mapped to a GraphQL error in api/errors.py."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None, **extensions: Any):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extensions = extensions


class BadInput(DomainError):
    code = ErrorCode.BAD_USER_INPUT


class NotFound(DomainError):
    code = ErrorCode.NOT_FOUND


class Conflict(DomainError):
    code = ErrorCode.CONFLICT


class InvalidTransition(DomainError):
    code = ErrorCode.INVALID_TRANSITION


class DependenciesNotMet(DomainError):
    code = ErrorCode.DEPENDENCIES_NOT_MET


class CycleDetected(DomainError):
    code = ErrorCode.CYCLE_DETECTED


class LimitReached(DomainError):
    code = ErrorCode.LIMIT_REACHED


class StaleAttempt(DomainError):
    code = ErrorCode.STALE_ATTEMPT


class Forbidden(DomainError):
    code = ErrorCode.FORBIDDEN


class Unauthenticated(DomainError):
    code = ErrorCode.UNAUTHENTICATED


class RateLimited(DomainError):
    """Too many mutations from one caller; `retryAfter` says when to try again (seconds)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, retryAfter=retry_after)
        self.retry_after = retry_after


class QueryTooComplex(DomainError):
    code = ErrorCode.QUERY_TOO_COMPLEX
