"""The hot mutations' round trips (issue 10): claimNextTask is one call of a function on
PostgreSQL (lock the agent; count its tasks and find its skill sets; claim with its event,
counters and leases), a heartbeat one (lock; renew leases and set the agent's time and
status), and a read of a task by id one. Each keeps the
rules of the ORM path it replaces, checked here on both databases."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select

from task_service.db.models import Agent, Task, TaskEvent
from tests import factories as f
from tests.statements import StatementCounter, count_statements

CLAIM_NEXT = 'mutation { claimNextTask(agent: "a") { id status attempt leaseExpiresAt } }'
HEARTBEAT = 'mutation { heartbeat(agent: "a") { name status lastHeartbeatAt } }'


def work(counter: StatementCounter) -> list[str]:
    """The request's own statements: not transaction control, not the sequencer's pass
    (the advisory lock, the stamp, the horizon), not the presence snapshot reads."""
    sequencer = ("stamp_events(", "SET seq", "max(task_events.seq)", "MAX(TASK_EVENTS.SEQ)")
    return [
        s
        for s in counter.statements
        if not s.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))
        and not any(marker.lower() in s.lower() for marker in sequencer)
    ]


async def agent_row(services: Any, name: str) -> Agent:
    async with services.read() as session:
        row = await session.scalar(select(Agent).where(Agent.name == name))
        assert row is not None
        return row


class TestClaimNext:
    async def test_a_claim_changes_the_task_agent_and_log_together(self, gql, services, backend):
        pid = await f.project(gql)
        await f.agent(gql, name="a", maxConcurrentTasks=3)
        first = await f.task(gql, project_id=pid, title="first", priority=9)
        second = await f.task(gql, project_id=pid, title="second", priority=1)
        held = (await gql.execute(CLAIM_NEXT))["claimNextTask"]
        assert held["id"] == first["id"]
        before = (await agent_row(services, "a")).last_heartbeat_at

        with count_statements(services) as counter:
            claimed = (await gql.execute(CLAIM_NEXT))["claimNextTask"]

        assert claimed["id"] == second["id"]
        assert (claimed["status"], claimed["attempt"]) == ("ASSIGNED", 1)
        agent = await agent_row(services, "a")
        assert (agent.status, agent.claimed_count) == ("BUSY", 2)
        assert agent.last_heartbeat_at is not None
        assert before is not None
        assert agent.last_heartbeat_at > before
        async with services.read() as session:
            events = (
                await session.execute(
                    select(
                        TaskEvent.type, TaskEvent.from_status, TaskEvent.to_status, TaskEvent.actor, TaskEvent.agent_id
                    )
                    .where(TaskEvent.task_id == int(second["id"]))
                    .order_by(TaskEvent.id)
                )
            ).all()
            assert events[-1] == ("CLAIMED", "PENDING", "ASSIGNED", "a", agent.id)
            assignee = await session.scalar(select(Task.assignee_id).where(Task.id == int(second["id"])))
            assert assignee == agent.id
            # The claim renewed the lease of the task the agent already held, or (PostgreSQL,
            # migration 0007) left it as it was when that moved it by less than a second.
            leases = dict((await session.execute(select(Task.id, Task.lease_expires_at))).all())
        held, claimed = leases[int(first["id"])], leases[int(second["id"])]
        assert claimed - timedelta(seconds=1) <= held <= claimed
        if backend == "postgresql":
            # One round trip: claim_next_task() (migration 0005), outside any BEGIN/COMMIT (the
            # sequencer's pass runs in its own task, not counted here).
            assert len(work(counter)) == 1, work(counter)
            assert "claim_next_task(" in work(counter)[0]
            assert counter.statements == work(counter), counter.statements

    async def test_nothing_to_claim_changes_nothing(self, gql, services, backend):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        await f.task(gql, project_id=pid, requiredSkills=["rust"])
        before = await agent_row(services, "a")
        with count_statements(services) as counter:
            assert (await gql.execute(CLAIM_NEXT))["claimNextTask"] is None
        after = await agent_row(services, "a")
        assert (after.status, after.claimed_count) == (before.status, before.claimed_count)
        async with services.read() as session:
            assert (
                await session.scalar(select(func.count()).select_from(TaskEvent).where(TaskEvent.type == "CLAIMED"))
                == 0
            )
        if backend == "postgresql":
            assert len(work(counter)) == 1, work(counter)  # the function finds no skill set and claims nothing
            assert counter.statements == work(counter), counter.statements

    async def test_the_limit_is_checked_before_claiming(self, gql, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a", maxConcurrentTasks=1)
        await f.task(gql, project_id=pid)
        await f.task(gql, project_id=pid)
        await gql.execute(CLAIM_NEXT)
        assert (await gql.error(CLAIM_NEXT)).code == "LIMIT_REACHED"
        assert (await agent_row(services, "a")).claimed_count == 1


class TestHeartbeat:
    async def test_a_heartbeat_renews_leases_and_keeps_the_status(self, gql, services, backend):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        await f.claim(gql, task_id=task["id"], agent="a")
        async with services.read() as session:
            lease_before = await session.scalar(select(Task.lease_expires_at).where(Task.id == int(task["id"])))

        with count_statements(services) as counter:
            beat = (await gql.execute(HEARTBEAT))["heartbeat"]

        assert beat["status"] == "BUSY"
        async with services.read() as session:
            lease_after = await session.scalar(select(Task.lease_expires_at).where(Task.id == int(task["id"])))
        assert lease_before is not None
        assert lease_after is not None
        assert lease_after > lease_before
        if backend == "postgresql":
            # One round trip: heartbeat_agent() (migration 0004), outside any BEGIN/COMMIT.
            assert len(work(counter)) == 1, work(counter)
            assert counter.statements == work(counter), counter.statements

    async def test_a_deleted_task_does_not_keep_its_agent_busy(self, gql, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        await f.claim(gql, task_id=task["id"], agent="a")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=task["id"])
        beat = (await gql.execute(HEARTBEAT))["heartbeat"]
        assert beat["status"] == "ONLINE"


class TestReads:
    async def test_task_by_id_is_one_statement_without_a_transaction(self, gql, services, backend):
        """A read sends its SELECT alone, without a BEGIN before it and a ROLLBACK after: on
        PostgreSQL on asyncpg's own connection (db/driver.py); other reads there run on an
        autocommit session."""
        pid = await f.project(gql)
        task = await f.task(gql, project_id=pid)
        with count_statements(services) as counter:
            data = await gql.execute("query($id: ID!) { task(id: $id) { id status } }", id=task["id"])
        assert data["task"] == {"id": task["id"], "status": "PENDING"}
        assert len(work(counter)) == 1, work(counter)
        if backend == "postgresql":
            async with services.read() as session:
                conn = await session.connection()
                assert conn.sync_connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


class TestTimesWithoutOffset:
    async def test_a_time_without_an_offset_is_utc(self, gql):
        """updateTask/createTask with availableAt lacking an offset answered INTERNAL on SQLite
        (naive vs aware comparison in `ready`; found by the state-machine fuzzer)."""
        pid = await f.project(gql)
        created = await gql.execute(
            'mutation($p: ID!) { createTask(input: {projectId: $p, title: "t", taskType: "code", '
            'availableAt: "2020-01-01T00:00:00"}) { id ready availableAt } }',
            p=pid,
        )
        assert created["createTask"]["ready"] is True
        assert created["createTask"]["availableAt"].startswith("2020-01-01T00:00:00")
        updated = await gql.execute(
            'mutation($id: ID!) { updateTask(id: $id, input: {availableAt: "2999-01-01T00:00:00"}) { ready } }',
            id=created["createTask"]["id"],
        )
        assert updated["updateTask"]["ready"] is False


async def updates_of(database_url: str, table: str) -> tuple[int, int]:
    """(updates, heap-only updates) of `table` so far, as the statistics hold them."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1", table)
        return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])
    finally:
        await conn.close()


