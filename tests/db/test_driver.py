"""db/driver.py: the hot reads and the heartbeat on asyncpg's own connection (PostgreSQL).

The rows it makes must be the ORM's, value for value; its heartbeat must keep touch()'s
rules under concurrency; its failures must look like the ORM's (a retryable error for a
lost database, the SQLSTATE kept) and never put a broken connection back in the pool.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from task_service.api.errors import _is_statement_timeout, _is_unavailable
from task_service.db import agents as db_agents
from task_service.db.base import Base, rows_by_ids, utcnow
from task_service.db.driver import Driver
from task_service.db.events import _STAMP_SQL, SEQUENCER_LOCK_KEY
from task_service.db.models import Agent, Project, Task, TaskEvent
from task_service.db.session import create_engine
from task_service.errors import NotFound
from tests import factories as f
from tests.conftest import wait_for_lock_waiter
from tests.statements import count_statements

pytestmark = pytest.mark.postgres_only

HEARTBEAT = 'mutation { heartbeat(agent: "a") { name status lastHeartbeatAt } }'


def columns(row: Base) -> dict[str, object]:
    return {prop.key: getattr(row, prop.key) for prop in type(row).__mapper__.column_attrs}


class TestRows:
    async def test_the_driver_rows_are_the_orm_rows(self, gql, services):
        """Every column of a task (JSON, times, nulls, booleans, floats), an agent and a
        project, as the driver read makes them and as the ORM loads them."""
        pid = await f.project(gql, description="d")
        await f.agent(gql, name="a", skills=["python"], capabilities={"gpu": True, "n": [1, 2]})
        parent = await f.task(gql, project_id=pid)
        task = await f.task(
            gql,
            project_id=pid,
            parentId=parent["id"],
            tags=["x", "y"],
            requiredSkills=["python"],
            estimatedHours=1.5,
            dueAt="2030-01-02T03:04:05.123456+00:00",
            requiresReview=False,
        )
        await f.claim(gql, task_id=task["id"], agent="a")
        await gql.execute('mutation($id: ID!) { startTask(id: $id, agent: "a") { id } }', id=task["id"])
        await gql.execute(
            'mutation($id: ID!) { submitTask(id: $id, agent: "a", result: {ok: [1, "two", null]}, summary: "s") '
            "{ id } }",
            id=task["id"],
        )
        assert services.driver is not None
        async with services.read() as session:
            for model, ids in ((Task, [int(task["id"]), int(parent["id"])]), (Project, [int(pid)])):
                orm = await rows_by_ids(session, model, ids)
                driver = await services.driver.rows_by_ids(model, [*ids, 10**9])
                assert sorted(driver) == sorted(ids)
                for key in ids:
                    assert columns(driver[key]) == columns(orm[key])
            agent = await session.scalar(select(Agent).where(Agent.name == "a"))
            assert agent is not None
            assert columns((await services.driver.rows_by_ids(Agent, [agent.id]))[agent.id]) == columns(agent)
        row = (await services.driver.rows_by_ids(Task, [int(task["id"])]))[int(task["id"])]
        assert row.result == {"ok": [1, "two", None]}
        assert row.due_at == datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

    async def test_a_token_finds_its_live_agent_only(self, gql, services):
        token = (await f.agent(gql, name="a"))["token"]
        assert services.driver is not None
        async with services.read() as session:
            orm = await db_agents.agent_by_token(session, token)
        found = await services.driver.agent_by_token(token)
        assert orm is not None
        assert found is not None
        assert columns(found) == columns(orm)
        assert await services.driver.agent_by_token(token + "x") is None
        # A deleted agent's token finds nothing, even if its hash were still stored.
        async with services.sessionmaker() as session, session.begin():
            await session.execute(update(Agent).where(Agent.name == "a").values(deleted_at=datetime.now(UTC)))
        assert await services.driver.agent_by_token(token) is None


class TestHeartbeat:
    async def test_a_heartbeat_waits_for_a_claim_in_flight_and_counts_its_task(self, gql, services):
        """A claim holds the agent's lock while it assigns a task; a heartbeat that arrives
        meanwhile waits, then must renew that task's lease and leave the agent BUSY. (One
        statement that locked the agent inside its own snapshot would not see the task:
        ONLINE, and the new task's lease not renewed.)"""
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        async with services.sessionmaker() as claim, claim.begin():
            agent = await claim.scalar(select(Agent).where(Agent.name == "a").with_for_update())
            assert agent is not None
            assert agent.status == "ONLINE"
            soon = datetime.now(UTC) + timedelta(seconds=5)
            await claim.execute(
                update(Task)
                .where(Task.id == int(task["id"]))
                .values(status="ASSIGNED", assignee_id=agent.id, lease_expires_at=soon)
            )
            beat = asyncio.create_task(gql.execute(HEARTBEAT))
            await wait_for_lock_waiter(claim)
            assert not beat.done()
        assert (await beat)["heartbeat"]["status"] == "BUSY"
        async with services.read() as session:
            lease = await session.scalar(select(Task.lease_expires_at).where(Task.id == int(task["id"])))
        assert lease is not None
        assert lease > soon + timedelta(seconds=10)

    async def test_a_presence_change_is_returned_only_when_the_status_changes(self, gql, services):
        await f.agent(gql, name="a")
        async with services.sessionmaker() as session, session.begin():
            await session.execute(update(Agent).where(Agent.name == "a").values(status="OFFLINE"))
        assert services.driver is not None
        agent, effects = await services.driver.heartbeat("a", lease_seconds=60)
        assert agent.status == "ONLINE"
        assert [(c.name, c.previous, c.status) for c in effects.presence] == [("a", "OFFLINE", "ONLINE")]
        _agent, effects = await services.driver.heartbeat("a", lease_seconds=60)
        assert effects.presence == []

    async def test_an_unknown_or_unregistered_agent_is_not_found(self, gql, services):
        assert services.driver is not None
        with pytest.raises(NotFound):
            await services.driver.heartbeat("nobody", lease_seconds=60)
        await f.agent(gql, name="gone")
        await gql.execute('mutation { unregisterAgent(name: "gone") }')
        with pytest.raises(NotFound):
            await services.driver.heartbeat("gone", lease_seconds=60)
        # Neither left its connection (or its lock) behind.
        assert services.engine.pool.checkedout() == 0
        assert (await gql.error('mutation { heartbeat(agent: "gone") { id } }')).code == "NOT_FOUND"


