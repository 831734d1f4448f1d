"""Claiming: which task an agent gets, in what order, and what stops it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import factories as f

CLAIM_NEXT = """
mutation($agent: String, $projectId: ID, $tags: [String!]) {
  claimNextTask(agent: $agent, projectId: $projectId, tags: $tags) { id status attempt assignee { name } }
}
"""
CLAIM = "mutation($id: ID!, $agent: String) { claimTask(id: $id, agent: $agent) { id status } }"
AVAILABLE = "query($agent: String, $pid: ID) { availableTasks(agent: $agent, projectId: $pid) { id } }"


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


async def claim_next(gql: Any, agent: str, **filters: Any) -> str | None:
    task = (await gql.execute(CLAIM_NEXT, agent=agent, **filters))["claimNextTask"]
    return task["id"] if task else None


async def available(gql: Any, agent: str | None = None, pid: str | None = None) -> list[str]:
    return [t["id"] for t in (await gql.execute(AVAILABLE, agent=agent, pid=pid))["availableTasks"]]


async def state(gql: Any, task_id: str) -> dict[str, Any]:
    """The task's claim-relevant state plus its event log, to compare before/after a failure."""
    return await gql.execute(
        "query($id: ID!) { task(id: $id) { status attempt ready assignee { name } leaseExpiresAt } "
        "events(taskId: $id) { id type } }",
        id=task_id,
    )


async def new_task(gql: Any, pid: str, title: str, **extra: Any) -> str:
    return (await f.task(gql, project_id=pid, title=title, **extra))["id"]


@pytest.fixture
async def pid(gql: Any) -> str:
    return await f.project(gql)


class TestClaimOrder:
    async def test_priority_then_due_date_then_creation(self, gql, pid):
        await f.agent(gql, name="w1", maxConcurrentTasks=10)
        low = await new_task(gql, pid, "low", priority=3)
        undated_first = await new_task(gql, pid, "undated first", priority=8)
        due_late = await new_task(gql, pid, "due late", priority=8, dueAt=iso(timedelta(days=2)))
        undated_second = await new_task(gql, pid, "undated second", priority=8)
        due_soon = await new_task(gql, pid, "due soon", priority=8, dueAt=iso(timedelta(days=1)))
        expected = [due_soon, due_late, undated_first, undated_second, low]
        assert await available(gql, "w1") == expected
        assert [await claim_next(gql, "w1") for _ in expected] == expected
        assert await claim_next(gql, "w1") is None

    async def test_tasks_created_together_are_claimed_in_input_order(self, gql, pid):
        await f.agent(gql, name="w1", maxConcurrentTasks=10)
        created = await gql.execute(
            "mutation($pid: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $pid, tasks: $tasks) { id } }",
            pid=pid,
            tasks=[{"title": f"step {i}", "taskType": "research", "priority": 5} for i in range(4)],
        )
        ids = [t["id"] for t in created["createTasks"]]
        assert [await claim_next(gql, "w1") for _ in ids] == ids

    async def test_claim_next_records_claim(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "only")
        claimed = (await gql.execute(CLAIM_NEXT, agent="w1"))["claimNextTask"]
        assert (claimed["id"], claimed["status"], claimed["attempt"], claimed["assignee"]) == (
            tid,
            "ASSIGNED",
            1,
            {"name": "w1"},
        )
        events = await f.events(gql, task_id=tid)
        assert [(e["type"], e["fromStatus"], e["toStatus"], e["actor"]) for e in events][-1] == (
            "CLAIMED",
            "PENDING",
            "ASSIGNED",
            "w1",
        )
        agent = (await gql.execute('{ agent(name: "w1") { status } }'))["agent"]
        assert agent["status"] == "BUSY"

    async def test_nothing_ready_returns_null(self, gql, pid):
        await f.agent(gql, name="w1")
        assert await claim_next(gql, "w1") is None


