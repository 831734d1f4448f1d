"""Input types built without Strawberry's generic per-field conversion.

Strawberry converts an input value field by field, resolving each field's type and GraphQL
name again for every value: for a `createTasks` of 100 tasks that was 60 % of the call's CPU
(bench/PROFILE.md). `plain_input` gives an input type a `from_input` hook (Strawberry's
documented extension point, `StrawberryObjectDefinition.from_input`) that works out once per
type which fields need converting: scalars and lists of scalars arrive parsed by graphql-core
and are passed through (lists copied, as Strawberry does); anything else (enums, nested
inputs) still goes through Strawberry's own conversion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING
from typing import Any, TypeVar

from strawberry.types.arguments import InputContext
from strawberry.types.base import StrawberryList, StrawberryOptional, get_object_definition

T = TypeVar("T", bound=type)

_BUILTIN_LEAVES = (str, int, float, bool)


def _is_plain(type_: Any, scalars: Mapping[object, Any]) -> bool:
    """A scalar, or an optional or list (of optional) scalars: nothing to convert."""
    while isinstance(type_, StrawberryOptional | StrawberryList):
        type_ = type_.of_type
    return type_ in _BUILTIN_LEAVES or type_ in scalars


def plain_input(cls: T) -> T:
    definition = get_object_definition(cls, strict=True)
    plan: list[tuple[str, str, Any, bool]] = []
    implicit: dict[str, None] = {}

    def build(type_: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if not plan:
            for field in definition.fields:
                resolved = field.resolve_type(type_definition=definition)
                name = context.config.name_converter.from_field(field)
                plan.append((name, field.python_name, resolved, _is_plain(resolved, context.scalar_registry)))
                if field.default_value is MISSING and field.default_factory is MISSING:
                    implicit[field.python_name] = None
        kwargs: dict[str, Any] = dict(implicit)
        for name, python_name, resolved, plain in plan:
            if name not in value:
                continue
            item = value[name]
            if item is None:
                kwargs[python_name] = None
            elif plain:
                kwargs[python_name] = list(item) if isinstance(item, list) else item
            else:
                kwargs[python_name] = context.convert(item, resolved, name)
        return type_(**kwargs)

    definition.from_input = build
    return cls