class TestStampEvents:
    """The sequencer's pass on PostgreSQL: one call of stamp_events() (migration 0006)."""

    async def test_a_pass_is_one_round_trip(self, gql, services):
        pid = await f.project(gql)
        await f.task(gql, project_id=pid)
        await unstamped_events(services, 2)
        with count_statements(services) as counter:
            horizon = await services.driver.stamp_events()
            await asyncio.sleep(0)  # asyncpg calls its query loggers soon after, not at once
        assert counter.statements == ["SELECT stamp_events($1)"]
        assert await stamps(services) == list(range(1, horizon + 1))
        assert horizon == 3

    async def test_a_pass_waits_for_a_pass_in_flight_and_stamps_after_it(self, gql, services):
        """A pass of the previous version (a transaction: the advisory lock, then the stamp)
        holds the sequencer lock during a rolling upgrade; a stamp_events() call meanwhile
        waits for it, then stamps what was committed since, after its stamps: every event
        once, gap-free, in id order."""
        pid = await f.project(gql)
        await f.task(gql, project_id=pid)
        await unstamped_events(services, 3)
        async with services.sessionmaker() as previous, previous.begin():
            await previous.execute(select(func.pg_advisory_xact_lock(SEQUENCER_LOCK_KEY)))
            await previous.execute(_STAMP_SQL)
            await unstamped_events(services, 2)  # committed while that pass holds the lock
            waiting = asyncio.create_task(services.driver.stamp_events())
            await wait_for_advisory_waiter(previous)
            assert not waiting.done()
        horizon = await waiting
        assert horizon == 6
        assert await stamps(services) == [1, 2, 3, 4, 5, 6]

    async def test_a_pass_can_announce_its_horizon_in_the_same_round_trip(self, gql, services, pg_url):
        """With the bus's channel, the pass sends the bus's "seq" message itself, when its
        stamps commit; a pass that reaches no further than what the bus carried sends none
        (the marker, sent after it, is the next message a listener hears)."""
        pid = await f.project(gql)
        await f.task(gql, project_id=pid)
        await unstamped_events(services, 2)
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await listener.add_listener("stamp_test", lambda *args: heard.put_nowait(args[-1]))
            with count_statements(services) as counter:
                horizon = await services.driver.stamp_events(notify="stamp_test", announced=0)
                await asyncio.sleep(0)
            (statement,) = counter.statements
            assert "stamp_events($1)" in statement
            assert "pg_notify" in statement
            assert horizon == 3
            assert json.loads(await asyncio.wait_for(heard.get(), 10)) == {"k": "seq", "n": 3}

            await unstamped_events(services, 1)
            assert await services.driver.stamp_events(notify="stamp_test", announced=4) == 4
            assert await services.driver.stamp_events(notify="stamp_test", announced=3) == 4
            async with services.driver.connection() as conn:
                await conn.execute("SELECT pg_notify('stamp_test', 'marker')")
            assert json.loads(await asyncio.wait_for(heard.get(), 10)) == {"k": "seq", "n": 4}
            assert await asyncio.wait_for(heard.get(), 10) == "marker"
        finally:
            await listener.close()
        assert await stamps(services) == [1, 2, 3, 4]


