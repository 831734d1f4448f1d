"""task_counts (migration 0003, db/counts.py): the counts dashboardStats, project progress and
/metrics read are kept by triggers in the writing transaction, survive concurrent writers and
the reaper's folding, and start right on a database upgraded from 0002 with tasks in it.
(The fuzzers check the same equality after every step: tests/invariants.py, "Counts".)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from task_service.db import counts as db_counts
from task_service.db.migrate import upgrade_to_head
from task_service.db.models import TaskCount
from task_service.reaper import Reaper
from tests import factories as f
from tests.db.test_migrations import empty_database, run_on, upgrade_to  # noqa: F401 (fixture)
from tests.invariants import assert_invariants, check

STATS = """query($p: ID) { dashboardStats(projectId: $p) {
  tasks { total pending ready assigned running reviewing completed failed cancelled }
  deleted { tasks } } }"""


def iso(moment: datetime) -> str:
    return moment.isoformat()


async def stats(gql: Any, project_id: str | None = None) -> dict[str, Any]:
    return (await gql.execute(STATS, p=project_id))["dashboardStats"]


async def scanned(services: Any, project_id: str | None = None) -> dict[str, int]:
    """The same numbers by scanning tasks, as dashboardStats computed them before 0003."""
    where = "" if project_id is None else " AND project_id = :p"
    params: dict[str, Any] = {"now": datetime.now(UTC), "p": None if project_id is None else int(project_id)}
    async with services.read() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT status, COUNT(*), SUM(CASE WHEN status = 'PENDING' AND unmet_dependencies = 0 "
                    "AND (available_at IS NULL OR available_at <= :now) THEN 1 ELSE 0 END) "
                    "FROM tasks WHERE deleted_at IS NULL" + where + " GROUP BY status"
                ),
                params,
            )
        ).all()
        deleted = await session.scalar(
            text("SELECT COUNT(*) FROM tasks WHERE deleted_at IS NOT NULL" + where),  # noqa: S608 (fixed text)
            params,
        )
    counts = {s: 0 for s in ("pending", "assigned", "running", "reviewing", "completed", "failed", "cancelled")}
    ready = 0
    for status, n, ready_here in rows:
        counts[status.lower()] = n
        ready += int(ready_here or 0)
    return {**counts, "ready": ready, "total": sum(counts.values()), "deleted": int(deleted or 0)}


def flat(numbers: dict[str, Any]) -> dict[str, int]:
    return {**numbers["tasks"], "deleted": numbers["deleted"]["tasks"]}


class TestKeptByTheWrites:
    async def test_every_kind_of_write_moves_the_counts(self, gql, services, backend):
        pid = await f.project(gql)
        other = await f.project(gql, name="Other")
        await f.agent(gql, name="a", maxConcurrentTasks=5)
        first = await f.task(gql, project_id=pid, title="first", requiresReview=False)
        blocked = await f.task(gql, project_id=pid, title="blocked", dependsOn=[first["id"]])
        await f.task(gql, project_id=pid, title="due", availableAt=iso(datetime.now(UTC) - timedelta(minutes=1)))
        await f.task(gql, project_id=pid, title="later", availableAt=iso(datetime.now(UTC) + timedelta(hours=1)))
        doomed = await f.task(gql, project_id=other, title="doomed")

        async def agree(*projects: str | None) -> None:
            for project in projects or (None, pid, other):
                assert flat(await stats(gql, project)) == await scanned(services, project)
            await assert_invariants(services)

        await agree()
        numbers = flat(await stats(gql, pid))
        # first and due are ready; blocked waits for first, later for its time.
        assert (numbers["pending"], numbers["ready"]) == (4, 2)

        await f.claim(gql, task_id=first["id"], agent="a")
        await agree()
        await f.transition(gql, "startTask", id=first["id"], agent="a")
        await f.transition(gql, "submitTask", id=first["id"], agent="a", result={"ok": True})
        await agree()
        assert flat(await stats(gql, pid))["completed"] == 1
        assert flat(await stats(gql, pid))["ready"] == 2  # blocked became ready
        await f.transition(gql, "cancelTask", id=blocked["id"])
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=doomed["id"])
        await agree()
        assert flat(await stats(gql, other))["deleted"] == 1
        await gql.execute("mutation($id: ID!) { restoreTask(id: $id) { id } }", id=doomed["id"])
        await agree()
        await gql.execute("mutation($id: ID!) { deleteProject(id: $id) }", id=pid)
        await agree(None, other)
        assert flat(await stats(gql, None))["deleted"] == 4
        erased = await f.task(gql, project_id=other, title="erased")
        await gql.execute("mutation($id: ID!) { deleteTask(id: $id, hard: true) }", id=erased["id"])
        await agree(None, other)
        assert flat(await stats(gql, other))["total"] == 1

    async def test_folding_keeps_the_sums_and_leaves_one_row_per_bucket(self, gql, services, backend):
        pid = await f.project(gql)
        await f.agent(gql, name="a", maxConcurrentTasks=20)
        for i in range(12):
            await f.task(gql, project_id=pid, title=f"t{i}")
        for _ in range(5):
            await gql.execute('mutation { claimNextTask(agent: "a") { id } }')
        before = flat(await stats(gql, pid))
        async with services.read() as session:
            rows_before = await session.scalar(select(func.count()).select_from(TaskCount))

        result = await Reaper(services).tick()

        async with services.read() as session:
            rows_after = await session.scalar(select(func.count()).select_from(TaskCount))
            buckets = (await session.execute(select(TaskCount.project_id, TaskCount.bucket))).all()
        assert flat(await stats(gql, pid)) == before == await scanned(services, pid)
        assert len(buckets) == len(set(buckets)) == 2  # READY and ASSIGNED, one row each
        assert result.folded == rows_before - rows_after > 0
        await assert_invariants(services)


@pytest.mark.postgres_only
class TestConcurrentWriters:
    async def test_forty_claimers_and_a_folding_loop_lose_no_count(self, gql, services, backend):
        pid = await f.project(gql)
        for i in range(40):
            await f.agent(gql, name=f"a{i}", maxConcurrentTasks=10)
        await gql.execute(
            "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
            p=pid,
            t=[{"title": f"t{i}", "taskType": "research"} for i in range(300)],
        )
        done = asyncio.Event()

        async def fold() -> int:
            passes = 0
            while not done.is_set():
                async with services.transaction() as session:
                    await db_counts.compact(session)
                passes += 1
                await asyncio.sleep(0)
            return passes

        async def claimer(name: str) -> int:
            claimed = 0
            for _ in range(6):
                data = await gql.execute(f'mutation {{ claimNextTask(agent: "{name}") {{ id }} }}')
                claimed += data["claimNextTask"] is not None
            return claimed

        folder = asyncio.create_task(fold())
        try:
            claimed = await asyncio.gather(*(claimer(f"a{i}") for i in range(40)))
        finally:
            done.set()
            passes = await folder
        assert passes > 1
        assert sum(claimed) == 240
        numbers = flat(await stats(gql, pid))
        assert numbers == await scanned(services, pid)
        assert (numbers["assigned"], numbers["ready"]) == (240, 60)
        await assert_invariants(services)


class TestUpgradeFrom0002:
    async def test_existing_tasks_are_counted_and_later_writes_keep_the_counts(self, empty_database, schema):  # noqa: F811
        await upgrade_to(empty_database, "0002")

        def seed(conn: Connection) -> None:
            def moment(hours: int) -> Any:
                value = datetime.now(UTC) + timedelta(hours=hours)
                # As the models store it: timestamptz on PostgreSQL, naive UTC text on SQLite.
                return value if conn.dialect.name == "postgresql" else value.strftime("%Y-%m-%d %H:%M:%S.%f")

            past, future = moment(-1), moment(1)
            conn.execute(text("INSERT INTO skill_sets (key, skills) VALUES ('', '[]')"))
            for name in ("Launch", "Other"):
                conn.execute(
                    text(
                        "INSERT INTO projects (name, status, created_at, updated_at) "
                        "VALUES (:n, 'ACTIVE', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"n": name},
                )
            rows = [
                (1, "PENDING", 0, None, None),
                (1, "PENDING", 0, None, None),
                (1, "PENDING", 1, None, None),
                (1, "PENDING", 0, past, None),
                (1, "PENDING", 0, future, None),
                (1, "COMPLETED", 0, None, None),
                (2, "FAILED", 0, None, None),
                (2, "PENDING", 0, None, past),
            ]
            for i, (project, status, unmet, available, deleted) in enumerate(rows):
                conn.execute(
                    text(
                        "INSERT INTO tasks (project_id, title, task_type, status, priority, tags, "
                        "required_skills, skill_set_id, requires_review, attempt, max_attempts, "
                        "unmet_dependencies, created_at, updated_at, available_at, deleted_at) VALUES "
                        "(:p, :t, 'research', :s, 5, '[]', '[]', 1, true, 0, 3, :u, CURRENT_TIMESTAMP, "
                        "CURRENT_TIMESTAMP, :a, :d)"
                    ),
                    {"p": project, "t": f"t{i}", "s": status, "u": unmet, "a": available, "d": deleted},
                )
            conn.commit()

        await run_on(empty_database, seed)
        await upgrade_to_head(empty_database)

        from task_service.services import Services
        from tests.conftest import Client, make_settings

        services = Services.build(make_settings(empty_database))
        await services.start()
        try:
            gql = Client(schema, services)
            numbers = flat(await stats(gql))
            assert numbers == await scanned(services)
            assert (numbers["total"], numbers["pending"], numbers["ready"], numbers["deleted"]) == (7, 5, 3, 1)
            assert flat(await stats(gql, "2")) == await scanned(services, "2")
            await f.agent(gql, name="a", maxConcurrentTasks=5)
            await gql.execute('mutation { claimNextTask(agent: "a") { id } }')
            await f.task(gql, project_id="2", title="new")
            assert flat(await stats(gql)) == await scanned(services)
            assert flat(await stats(gql))["assigned"] == 1
            # (The seeded rows have no events, so only the counts' invariant applies here.)
            violations = (await check(services)).violations
            assert not [v for v in violations if v.startswith("task_counts")], violations
        finally:
            await services.close()
