"""R2: 20 % of the agent processes are SIGKILLed in the middle of their tasks. Every task
still completes exactly once, and each orphaned task is claimable again (requeued by the
reaper with LEASE_EXPIRED) within HEARTBEAT_TIMEOUT_SECONDS + REAPER_INTERVAL_SECONDS of
its agent's last sign of life, by the server's clock.

That bound is the design's correctness promise (docs/ARCHITECTURE.md, "Presence and
leases"), so it is what the test asserts, with a margin for a reaper tick on a loaded
2-core machine; how soon it happens is printed, not asserted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import fresh_pg_database, graphql_client, running_server
from tests.resilience.helpers import (
    RUN_DEADLINE,
    AgentProcess,
    assert_completed_exactly_once,
    create_project,
    create_tasks,
    db,
    fleet,
    grouped,
    poll_until,
    project_events,
    project_tasks,
    register_agents,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(300)]

PROCESSES = 10
TASKS = 100
KILLED = PROCESSES // 5  # 20 %
# Long enough that a live agent is never taken for dead while the machine is busy (a call
# can take seconds when five test suites share two cores); short enough to keep the run brief.
HEARTBEAT_TIMEOUT = 6.0
REAPER_INTERVAL = 1.0
WORK_SECONDS = 1.0
BOUND = HEARTBEAT_TIMEOUT + REAPER_INTERVAL
# A reaper tick itself takes time, and so does the sequencer's stamp of its events.
MARGIN = 4.0
SERVER_ENV = {
    "HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
    "REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
    "RETRY_BACKOFF_SECONDS": "0",
}


def holding(process: AgentProcess) -> bool:
    """The process's agent is working on a task it claimed and started, and will not call
    the server for a while yet (its submit is not in flight)."""
    records = [r for r in process.records() if r["op"] in ("claimed", "working", "completed", "lost")]
    return bool(records) and records[-1]["op"] == "working" and records[-1]["until"] > time.time() + 0.5


async def test_killed_agents_tasks_are_requeued_within_the_bound_and_all_complete_once(tmp_path: Path) -> None:
    async with (
        fresh_pg_database("ts_r2") as url,
        running_server(url, tmp_path, **SERVER_ENV) as server,
        graphql_client(server.url) as gql,
        fleet(tmp_path) as agents,
    ):
        project = await create_project(gql, "r2")
        await create_tasks(gql, project, TASKS, maxAttempts=10)
        names = await register_agents(gql, "r2", PROCESSES)
        agents.start([server.url], project, grouped(names, 1), start=True, work_seconds=WORK_SECONDS)
        await agents.wait_ready()
        await poll_until(lambda: len(agents.completed()) >= TASKS // 4, within=RUN_DEADLINE, what="a quarter done")

        victims = agents.processes[:KILLED]
        for victim in victims:
            await poll_until(lambda v=victim: holding(v), within=60, what=f"{victim.agents} mid-task")
            victim.kill()
        killed_at = time.time()
        dead = {name for victim in victims for name in victim.agents}
        async with db(url) as conn:
            orphans = {
                str(row["id"]): row["attempt"]
                for row in await conn.fetch(
                    "SELECT t.id, t.attempt FROM tasks t JOIN agents a ON a.id = t.assignee_id "
                    "WHERE t.project_id = $1 AND t.status IN ('ASSIGNED', 'RUNNING') AND a.name = ANY($2::text[])",
                    int(project),
                    list(dead),
                )
            }
        assert len(orphans) == KILLED, f"each killed agent held one task: {orphans}"

        await agents.wait_all_completed(url, project, TASKS, within=RUN_DEADLINE)
        await agents.stop()

        tasks = await project_tasks(url, project)
        events = await project_events(url, project)
        assert_completed_exactly_once(tasks, events, agents.completed())
        async with db(url) as conn:
            last_seen = {
                row["name"]: row["last_heartbeat_at"]
                for row in await conn.fetch(
                    "SELECT name, last_heartbeat_at FROM agents WHERE name = ANY($1::text[])", list(dead)
                )
            }
        silences, after_kill = [], []
        for task_id, attempt in orphans.items():
            history = [e for e in events if str(e["task_id"]) == task_id]
            expiry = next(e for e in history if e["type"] == "LEASE_EXPIRED")
            assert expiry["actor"] == "reaper"
            claims = [e for e in history if e["type"] == "CLAIMED"]
            assert claims[attempt - 1]["actor"] in dead
            assert len(claims) > attempt, f"orphan {task_id} was never claimed again"
            assert claims[attempt]["created_at"] >= expiry["created_at"]
            assert tasks[task_id]["assignee"] not in dead, "a dead agent cannot have completed it"
            silence = (expiry["created_at"] - last_seen[claims[attempt - 1]["actor"]]).total_seconds()
            silences.append(silence)
            after_kill.append(expiry["created_at"].timestamp() - killed_at)
            assert HEARTBEAT_TIMEOUT <= silence <= BOUND + MARGIN, (
                f"orphan {task_id} requeued {silence:.2f}s after its agent's last heartbeat; "
                f"the bound is HEARTBEAT_TIMEOUT_SECONDS + REAPER_INTERVAL_SECONDS = {BOUND:.1f}s"
            )
        # The killed agents' own records show no completion of their orphans.
        assert not {r["task"] for v in victims for r in v.records() if r["op"] == "completed"} & set(orphans)

    lost = agents.records("lost")
    print(
        f"\nR2: killed {KILLED} of {PROCESSES} agent processes mid-task; {len(orphans)} orphans requeued "
        f"{min(silences):.2f}-{max(silences):.2f}s after their agents' last heartbeat "
        f"({min(after_kill):.2f}-{max(after_kill):.2f}s after the kill), bound {BOUND:.1f}s "
        f"(HEARTBEAT_TIMEOUT_SECONDS {HEARTBEAT_TIMEOUT:g} + REAPER_INTERVAL_SECONDS {REAPER_INTERVAL:g}); "
        f"all {TASKS} tasks completed once; {len(lost)} tasks lost by live agents to the reaper"
    )
