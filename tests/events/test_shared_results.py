"""Subscription results are executed once per event and selection, and every subscriber
still gets exactly the shape it asked for."""

from __future__ import annotations

import contextlib

from task_service.resolvers.auth import Caller, Role
from task_service.resolvers.context import Context
from tests import factories as f
from tests.events.helpers import TASK_EVENTS, Collector, Sub, all_events, wait_settled

WITH_INCLUDE = (
    "subscription($full: Boolean!) { taskEvents { id type message @include(if: $full) toStatus @skip(if: $full) } }"
)
WITH_FRAGMENT = "subscription { live: taskEvents { ...Ev } } fragment Ev on TaskEvent { id taskId }"
OTHER_SHAPE = "subscription { taskEvents { id actor } }"


async def _collect(stack, schema, services, query, *, caller=None, **variables):
    context = Context(services, caller=caller) if caller is not None else None
    sub = await stack.enter_async_context(Sub(schema, services, query, context=context, **variables))
    return await stack.enter_async_context(Collector(sub))


class TestSharedResults:
    async def test_one_execution_per_event_for_subscribers_of_one_selection(self, gql, schema, services):
        pid = await f.project(gql)
        subscribers, changes = 30, 5
        async with contextlib.AsyncExitStack() as stack:
            collectors = [await _collect(stack, schema, services, TASK_EVENTS) for _ in range(subscribers)]
            await wait_settled(services, at_least=subscribers)
            before = services.shared_results.computed
            for i in range(changes):
                await f.task(gql, project_id=pid, title=f"t{i}")
            for collector in collectors:
                await collector.wait_for_count(changes)
            executions = services.shared_results.computed - before
        assert executions == changes, f"{executions} executions for {changes} events x {subscribers} subscribers"
        expected = (await all_events(gql))[-changes:]
        assert all(c.values == expected for c in collectors)

    async def test_each_selection_gets_its_own_shape(self, gql, schema, services):
        pid = await f.project(gql)
        async with contextlib.AsyncExitStack() as stack:
            full = await _collect(stack, schema, services, WITH_INCLUDE, full=True)
            brief = await _collect(stack, schema, services, WITH_INCLUDE, full=False)
            aliased = await _collect(stack, schema, services, WITH_FRAGMENT)
            other = await _collect(stack, schema, services, OTHER_SHAPE)
            plain = await _collect(stack, schema, services, TASK_EVENTS)
            await wait_settled(services, at_least=5)
            task = await f.task(gql, project_id=pid)
            await f.transition(gql, "cancelTask", id=task["id"], reason="changed my mind")
            for collector in (full, brief, aliased, other, plain):
                await collector.wait_for_count(2)
        ids = [e["id"] for e in plain.values]
        assert [set(v) for v in full.values] == [{"id", "type", "message"}] * 2
        assert full.values[1]["message"] == "changed my mind"
        assert [set(v) for v in brief.values] == [{"id", "type", "toStatus"}] * 2
        assert brief.values[1]["toStatus"] == "CANCELLED"
        assert aliased.values == [{"id": i, "taskId": task["id"]} for i in ids]
        assert [set(v) for v in other.values] == [{"id", "actor"}] * 2
        assert [v["id"] for v in full.values + brief.values + other.values] == ids * 3

    async def test_filters_do_not_split_the_shared_result(self, gql, schema, services):
        """Root-field arguments choose events; they do not change how an event renders."""
        pid = await f.project(gql)
        async with contextlib.AsyncExitStack() as stack:
            everything = await _collect(stack, schema, services, TASK_EVENTS)
            mine = await _collect(stack, schema, services, TASK_EVENTS, projectId=pid)
            await wait_settled(services, at_least=2)
            before = services.shared_results.computed
            await f.task(gql, project_id=pid)
            await everything.wait_for_count(1)
            await mine.wait_for_count(1)
            assert services.shared_results.computed - before == 1
        assert everything.values == mine.values

    async def test_results_are_shared_only_between_subscribers_with_the_same_credential(self, gql, schema, services):
        """Once callers differ, one caller's execution never reaches another: the caller's
        scope is part of the sharing key."""
        pid = await f.project(gql)
        admin = Caller(Role.ADMIN)
        agent_a = Caller(Role.AGENT, agent_id=1, agent_name="a")
        agent_b = Caller(Role.AGENT, agent_id=2, agent_name="b")
        callers = [admin, agent_a, agent_b, agent_a, admin]
        async with contextlib.AsyncExitStack() as stack:
            collectors = [await _collect(stack, schema, services, TASK_EVENTS, caller=c) for c in callers]
            await wait_settled(services, at_least=len(callers))
            before = services.shared_results.computed
            await f.task(gql, project_id=pid)
            for collector in collectors:
                await collector.wait_for_count(1)
            executions = services.shared_results.computed - before
        assert executions == 3, f"{executions} executions for 3 distinct callers"
        assert all(c.values == collectors[0].values for c in collectors)
