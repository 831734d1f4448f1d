"""The reaper's tick, in process, with a `now` in the future standing in for elapsed time
(PostgreSQL and SQLite), and its leader election (PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from task_service.api.schema import Schema
from task_service.db.base import utcnow
from task_service.db.models import IdempotencyKey, Task
from task_service.events.bus import Listener
from task_service.reaper import Reaper, TickResult
from task_service.services import Services
from tests import factories as f
from tests.conftest import Client, make_settings, with_settings

TASK = """query($id: ID!) {
  task(id: $id) { status attempt ready availableAt lastError leaseExpiresAt assignee { name } }
}"""
AGENT = "query($name: String!) { agent(name: $name) { status } }"
AGENT_STATS = "query($name: String!) { agent(name: $name) { stats { totalTasks completedTasks failedTasks } } }"
HEARTBEAT = "mutation($name: String!) { heartbeat(agent: $name) { name } }"


def reaper(services: Services, **settings: Any) -> Reaper:
    return Reaper(with_settings(services, **settings))


async def task_state(gql: Any, task_id: str) -> dict[str, Any]:
    return (await gql.execute(TASK, id=task_id))["task"]


async def agent_status(gql: Any, name: str) -> str:
    return (await gql.execute(AGENT, name=name))["agent"]["status"]


async def agent_stats(gql: Any, name: str) -> dict[str, int]:
    return (await gql.execute(AGENT_STATS, name=name))["agent"]["stats"]


async def reaper_events(gql: Any, task_id: str) -> list[tuple[str, str, str]]:
    return [
        (e["type"], e["fromStatus"], e["toStatus"])
        for e in await f.events(gql, task_id=task_id)
        if e["actor"] == "reaper"
    ]


async def claimed_task(gql: Any, *, agent: str = "writer", start: bool = False, **extra: Any) -> str:
    pid = await f.project(gql)
    task = await f.task(gql, project_id=pid, **extra)
    await f.agent(gql, name=agent)
    await f.claim(gql, task_id=task["id"], agent=agent)
    if start:
        await f.transition(gql, "startTask", id=task["id"], agent=agent)
    return task["id"]


class Heard:
    """The presence changes published on the bus (after their commits), in order."""

    def __init__(self, listener: Listener):
        self._listener = listener
        self._seen: list[tuple[str, str | None, str]] = []

    def clear(self) -> None:
        self.changes()
        self._seen = []

    def changes(self) -> list[tuple[str, str | None, str]]:
        batch = self._listener.take_presence()
        self._seen += [(s.change.name, s.change.previous, s.change.status) for s in batch.changes]
        return list(self._seen)


@pytest.fixture
def presence(services: Services) -> Iterator[Heard]:
    with services.bus.listen(presence=True) as listener:
        yield Heard(listener)


class TestSilentAgents:
    async def test_agent_past_the_heartbeat_timeout_goes_offline(self, services, gql, presence):
        await f.agent(gql, name="writer")
        presence.clear()

        result = await Reaper(services).tick(now=utcnow() + timedelta(seconds=61))

        assert result == TickResult(offline=1)
        assert await agent_status(gql, "writer") == "OFFLINE"
        assert presence.changes() == [("writer", "ONLINE", "OFFLINE")]

    async def test_agent_within_the_heartbeat_timeout_stays_online(self, services, gql, presence):
        await f.agent(gql, name="writer")
        presence.clear()

        result = await Reaper(services).tick(now=utcnow() + timedelta(seconds=30))

        assert result == TickResult()
        assert await agent_status(gql, "writer") == "ONLINE"
        assert presence.changes() == []

    async def test_offline_agents_task_goes_back_to_pending_at_once(self, services, gql, presence):
        task_id = await claimed_task(gql)
        presence.clear()

        result = await reaper(services, **BACKOFF).tick(now=utcnow() + timedelta(seconds=61))

        assert result == TickResult(offline=1, expired=1)
        task = await task_state(gql, task_id)
        assert (task["status"], task["attempt"], task["assignee"]) == ("PENDING", 1, None)
        # A dead agent is not the task's fault: no backoff, although failures back off here.
        assert (task["ready"], task["availableAt"]) == (True, None)
        assert task["leaseExpiresAt"] is None
        assert "heartbeats" in task["lastError"]
        assert await reaper_events(gql, task_id) == [("LEASE_EXPIRED", "ASSIGNED", "PENDING")]
        assert await agent_status(gql, "writer") == "OFFLINE"
        assert presence.changes() == [("writer", "BUSY", "OFFLINE")]

    @pytest.mark.postgres_only
    async def test_a_task_locked_by_another_transaction_does_not_stall_the_others(self, services, gql):
        # A long transaction elsewhere holds one silent agent's task: the reaper leaves that
        # agent for a later pass (no wait) and still requeues the other silent agent's task.
        held = await claimed_task(gql, agent="held")
        other = await claimed_task(gql, agent="other")
        async with services.sessionmaker() as blocker, blocker.begin():
            await blocker.execute(select(Task.id).where(Task.id == int(held)).with_for_update())
            result = await Reaper(services).tick(now=utcnow() + timedelta(seconds=61))
            assert result == TickResult(offline=1, expired=1)
            assert (await task_state(gql, other))["status"] == "PENDING"
            assert (await task_state(gql, held))["status"] == "ASSIGNED"
        # Once the transaction has ended, the next pass takes the held agent's task back.
        assert await Reaper(services).tick(now=utcnow() + timedelta(seconds=61)) == TickResult(offline=1, expired=1)
        assert (await task_state(gql, held))["status"] == "PENDING"

    async def test_a_dead_agents_requeued_task_is_not_counted_as_its_failure(self, services, gql):
        await claimed_task(gql, start=True)

        await Reaper(services).tick(now=utcnow() + timedelta(seconds=61))

        assert await agent_stats(gql, "writer") == {"totalTasks": 1, "completedTasks": 0, "failedTasks": 0}

    async def test_offline_agents_running_task_on_its_last_attempt_fails(self, services, gql):
        task_id = await claimed_task(gql, start=True, maxAttempts=1)

        result = await Reaper(services).tick(now=utcnow() + timedelta(seconds=61))

        assert result == TickResult(offline=1, expired=1)
        task = await task_state(gql, task_id)
        assert (task["status"], task["attempt"]) == ("FAILED", 1)
        assert await reaper_events(gql, task_id) == [("LEASE_EXPIRED", "RUNNING", "FAILED")]

    async def test_a_second_tick_changes_nothing_more(self, services, gql):
        task_id = await claimed_task(gql)
        later = utcnow() + timedelta(seconds=61)
        await Reaper(services).tick(now=later)

        result = await Reaper(services).tick(now=later + timedelta(seconds=1))

        assert result == TickResult()
        assert await reaper_events(gql, task_id) == [("LEASE_EXPIRED", "ASSIGNED", "PENDING")]


class TestLeaseShorterThanHeartbeatTimeout:
    async def test_unrenewed_lease_expires_while_the_agent_stays_online(self, services, gql, presence):
        task_id = await claimed_task(gql)  # a 60 s lease (the services' LEASE_SECONDS)
        presence.clear()

        result = await reaper(services, heartbeat_timeout_seconds=3600, **BACKOFF).tick(
            now=utcnow() + timedelta(seconds=61)
        )

        assert result == TickResult(expired=1)
        task = await task_state(gql, task_id)
        assert (task["status"], task["attempt"]) == ("PENDING", 1)
        assert (task["ready"], task["availableAt"]) == (True, None)  # no backoff, as above
        assert await reaper_events(gql, task_id) == [("LEASE_EXPIRED", "ASSIGNED", "PENDING")]
        assert await agent_status(gql, "writer") == "ONLINE"
        assert presence.changes() == [("writer", "BUSY", "ONLINE")]

    async def test_a_heartbeat_between_the_scan_and_the_lock_keeps_the_task(self, services, schema, gql):
        """The reaper reads the due leases, then locks each task in its own transaction: a
        heartbeat that commits in between renews the lease, and the locked row must be
        checked again rather than expired on the strength of the stale read."""
        task_id = await claimed_task(gql)  # a 60 s lease
        later = utcnow() + timedelta(seconds=61)
        long_leases = with_settings(services, heartbeat_timeout_seconds=3600)  # heartbeats renew for an hour
        beating = Client(schema, long_leases)
        reaping = with_settings(services, heartbeat_timeout_seconds=3600)
        locking = reaping.transaction
        heartbeats = []

        @contextlib.asynccontextmanager
        async def heartbeat_then_lock() -> AsyncIterator[Any]:
            # Entered only after the scan has found the lease due, before the task is locked.
            if not heartbeats:
                heartbeats.append(await beating.execute(HEARTBEAT, name="writer"))
            async with locking() as session:
                yield session

        reaping.transaction = heartbeat_then_lock  # type: ignore[method-assign]
        expired = await Reaper(reaping).expire_leases(later)

        assert heartbeats, "the scan did not find the lease due"
        assert expired == 0
        task = await task_state(gql, task_id)
        assert (task["status"], task["assignee"]) == ("ASSIGNED", {"name": "writer"})
        assert datetime.fromisoformat(task["leaseExpiresAt"]) > later
        assert await reaper_events(gql, task_id) == []


BACKOFF = {"retry_backoff_seconds": 10}
LONG_LIVED = {"heartbeat_timeout_seconds": 86_400, "retry_backoff_seconds": 10}


@pytest.fixture
def long_lived(services: Services, schema: Schema) -> tuple[Services, Client]:
    """Services (and a client) whose agents and leases outlive the simulated hours, so only
    timeouts are due; retries back off 10 s."""
    changed = with_settings(services, **LONG_LIVED)
    return changed, Client(schema, changed)


class TestTimeouts:
    async def test_running_task_past_its_timeout_goes_pending_after_a_backoff(self, long_lived):
        services, gql = long_lived
        task_id = await claimed_task(gql, start=True, timeoutMinutes=30)
        before = utcnow()

        result = await Reaper(services).tick(now=utcnow() + timedelta(minutes=31))

        after = utcnow()
        assert result == TickResult(timed_out=1)
        task = await task_state(gql, task_id)
        assert (task["status"], task["attempt"], task["ready"]) == ("PENDING", 1, False)
        available = datetime.fromisoformat(task["availableAt"])
        assert before + timedelta(seconds=10) <= available <= after + timedelta(seconds=10)
        assert "timeoutMinutes (30)" in task["lastError"]
        assert await reaper_events(gql, task_id) == [("TIMED_OUT", "RUNNING", "PENDING")]
        assert await agent_status(gql, "writer") == "ONLINE"

    async def test_running_task_past_its_timeout_on_the_last_attempt_fails(self, long_lived):
        services, gql = long_lived
        task_id = await claimed_task(gql, start=True, timeoutMinutes=30, maxAttempts=1)

        result = await Reaper(services).tick(now=utcnow() + timedelta(minutes=31))

        assert result == TickResult(timed_out=1)
        assert (await task_state(gql, task_id))["status"] == "FAILED"
        assert await reaper_events(gql, task_id) == [("TIMED_OUT", "RUNNING", "FAILED")]

    async def test_running_task_within_its_timeout_keeps_running(self, long_lived):
        services, gql = long_lived
        task_id = await claimed_task(gql, start=True, timeoutMinutes=30)

        result = await Reaper(services).tick(now=utcnow() + timedelta(minutes=29))

        assert result == TickResult()
        assert (await task_state(gql, task_id))["status"] == "RUNNING"

    async def test_soft_deleted_running_task_does_not_time_out(self, long_lived):
        services, gql = long_lived
        task_id = await claimed_task(gql, start=True, timeoutMinutes=30)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=task_id)

        result = await Reaper(services).tick(now=utcnow() + timedelta(minutes=31))

        assert result == TickResult()
        assert await reaper_events(gql, task_id) == []
        hidden = await gql.execute("{ tasks(filter: {includeDeleted: true}) { nodes { id status lastError } } }")
        assert hidden["tasks"]["nodes"] == [{"id": task_id, "status": "RUNNING", "lastError": None}]

    async def test_assigned_task_that_never_started_does_not_time_out(self, long_lived):
        services, gql = long_lived
        task_id = await claimed_task(gql, timeoutMinutes=30)

        result = await Reaper(services).tick(now=utcnow() + timedelta(minutes=31))

        assert result == TickResult()
        assert (await task_state(gql, task_id))["status"] == "ASSIGNED"

    async def test_a_timeout_raised_between_the_scan_and_the_lock_keeps_the_task(self, long_lived, schema):
        """As for leases: the locked task is checked again, here against its timeoutMinutes as
        they are when it is locked."""
        services, gql = long_lived
        task_id = await claimed_task(gql, start=True, timeoutMinutes=30)
        later = utcnow() + timedelta(minutes=31)
        reaping = with_settings(services, **LONG_LIVED)
        locking = reaping.transaction
        raised = []

        @contextlib.asynccontextmanager
        async def raise_timeout_then_lock() -> AsyncIterator[Any]:
            if not raised:
                raised.append(await gql.execute(UPDATE_TIMEOUT, id=task_id, minutes=60))
            async with locking() as session:
                yield session

        reaping.transaction = raise_timeout_then_lock  # type: ignore[method-assign]
        timed_out = await Reaper(reaping).time_out_tasks(later)

        assert raised, "the scan did not find the task due"
        assert timed_out == 0
        assert (await task_state(gql, task_id))["status"] == "RUNNING"
        assert await reaper_events(gql, task_id) == []


UPDATE_TIMEOUT = "mutation($id: ID!, $minutes: Int) { updateTask(id: $id, input: {timeoutMinutes: $minutes}) { id } }"


class TestOneTick:
    async def test_one_tick_expires_a_lease_and_times_out_another_task(self, services, schema):
        """Lease expiry and timeouts share one sweep (reaper.py's Overdue): each kind still
        finds its own tasks and records its own event."""
        short_leases = Client(schema, with_settings(services, lease_seconds=60, **LONG_LIVED))
        gql = Client(schema, with_settings(services, **LONG_LIVED))
        pid = await f.project(gql)
        leased = (await f.task(gql, project_id=pid, title="leased"))["id"]
        running = (await f.task(gql, project_id=pid, title="running", timeoutMinutes=30))["id"]
        await f.agent(gql, name="quiet")
        await f.agent(gql, name="busy")
        await f.claim(short_leases, task_id=leased, agent="quiet")  # a 60 s lease, never renewed
        await f.claim(gql, task_id=running, agent="busy")  # a day's lease
        await f.transition(gql, "startTask", id=running, agent="busy")

        result = await Reaper(with_settings(services, **LONG_LIVED)).tick(now=utcnow() + timedelta(minutes=31))

        assert result == TickResult(expired=1, timed_out=1)
        assert await reaper_events(gql, leased) == [("LEASE_EXPIRED", "ASSIGNED", "PENDING")]
        assert await reaper_events(gql, running) == [("TIMED_OUT", "RUNNING", "PENDING")]
        assert await agent_stats(gql, "quiet") == {"totalTasks": 1, "completedTasks": 0, "failedTasks": 0}
        assert await agent_stats(gql, "busy") == {"totalTasks": 1, "completedTasks": 0, "failedTasks": 1}
        assert (await task_state(gql, leased))["availableAt"] is None  # a lost lease: no backoff
        assert (await task_state(gql, running))["availableAt"] is not None  # a timeout backs off


async def task_rows(services: Services) -> int:
    async with services.read() as session:
        return await session.scalar(select(func.count()).select_from(Task)) or 0


async def key_rows(services: Services) -> int:
    async with services.read() as session:
        return await session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0


class TestPurge:
    async def test_soft_deleted_task_past_retention_is_erased(self, services, gql):
        pid = await f.project(gql)
        kept = await f.task(gql, project_id=pid, title="kept")
        gone = await f.task(gql, project_id=pid, title="gone")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=gone["id"])

        result = await Reaper(services).tick(now=utcnow() + timedelta(days=31))

        assert result.purged == 1
        assert await task_rows(services) == 1
        assert (await task_state(gql, kept["id"]))["status"] == "PENDING"

    async def test_purging_a_dependency_recounts_its_dependents(self, services, gql):
        pid = await f.project(gql)
        gone = await f.task(gql, project_id=pid, title="gone")
        waiting = await f.task(gql, project_id=pid, title="waiting", dependsOn=[gone["id"]])
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=gone["id"])
        assert (await gql.execute(TASK, id=waiting["id"]))["task"]["ready"] is False

        await Reaper(services).tick(now=utcnow() + timedelta(days=31))

        # As after a hard delete: nothing left to wait for, so the dependent is ready.
        assert (await task_state(gql, waiting["id"]))["ready"] is True
        assert [e["type"] for e in await f.events(gql, task_id=waiting["id"])] == ["CREATED", "UNBLOCKED"]

    async def test_soft_deleted_task_within_retention_is_kept(self, services, gql):
        pid = await f.project(gql)
        task = await f.task(gql, project_id=pid)
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=task["id"])

        result = await Reaper(services).tick(now=utcnow() + timedelta(days=29))

        assert result.purged == 0
        assert await task_rows(services) == 1

    async def test_idempotency_keys_older_than_a_day_are_erased(self, services, gql):
        pid = await f.project(gql)
        task = await f.task(gql, project_id=pid)
        await f.transition(gql, "cancelTask", id=task["id"], idempotencyKey="cancel-once")
        assert await key_rows(services) == 1

        await Reaper(services).tick(now=utcnow() + timedelta(hours=23))
        assert await key_rows(services) == 1

        await Reaper(services).tick(now=utcnow() + timedelta(hours=25))
        assert await key_rows(services) == 0


class TestQuietTick:
    async def test_tick_with_nothing_due_changes_nothing(self, services, gql, presence):
        task_id = await claimed_task(gql, start=True)
        pid = await f.project(gql, name="other")
        await f.task(gql, project_id=pid)
        await f.agent(gql, name="idle")
        events_before = await f.events(gql)
        tasks_before = await gql.execute(
            "{ tasks(first: 500) { nodes { id status attempt leaseExpiresAt updatedAt } } }"
        )
        presence.clear()

        result = await Reaper(services).tick()

        assert result == TickResult()
        assert await f.events(gql) == events_before
        assert (
            await gql.execute("{ tasks(first: 500) { nodes { id status attempt leaseExpiresAt updatedAt } } }")
            == tasks_before
        )
        assert presence.changes() == []
        assert (await task_state(gql, task_id))["status"] == "RUNNING"
        assert await agent_status(gql, "idle") == "ONLINE"


@pytest.fixture
async def two_processes(pg_url: str) -> AsyncIterator[tuple[Services, Services]]:
    """Two Services with their own engines: two server processes as PostgreSQL sees them."""
    first, second = Services.build(make_settings(pg_url)), Services.build(make_settings(pg_url))
    yield first, second
    await first.close()
    await second.close()


@pytest.mark.postgres_only
class TestLeaderElection:
    async def test_only_one_reaper_leads(self, two_processes):
        first, second = Reaper(two_processes[0]), Reaper(two_processes[1])
        try:
            assert await first.lead() is True
            assert await second.lead() is False
            assert await first.lead() is True  # a leader stays leader
        finally:
            await first.stop()
            await second.stop()

    async def test_a_stopped_leader_lets_another_lead(self, two_processes):
        first, second = Reaper(two_processes[0]), Reaper(two_processes[1])
        try:
            assert await first.lead() is True
            await first.stop()  # its engine stays open: the lock must not stay on a pooled connection
            assert await second.lead() is True
            assert await first.lead() is False
        finally:
            await first.stop()
            await second.stop()