class TestSkillRouting:
    async def test_task_goes_only_to_agents_with_every_required_skill(self, gql, pid):
        await f.agent(gql, name="py", skills=["python"])
        await f.agent(gql, name="dba", skills=["python", "sql", "rust"])
        tid = await new_task(gql, pid, "migrate", requiredSkills=["python", "sql"])
        assert await claim_next(gql, "py") is None
        assert await available(gql, "py") == []
        assert await available(gql, "dba") == [tid]
        assert await claim_next(gql, "dba") == tid

    async def test_claim_by_agent_missing_a_skill_fails(self, gql, pid):
        await f.agent(gql, name="py", skills=["python"])
        tid = await new_task(gql, pid, "migrate", requiredSkills=["python", "sql"])
        before = await state(gql, tid)
        failure = await gql.error(CLAIM, id=tid, agent="py")
        assert failure.code == "FORBIDDEN"
        assert await state(gql, tid) == before

    async def test_task_without_required_skills_goes_to_anyone(self, gql, pid):
        await f.agent(gql, name="novice", skills=[])
        tid = await new_task(gql, pid, "easy")
        assert await claim_next(gql, "novice") == tid

    async def test_agent_skips_to_the_task_it_can_do(self, gql, pid):
        await f.agent(gql, name="py", skills=["python"])
        await new_task(gql, pid, "urgent sql", priority=9, requiredSkills=["sql"])
        doable = await new_task(gql, pid, "python work", priority=2, requiredSkills=["python"])
        assert await claim_next(gql, "py") == doable


