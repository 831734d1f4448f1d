"""The task lifecycle of docs/ARCHITECTURE.md, table row by table row, through the GraphQL schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tests import factories as f
from tests.conftest import Client, GraphQLFailure, wait_for_lock_waiter, with_settings

STATUSES = ["PENDING", "ASSIGNED", "RUNNING", "REVIEWING", "COMPLETED", "FAILED", "CANCELLED"]
TERMINAL = ["COMPLETED", "FAILED", "CANCELLED"]

STATE = """
  status attempt maxAttempts ready assignee { name } feedback lastError progress progressMessage
  result summary availableAt leaseExpiresAt completedAt updatedAt
"""


async def state(gql: Any, task_id: str) -> dict[str, Any]:
    """The task as seen through the API plus its whole event log: compare before/after."""
    return await gql.execute(
        f"query($id: ID!) {{ task(id: $id) {{ {STATE} }} "
        "events(taskId: $id, first: 500) { id type fromStatus toStatus actor } }",
        id=task_id,
    )


async def agent_state(gql: Any, name: str) -> dict[str, Any]:
    data = await gql.execute(
        "query($n: String!) { agent(name: $n) { status stats { totalTasks completedTasks failedTasks successRate } } }",
        n=name,
    )
    return data["agent"]


async def event_types(gql: Any, task_id: str) -> list[str]:
    return [e["type"] for e in await f.events(gql, task_id=task_id)]


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def set_during(value: str, began: datetime, ended: datetime, *, plus: float) -> bool:
    """`value` is `plus` seconds after a moment between `began` and `ended` (the call that
    set it): exact however long the call took."""
    return began + timedelta(seconds=plus) <= at(value) <= ended + timedelta(seconds=plus)


async def task_in(gql: Any, pid: str, status: str, **extra: Any) -> str:
    """A task driven to `status`; w1 is (or was) its assignee, rev its reviewer."""
    tid = (await f.task(gql, project_id=pid, **extra))["id"]
    if status == "PENDING":
        return tid
    if status == "CANCELLED":
        await f.transition(gql, "cancelTask", id=tid)
        return tid
    await f.claim(gql, task_id=tid, agent="w1")
    if status == "ASSIGNED":
        return tid
    if status == "FAILED":
        await f.transition(gql, "failTask", id=tid, agent="w1", error="boom", retryable=False)
        return tid
    await f.transition(gql, "startTask", id=tid, agent="w1")
    if status == "RUNNING":
        return tid
    await f.transition(gql, "submitTask", id=tid, agent="w1", summary="done")
    if status == "REVIEWING":
        return tid
    await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=True)
    assert status == "COMPLETED"
    return tid


@pytest.fixture
async def pid(gql: Any) -> str:
    """A project and three agents: workers w1 and w2, reviewer rev."""
    project_id = await f.project(gql)
    for name in ("w1", "w2", "rev"):
        await f.agent(gql, name=name)
    return project_id


def served_with(gql: Client, **settings: Any) -> Client:
    """The same database served with some settings changed."""
    return Client(gql.schema, with_settings(gql.services, **settings))


@pytest.fixture
def backoff_gql(gql: Client) -> Client:
    """The same database served with RETRY_BACKOFF_SECONDS=30."""
    return served_with(gql, retry_backoff_seconds=30)


class TestCreateTask:
    async def test_new_task_is_pending_and_ready(self, gql, pid):
        tid = (await f.task(gql, project_id=pid, createdBy="planner"))["id"]
        s = await state(gql, tid)
        assert s["task"]["status"] == "PENDING"
        assert s["task"]["attempt"] == 0
        assert s["task"]["ready"] is True
        assert s["task"]["assignee"] is None
        assert [(e["type"], e["fromStatus"], e["toStatus"], e["actor"]) for e in s["events"]] == [
            ("CREATED", None, "PENDING", "planner")
        ]

    async def test_task_with_assignee_starts_assigned(self, gql, pid):
        tid = (await f.task(gql, project_id=pid, assignee="w1"))["id"]
        s = await state(gql, tid)
        assert s["task"]["status"] == "ASSIGNED"
        assert s["task"]["assignee"] == {"name": "w1"}
        assert s["task"]["attempt"] == 1
        assert s["task"]["leaseExpiresAt"] is not None
        assert [(e["type"], e["toStatus"]) for e in s["events"]] == [("CREATED", "ASSIGNED")]
        assert (await agent_state(gql, "w1"))["status"] == "BUSY"

    async def test_pre_assigning_beyond_the_limit_is_limit_reached(self, gql, pid):
        await f.agent(gql, name="solo", maxConcurrentTasks=1)
        await f.task(gql, project_id=pid, assignee="solo")
        before = await gql.execute("{ tasks { totalCount } }")
        failure = await gql.error(
            'mutation($p: ID!) { createTask(input: {projectId: $p, title: "t", taskType: "research", '
            'assignee: "solo"}) { id } }',
            p=pid,
        )
        assert failure.code == "LIMIT_REACHED"
        batch = await gql.error(
            'mutation($p: ID!) { createTasks(projectId: $p, tasks: [{title: "a", taskType: "research", '
            'assignee: "w1"}, {title: "b", taskType: "research", assignee: "w1"}, {title: "c", '
            'taskType: "research", assignee: "w1"}, {title: "d", taskType: "research", assignee: "w1"}]) { id } }',
            p=pid,
        )
        assert batch.code == "LIMIT_REACHED"
        assert await gql.execute("{ tasks { totalCount } }") == before


class TestClaimTask:
    async def test_claim_assigns_task_and_sets_lease(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        before = datetime.now(UTC)
        claimed = await f.claim(gql, task_id=tid, agent="w1")
        after = datetime.now(UTC)
        assert claimed["status"] == "ASSIGNED"
        assert claimed["attempt"] == 1
        assert claimed["assignee"] == {"name": "w1"}
        s = await state(gql, tid)
        lease = gql.services.settings.lease
        assert set_during(s["task"]["leaseExpiresAt"], before, after, plus=lease)
        assert s["task"]["ready"] is False
        assert [(e["type"], e["fromStatus"], e["toStatus"], e["actor"]) for e in s["events"]][-1] == (
            "CLAIMED",
            "PENDING",
            "ASSIGNED",
            "w1",
        )

    async def test_claiming_agent_becomes_busy_and_counts_the_task(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        assert (await agent_state(gql, "w1"))["status"] == "ONLINE"
        await f.claim(gql, task_id=tid, agent="w1")
        agent = await agent_state(gql, "w1")
        assert agent["status"] == "BUSY"
        assert agent["stats"]["totalTasks"] == 1

    async def test_unknown_agent_gets_not_found(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        before = await state(gql, tid)
        failure = await gql.error('mutation($id: ID!) { claimTask(id: $id, agent: "ghost") { id } }', id=tid)
        assert failure.code == "NOT_FOUND"
        assert await state(gql, tid) == before


class TestStartTask:
    async def test_assignee_starts_assigned_task(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        started = await f.transition(gql, "startTask", id=tid, agent="w1")
        assert started["status"] == "RUNNING"
        events = await f.events(gql, task_id=tid)
        assert (events[-1]["type"], events[-1]["fromStatus"], events[-1]["toStatus"], events[-1]["actor"]) == (
            "STARTED",
            "ASSIGNED",
            "RUNNING",
            "w1",
        )

    async def test_other_agent_cannot_start_it(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        before = await state(gql, tid)
        failure = await gql.error('mutation($id: ID!) { startTask(id: $id, agent: "w2") { id } }', id=tid)
        assert failure.code == "FORBIDDEN"
        assert await state(gql, tid) == before


class TestReportProgress:
    async def test_progress_is_recorded_with_an_event(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        await f.transition(gql, "reportProgress", id=tid, agent="w1", progress=40, message="halfway-ish")
        s = await state(gql, tid)
        assert (s["task"]["progress"], s["task"]["progressMessage"]) == (40, "halfway-ish")
        assert s["task"]["status"] == "RUNNING"
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "PROGRESS",
            "RUNNING",
            "RUNNING",
            "w1",
        )

    async def test_progress_renews_the_lease(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        first = (await state(gql, tid))["task"]["leaseExpiresAt"]
        await f.transition(gql, "reportProgress", id=tid, agent="w1", progress=10)
        renewed = (await state(gql, tid))["task"]["leaseExpiresAt"]
        assert at(renewed) > at(first)

    @pytest.mark.parametrize("progress", [-1, 101])
    async def test_progress_outside_0_to_100_is_bad_input(self, gql, pid, progress):
        tid = await task_in(gql, pid, "RUNNING")
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!, $p: Int!) { reportProgress(id: $id, agent: "w1", progress: $p) { id } }',
            id=tid,
            p=progress,
        )
        assert failure.code == "BAD_USER_INPUT"
        assert await state(gql, tid) == before

    async def test_other_agent_cannot_report_progress(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!) { reportProgress(id: $id, agent: "w2", progress: 5) { id } }', id=tid
        )
        assert failure.code == "FORBIDDEN"
        assert await state(gql, tid) == before


class TestSubmitTask:
    async def test_submit_goes_to_review(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        await f.transition(gql, "submitTask", id=tid, agent="w1", result={"words": 800}, summary="draft")
        s = await state(gql, tid)
        assert s["task"]["status"] == "REVIEWING"
        assert (s["task"]["result"], s["task"]["summary"]) == ({"words": 800}, "draft")
        assert s["task"]["leaseExpiresAt"] is None
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "SUBMITTED",
            "RUNNING",
            "REVIEWING",
            "w1",
        )

    async def test_submit_without_review_completes_the_task(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING", requiresReview=False)
        await f.transition(gql, "submitTask", id=tid, agent="w1")
        s = await state(gql, tid)
        assert s["task"]["status"] == "COMPLETED"
        assert s["task"]["completedAt"] is not None
        assert [(e["type"], e["toStatus"]) for e in s["events"]][-1] == ("SUBMITTED", "COMPLETED")
        assert (await agent_state(gql, "w1"))["stats"]["completedTasks"] == 1

    async def test_assigned_task_can_be_submitted_directly(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        submitted = await f.transition(gql, "submitTask", id=tid, agent="w1")
        assert submitted["status"] == "REVIEWING"
        assert (await f.events(gql, task_id=tid))[-1]["fromStatus"] == "ASSIGNED"

    async def test_agent_is_busy_until_it_submits(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        assert (await agent_state(gql, "w1"))["status"] == "ONLINE"
        await f.claim(gql, task_id=tid, agent="w1")
        assert (await agent_state(gql, "w1"))["status"] == "BUSY"
        await f.transition(gql, "submitTask", id=tid, agent="w1")
        assert (await agent_state(gql, "w1"))["status"] == "ONLINE"


class TestReviewTask:
    async def test_approval_completes_task_and_counts_for_the_assignee(self, gql, pid):
        tid = await task_in(gql, pid, "REVIEWING")
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=True, feedback="great")
        s = await state(gql, tid)
        assert s["task"]["status"] == "COMPLETED"
        assert s["task"]["feedback"] == "great"
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "APPROVED",
            "REVIEWING",
            "COMPLETED",
            "rev",
        )
        stats = (await agent_state(gql, "w1"))["stats"]
        assert stats == {"totalTasks": 1, "completedTasks": 1, "failedTasks": 0, "successRate": 1.0}

    async def test_assignee_cannot_review_own_work(self, gql, pid):
        tid = await task_in(gql, pid, "REVIEWING")
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!) { reviewTask(id: $id, reviewer: "w1", approved: true) { id } }', id=tid
        )
        assert failure.code == "FORBIDDEN"
        assert await state(gql, tid) == before
        assert (await agent_state(gql, "w1"))["stats"]["completedTasks"] == 0

    async def test_only_the_designated_reviewer_may_review(self, gql, pid):
        await f.agent(gql, name="chief")
        tid = await task_in(gql, pid, "REVIEWING", reviewer="chief")
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!) { reviewTask(id: $id, reviewer: "rev", approved: true) { id } }', id=tid
        )
        assert failure.code == "FORBIDDEN"
        assert "chief" in str(failure)
        assert await state(gql, tid) == before
        approved = await f.transition(gql, "reviewTask", id=tid, reviewer="chief", approved=True)
        assert approved["status"] == "COMPLETED"

    async def test_rejection_with_attempts_left_returns_task_to_pending_with_feedback(self, gql, pid):
        tid = await task_in(gql, pid, "REVIEWING", maxAttempts=2)
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=False, feedback="too short")
        s = await state(gql, tid)
        assert s["task"]["status"] == "PENDING"
        assert s["task"]["feedback"] == "too short"
        assert s["task"]["assignee"] is None
        assert s["task"]["attempt"] == 1
        assert s["task"]["ready"] is True
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "REJECTED",
            "REVIEWING",
            "PENDING",
            "rev",
        )
        assert (await agent_state(gql, "w1"))["stats"]["failedTasks"] == 1

    async def test_rejected_task_is_claimed_again_with_next_attempt(self, gql, pid):
        tid = await task_in(gql, pid, "REVIEWING", maxAttempts=2)
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=False, feedback="redo")
        again = await f.claim(gql, task_id=tid, agent="w2")
        assert (again["status"], again["attempt"]) == ("ASSIGNED", 2)
        assert (await state(gql, tid))["task"]["feedback"] == "redo"

    async def test_rejection_on_last_attempt_fails_the_task(self, gql, pid):
        tid = await task_in(gql, pid, "REVIEWING", maxAttempts=1)
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=False, feedback="no")
        s = await state(gql, tid)
        assert s["task"]["status"] == "FAILED"
        assert s["task"]["feedback"] == "no"
        assert [(e["type"], e["toStatus"]) for e in s["events"]][-1] == ("REJECTED", "FAILED")
        stats = (await agent_state(gql, "w1"))["stats"]
        assert (stats["failedTasks"], stats["completedTasks"], stats["successRate"]) == (1, 0, 0.0)


class TestReleaseTask:
    async def test_release_returns_task_to_pending(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        await f.transition(gql, "releaseTask", id=tid, agent="w1", reason="switching")
        s = await state(gql, tid)
        assert s["task"]["status"] == "PENDING"
        assert s["task"]["assignee"] is None
        assert s["task"]["leaseExpiresAt"] is None
        assert s["task"]["ready"] is True
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "RELEASED",
            "RUNNING",
            "PENDING",
            "w1",
        )
        agent = await agent_state(gql, "w1")
        assert agent["status"] == "ONLINE"
        assert agent["stats"]["failedTasks"] == 0

    async def test_other_agent_cannot_release_it(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        before = await state(gql, tid)
        failure = await gql.error('mutation($id: ID!) { releaseTask(id: $id, agent: "w2") { id } }', id=tid)
        assert failure.code == "FORBIDDEN"
        assert await state(gql, tid) == before


class TestFailTask:
    async def test_retryable_failure_returns_task_to_pending(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        await f.transition(gql, "failTask", id=tid, agent="w1", error="api down")
        s = await state(gql, tid)
        assert s["task"]["status"] == "PENDING"
        assert s["task"]["lastError"] == "api down"
        assert s["task"]["assignee"] is None
        assert s["task"]["ready"] is True  # the test settings have no backoff
        last = s["events"][-1]
        assert (last["type"], last["fromStatus"], last["toStatus"], last["actor"]) == (
            "FAILED",
            "RUNNING",
            "PENDING",
            "w1",
        )
        agent = await agent_state(gql, "w1")
        assert (agent["status"], agent["stats"]["failedTasks"]) == ("ONLINE", 1)

    async def test_retry_waits_out_the_backoff(self, gql, backoff_gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        before = datetime.now(UTC)
        await f.transition(backoff_gql, "failTask", id=tid, agent="w1", error="rate limited")
        after = datetime.now(UTC)
        s = await state(gql, tid)
        assert s["task"]["status"] == "PENDING"
        assert set_during(s["task"]["availableAt"], before, after, plus=30)
        assert s["task"]["ready"] is False
        claimed = await gql.execute('mutation { claimNextTask(agent: "w2") { id } }')
        assert claimed["claimNextTask"] is None
        failure = await gql.error('mutation($id: ID!) { claimTask(id: $id, agent: "w2") { id } }', id=tid)
        assert failure.code == "INVALID_TRANSITION"
        assert await state(gql, tid) == s

    async def test_backoff_doubles_with_each_attempt_up_to_its_cap(self, gql, pid):
        capped = served_with(gql, retry_backoff_seconds=10, retry_backoff_max_seconds=25)
        tid = (await f.task(gql, project_id=pid, maxAttempts=4))["id"]
        for attempt, delay in ((1, 10), (2, 20), (3, 25)):
            claimed = await f.claim(gql, task_id=tid, agent="w1")
            assert claimed["attempt"] == attempt
            before = datetime.now(UTC)
            failed = await f.transition(capped, "failTask", id=tid, agent="w1", error="busy")
            after = datetime.now(UTC)
            assert (failed["status"], failed["ready"]) == ("PENDING", False)
            assert set_during(failed["availableAt"], before, after, plus=delay), (attempt, failed["availableAt"])
            # Bring the retry forward instead of waiting it out.
            await gql.execute(
                "mutation($id: ID!, $at: DateTime) { updateTask(id: $id, input: {availableAt: $at}) { id } }",
                id=tid,
                at=(before - timedelta(seconds=1)).isoformat(),
            )

    async def test_non_retryable_failure_fails_the_task(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING", maxAttempts=3)
        await f.transition(gql, "failTask", id=tid, agent="w1", error="bad input file", retryable=False)
        s = await state(gql, tid)
        assert s["task"]["status"] == "FAILED"
        assert s["task"]["lastError"] == "bad input file"
        assert [(e["type"], e["fromStatus"], e["toStatus"]) for e in s["events"]][-1] == (
            "FAILED",
            "RUNNING",
            "FAILED",
        )
        agent = await agent_state(gql, "w1")
        assert (agent["status"], agent["stats"]["failedTasks"]) == ("ONLINE", 1)

    async def test_failing_the_last_attempt_fails_the_task(self, gql, pid):
        tid = (await f.task(gql, project_id=pid, maxAttempts=2))["id"]
        await f.claim(gql, task_id=tid, agent="w1")
        first = await f.transition(gql, "failTask", id=tid, agent="w1", error="flaky")
        assert first["status"] == "PENDING"
        await f.claim(gql, task_id=tid, agent="w2")
        second = await f.transition(gql, "failTask", id=tid, agent="w2", error="flaky again")
        assert (second["status"], second["attempt"]) == ("FAILED", 2)
        assert [(e["type"], e["toStatus"]) for e in await f.events(gql, task_id=tid)] == [
            ("CREATED", "PENDING"),
            ("CLAIMED", "ASSIGNED"),
            ("FAILED", "PENDING"),
            ("CLAIMED", "ASSIGNED"),
            ("FAILED", "FAILED"),
        ]


class TestRetryTask:
    async def test_failed_task_with_attempts_exhausted_gets_another_attempt(self, gql, pid):
        tid = await task_in(gql, pid, "FAILED", maxAttempts=1)
        retried = await f.transition(gql, "retryTask", id=tid)
        assert (retried["status"], retried["maxAttempts"], retried["ready"]) == ("PENDING", 2, True)
        last = (await f.events(gql, task_id=tid))[-1]
        assert (last["type"], last["fromStatus"], last["toStatus"]) == ("RETRIED", "FAILED", "PENDING")
        again = await f.claim(gql, task_id=tid, agent="w2")
        assert again["attempt"] == 2

    async def test_failed_task_with_attempts_left_keeps_max_attempts(self, gql, pid):
        tid = await task_in(gql, pid, "FAILED", maxAttempts=3)
        retried = await f.transition(gql, "retryTask", id=tid)
        assert (retried["status"], retried["maxAttempts"]) == ("PENDING", 3)

    async def test_cancelled_task_can_be_retried(self, gql, pid):
        tid = await task_in(gql, pid, "CANCELLED")
        retried = await f.transition(gql, "retryTask", id=tid)
        assert retried["status"] == "PENDING"
        last = (await f.events(gql, task_id=tid))[-1]
        assert (last["type"], last["fromStatus"], last["toStatus"]) == ("RETRIED", "CANCELLED", "PENDING")


class TestCancelTask:
    @pytest.mark.parametrize("status", ["PENDING", "ASSIGNED", "RUNNING", "REVIEWING"])
    async def test_unfinished_task_can_be_cancelled(self, gql, pid, status):
        tid = await task_in(gql, pid, status)
        cancelled = await f.transition(gql, "cancelTask", id=tid, reason="no longer needed")
        assert cancelled["status"] == "CANCELLED"
        last = (await f.events(gql, task_id=tid))[-1]
        assert (last["type"], last["fromStatus"], last["toStatus"]) == ("CANCELLED", status, "CANCELLED")
        assert (await agent_state(gql, "w1"))["status"] == "ONLINE"

    @pytest.mark.parametrize("status", TERMINAL)
    async def test_finished_task_cannot_be_cancelled(self, gql, pid, status):
        tid = await task_in(gql, pid, status)
        before = await state(gql, tid)
        failure = await gql.error("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=tid)
        assert failure.code == "INVALID_TRANSITION"
        assert await state(gql, tid) == before

    @pytest.mark.postgres_only
    async def test_cancel_waits_out_a_concurrent_completion(self, gql):
        """A completion that commits while cancelTask waits for the row wins: the cancel
        must see COMPLETED and refuse, not cancel a finished task."""
        pid = await f.project(gql)
        await f.agent(gql, name="w1")
        tid = await task_in(gql, pid, "RUNNING")
        async with gql.services.sessionmaker() as session, session.begin():
            await session.execute(text("UPDATE tasks SET status = 'COMPLETED' WHERE id = :id"), {"id": int(tid)})
            cancel = asyncio.ensure_future(gql.error("mutation($id: ID!) { cancelTask(id: $id) { id } }", id=tid))
            await wait_for_lock_waiter(session)
        failure = await asyncio.wait_for(cancel, 10)
        assert failure.code == "INVALID_TRANSITION"
        assert (await state(gql, tid))["task"]["status"] == "COMPLETED"


# Where each action is allowed from (claimTask on a held task is CONFLICT, see test_claiming).
ALLOWED = {
    "claimTask": {"PENDING", "ASSIGNED", "RUNNING", "REVIEWING"},
    "startTask": {"ASSIGNED"},
    "reportProgress": {"ASSIGNED", "RUNNING"},
    "submitTask": {"ASSIGNED", "RUNNING"},
    "releaseTask": {"ASSIGNED", "RUNNING"},
    "failTask": {"ASSIGNED", "RUNNING"},
    "reviewTask": {"REVIEWING"},
    "retryTask": {"FAILED", "CANCELLED"},
    "cancelTask": {"PENDING", "ASSIGNED", "RUNNING", "REVIEWING"},
}
ARGS: dict[str, dict[str, Any]] = {
    "claimTask": {"agent": "w2"},
    "startTask": {"agent": "w1"},
    "reportProgress": {"agent": "w1", "progress": 50},
    "submitTask": {"agent": "w1"},
    "releaseTask": {"agent": "w1"},
    "failTask": {"agent": "w1", "error": "boom"},
    "reviewTask": {"reviewer": "rev", "approved": True},
    "retryTask": {},
    "cancelTask": {},
}
DISALLOWED = [(action, status) for action in ALLOWED for status in STATUSES if status not in ALLOWED[action]]


class TestInvalidTransitions:
    @pytest.mark.parametrize(("action", "status"), DISALLOWED)
    async def test_action_from_wrong_status_is_invalid_transition(self, gql, pid, action, status):
        tid = await task_in(gql, pid, status)
        before = await state(gql, tid)
        agents_before = [await agent_state(gql, name) for name in ("w1", "w2")]
        with pytest.raises(GraphQLFailure) as caught:
            await f.transition(gql, action, id=tid, **ARGS[action])
        assert caught.value.code == "INVALID_TRANSITION", caught.value
        assert await state(gql, tid) == before
        assert [await agent_state(gql, name) for name in ("w1", "w2")] == agents_before


class TestFencing:
    async def test_stale_attempt_after_reclaim_changes_nothing(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        mine = await f.claim(gql, task_id=tid, agent="w1")
        await f.transition(gql, "releaseTask", id=tid, agent="w1")
        theirs = await f.claim(gql, task_id=tid, agent="w2")
        assert (mine["attempt"], theirs["attempt"]) == (1, 2)
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!) { submitTask(id: $id, agent: "w1", attempt: 1, summary: "late") { id } }',
            id=tid,
        )
        assert failure.code == "STALE_ATTEMPT"
        assert await state(gql, tid) == before
        assert before["task"]["assignee"] == {"name": "w2"}

    async def test_stale_attempt_of_same_agent_is_rejected(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        await f.claim(gql, task_id=tid, agent="w1")
        await f.transition(gql, "releaseTask", id=tid, agent="w1")
        await f.claim(gql, task_id=tid, agent="w1")
        before = await state(gql, tid)
        failure = await gql.error('mutation($id: ID!) { startTask(id: $id, agent: "w1", attempt: 1) { id } }', id=tid)
        assert failure.code == "STALE_ATTEMPT"
        assert await state(gql, tid) == before

    async def test_current_attempt_is_accepted(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        started = await f.transition(gql, "startTask", id=tid, agent="w1", attempt=1)
        assert started["status"] == "RUNNING"
        progressed = await f.transition(gql, "reportProgress", id=tid, agent="w1", progress=1, attempt=1)
        assert progressed["status"] == "RUNNING"


class TestIdempotency:
    async def test_repeated_claim_returns_first_result_without_second_event(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        first = await f.transition(gql, "claimTask", id=tid, agent="w1", idempotencyKey="k1")
        before = await state(gql, tid)
        again = await f.transition(gql, "claimTask", id=tid, agent="w1", idempotencyKey="k1")
        assert again == first
        assert await state(gql, tid) == before
        assert (await agent_state(gql, "w1"))["stats"]["totalTasks"] == 1

    async def test_repeated_submit_returns_first_result_without_second_event(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        first = await f.transition(gql, "submitTask", id=tid, agent="w1", summary="v1", idempotencyKey="k1")
        before = await state(gql, tid)
        again = await f.transition(gql, "submitTask", id=tid, agent="w1", summary="v1", idempotencyKey="k1")
        assert again == first
        assert await state(gql, tid) == before
        assert (await event_types(gql, tid)).count("SUBMITTED") == 1

    async def test_repeated_fail_returns_first_result_without_second_event(self, gql, pid):
        tid = await task_in(gql, pid, "RUNNING")
        first = await f.transition(gql, "failTask", id=tid, agent="w1", error="boom", idempotencyKey="k1")
        before = await state(gql, tid)
        again = await f.transition(gql, "failTask", id=tid, agent="w1", error="boom", idempotencyKey="k1")
        assert again == first
        assert await state(gql, tid) == before
        assert (await event_types(gql, tid)).count("FAILED") == 1
        assert (await agent_state(gql, "w1"))["stats"]["failedTasks"] == 1

    async def test_repeated_cancel_returns_first_result_without_second_event(self, gql, pid):
        tid = await task_in(gql, pid, "PENDING")
        first = await f.transition(gql, "cancelTask", id=tid, idempotencyKey="k1")
        before = await state(gql, tid)
        again = await f.transition(gql, "cancelTask", id=tid, idempotencyKey="k1")
        assert again == first
        assert await state(gql, tid) == before
        assert (await event_types(gql, tid)).count("CANCELLED") == 1

    async def test_key_reused_for_another_mutation_is_bad_input(self, gql, pid):
        tid = (await f.task(gql, project_id=pid))["id"]
        await f.transition(gql, "claimTask", id=tid, agent="w1", idempotencyKey="k1")
        before = await state(gql, tid)
        failure = await gql.error(
            'mutation($id: ID!) { startTask(id: $id, agent: "w1", idempotencyKey: "k1") { id } }', id=tid
        )
        assert failure.code == "BAD_USER_INPUT"
        assert await state(gql, tid) == before

    async def test_same_key_of_another_agent_is_independent(self, gql, pid):
        first = (await f.task(gql, project_id=pid, title="one"))["id"]
        second = (await f.task(gql, project_id=pid, title="two"))["id"]
        mine = await f.transition(gql, "claimTask", id=first, agent="w1", idempotencyKey="k1")
        theirs = await f.transition(gql, "claimTask", id=second, agent="w2", idempotencyKey="k1")
        assert (mine["id"], mine["assignee"]) == (first, {"name": "w1"})
        assert (theirs["id"], theirs["assignee"]) == (second, {"name": "w2"})

    async def test_failed_mutation_does_not_use_up_the_key(self, gql, pid):
        tid = await task_in(gql, pid, "ASSIGNED")
        failure = await gql.error(
            'mutation($id: ID!) { submitTask(id: $id, agent: "w2", idempotencyKey: "k1") { id } }', id=tid
        )
        assert failure.code == "FORBIDDEN"
        other = (await f.task(gql, project_id=pid, title="other"))["id"]
        claimed = await f.transition(gql, "claimTask", id=other, agent="w2", idempotencyKey="k1")
        assert claimed["status"] == "ASSIGNED"


class TestEventsAndStats:
    async def test_each_transition_writes_exactly_one_event(self, gql, pid):
        tid = (await f.task(gql, project_id=pid, maxAttempts=3, createdBy="planner"))["id"]
        await f.claim(gql, task_id=tid, agent="w1")
        await f.transition(gql, "startTask", id=tid, agent="w1")
        await f.transition(gql, "reportProgress", id=tid, agent="w1", progress=50)
        await f.transition(gql, "submitTask", id=tid, agent="w1")
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=False, feedback="more")
        await f.claim(gql, task_id=tid, agent="w2")
        await f.transition(gql, "startTask", id=tid, agent="w2")
        await f.transition(gql, "submitTask", id=tid, agent="w2")
        await f.transition(gql, "reviewTask", id=tid, reviewer="rev", approved=True)
        events = await f.events(gql, task_id=tid)
        assert [(e["type"], e["fromStatus"], e["toStatus"], e["actor"]) for e in events] == [
            ("CREATED", None, "PENDING", "planner"),
            ("CLAIMED", "PENDING", "ASSIGNED", "w1"),
            ("STARTED", "ASSIGNED", "RUNNING", "w1"),
            ("PROGRESS", "RUNNING", "RUNNING", "w1"),
            ("SUBMITTED", "RUNNING", "REVIEWING", "w1"),
            ("REJECTED", "REVIEWING", "PENDING", "rev"),
            ("CLAIMED", "PENDING", "ASSIGNED", "w2"),
            ("STARTED", "ASSIGNED", "RUNNING", "w2"),
            ("SUBMITTED", "RUNNING", "REVIEWING", "w2"),
            ("APPROVED", "REVIEWING", "COMPLETED", "rev"),
        ]
        assert all(e["taskId"] == tid for e in events)
        assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
        task_events = await gql.execute("query($id: ID!) { task(id: $id) { events { type } } }", id=tid)
        assert [e["type"] for e in task_events["task"]["events"]] == [e["type"] for e in events]

    async def test_agent_stats_count_completions_and_failures(self, gql, pid):
        done = (await f.task(gql, project_id=pid, title="done", requiresReview=False))["id"]
        broken = (await f.task(gql, project_id=pid, title="broken"))["id"]
        await f.claim(gql, task_id=done, agent="w1")
        await f.transition(gql, "submitTask", id=done, agent="w1")
        await f.claim(gql, task_id=broken, agent="w1")
        await f.transition(gql, "failTask", id=broken, agent="w1", error="boom", retryable=False)
        stats = (await agent_state(gql, "w1"))["stats"]
        assert stats == {"totalTasks": 2, "completedTasks": 1, "failedTasks": 1, "successRate": 0.5}

    async def test_new_agent_has_empty_stats(self, gql, pid):
        stats = (await agent_state(gql, "w2"))["stats"]
        assert stats == {"totalTasks": 0, "completedTasks": 0, "failedTasks": 0, "successRate": 0.0}
