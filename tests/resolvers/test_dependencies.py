"""Task dependencies: gating claims, unblocking, editing the graph, batches with refs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from tests import factories as f
from tests.conftest import wait_for_lock_waiter

VIEW = "id status ready blockedBy { id } dependencies { id } dependents { id }"
ADD = "mutation($t: ID!, $d: ID!) { addDependency(taskId: $t, dependsOn: $d) { id ready } }"
REMOVE = "mutation($t: ID!, $d: ID!) { removeDependency(taskId: $t, dependsOn: $d) { id ready } }"
CREATE_TASKS = (
    f"mutation($pid: ID!, $tasks: [CreateTaskInput!]!) {{ createTasks(projectId: $pid, tasks: $tasks) {{ {VIEW} }} }}"
)


async def view(gql: Any, task_id: str) -> dict[str, Any]:
    return (await gql.execute(f"query($id: ID!) {{ task(id: $id) {{ {VIEW} }} }}", id=task_id))["task"]


async def state(gql: Any, task_id: str) -> dict[str, Any]:
    """The task's dependency view plus its event log, to compare before/after a failure."""
    return await gql.execute(
        f"query($id: ID!) {{ task(id: $id) {{ {VIEW} attempt }} events(taskId: $id) {{ id type }} }}",
        id=task_id,
    )


def ids(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["id"] for t in tasks]


async def new_task(gql: Any, pid: str, title: str, **extra: Any) -> str:
    return (await f.task(gql, project_id=pid, title=title, **extra))["id"]


async def complete(gql: Any, task_id: str) -> None:
    """Claim, submit and approve: the dependency finishes the normal way."""
    await f.claim(gql, task_id=task_id, agent="w1")
    await f.transition(gql, "submitTask", id=task_id, agent="w1")
    await f.transition(gql, "reviewTask", id=task_id, reviewer="rev", approved=True)


async def unblocked(gql: Any, task_id: str) -> list[dict[str, Any]]:
    return [e for e in await f.events(gql, task_id=task_id) if e["type"] == "UNBLOCKED"]


async def project_task_count(gql: Any, pid: str) -> int:
    data = await gql.execute("query($pid: ID!) { project(id: $pid) { tasks { totalCount } } }", pid=pid)
    return data["project"]["tasks"]["totalCount"]


@pytest.fixture
async def pid(gql: Any) -> str:
    project_id = await f.project(gql)
    await f.agent(gql, name="w1", maxConcurrentTasks=10)
    await f.agent(gql, name="rev")
    return project_id