class TestConcurrencyLimit:
    async def test_claim_beyond_limit_is_limit_reached(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        await f.claim(gql, task_id=first, agent="solo")
        before = await state(gql, second)
        failure = await gql.error(CLAIM, id=second, agent="solo")
        assert failure.code == "LIMIT_REACHED"
        assert await state(gql, second) == before

    async def test_claim_next_beyond_limit_is_limit_reached(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        await f.claim(gql, task_id=first, agent="solo")
        before = await state(gql, second)
        failure = await gql.error(CLAIM_NEXT, agent="solo")
        assert failure.code == "LIMIT_REACHED"
        assert await state(gql, second) == before

    async def test_submitted_task_frees_a_slot(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        await f.claim(gql, task_id=first, agent="solo")
        await f.transition(gql, "submitTask", id=first, agent="solo")
        assert await claim_next(gql, "solo") == second

    async def test_soft_deleted_task_frees_a_slot(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        await f.claim(gql, task_id=first, agent="solo")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=first)
        agent = await gql.execute('{ agent(name: "solo") { status currentTasks { id } } }')
        assert agent["agent"] == {"status": "ONLINE", "currentTasks": []}
        assert await claim_next(gql, "solo") == second

    async def test_soft_deleted_project_frees_its_holders_and_restoring_takes_them_back(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        await f.claim(gql, task_id=first, agent="solo")
        query = '{ agent(name: "solo") { status currentTasks { id } } }'
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=pid)
        assert (await gql.execute(query))["agent"] == {"status": "ONLINE", "currentTasks": []}
        await gql.execute("mutation($id: ID!) { restoreProject(id: $id) { id } }", id=pid)
        assert (await gql.execute(query))["agent"] == {"status": "BUSY", "currentTasks": [{"id": first}]}

    async def test_restoring_a_held_task_makes_its_agent_busy_again(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        first = await new_task(gql, pid, "first")
        await f.claim(gql, task_id=first, agent="solo")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=first)
        await gql.execute("mutation($id: ID!) { restoreTask(id: $id) { id } }", id=first)
        agent = await gql.execute('{ agent(name: "solo") { status currentTasks { id } } }')
        assert agent["agent"] == {"status": "BUSY", "currentTasks": [{"id": first}]}


class TestClaimNextFilters:
    async def test_project_filter_picks_from_that_project_only(self, gql, pid):
        await f.agent(gql, name="w1", maxConcurrentTasks=5)
        other = await f.project(gql, name="Other")
        await new_task(gql, pid, "important elsewhere", priority=10)
        mine = await new_task(gql, other, "this one", priority=1)
        assert await claim_next(gql, "w1", projectId=other) == mine
        assert await claim_next(gql, "w1", projectId=other) is None

    async def test_tags_filter_matches_any_tag(self, gql, pid):
        await f.agent(gql, name="w1", maxConcurrentTasks=5)
        await new_task(gql, pid, "untagged", priority=10)
        await new_task(gql, pid, "blog", priority=9, tags=["blog"])
        video = await new_task(gql, pid, "video", priority=5, tags=["video", "launch"])
        social = await new_task(gql, pid, "social", priority=4, tags=["social"])
        assert await claim_next(gql, "w1", tags=["social", "video"]) == video
        assert await claim_next(gql, "w1", tags=["social", "video"]) == social
        assert await claim_next(gql, "w1", tags=["social", "video"]) is None


class TestUnclaimable:
    async def test_tasks_of_a_paused_project_are_not_claimable(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "on hold")
        await gql.execute("mutation($id: ID!) { updateProject(id: $id, input: {status: PAUSED}) { status } }", id=pid)
        assert await claim_next(gql, "w1") is None
        assert await available(gql, "w1") == []
        before = await state(gql, tid)
        failure = await gql.error(CLAIM, id=tid, agent="w1")
        assert failure.code == "INVALID_TRANSITION"
        assert await state(gql, tid) == before

    async def test_resumed_project_tasks_are_claimable_again(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "on hold")
        for status in ("PAUSED", "ACTIVE"):
            await gql.execute(
                "mutation($id: ID!, $s: ProjectStatus) { updateProject(id: $id, input: {status: $s}) { id } }",
                id=pid,
                s=status,
            )
        assert await claim_next(gql, "w1") == tid

    async def test_soft_deleted_task_is_not_claimable(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "obsolete")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=tid)
        assert await claim_next(gql, "w1") is None
        assert await available(gql) == []
        failure = await gql.error(CLAIM, id=tid, agent="w1")
        assert failure.code == "NOT_FOUND"
        events = await f.events(gql, task_id=tid)
        assert [e["type"] for e in events] == ["CREATED", "DELETED"]


class TestScheduledTasks:
    async def test_future_task_is_not_claimable(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "later", availableAt=iso(timedelta(hours=1)))
        before = await state(gql, tid)
        assert before["task"]["ready"] is False
        assert await claim_next(gql, "w1") is None
        assert await available(gql, "w1") == []
        failure = await gql.error(CLAIM, id=tid, agent="w1")
        assert failure.code == "INVALID_TRANSITION"
        assert await state(gql, tid) == before

    async def test_rescheduled_to_the_past_is_claimable(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "later", availableAt=iso(timedelta(hours=1)))
        await gql.execute(
            "mutation($id: ID!, $at: DateTime) { updateTask(id: $id, input: {availableAt: $at}) { id } }",
            id=tid,
            at=iso(timedelta(seconds=-1)),
        )
        assert await claim_next(gql, "w1") == tid

    async def test_task_becomes_claimable_when_its_time_comes(self, gql, pid):
        await f.agent(gql, name="w1")
        available_at = datetime.now(UTC) + timedelta(seconds=1)
        tid = await new_task(gql, pid, "soon", availableAt=available_at.isoformat())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        claimed = None
        while claimed is None and loop.time() < deadline:
            claimed = await claim_next(gql, "w1")
            if claimed is None:
                await asyncio.sleep(0.05)
        assert claimed == tid
        assert datetime.now(UTC) >= available_at


class TestAvailableTasks:
    async def test_lists_only_what_the_agent_may_claim_in_claim_order(self, gql, pid):
        await f.agent(gql, name="py", skills=["python"], maxConcurrentTasks=10)
        await f.agent(gql, name="other")
        paused = await f.project(gql, name="Paused")
        await gql.execute("mutation($id: ID!) { updateProject(id: $id, input: {status: PAUSED}) { id } }", id=paused)
        low = await new_task(gql, pid, "low", priority=2)
        python = await new_task(gql, pid, "python", priority=6, requiredSkills=["python"])
        high = await new_task(gql, pid, "high", priority=9)
        sql = await new_task(gql, pid, "sql", priority=10, requiredSkills=["sql"])
        await new_task(gql, pid, "later", priority=10, availableAt=iso(timedelta(hours=1)))
        await new_task(gql, paused, "paused", priority=10)
        blocker = await new_task(gql, pid, "blocker", priority=1)
        await new_task(gql, pid, "blocked", priority=10, dependsOn=[blocker])
        taken = await new_task(gql, pid, "taken", priority=10)
        await f.claim(gql, task_id=taken, agent="other")
        assert await available(gql, "py") == [high, python, low, blocker]
        assert await available(gql, "py", pid=pid) == [high, python, low, blocker]
        assert await available(gql) == [sql, high, python, low, blocker]
        assert [await claim_next(gql, "py") for _ in range(4)] == [high, python, low, blocker]

    async def test_unknown_agent_is_not_found(self, gql, pid):
        failure = await gql.error(AVAILABLE, agent="ghost")
        assert failure.code == "NOT_FOUND"


class TestClaimConflicts:
    async def test_second_claim_gets_conflict(self, gql, pid):
        await f.agent(gql, name="w1")
        await f.agent(gql, name="w2")
        tid = await new_task(gql, pid, "contested")
        await f.claim(gql, task_id=tid, agent="w1")
        before = await state(gql, tid)
        failure = await gql.error(CLAIM, id=tid, agent="w2")
        assert failure.code == "CONFLICT"
        assert await state(gql, tid) == before

    async def test_claiming_own_task_again_gets_conflict(self, gql, pid):
        await f.agent(gql, name="w1")
        tid = await new_task(gql, pid, "mine")
        await f.claim(gql, task_id=tid, agent="w1")
        before = await state(gql, tid)
        failure = await gql.error(CLAIM, id=tid, agent="w1")
        assert failure.code == "CONFLICT"
        assert await state(gql, tid) == before

    @pytest.mark.postgres_only
    async def test_concurrent_claims_have_exactly_one_winner(self, gql):
        pid = await f.project(gql)
        names = [f"racer{i}" for i in range(8)]
        for name in names:
            await f.agent(gql, name=name)
        tid = await new_task(gql, pid, "contested")

        async def attempt(name: str) -> str:
            try:
                await gql.execute(CLAIM, id=tid, agent=name)
            except AssertionError as failure:
                return str(getattr(failure, "code", failure))
            return "WON"

        outcomes = await asyncio.gather(*(attempt(name) for name in names))
        assert sorted(outcomes) == ["CONFLICT"] * 7 + ["WON"]
        assert [e["type"] for e in await f.events(gql, task_id=tid)] == ["CREATED", "CLAIMED"]

    @pytest.mark.postgres_only
    async def test_concurrent_claim_next_hands_out_each_task_once(self, gql):
        pid = await f.project(gql)
        names = [f"racer{i}" for i in range(8)]
        for name in names:
            await f.agent(gql, name=name)
        ids = [await new_task(gql, pid, f"task {i}") for i in range(5)]
        got = await asyncio.gather(*(claim_next(gql, name) for name in names))
        claimed = [t for t in got if t is not None]
        assert sorted(claimed, key=int) == ids
        assert got.count(None) == 3

    @pytest.mark.postgres_only
    async def test_one_agents_concurrent_claims_stop_at_its_limit(self, gql):
        """Twenty claimNextTask calls of one agent at once: its maxConcurrentTasks win, the
        rest are LIMIT_REACHED; each claim counts the tasks held after the agent's lock, so a
        claim that waited for it sees the one committed before it."""
        pid = await f.project(gql)
        await f.agent(gql, name="greedy", maxConcurrentTasks=3)
        for i in range(20):
            await new_task(gql, pid, f"task {i}")

        async def attempt() -> str:
            try:
                return "WON" if await claim_next(gql, "greedy") else "NONE"
            except AssertionError as failure:
                return str(getattr(failure, "code", failure))

        outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
        assert sorted(outcomes) == ["LIMIT_REACHED"] * 17 + ["WON"] * 3
        held = (await gql.execute('{ agent(name: "greedy") { currentTasks { id } } }'))["agent"]["currentTasks"]
        assert len(held) == 3