async def unstamped_events(services, count: int) -> None:
    """`count` committed events of the first task, not stamped yet (as a writer leaves them)."""
    async with services.sessionmaker() as session, session.begin():
        task = await session.scalar(select(Task).order_by(Task.id).limit(1))
        assert task is not None
        for _ in range(count):
            session.add(TaskEvent(task_id=task.id, project_id=task.project_id, type="UPDATED", created_at=utcnow()))


async def stamps(services) -> list[int | None]:
    """Every event's stamp, in id order."""
    async with services.read() as session:
        return list((await session.scalars(select(TaskEvent.seq).order_by(TaskEvent.id))).all())


async def wait_for_advisory_waiter(session, *, deadline: float = 10) -> None:
    """Poll until another connection waits for the sequencer's advisory lock, held by `session`."""
    end = asyncio.get_running_loop().time() + deadline
    while asyncio.get_running_loop().time() < end:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory' AND objid = :key"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"key": SEQUENCER_LOCK_KEY},
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no pass started waiting for the sequencer lock")


class TestFailures:
    @pytest.mark.parametrize("database", ["no_such_database_here", None])
    async def test_a_failed_checkout_raises_what_the_orm_raises(self, services, database):
        """A database that refuses the connection (here: one that does not exist, or a
        port nobody listens on) fails the driver's checkout with the exception class that
        the ORM's checkout raises, so the error mapping treats both alike."""
        url = services.engine.url
        url = url.set(database=database) if database else url.set(port=1)
        engine = create_engine(url.render_as_string(hide_password=False), pre_ping=False)
        try:
            with pytest.raises(Exception) as orm:  # noqa: PT011 (the class is what is compared)
                async with engine.connect():
                    pass
            with pytest.raises(Exception) as driver:  # noqa: PT011
                async with Driver(engine).connection():
                    pass
            assert type(driver.value) is type(orm.value)
            assert _is_unavailable(driver.value) == _is_unavailable(orm.value)
        finally:
            await engine.dispose()

    async def test_a_statement_timeout_keeps_its_sqlstate_and_its_connection(self, services):
        driver = services.driver
        assert driver is not None

        async def sleep_past_the_timeout() -> None:
            async with driver.connection() as conn:
                await conn.execute("SET statement_timeout = 50")
                try:
                    await conn.execute("SELECT pg_sleep(2)")
                finally:
                    await conn.execute("RESET statement_timeout")

        with pytest.raises(DBAPIError) as raised:
            await sleep_past_the_timeout()
        assert _is_statement_timeout(raised.value)
        assert not _is_unavailable(raised.value)
        assert services.engine.pool.checkedout() == 0

    async def test_a_connection_killed_under_a_read_is_a_retryable_error_and_is_not_reused(self, gql, services):
        driver = services.driver
        assert driver is not None
        async with driver.connection() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(services.settings.database_url.replace("+asyncpg", ""))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # The pool hands out that (idle, just returned) connection again: the read fails
        # with a retryable error and the dead connection leaves the pool.
        with pytest.raises(OperationalError) as raised:
            async with driver.connection() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert _is_unavailable(raised.value)
        async with driver.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != pid
        pid_task = await f.task(gql, project_id=await f.project(gql))
        assert (await gql.execute("query($id: ID!) { task(id: $id) { id } }", id=pid_task["id"]))["task"]

    async def test_a_cancelled_statement_does_not_return_its_connection_to_the_pool(self, services):
        driver = services.driver
        assert driver is not None
        pids: list[int] = []
        started = asyncio.Event()

        async def slow() -> None:
            async with driver.connection() as conn:
                pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
                started.set()
                await conn.execute("SELECT pg_sleep(5)")

        waiting = asyncio.create_task(slow())
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert services.engine.pool.checkedout() == 0
        for _ in range(services.engine.pool.size() + 1):
            async with driver.connection() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") != pids[0]


