"""taskChanged: the task's current state after each change that matches the filter.

Each mutation is followed by waiting until the subscription has processed everything up to
it (wait_settled), so "nothing was yielded" is observed, not guessed by sleeping."""

from __future__ import annotations

import contextlib

from tests import factories as f
from tests.events.helpers import TASK_CHANGED, Collector, Sub, wait_settled


def states(values: list[dict]) -> list[tuple[str, str]]:
    return [(t["id"], t["status"]) for t in values]


class TestTaskChanged:
    async def test_status_filter_yields_only_changes_into_that_status(self, gql, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        async with Sub(schema, services, TASK_CHANGED, status=["RUNNING"]) as sub, Collector(sub) as got:
            await wait_settled(services)
            task = await f.task(gql, project_id=pid)
            tid = task["id"]
            await wait_settled(services)
            await f.claim(gql, task_id=tid, agent="a")
            await wait_settled(services)
            assert got.values == []
            await f.transition(gql, "startTask", id=tid, agent="a")
            await wait_settled(services)
            assert states(got.values) == [(tid, "RUNNING")]
            await f.transition(gql, "reportProgress", id=tid, agent="a", progress=30)
            await wait_settled(services)
            await f.transition(gql, "submitTask", id=tid, agent="a", summary="done")
            await wait_settled(services)
        assert states(got.values) == [(tid, "RUNNING"), (tid, "RUNNING")]
        assert got.values[0]["assignee"] == {"name": "a"}

    async def test_project_filter_ignores_other_projects(self, gql, schema, services):
        p1 = await f.project(gql, name="P1")
        p2 = await f.project(gql, name="P2")
        async with Sub(schema, services, TASK_CHANGED, projectId=p1) as sub, Collector(sub) as got:
            await wait_settled(services)
            await f.task(gql, project_id=p2, title="elsewhere")
            mine = await f.task(gql, project_id=p1, title="mine")
            await wait_settled(services)
            await f.transition(gql, "cancelTask", id=mine["id"], reason="not needed")
            await wait_settled(services)
        assert states(got.values) == [(mine["id"], "PENDING"), (mine["id"], "CANCELLED")]
        assert all(t["project"]["id"] == p1 for t in got.values)

    async def test_assignee_filter_yields_only_that_agents_tasks(self, gql, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        await f.agent(gql, name="b")
        t1 = (await f.task(gql, project_id=pid, title="t1"))["id"]
        t2 = (await f.task(gql, project_id=pid, title="t2"))["id"]
        async with Sub(schema, services, TASK_CHANGED, assignee="a") as sub, Collector(sub) as got:
            await wait_settled(services)
            await f.claim(gql, task_id=t2, agent="b")
            await wait_settled(services)
            await f.claim(gql, task_id=t1, agent="a")
            await wait_settled(services)
            await f.transition(gql, "startTask", id=t2, agent="b")
            await wait_settled(services)
            await f.transition(gql, "startTask", id=t1, agent="a")
            await wait_settled(services)
        assert states(got.values) == [(t1, "ASSIGNED"), (t1, "RUNNING")]
        assert all(t["assignee"] == {"name": "a"} for t in got.values)

    async def test_unknown_assignee_is_not_found(self, gql, schema, services):
        async with Sub(schema, services, TASK_CHANGED, assignee="ghost") as sub:
            result = await sub.result()
        assert result.errors[0].extensions["code"] == "NOT_FOUND"

    async def test_subscribers_share_one_load_of_each_changed_task(self, gql, schema, services):
        pid = await f.project(gql)
        subscribers = 20
        async with contextlib.AsyncExitStack() as stack:
            collectors = []
            for _ in range(subscribers):
                sub = await stack.enter_async_context(Sub(schema, services, TASK_CHANGED, projectId=pid))
                collectors.append(await stack.enter_async_context(Collector(sub)))
            await wait_settled(services, at_least=subscribers)
            loads_before = services.snapshots.loads
            task = await f.task(gql, project_id=pid)
            await f.transition(gql, "cancelTask", id=task["id"], reason="done with it")
            for collector in collectors:
                await collector.wait_for_count(2)
            loads = services.snapshots.loads - loads_before
        assert loads == 2, f"{loads} task loads for 2 changes and {subscribers} subscribers"
        # A snapshot is read once, when the first subscriber reaches the event: all agree.
        first = states(collectors[0].values)
        assert first[-1] == (task["id"], "CANCELLED")
        assert all(states(c.values) == first for c in collectors)
