"""schema/inputs.py's `plain_input` builds the same values as Strawberry's own conversion."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import pytest
import strawberry
from strawberry.types.base import get_object_definition

from task_service.api.schema import build_schema
from task_service.schema.inputs import plain_input
from task_service.schema.tasks import CreateTaskInput
from task_service.settings import Settings


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.input
class Inner:
    colour: Colour
    names: list[str] | None = None


def both_ways(cls: type, query: str, variables: dict[str, Any]) -> tuple[Any, Any]:
    """The resolver's argument, built with the hook and then by Strawberry alone."""
    seen: list[Any] = []

    def take(value: Any) -> int:
        seen.append(value)
        return 1

    take.__annotations__ = {"value": cls, "return": int}
    query_type = strawberry.type(type("Query", (), {"__annotations__": {}, "take": strawberry.field(resolver=take)}))
    schema = strawberry.Schema(query=query_type)
    definition = get_object_definition(cls, strict=True)
    hook = definition.from_input
    assert hook is not None
    result = schema.execute_sync(query, variable_values=variables)
    assert result.errors is None, result.errors
    definition.from_input = None
    try:
        result = schema.execute_sync(query, variable_values=variables)
        assert result.errors is None, result.errors
    finally:
        definition.from_input = hook
    return seen[0], seen[1]


@plain_input
@strawberry.input
class Outer:
    title: str
    inner: Inner | None = None
    colours: list[Colour] | None = None
    at: datetime | None = None
    tags: list[str] | None = None
    count: int | None = 3
    flag: bool | None = strawberry.UNSET


QUERY = "query($v: Outer!) { take(value: $v) }"


@pytest.mark.parametrize(
    "value",
    [
        {"title": "only the required field"},
        {"title": "t", "tags": ["a", "b"], "count": None, "flag": False, "at": "2026-01-02T03:04:05+00:00"},
        {"title": "t", "inner": {"colour": "RED", "names": ["x"]}, "colours": ["BLUE", "RED"]},
        {"title": "t", "inner": None, "colours": None, "tags": None},
    ],
)
def test_the_hook_builds_what_strawberry_builds(value: dict[str, Any]) -> None:
    fast, slow = both_ways(Outer, QUERY, {"v": value})
    assert fast == slow
    assert type(fast) is Outer


def test_nested_inputs_and_enums_are_converted_and_lists_are_copies() -> None:
    fast, _ = both_ways(Outer, QUERY, {"v": {"title": "t", "inner": {"colour": "BLUE"}, "colours": ["RED"]}})
    assert isinstance(fast.inner, Inner)
    assert fast.inner.colour is Colour.BLUE
    assert fast.colours == [Colour.RED]
    assert (fast.at, fast.count) == (None, 3)
    assert fast.flag is strawberry.UNSET


def test_create_task_input_keeps_every_field() -> None:
    build_schema(Settings())  # the service's schema builds with the hook in place
    value = {
        "title": "Write",
        "taskType": "research",
        "projectId": "4",
        "ref": "w",
        "description": "d",
        "priority": 7,
        "tags": ["x"],
        "requiredSkills": ["python"],
        "assignee": "a",
        "reviewer": "r",
        "acceptanceCriteria": "c",
        "requiresReview": False,
        "parentId": "2",
        "dependsOn": ["1"],
        "dependsOnRefs": ["v"],
        "maxAttempts": 2,
        "estimatedHours": 1.5,
        "timeoutMinutes": 9,
        "availableAt": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "dueAt": datetime(2026, 2, 1, tzinfo=UTC).isoformat(),
        "createdBy": "me",
        "idempotencyKey": "k",
    }
    for sent in (value, {"title": "Write", "taskType": "research"}):
        fast, slow = both_ways(CreateTaskInput, "query($v: CreateTaskInput!) { take(value: $v) }", {"v": sent})
        assert fast == slow