async def seed_running_task(url: str, revision: str, *, max_tasks: int, lease: datetime, pending: int = 0) -> None:
    """A database at `revision` holding agent 'a' (maxConcurrentTasks `max_tasks`) with one
    RUNNING task whose lease ends at `lease`, and `pending` ready tasks."""
    from alembic import command

    from task_service.db.migrate import alembic_config

    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(
            "INSERT INTO skill_sets (key, skills) VALUES ('', '[]');"
            "INSERT INTO projects (name, status, created_at, updated_at) VALUES ('Launch', 'ACTIVE', now(), now())"
        )
        await conn.execute(
            "INSERT INTO agents (name, skills, status, max_concurrent_tasks, registered_at, claimed_count,"
            " completed_count, failed_count) VALUES ('a', '[]', 'ONLINE', $1, now(), 1, 0, 0)",
            max_tasks,
        )
        task = (
            "INSERT INTO tasks (project_id, title, task_type, status, priority, tags, required_skills,"
            " skill_set_id, requires_review, attempt, max_attempts, unmet_dependencies, created_at,"
            " updated_at, assignee_id, lease_expires_at) VALUES (1, $1, 'research', $2, 5, '[]',"
            " '[]', 1, true, $3, 3, 0, now(), now(), $4, $5)"
        )
        await conn.execute(task, "running", "RUNNING", 1, 1, lease)
        for i in range(pending):
            await conn.execute(task, f"pending {i}", "PENDING", 0, None, None)
    finally:
        await conn.close()


async def functions_named(url: str, name: str) -> int:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = $1", name))
    finally:
        await conn.close()


