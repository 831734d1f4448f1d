"""api/limits.py: the cost model, directives and repeated fields, measured on the schema
itself (validation only: no database needed)."""

from __future__ import annotations

import pytest
from graphql import get_introspection_query, parse, validate

from task_service.api.limits import LIST_FACTOR, MAX_FIELD_REPEATS, Limits, complexity_rule, directives_rule
from task_service.api.schema import build_schema
from task_service.settings import Settings

LIMITS = Limits(max_depth=12, max_aliases=30, max_cost=1000, max_directives=5, max_page_size=500)


@pytest.fixture(scope="module")
def graphql_schema():  # type: ignore[no-untyped-def]
    return build_schema(Settings())._schema


def errors(schema, query: str, limits: Limits = LIMITS) -> list[str]:  # type: ignore[no-untyped-def]
    found = validate(schema, parse(query), [complexity_rule(limits), directives_rule(limits.max_directives)])
    for error in found:
        assert error.extensions == {"code": "QUERY_TOO_COMPLEX"}
    return [error.message for error in found]


def cost_of(schema, query: str) -> int:  # type: ignore[no-untyped-def]
    """The cost the rule computes, read back by lowering the limit to 0."""
    (message,) = errors(schema, query, Limits(12, 30, 0, 5, 500))
    return int(message.split("would cost ")[1].split(",")[0])


class TestCost:
    def test_each_field_costs_one(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        assert cost_of(graphql_schema, "{ dashboardStats { generatedAt tasks { total ready } } }") == 5

    def test_first_multiplies_its_selection(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        # tasks(1) + 20 x (nodes(1) + id(1) + title(1))
        assert cost_of(graphql_schema, "{ tasks(first: 20) { nodes { id title } } }") == 1 + 20 * 3

    def test_a_variable_counts_as_its_default_else_the_page_limit(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        with_default = "query($n: Int = 7) { tasks(first: $n) { totalCount } }"
        without = "query($n: Int) { tasks(first: $n) { totalCount } }"
        assert cost_of(graphql_schema, with_default) == 1 + 7
        assert cost_of(graphql_schema, without) == 1 + LIMITS.max_page_size

    def test_an_omitted_first_counts_as_its_default(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        assert cost_of(graphql_schema, "{ events { id } }") == 1 + 100

    def test_other_lists_of_objects_count_ten(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        assert cost_of(graphql_schema, "{ agents { name currentTasks { id } } }") == 1 + LIST_FACTOR * (
            1 + 1 + LIST_FACTOR
        )

    def test_a_fragment_counts_where_it_is_spread(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        inline = "{ tasks(first: 3) { nodes { id title } } }"
        spread = "{ tasks(first: 3) { nodes { ...T } } } fragment T on Task { id title }"
        assert cost_of(graphql_schema, spread) == cost_of(graphql_schema, inline)

    def test_introspection_counts_too(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        # __schema(1) + types(1) + 10 x name(1)
        assert cost_of(graphql_schema, "{ __schema { types { name } } }") == 1 + 1 + LIST_FACTOR

    def test_over_the_limit_is_refused(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        (message,) = errors(graphql_schema, "{ tasks(first: 500) { nodes { id } } }")
        assert "MAX_QUERY_COST" in message

    def test_a_fragment_bomb_is_measured_without_walking_it(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        # 2**40 spreads if walked; each fragment is measured once.
        fragments = " ".join(f"fragment F{i} on Project {{ ...F{i + 1} ...F{i + 1} }}" for i in range(40))
        query = "{ projects { ...F0 } } " + fragments + " fragment F40 on Project { id }"
        assert cost_of(graphql_schema, query) == 1 + LIST_FACTOR * 2**40

    def test_the_standard_introspection_query_passes_the_default_limits(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        settings = Settings()
        limits = Limits(
            settings.max_query_depth,
            settings.max_aliases,
            settings.max_query_cost,
            settings.max_directives,
            settings.max_page_size,
        )
        assert errors(graphql_schema, get_introspection_query(descriptions=True), limits) == []


class TestDepth:
    def test_introspection_has_its_own_depth(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        nested = "name"
        for _ in range(25):
            nested = f"ofType {{ {nested} }}"
        (message,) = errors(graphql_schema, f'{{ __type(name: "Task") {{ {nested} }} }}')
        assert "introspection" in message

    def test_subscriptions_are_measured(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        levels = ["task", "project", "tasks(first: 1)", "nodes"]
        opened = [levels[i % 4] if i else "task" for i in range(14)]
        body = " { ".join(opened) + " { id" + " }" * len(opened)
        (message,) = errors(graphql_schema, f"subscription {{ taskChanged {{ {body} }} }}")
        assert "MAX_QUERY_DEPTH" in message


class TestDirectivesAndRepeats:
    def test_more_directives_than_the_limit(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        ok = "{ " + " ".join(f"a{i}: __typename @include(if: true)" for i in range(5)) + " }"
        too_many = "{ " + " ".join(f"a{i}: __typename @include(if: true)" for i in range(6)) + " }"
        assert errors(graphql_schema, ok) == []
        (message,) = errors(graphql_schema, too_many)
        assert "MAX_DIRECTIVES" in message

    def test_a_field_repeated_in_one_selection(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        ok = "{ projects { " + "name " * MAX_FIELD_REPEATS + "} }"
        repeated = "{ projects { " + "name " * (MAX_FIELD_REPEATS + 1) + "} }"
        assert errors(graphql_schema, ok) == []
        (message,) = errors(graphql_schema, repeated)
        assert "'name' is selected 6 times" in message

    def test_aliases_count_across_fragments(self, graphql_schema) -> None:  # type: ignore[no-untyped-def]
        fragment = "fragment P on Project { " + " ".join(f"n{i}: name" for i in range(20)) + " }"
        (message,) = errors(graphql_schema, "{ projects { ...P } a: projects { ...P } } " + fragment)
        assert "aliases" in message
