"""deploy/backup.sh and deploy/restore.sh: a restore drill (dump, wipe, restore, the same data
through the API, new ids after the old ones) and the KEEP_DAYS rotation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.e2e.conftest import GraphQLClient, fresh_pg_database, graphql_client, running_server
from tests.ops.helpers import REPO, clean_env

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(240)]

BACKUP = REPO / "deploy" / "backup.sh"
RESTORE = REPO / "deploy" / "restore.sh"
DAY = 24 * 3600

SNAPSHOT = """
{
  projects(includeDeleted: true) { id name description status createdAt updatedAt deletedAt }
  tasks(filter: {includeDeleted: true}, first: 10) {
    nodes {
      id title status priority tags requiredSkills attempt maxAttempts assignee { name } result summary
      feedback ready dependencies { id } blockedBy { id } createdAt updatedAt assignedAt startedAt
      submittedAt completedAt leaseExpiresAt deletedAt events { id type fromStatus toStatus actor }
    }
  }
  agents(includeDeleted: true) {
    id name skills status lastHeartbeatAt registeredAt stats { totalTasks completedTasks }
  }
  events(after: "0", first: 50) { id taskId type createdAt data }
  dashboardStats { tasks { total pending ready completed } }
}
"""


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=clean_env(**env), capture_output=True, text=True, timeout=120, check=False
    )


async def make_history(gql: GraphQLClient) -> None:
    """Projects, tasks with dependencies, agents and their work: every kind of row."""
    await gql.execute('mutation { registerAgent(input: {name: "writer", skills: ["copywrite"]}) { token } }')
    await gql.execute('mutation { registerAgent(input: {name: "editor"}) { token } }')
    pid = (await gql.execute('mutation { createProject(input: {name: "Launch"}) { id } }'))["createProject"]["id"]
    await gql.execute(
        "mutation($p: ID!) { createTasks(projectId: $p, tasks: ["
        '{ref: "a", title: "Brief", taskType: "copywrite", requiredSkills: ["copywrite"], tags: ["x"]},'
        '{ref: "b", title: "Publish", taskType: "publish", dependsOnRefs: ["a"]},'
        '{title: "Gone", taskType: "research"}]) { id } }',
        p=pid,
    )
    task = (await gql.execute('mutation { claimNextTask(agent: "writer") { id attempt } }'))["claimNextTask"]
    await gql.execute(f'mutation {{ startTask(id: "{task["id"]}", agent: "writer") {{ id }} }}')
    await gql.execute(f'mutation {{ submitTask(id: "{task["id"]}", agent: "writer", result: {{w: 1}}) {{ id }} }}')
    await gql.execute(f'mutation {{ reviewTask(id: "{task["id"]}", reviewer: "editor", approved: true) {{ id }} }}')
    await gql.execute('mutation { deleteTask(id: "3") }')


class TestRestoreDrill:
    async def test_dump_wipe_restore_gives_the_same_data(self, tmp_path: Path) -> None:
        backups = tmp_path / "backups"
        async with fresh_pg_database("ts_backup") as url:
            async with running_server(url, tmp_path) as server, graphql_client(server.url) as gql:
                await make_history(gql)
                before = await gql.execute(SNAPSHOT)

                dumped = await asyncio.to_thread(run, BACKUP, url, BACKUP_DIR=str(backups))

            assert dumped.returncode == 0, dumped.stderr
            (backup,) = backups.glob("task-service-*.dump")
            assert f"wrote {backup}" in dumped.stdout
        # The database is gone (dropped with everything in it); restore into an empty one.
        restored_url = await create_pg_database("ts_restored")
        try:
            restored = await asyncio.to_thread(run, RESTORE, str(backup), restored_url)
            assert restored.returncode == 0, restored.stderr

            async with running_server(restored_url, tmp_path) as server, graphql_client(server.url) as gql:
                after = await gql.execute(SNAPSHOT)
                assert after == before
                assert_counted(before)
                pid = before["projects"][0]["id"]
                new = await gql.execute(
                    f'mutation {{ createTask(input: {{projectId: "{pid}", title: "n", taskType: "x"}}) {{ id }} }}'
                )
                assert new["createTask"]["id"] == "4"
                events = await gql.execute(f'{{ events(after: "{before["events"][-1]["id"]}") {{ id type }} }}')
                assert events["events"] == [{"id": str(int(before["events"][-1]["id"]) + 1), "type": "CREATED"}]
        finally:
            await drop_pg_database(restored_url)

    def test_a_failed_dump_leaves_no_backup(self, tmp_path: Path) -> None:
        result = run(BACKUP, "postgresql://postgres@127.0.0.1:1/nothing", BACKUP_DIR=str(tmp_path))

        assert result.returncode != 0
        assert list(tmp_path.iterdir()) == []


def assert_counted(snapshot: dict[str, Any]) -> None:
    """The drill's data is not trivially empty."""
    assert len(snapshot["tasks"]["nodes"]) == 3
    assert len(snapshot["events"]) >= 8
    assert {a["name"] for a in snapshot["agents"]} == {"writer", "editor"}


class TestRotation:
    async def test_keeps_the_last_keep_days_days(self, tmp_path: Path) -> None:
        now = time.time()
        old = tmp_path / "task-service-20200101T000000Z.dump"
        recent = tmp_path / "task-service-20200102T000000Z.dump"
        unrelated = tmp_path / "notes.txt"
        for path, age in ((old, 8 * DAY), (recent, 6 * DAY + 12 * 3600), (unrelated, 30 * DAY)):
            path.write_text("x")
            os.utime(path, (now - age, now - age))
        async with fresh_pg_database("ts_backup") as url:
            result = await asyncio.to_thread(run, BACKUP, BACKUP_DIR=str(tmp_path), KEEP_DAYS="7", DATABASE_URL=url)

        assert result.returncode == 0, result.stderr
        assert f"removed {old}" in result.stdout
        remaining = await asyncio.to_thread(lambda: {p.name for p in tmp_path.iterdir()})
        assert old.name not in remaining
        assert {recent.name, unrelated.name} <= remaining
        assert len([name for name in remaining if name.startswith("task-service-")]) == 2

    def test_keep_days_must_be_a_number(self, tmp_path: Path) -> None:
        result = run(BACKUP, "postgresql://unused", BACKUP_DIR=str(tmp_path), KEEP_DAYS="a week")

        assert result.returncode == 2
        assert "KEEP_DAYS" in result.stderr