class TestUpgradeFrom0003:
    """Migration 0004 adds heartbeat_agent(): a database upgraded from 0003 with agents and
    tasks in it serves heartbeats at once, and a downgrade takes the function away again."""

    async def test_a_heartbeat_after_the_upgrade_renews_and_counts_the_existing_task(self):
        from alembic import command

        from task_service.db.migrate import alembic_config, upgrade_to_head
        from task_service.services import Services
        from tests.conftest import create_pg_database, drop_pg_database, make_settings

        url = await create_pg_database("ts_up0003")
        soon = datetime.now(UTC) + timedelta(seconds=30)
        try:
            await seed_running_task(url, "0003", max_tasks=3, lease=soon)

            await upgrade_to_head(url)

            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                agent, effects = await services.driver.heartbeat("a", lease_seconds=600)
                async with services.read() as session:
                    lease = await session.scalar(select(Task.lease_expires_at).where(Task.id == 1))
            finally:
                await services.close()
            assert (agent.name, agent.status, agent.claimed_count) == ("a", "BUSY", 1)
            assert [(c.previous, c.status) for c in effects.presence] == [("ONLINE", "BUSY")]
            assert lease is not None
            assert lease > soon + timedelta(seconds=500)

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0003")
            assert await functions_named(url, "heartbeat_agent") == 0
        finally:
            await drop_pg_database(url)


class TestUpgradeFrom0004:
    """Migration 0005 adds claim_next_task(): a database upgraded from 0004 with an agent
    holding a task and ready tasks claims at once, counting the task it already held, and a
    downgrade takes the function away again."""

    async def test_a_claim_after_the_upgrade_counts_the_task_already_held(self):
        from alembic import command

        from task_service.db.lifecycle import Policy
        from task_service.db.migrate import alembic_config, upgrade_to_head
        from task_service.errors import LimitReached
        from task_service.services import Services
        from tests.conftest import create_pg_database, drop_pg_database, make_settings

        url = await create_pg_database("ts_up0004")
        soon = datetime.now(UTC) + timedelta(seconds=30)
        try:
            await seed_running_task(url, "0004", max_tasks=2, lease=soon, pending=2)

            await upgrade_to_head(url)

            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                policy = Policy(lease_seconds=600)
                task, effects = await services.driver.claim_next("a", policy)
                with pytest.raises(LimitReached):
                    await services.driver.claim_next("a", policy)
                async with services.read() as session:
                    held = (await session.execute(select(Task.id, Task.status, Task.lease_expires_at))).all()
                    agent = await session.scalar(select(Agent).where(Agent.name == "a"))
            finally:
                await services.close()
            assert task is not None
            assert (task.id, task.status, task.attempt) == (2, "ASSIGNED", 1)
            assert [(c.previous, c.status) for c in effects.presence] == [("ONLINE", "BUSY")]
            assert [e.task_id for e in effects.events] == [2]
            statuses = {task_id: status for task_id, status, _lease in held}
            assert statuses == {1: "RUNNING", 2: "ASSIGNED", 3: "PENDING"}
            # the claim renewed the lease of the task the agent already held
            assert all(lease > soon + timedelta(seconds=500) for task_id, _s, lease in held if task_id in (1, 2))
            assert agent is not None
            assert (agent.status, agent.claimed_count) == ("BUSY", 2)

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0004")
            assert await functions_named(url, "claim_next_task") == 0
            assert await functions_named(url, "heartbeat_agent") == 1
        finally:
            await drop_pg_database(url)


class TestUpgradeFrom0005:
    """Migration 0006 adds stamp_events(): events a writer left unstamped in a database at
    0005 are stamped by the upgraded service's sequencer, and a downgrade takes the function
    away again."""

    async def test_events_left_unstamped_before_the_upgrade_are_stamped_after_it(self):
        from alembic import command

        from task_service.db.migrate import alembic_config, upgrade_to_head
        from task_service.services import Services
        from tests.conftest import create_pg_database, drop_pg_database, make_settings

        url = await create_pg_database("ts_up0005")
        try:
            await seed_running_task(url, "0005", max_tasks=2, lease=datetime.now(UTC) + timedelta(seconds=30))
            conn = await asyncpg.connect(url.replace("+asyncpg", ""))
            try:
                await conn.execute(
                    "INSERT INTO task_events (task_id, project_id, type, created_at)"
                    " VALUES (1, 1, 'CREATED', now()), (1, 1, 'CLAIMED', now())"
                )
            finally:
                await conn.close()

            await upgrade_to_head(url)

            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert await services.sequencer.sync()
                assert services.sequencer.horizon == 2
                assert await stamps(services) == [1, 2]
            finally:
                await services.close()

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0005")
            assert await functions_named(url, "stamp_events") == 0
            assert await functions_named(url, "claim_next_task") == 1
        finally:
            await drop_pg_database(url)