async def settled_updates(database_url: str, table: str, *, at_least: int = 0) -> tuple[int, int]:
    """updates_of once it holds `at_least` updates and stayed the same for 1.5 s: each
    backend reports its counts within about a second of its transaction's end."""
    deadline = time.monotonic() + 60
    last = await updates_of(database_url, table)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.5)
        now = await updates_of(database_url, table)
        if now == last and now[0] >= at_least:
            return now
        last = now
    raise AssertionError(f"the statistics of {table} did not settle: {last}")


async def leases(services: Any) -> dict[int, Any]:
    async with services.read() as session:
        return dict((await session.execute(select(Task.id, Task.lease_expires_at))).all())


@pytest.mark.postgres_only
class TestRenewals:
    """Migration 0007: what every agent call renews writes no index entries, and a claim
    renews only the leases it moves by a second or more."""

    async def test_renewing_leases_writes_no_index_entries(self, gql, database_url):
        pid = await f.project(gql)
        await f.agent(gql, name="a", maxConcurrentTasks=3)
        for i in range(3):
            await f.task(gql, project_id=pid, title=f"t{i}")
            assert (await gql.execute(CLAIM_NEXT))["claimNextTask"] is not None
        tasks = await settled_updates(database_url, "tasks")
        agents = await settled_updates(database_url, "agents")

        for _ in range(5):  # each renews the 3 leases and sets the agent's heartbeat
            await gql.execute(HEARTBEAT)

        after = await settled_updates(database_url, "tasks", at_least=tasks[0] + 15)
        assert (after[0] - tasks[0], after[1] - tasks[1]) == (15, 15)
        after = await settled_updates(database_url, "agents", at_least=agents[0] + 5)
        assert (after[0] - agents[0], after[1] - agents[1]) == (5, 5)

    async def test_a_claim_renews_the_leases_it_moves_by_a_second_or_more(self, gql, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a", maxConcurrentTasks=3)
        for i in range(3):
            await f.task(gql, project_id=pid, title=f"t{i}")
        first = int((await gql.execute(CLAIM_NEXT))["claimNextTask"]["id"])
        claimed_first = await leases(services)
        second = int((await gql.execute(CLAIM_NEXT))["claimNextTask"]["id"])
        claimed_second = await leases(services)
        # within a second of its claim, the first task's lease stays as it was
        assert claimed_second[first] == claimed_first[first]
        await asyncio.sleep(1.2)

        third = int((await gql.execute(CLAIM_NEXT))["claimNextTask"]["id"])

        now = await leases(services)
        assert now[first] > claimed_first[first] + timedelta(seconds=1)
        assert now[second] > claimed_second[second] + timedelta(seconds=1)
        assert now[first] == now[second] == now[third]