class TestDependencyGating:
    async def test_task_with_unfinished_dependency_is_blocked(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        task = await view(gql, second)
        assert (task["status"], task["ready"]) == ("PENDING", False)
        assert ids(task["blockedBy"]) == [first]
        assert ids(task["dependencies"]) == [first]
        assert ids((await view(gql, first))["dependents"]) == [second]

    async def test_claiming_blocked_task_is_dependencies_not_met(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        before = await state(gql, second)
        failure = await gql.error('mutation($id: ID!) { claimTask(id: $id, agent: "w1") { id } }', id=second)
        assert failure.code == "DEPENDENCIES_NOT_MET"
        assert await state(gql, second) == before

    async def test_task_created_on_a_completed_dependency_is_ready(self, gql, pid):
        first = await new_task(gql, pid, "first")
        await complete(gql, first)
        second = await new_task(gql, pid, "second", dependsOn=[first])
        task = await view(gql, second)
        assert (task["status"], task["ready"], task["blockedBy"]) == ("PENDING", True, [])
        assert ids(task["dependencies"]) == [first]
        claimed = await gql.execute('mutation { claimNextTask(agent: "w1") { id } }')
        assert claimed["claimNextTask"] == {"id": second}

    async def test_task_created_on_a_completed_and_an_unfinished_dependency_waits_for_one(self, gql, pid):
        done = await new_task(gql, pid, "done")
        await complete(gql, done)
        open_ = await new_task(gql, pid, "open")
        waiting = await new_task(gql, pid, "waiting", dependsOn=[done, open_])
        assert ids((await view(gql, waiting))["blockedBy"]) == [open_]
        await complete(gql, open_)
        assert (await view(gql, waiting))["ready"] is True
        assert len(await unblocked(gql, waiting)) == 1

    async def test_dependency_named_twice_is_waited_for_once(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first, first])
        assert ids((await view(gql, second))["dependencies"]) == [first]
        await complete(gql, first)
        assert (await view(gql, second))["ready"] is True

    async def test_claim_next_skips_blocked_task(self, gql, pid):
        first = await new_task(gql, pid, "first", priority=1)
        await new_task(gql, pid, "second", priority=10, dependsOn=[first])
        claim_next = 'mutation { claimNextTask(agent: "w1") { id } }'
        assert (await gql.execute(claim_next))["claimNextTask"] == {"id": first}
        assert (await gql.execute(claim_next))["claimNextTask"] is None


class TestUnblocking:
    async def test_approving_dependency_unblocks_dependent(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        await complete(gql, first)
        task = await view(gql, second)
        assert (task["ready"], task["blockedBy"]) == (True, [])
        events = await unblocked(gql, second)
        assert [(e["fromStatus"], e["toStatus"], e["actor"]) for e in events] == [(None, None, "rev")]
        claimed = await f.claim(gql, task_id=second, agent="w1")
        assert claimed["status"] == "ASSIGNED"

    async def test_dependent_still_waiting_on_another_is_not_unblocked(self, gql, pid):
        first = await new_task(gql, pid, "first")
        other = await new_task(gql, pid, "other")
        only_first = await new_task(gql, pid, "needs first", dependsOn=[first])
        both = await new_task(gql, pid, "needs both", dependsOn=[first, other])
        await complete(gql, first)
        assert len(await unblocked(gql, only_first)) == 1
        assert await unblocked(gql, both) == []
        task = await view(gql, both)
        assert (task["ready"], ids(task["blockedBy"])) == (False, [other])
        await complete(gql, other)
        assert len(await unblocked(gql, both)) == 1
        assert (await view(gql, both))["ready"] is True

    async def test_completion_without_review_unblocks(self, gql, pid):
        first = await new_task(gql, pid, "first", requiresReview=False)
        second = await new_task(gql, pid, "second", dependsOn=[first])
        await f.claim(gql, task_id=first, agent="w1")
        await f.transition(gql, "submitTask", id=first, agent="w1")
        assert (await view(gql, second))["ready"] is True
        assert [e["actor"] for e in await unblocked(gql, second)] == ["w1"]

    async def test_cancelled_dependency_keeps_dependent_blocked(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        await f.transition(gql, "cancelTask", id=first)
        task = await view(gql, second)
        assert (task["ready"], ids(task["blockedBy"])) == (False, [first])
        assert await unblocked(gql, second) == []


class TestAddDependency:
    async def test_adding_unfinished_dependency_blocks_task(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        added = (await gql.execute(ADD, t=second, d=first))["addDependency"]
        assert added == {"id": second, "ready": False}
        assert ids((await view(gql, second))["blockedBy"]) == [first]
        events = await f.events(gql, task_id=second)
        assert [(e["type"], e["fromStatus"], e["toStatus"]) for e in events][-1] == ("DEPENDENCY_ADDED", None, None)

    async def test_adding_completed_dependency_keeps_task_ready(self, gql, pid):
        first = await new_task(gql, pid, "first")
        await complete(gql, first)
        second = await new_task(gql, pid, "second")
        added = (await gql.execute(ADD, t=second, d=first))["addDependency"]
        assert added["ready"] is True
        task = await view(gql, second)
        assert (ids(task["dependencies"]), task["blockedBy"]) == ([first], [])

    async def test_adding_same_dependency_twice_changes_nothing(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        await gql.execute(ADD, t=second, d=first)
        before = await state(gql, second)
        await gql.execute(ADD, t=second, d=first)
        assert await state(gql, second) == before

    async def test_dependency_across_projects_is_bad_input(self, gql, pid):
        other = await f.project(gql, name="Other")
        mine = await new_task(gql, pid, "mine")
        theirs = await new_task(gql, other, "theirs")
        before = await state(gql, mine)
        failure = await gql.error(ADD, t=mine, d=theirs)
        assert failure.code == "BAD_USER_INPUT"
        assert await state(gql, mine) == before

    @pytest.mark.parametrize("missing", ["task", "dependency"])
    async def test_unknown_task_is_not_found(self, gql, pid, missing):
        real = await new_task(gql, pid, "real")
        before = await state(gql, real)
        args = {"t": "9999", "d": real} if missing == "task" else {"t": real, "d": "9999"}
        failure = await gql.error(ADD, **args)
        assert failure.code == "NOT_FOUND"
        assert await state(gql, real) == before

    async def test_self_dependency_is_a_cycle(self, gql, pid):
        only = await new_task(gql, pid, "only")
        before = await state(gql, only)
        failure = await gql.error(ADD, t=only, d=only)
        assert failure.code == "CYCLE_DETECTED"
        assert await state(gql, only) == before

    async def test_closing_a_cycle_is_rejected(self, gql, pid):
        a, b, c = [await new_task(gql, pid, name) for name in "abc"]
        await gql.execute(ADD, t=a, d=b)
        await gql.execute(ADD, t=b, d=c)
        before = await state(gql, c)
        failure = await gql.error(ADD, t=c, d=a)
        assert failure.code == "CYCLE_DETECTED"
        assert await state(gql, c) == before
        assert (await view(gql, c))["ready"] is True

    async def test_diamond_is_allowed_and_unblocks_in_steps(self, gql, pid):
        a, b, c, d = [await new_task(gql, pid, name) for name in "abcd"]
        for task, dependency in [(a, b), (a, c), (b, d), (c, d)]:
            await gql.execute(ADD, t=task, d=dependency)
        assert ids((await view(gql, a))["dependencies"]) == [b, c]
        assert ids((await view(gql, d))["dependents"]) == [b, c]
        await complete(gql, d)
        assert [(await view(gql, t))["ready"] for t in (a, b, c)] == [False, True, True]
        await complete(gql, b)
        assert ids((await view(gql, a))["blockedBy"]) == [c]
        assert await unblocked(gql, a) == []
        await complete(gql, c)
        assert (await view(gql, a))["ready"] is True
        assert len(await unblocked(gql, a)) == 1

    @pytest.mark.postgres_only
    async def test_dependency_added_while_another_completes_is_counted_once(self, gql):
        """addDependency racing a completion of the task's other dependency: the counter
        must be read under the row lock, or the task stays blocked forever."""
        pid = await f.project(gql)
        await f.agent(gql, name="w1")
        await f.agent(gql, name="rev")
        finishing = await new_task(gql, pid, "finishing")
        added = await new_task(gql, pid, "added")
        waiting = await new_task(gql, pid, "waiting", dependsOn=[finishing])
        async with gql.services.sessionmaker() as session, session.begin():
            # What completing `finishing` does to the rows, held uncommitted for a moment.
            await session.execute(text("UPDATE tasks SET status = 'COMPLETED' WHERE id = :id"), {"id": int(finishing)})
            await session.execute(
                text("UPDATE tasks SET unmet_dependencies = unmet_dependencies - 1 WHERE id = :id"),
                {"id": int(waiting)},
            )
            adding = asyncio.ensure_future(gql.execute(ADD, t=waiting, d=added))
            await wait_for_lock_waiter(session)
        await asyncio.wait_for(adding, 10)
        assert ids((await view(gql, waiting))["blockedBy"]) == [added]
        await complete(gql, added)
        assert (await view(gql, waiting))["ready"] is True


class TestRemoveDependency:
    async def test_removing_last_dependency_unblocks_task(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        removed = (await gql.execute(REMOVE, t=second, d=first))["removeDependency"]
        assert removed == {"id": second, "ready": True}
        task = await view(gql, second)
        assert (task["dependencies"], task["blockedBy"]) == ([], [])
        types = [e["type"] for e in await f.events(gql, task_id=second)]
        assert types == ["CREATED", "DEPENDENCY_REMOVED", "UNBLOCKED"]
        assert (await f.claim(gql, task_id=second, agent="w1"))["status"] == "ASSIGNED"

    async def test_removing_one_of_two_dependencies_keeps_task_blocked(self, gql, pid):
        first = await new_task(gql, pid, "first")
        other = await new_task(gql, pid, "other")
        second = await new_task(gql, pid, "second", dependsOn=[first, other])
        await gql.execute(REMOVE, t=second, d=first)
        task = await view(gql, second)
        assert (task["ready"], ids(task["blockedBy"])) == (False, [other])
        assert await unblocked(gql, second) == []

    async def test_removing_missing_link_changes_nothing(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second")
        before = await state(gql, second)
        assert (await gql.execute(REMOVE, t=second, d=first))["removeDependency"]["ready"] is True
        assert await state(gql, second) == before


class TestCreateTasksWithRefs:
    async def test_refs_link_items_of_the_batch(self, gql, pid):
        tasks = [
            {"title": "test", "taskType": "testing", "ref": "test", "dependsOnRefs": ["build", "design"]},
            {"title": "design", "taskType": "design", "ref": "design"},
            {"title": "build", "taskType": "development", "ref": "build", "dependsOnRefs": ["design"]},
        ]
        created = (await gql.execute(CREATE_TASKS, pid=pid, tasks=tasks))["createTasks"]
        test, design, build = created
        assert [t["ready"] for t in created] == [False, True, False]
        assert ids(test["blockedBy"]) == sorted([design["id"], build["id"]], key=int)
        assert ids(build["blockedBy"]) == [design["id"]]
        await complete(gql, design["id"])
        assert len(await unblocked(gql, build["id"])) == 1
        assert await unblocked(gql, test["id"]) == []

    async def test_refs_and_existing_ids_combine(self, gql, pid):
        existing = await new_task(gql, pid, "existing")
        tasks = [
            {"title": "a", "taskType": "research", "ref": "a"},
            {"title": "b", "taskType": "research", "dependsOnRefs": ["a"], "dependsOn": [existing]},
        ]
        a, b = (await gql.execute(CREATE_TASKS, pid=pid, tasks=tasks))["createTasks"]
        assert ids(b["blockedBy"]) == sorted([existing, a["id"]], key=int)

    async def test_cycle_in_refs_creates_nothing(self, gql, pid):
        tasks = [
            {"title": "a", "taskType": "research", "ref": "a", "dependsOnRefs": ["c"]},
            {"title": "b", "taskType": "research", "ref": "b", "dependsOnRefs": ["a"]},
            {"title": "c", "taskType": "research", "ref": "c", "dependsOnRefs": ["b"]},
        ]
        failure = await gql.error(CREATE_TASKS, pid=pid, tasks=tasks)
        assert failure.code == "CYCLE_DETECTED"
        assert await project_task_count(gql, pid) == 0
        assert await f.events(gql) == []

    async def test_dangling_ref_creates_nothing(self, gql, pid):
        tasks = [
            {"title": "a", "taskType": "research", "ref": "a"},
            {"title": "b", "taskType": "research", "dependsOnRefs": ["nope"]},
        ]
        failure = await gql.error(CREATE_TASKS, pid=pid, tasks=tasks)
        assert failure.code == "BAD_USER_INPUT"
        assert await project_task_count(gql, pid) == 0

    async def test_failing_item_creates_nothing(self, gql, pid):
        tasks = [
            {"title": "a", "taskType": "research", "ref": "a"},
            {"title": "b", "taskType": "research", "dependsOnRefs": ["a"], "dependsOn": ["9999"]},
        ]
        failure = await gql.error(CREATE_TASKS, pid=pid, tasks=tasks)
        assert failure.code == "NOT_FOUND"
        assert await project_task_count(gql, pid) == 0
        assert await f.events(gql) == []


class TestDeletingDependencies:
    async def test_hard_deleting_dependency_unblocks_dependent(self, gql, pid):
        first = await new_task(gql, pid, "first")
        second = await new_task(gql, pid, "second", dependsOn=[first])
        assert (await gql.execute("mutation($id: ID!) { deleteTask(id: $id, hard: true) }", id=first))["deleteTask"]
        task = await view(gql, second)
        assert (task["ready"], task["dependencies"], task["blockedBy"]) == (True, [], [])
        assert len(await unblocked(gql, second)) == 1
        assert (await f.claim(gql, task_id=second, agent="w1"))["status"] == "ASSIGNED"

    async def test_hard_deleting_one_of_two_dependencies_keeps_dependent_blocked(self, gql, pid):
        first = await new_task(gql, pid, "first")
        other = await new_task(gql, pid, "other")
        second = await new_task(gql, pid, "second", dependsOn=[first, other])
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id, hard: true) }", id=first)
        task = await view(gql, second)
        assert (task["ready"], ids(task["blockedBy"])) == (False, [other])
        assert await unblocked(gql, second) == []