async def indexes_named(url: str, *names: str) -> list[str]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE indexname = ANY($1) ORDER BY 1", list(names))
        return [r["indexname"] for r in rows]
    finally:
        await conn.close()


async def table_options(url: str, table: str) -> list[str] | None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        options: list[str] | None = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = $1", table)
        return options
    finally:
        await conn.close()


class TestUpgradeFrom0006:
    """Migration 0007 adds per-project claim indexes and a claim_next_task() whose
    project-filtered form reads them, drops the lease and heartbeat indexes and sets the
    fillfactors: a database upgraded from 0006, with ready tasks in two projects, claims from
    the project asked for, holding the agent's other task and limit, and a downgrade restores
    0005's function, which still claims, the two indexes and the fillfactors."""

    async def test_a_claim_for_a_project_after_the_upgrade_takes_that_projects_task(self):
        from alembic import command

        from task_service.db.lifecycle import Policy
        from task_service.db.migrate import alembic_config, upgrade_to_head
        from task_service.errors import LimitReached
        from task_service.services import Services
        from tests.conftest import create_pg_database, drop_pg_database, make_settings

        url = await create_pg_database("ts_up0006")
        new_indexes = ("ix_tasks_claim_project", "ix_tasks_claim_project_scheduled")
        old_indexes = ("ix_agents_status_heartbeat", "ix_tasks_lease")  # dropped by 0007
        try:
            await seed_running_task(
                url, "0006", max_tasks=3, lease=datetime.now(UTC) + timedelta(seconds=30), pending=3
            )
            conn = await asyncpg.connect(url.replace("+asyncpg", ""))
            try:  # a second project, its two ready tasks younger than project 1's (ids 5 and 6)
                await conn.execute(
                    "INSERT INTO projects (name, status, created_at, updated_at)"
                    " VALUES ('Other', 'ACTIVE', now(), now());"
                    "INSERT INTO tasks (project_id, title, task_type, status, priority, tags, required_skills,"
                    " skill_set_id, requires_review, attempt, max_attempts, unmet_dependencies, created_at, updated_at)"
                    " SELECT 2, 'other ' || i, 'research', 'PENDING', 5, '[]', '[]', 1, true, 0, 3, 0,"
                    " now() + interval '1 minute', now() FROM generate_series(1, 2) AS i"
                )
            finally:
                await conn.close()

            await upgrade_to_head(url)
            assert await indexes_named(url, *new_indexes, *old_indexes) == list(new_indexes)
            assert await table_options(url, "tasks") == ["fillfactor=90"]
            assert await table_options(url, "agents") == ["fillfactor=70"]

            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                policy = Policy(lease_seconds=600)
                first, _ = await services.driver.claim_next("a", policy, project_id=2)
                second, _ = await services.driver.claim_next("a", policy, project_id=2)
                with pytest.raises(LimitReached):  # the RUNNING task it held counts
                    await services.driver.claim_next("a", policy, project_id=1)
            finally:
                await services.close()
            assert first is not None
            assert second is not None
            assert [(t.id, t.project_id, t.status) for t in (first, second)] == [(5, 2, "ASSIGNED"), (6, 2, "ASSIGNED")]

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0006")
            assert await indexes_named(url, *new_indexes, *old_indexes) == sorted(old_indexes)
            assert await table_options(url, "tasks") is None
            assert await table_options(url, "agents") is None
            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                conn = await asyncpg.connect(url.replace("+asyncpg", ""))
                try:  # room for one more claim under 0005's function
                    await conn.execute("UPDATE agents SET max_concurrent_tasks = 4")
                finally:
                    await conn.close()
                third, _ = await services.driver.claim_next("a", Policy(lease_seconds=600), project_id=1)
            finally:
                await services.close()
            assert third is not None
            assert (third.id, third.project_id) == (2, 1)
        finally:
            await drop_pg_database(url)


