"""Argument checks shared by resolvers/ and the types' own fields (task pagination): each
failure is a BAD_USER_INPUT that names the field."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import UTC, datetime

from ..db.models import DESCRIPTION_LENGTH, NAME_LENGTH, TITLE_LENGTH
from ..errors import BadInput

MAX_LIST_ITEMS = 50
MAX_INT_ID = 2**63 - 1


def parse_id(value: str | int | None, what: str = "id") -> int:
    """An opaque ID from the wire as the integer key, or BAD_USER_INPUT."""
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        raise BadInput(f'{what} must be a task service id such as "42"; got {value!r}') from None
    if number <= 0 or number > MAX_INT_ID:
        raise BadInput(f"{what} {value!r} is out of range")
    return number


def optional_id(value: str | None, what: str) -> int | None:
    return None if value is None else parse_id(value, what)


def text(value: str | None, field: str, *, limit: int, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadInput(f"{field} is required")
        return None
    if required and not value.strip():
        raise BadInput(f"{field} must not be empty")
    if len(value) > limit:
        raise BadInput(f"{field} is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise BadInput(f"{field} must not contain NUL characters")
    return value


def name(value: str | None, field: str, *, required: bool = True) -> str | None:
    value = text(value, field, limit=NAME_LENGTH, required=required)
    return value.strip() if value is not None else None


def title(value: str | None, *, required: bool = True) -> str | None:
    return text(value, "title", limit=TITLE_LENGTH, required=required)


def description(value: str | None) -> str | None:
    return text(value, "description", limit=DESCRIPTION_LENGTH)


def labels(values: Iterable[str] | None, field: str) -> list[str] | None:
    """Tags or skills: up to 50 distinct non-empty names without quotes or backslashes."""
    if values is None:
        return None
    result: list[str] = []
    for value in values:
        label = name(value, f"{field} item")
        assert label is not None
        if any(c in label for c in '"\\'):
            raise BadInput(f"{field} item {label!r} must not contain quotes or backslashes")
        if label not in result:
            result.append(label)
    if len(result) > MAX_LIST_ITEMS:
        raise BadInput(f"{field} has {len(result)} items; the limit is {MAX_LIST_ITEMS}")
    return result


def int_range(value: int | None, field: str, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise BadInput(f"{field} must be between {low} and {high}; got {value}")
    return value


def non_negative(value: float | None, field: str) -> float | None:
    if value is not None and (value < 0 or value != value or value == float("inf")):
        raise BadInput(f"{field} must be a non-negative number; got {value}")
    return value


def encode_cursor(task_id: int) -> str:
    return base64.urlsafe_b64encode(f"task:{task_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "task":
            return parse_id(value)
    except (binascii.Error, UnicodeDecodeError, ValueError, BadInput):
        pass
    raise BadInput(f"after {cursor!r} is not a cursor from pageInfo.endCursor")


def moment(value: datetime | None) -> datetime | None:
    """A DateTime argument as an aware UTC datetime: one without an offset is taken as UTC
    (compared with aware times later, a naive one would fail)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
