"""Upgrading a v1 database: `task-service migrate` converts it in place, keeping every row and
id, in one transaction that either completes or leaves the v1 data untouched."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from task_service import cli
from task_service.db import v1
from task_service.observability import logs
from tests.e2e.conftest import graphql_client, running_server
from tests.ops.helpers import empty_pg_database, libpq, one_line, run_cli
from tests.ops.v1_data import DATA, FINDINGS, LONG_NAME, build_v1_database

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(240)]

# The server that checks the result keeps old soft-deleted rows (its reaper would purge them).
KEEP_DELETED = {"SOFT_DELETE_RETENTION_DAYS": "100000"}

SNAPSHOT = """
{
  projects(includeDeleted: true) { id name description status createdAt updatedAt deletedAt }
  tasks(filter: {includeDeleted: true}, first: 100) {
    totalCount
    nodes {
      id title description taskType status priority tags requiredSkills attempt maxAttempts
      assignee { name } reviewer acceptanceCriteria requiresReview feedback lastError result ready
      dependencies { id } parent { id } project { id } estimatedHours timeoutMinutes createdBy
      createdAt updatedAt assignedAt startedAt completedAt dueAt deletedAt leaseExpiresAt
    }
  }
  agents(includeDeleted: true) {
    id name role skills capabilities status maxConcurrentTasks lastHeartbeatAt registeredAt deletedAt
    stats { totalTasks completedTasks failedTasks }
  }
  events(after: "0", first: 100) { id taskId projectId type fromStatus toStatus actor message data createdAt }
}
"""


def utc(text: str) -> str:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).isoformat()


async def table_names(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


def dump(dsn: str) -> str:
    """The whole database as SQL (schema and rows): equal dumps, equal databases."""
    result = subprocess.run(
        ["pg_dump", "--no-owner", "--dbname", dsn], capture_output=True, text=True, check=True, timeout=120
    )
    # pg_dump brackets its output with \restrict lines holding a random key.
    return "".join(
        line for line in result.stdout.splitlines(keepends=True) if not line.startswith(("\\restrict", "\\unrestrict"))
    )


class TestConversion:
    async def test_every_row_arrives_with_its_id(self, tmp_path: Path) -> None:
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))

            result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)

            assert result.returncode == 0, result.stderr
            lines = result.stdout.splitlines()
            assert lines[0].startswith("converted the v1 database: 5 projects, 15 tasks (1 soft-deleted), ")
            assert "6 dependencies, 9 log entries as task events, 5 agents" in lines[0]
            for finding in FINDINGS:
                assert finding in lines, result.stdout
            assert lines[-1] == f"migrated {url} to head"
            assert "Traceback" not in result.stderr
            async with running_server(url, tmp_path, **KEEP_DELETED) as server, graphql_client(server.url) as gql:
                data = await gql.execute(SNAPSHOT)
                self.check_projects(data["projects"])
                self.check_tasks({t["id"]: t for t in data["tasks"]["nodes"]}, data["tasks"]["totalCount"])
                self.check_agents({a["name"]: a for a in data["agents"]})
                self.check_events(data["events"])
                await self.check_new_ids_and_agents_come_back(gql)
            await self.check_v1_tables_kept(libpq(url))

    def check_projects(self, projects: list[dict[str, Any]]) -> None:
        by_id = {p["id"]: p for p in projects}
        assert sorted(by_id, key=int) == ["1", "2", "3", "5", "6"]
        assert by_id["1"] == {
            "id": "1",
            "name": "Launch campaign",
            "description": "Spring launch",
            "status": "ACTIVE",
            "createdAt": utc("2025-03-01T09:00:00"),
            "updatedAt": utc("2025-03-02T09:00:00"),
            "deletedAt": None,
        }
        assert [by_id[i]["status"] for i in ("2", "3", "5", "6")] == ["COMPLETED", "PAUSED", "CANCELLED", "ACTIVE"]
        assert by_id["5"]["deletedAt"] == utc("2025-02-14T12:00:00")
        assert by_id["6"]["name"] == LONG_NAME[:100]

    def check_tasks(self, tasks: dict[str, dict[str, Any]], total: int) -> None:
        assert total == 15
        assert sorted(tasks, key=int) == [str(i) for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16)]
        expected = {
            # id: status, attempt, maxAttempts, assignee
            "1": ("PENDING", 0, 4, None),
            "2": ("COMPLETED", 1, 4, "writer"),
            "3": ("RUNNING", 2, 4, "designer"),
            "4": ("ASSIGNED", 1, 4, "writer"),
            "5": ("REVIEWING", 1, 3, "writer"),
            "6": ("FAILED", 4, 4, "ghost"),
            "7": ("CANCELLED", 0, 4, None),
            "8": ("PENDING", 1, 4, None),  # rejected with attempts left: back in the queue
            "9": ("FAILED", 4, 4, "writer"),  # rejected on its last attempt
            "10": ("PENDING", 0, 4, None),
            "11": ("PENDING", 0, 3, None),
            "12": ("PENDING", 0, 4, None),
            "14": ("PENDING", 0, 4, None),
            "15": ("PENDING", 1, 4, None),
            "16": ("PENDING", 1, 4, None),  # RUNNING without an assignee
        }
        for task_id, (status, attempt, max_attempts, assignee) in expected.items():
            task = tasks[task_id]
            got = (task["status"], task["attempt"], task["maxAttempts"], (task["assignee"] or {}).get("name"))
            assert got == (status, attempt, max_attempts, assignee), task_id
        brief = tasks["2"]
        assert brief["title"] == "Write the brief"
        assert brief["taskType"] == "copywrite"
        assert brief["result"] == {"words": 420}
        assert brief["feedback"] == "Clear and short"
        assert brief["reviewer"] == "editor"
        assert brief["acceptanceCriteria"] == "Clear"
        assert brief["requiresReview"] is True
        assert brief["tags"] == ["launch"]
        assert brief["requiredSkills"] == []
        assert brief["createdBy"] == "alice"
        assert brief["timeoutMinutes"] == 60
        assert brief["createdAt"] == utc("2025-03-01T10:05:00")
        assert brief["assignedAt"] == utc("2025-03-01T11:00:00")
        assert brief["startedAt"] == utc("2025-03-01T11:05:00")
        assert brief["completedAt"] == utc("2025-03-01T15:00:00")
        assert brief["leaseExpiresAt"] is None
        research = tasks["1"]
        assert (research["priority"], research["tags"], research["estimatedHours"]) == (8, ["launch", "research"], 2.5)
        assert research["dueAt"] == utc("2025-03-10T17:00:00")
        assert research["ready"] is True
        # Dependencies: kept, the dangling 999 and the self-dependency skipped, readiness counted.
        assert [d["id"] for d in tasks["3"]["dependencies"]] == ["2"]
        assert tasks["3"]["ready"] is False  # RUNNING
        assert [d["id"] for d in tasks["4"]["dependencies"]] == ["1"]
        assert [d["id"] for d in tasks["11"]["dependencies"]] == ["3", "4", "5"]
        assert tasks["11"]["ready"] is False
        assert tasks["11"]["parent"] == {"id": "2"}
        assert tasks["12"]["dependencies"] == []
        assert tasks["12"]["ready"] is True
        # Reviewers that name an agent are kept; Discord ids stay in v1_tasks.
        assert tasks["5"]["reviewer"] == "editor"
        assert tasks["15"]["reviewer"] is None
        assert tasks["9"]["lastError"] == "rejected on the last attempt (4/4): Still wrong"
        assert tasks["8"]["feedback"] == "Too long"
        assert tasks["10"]["deletedAt"] == utc("2025-03-01T10:46:00")
        assert tasks["14"]["project"] == {"id": "5"}
        # Work in progress keeps a lease, long enough for its agent to come back.
        now = datetime.now(UTC)
        for task_id in ("3", "4"):
            lease = datetime.fromisoformat(tasks[task_id]["leaseExpiresAt"])
            assert now < lease < now + timedelta(seconds=200), task_id

    def check_agents(self, agents: dict[str, dict[str, Any]]) -> None:
        assert sorted(agents) == ["designer", "editor", "ghost", "retired", "writer"]
        writer = agents["writer"]
        assert writer["id"] == "1"
        assert writer["role"] == "copywriter"
        assert writer["skills"] == ["copywrite", "seo"]
        assert writer["capabilities"] == {"model": "claude", "languages": ["en", "fr"]}
        assert writer["status"] == "OFFLINE"  # until it registers again
        assert writer["maxConcurrentTasks"] == 3
        assert writer["lastHeartbeatAt"] == utc("2025-03-03T10:00:00")
        assert writer["registeredAt"] == utc("2025-01-01T00:00:00")
        assert writer["stats"] == {"totalTasks": 10, "completedTasks": 7, "failedTasks": 2}
        assert agents["designer"]["skills"] == ["design"]  # v1's NULL and empty skills dropped
        assert agents["retired"]["deletedAt"] == utc("2025-01-01T00:00:00")
        assert agents["ghost"]["id"] == "6"  # created after the ids v1 handed out
        assert {a["status"] for a in agents.values()} == {"OFFLINE"}

    def check_events(self, events: list[dict[str, Any]]) -> None:
        # Log entries in time order (ties by id), with cursors from 1.
        assert [e["id"] for e in events] == [str(i) for i in range(1, 10)]
        assert [(e["taskId"], e["type"], e["fromStatus"], e["toStatus"]) for e in events] == [
            ("1", "UPDATED", None, None),
            ("2", "CREATED", None, "PENDING"),
            ("2", "CLAIMED", "PENDING", "ASSIGNED"),
            ("2", "STARTED", "ASSIGNED", "RUNNING"),
            ("2", "SUBMITTED", "RUNNING", "REVIEWING"),
            ("8", "REJECTED", "REVIEWING", None),
            ("2", "APPROVED", "REVIEWING", "COMPLETED"),
            ("6", "FAILED", "RUNNING", "FAILED"),
            ("4", "CLAIMED", "PENDING", "ASSIGNED"),
        ]
        first = events[0]
        assert first["actor"] == "alice"
        assert first["message"] == "Focus on developers"
        assert first["projectId"] == "1"
        assert first["createdAt"] == utc("2025-03-01T10:02:00")
        assert first["data"] == {"v1": {"logId": 10, "action": "comment"}}
        assert events[5]["message"] == "Too long"

    async def check_new_ids_and_agents_come_back(self, gql: Any) -> None:
        registered = await gql.execute(
            'mutation { registerAgent(input: {name: "writer", skills: ["copywrite"]}) { token agent { id status } } }'
        )
        assert registered["registerAgent"]["token"]
        assert registered["registerAgent"]["agent"] == {"id": "1", "status": "BUSY"}  # it holds task 4
        project = await gql.execute('mutation { createProject(input: {name: "After the upgrade"}) { id } }')
        assert project["createProject"]["id"] == "8"  # v1's sequence had reached 7
        task = await gql.execute(
            'mutation { createTask(input: {projectId: "1", title: "New", taskType: "research"}) '
            "{ id maxAttempts timeoutMinutes priority } }"
        )
        # v1's sequence had reached 20; research defaults come from v1's task_type_defaults.
        assert task["createTask"] == {"id": "21", "maxAttempts": 3, "timeoutMinutes": 200, "priority": 6}
        events = await gql.execute('{ events(after: "9") { id taskId type } }')
        assert events["events"] == [{"id": "10", "taskId": "21", "type": "CREATED"}]

    async def check_v1_tables_kept(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            channel = await conn.fetchval("SELECT discord_channel_id FROM v1_projects WHERE id = 1")
            discord = await conn.fetchval("SELECT discord_user_id FROM v1_agents WHERE name = 'writer'")
            channels = await conn.fetchval("SELECT count(*) FROM v1_agent_channels")
            long_name = await conn.fetchval("SELECT name FROM v1_projects WHERE id = 6")
        finally:
            await conn.close()
        assert (channel, discord, channels, long_name) == ("1123581321", "555000111", 2, LONG_NAME)

    async def test_migrate_again_changes_nothing(self, tmp_path: Path) -> None:
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))
            assert run_cli("migrate", cwd=tmp_path, DATABASE_URL=url).returncode == 0
            before = dump(libpq(url))

            again = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)

            assert again.returncode == 0, again.stderr
            assert again.stdout.splitlines() == [f"migrated {url} to head"]
            assert dump(libpq(url)) == before

    async def test_two_migrations_at_once_convert_once(self, tmp_path: Path) -> None:
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))
            command = ["migrate"]

            first, second = await asyncio.gather(
                asyncio.to_thread(run_cli, *command, cwd=tmp_path, DATABASE_URL=url),
                asyncio.to_thread(run_cli, *command, cwd=tmp_path, DATABASE_URL=url),
            )

            assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
            reports = [r.stdout for r in (first, second) if "converted the v1 database" in r.stdout]
            assert len(reports) == 1
            conn = await asyncpg.connect(libpq(url))
            try:
                assert await conn.fetchval("SELECT count(*) FROM tasks") == 15
                assert await conn.fetchval("SELECT count(*) FROM task_events") == 9
            finally:
                await conn.close()


class TestServeOnV1:
    async def test_serve_refuses_and_names_the_command(self, tmp_path: Path) -> None:
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))

            result = run_cli("serve", cwd=tmp_path, DATABASE_URL=url, AUTO_MIGRATE="true")

            assert result.returncode == 1
            line = one_line(result.stderr)
            assert "v1" in line
            assert "`task-service migrate`" in line
            tables = await table_names(libpq(url))
            assert "v1_tasks" not in tables  # nothing converted
            assert "alembic_version" not in tables


class TestFailureHalfway:
    async def test_a_poisoned_row_leaves_v1_untouched(self, tmp_path: Path) -> None:
        # An older v1 without the status check let an unknown status in.
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))
            conn = await asyncpg.connect(libpq(url))
            try:
                await conn.execute("ALTER TABLE tasks DROP CONSTRAINT tasks_status_check")
                await conn.execute("UPDATE tasks SET status = 'archived' WHERE id = 7")
            finally:
                await conn.close()
            before = dump(libpq(url))

            result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)

            assert result.returncode == 1
            line = one_line(result.stderr)
            assert "task 7 ('archived')" in line
            assert "run `task-service migrate` again" in line
            assert result.stdout == ""
            assert dump(libpq(url)) == before

    async def test_a_failure_in_the_last_step_leaves_v1_untouched(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        async with empty_pg_database("ts_v1") as url:
            await build_v1_database(libpq(url))
            before = dump(libpq(url))
            # Everything else is converted by then: the events' statement fails on a constraint.
            monkeypatch.setattr(v1, "_EVENTS", v1._EVENTS.replace("l.task_id, t.project_id", "NULL, t.project_id"))
            monkeypatch.setenv("DATABASE_URL", url)
            monkeypatch.setattr(logs, "configure_logging", lambda *_: None)  # keep pytest's logging

            code = await asyncio.to_thread(cli.main, ["migrate"])

            assert code == 1
            out, err = capsys.readouterr()
            line = one_line(err)
            assert "null value" in line
            assert "task_id" in line
            assert out == ""
            assert dump(libpq(url)) == before
            assert "projects" in await table_names(libpq(url))
            assert "alembic_version" not in await table_names(libpq(url))


def test_the_v1_data_has_every_status() -> None:
    statuses = {status for status in v1.V1_STATUSES if f"'{status}'" in DATA}
    assert statuses == set(v1.V1_STATUSES)