async def renewal_state(url: str) -> tuple[datetime, datetime | None]:
    """The RUNNING task's lease and agent a's leases_renewed_at."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        lease = await conn.fetchval("SELECT lease_expires_at FROM tasks WHERE status = 'RUNNING'")
        renewed = await conn.fetchval("SELECT leases_renewed_at FROM agents WHERE name = 'a'")
        return lease, renewed
    finally:
        await conn.close()


async def columns_of(url: str, table: str, column: str) -> int:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        query = "SELECT count(*) FROM information_schema.columns WHERE table_name = $1 AND column_name = $2"
        return int(await conn.fetchval(query, table, column))
    finally:
        await conn.close()


class TestUpgradeFrom0007:
    """Migration 0008 adds agents.leases_renewed_at and a claim_next_task() that renews the
    agent's other leases only when its last renewal is a second old: a database upgraded from
    0007, with an agent holding a RUNNING task, renews that lease on the first claim (the
    column starts NULL), not on a claim right after, and again a second later; a downgrade
    restores 0007's function, which still claims and renews, and drops the column."""

    async def test_the_first_claim_after_the_upgrade_renews_and_the_next_within_a_second_does_not(self):
        from alembic import command

        from task_service.db.lifecycle import Policy
        from task_service.db.migrate import alembic_config, upgrade_to_head
        from task_service.services import Services
        from tests.conftest import create_pg_database, drop_pg_database, make_settings

        url = await create_pg_database("ts_up0007")
        old_lease = datetime.now(UTC) + timedelta(seconds=30)
        policy = Policy(lease_seconds=600)
        try:
            await seed_running_task(url, "0007", max_tasks=5, lease=old_lease, pending=4)
            await upgrade_to_head(url)
            assert await renewal_state(url) == (old_lease, None)

            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                first, _ = await services.driver.claim_next("a", policy)
                renewed_lease, renewed_at = await renewal_state(url)
                # Within the second nothing is renewed, even with a lease 10 minutes longer,
                # which 0007's rule alone (leases it moves by a second or more) would write.
                second, _ = await services.driver.claim_next("a", Policy(lease_seconds=1200))
                assert await renewal_state(url) == (renewed_lease, renewed_at)
                await asyncio.sleep(1.2)
                third, _ = await services.driver.claim_next("a", policy)
                later_lease, later_at = await renewal_state(url)
            finally:
                await services.close()
            assert first is not None
            assert second is not None
            assert third is not None
            assert renewed_at is not None
            assert first.lease_expires_at is not None
            assert renewed_lease == first.lease_expires_at  # renewed with the claim
            assert renewed_lease > old_lease + timedelta(seconds=500)
            assert later_at is not None
            assert later_at > renewed_at + timedelta(seconds=1)
            assert later_lease == third.lease_expires_at

            await asyncio.to_thread(command.downgrade, alembic_config(url), "0007")
            assert await columns_of(url, "agents", "leases_renewed_at") == 0
            services = Services.build(make_settings(url))
            await services.start()
            try:
                assert services.driver is not None
                await asyncio.sleep(1.2)  # 0007's rule: leases it moves by a second or more
                fourth, _ = await services.driver.claim_next("a", Policy(lease_seconds=1200))
            finally:
                await services.close()
            assert fourth is not None
            assert fourth.lease_expires_at is not None
            conn = await asyncpg.connect(url.replace("+asyncpg", ""))
            try:
                leases = await conn.fetch("SELECT lease_expires_at FROM tasks WHERE assignee_id = 1")
            finally:
                await conn.close()
            assert [r["lease_expires_at"] for r in leases] == [fourth.lease_expires_at] * 5
        finally:
            await drop_pg_database(url)
