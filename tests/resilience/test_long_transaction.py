"""R5: a session outside the service holds a transaction open, with row locks on one working
agent and on some ready tasks, for HOLD seconds (RESILIENCE_LONG_TX_SECONDS: 20 by default,
60 for the full run) while agents work:

- nothing waits on it forever: every call of the blocked agent ends within
  STATEMENT_TIMEOUT_SECONDS (PostgreSQL's statement_timeout covers lock waits) with the
  retryable timeout error, and the other agents keep completing tasks meanwhile (claims
  SKIP LOCKED past the locked tasks);
- the reaper is not stalled by it: a crashed agent's task is still requeued within
  HEARTBEAT_TIMEOUT_SECONDS + REAPER_INTERVAL_SECONDS, although another crashed agent's
  task is among the locked rows (that one is requeued once the transaction ends);
- when it ends, the locked tasks and the blocked agent are worked again and every task
  completes exactly once."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import fresh_pg_database, graphql_client, running_server
from tests.e2e.test_concurrency import CLAIM
from tests.resilience.helpers import (
    RUN_DEADLINE,
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

HOLD = float(os.environ.get("RESILIENCE_LONG_TX_SECONDS", "20"))
PROCESSES = 6
TASKS = 150
LOCKED_TASKS = 5
STATEMENT_TIMEOUT = 3.0
HEARTBEAT_TIMEOUT = 6.0
REAPER_INTERVAL = 1.0
# Room for a loaded 2-core machine on top of each bound; still far below HOLD, so a call or
# a reaper that waited for the transaction to end would fail the test.
MARGIN = 5.0
WAIT_MARGIN = 8.0  # a call's own time on a loaded machine, on top of the statement timeout
SERVER_ENV = {
    "STATEMENT_TIMEOUT_SECONDS": str(STATEMENT_TIMEOUT),
    "HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
    "REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
    "RETRY_BACKOFF_SECONDS": "0",
}


async def test_a_long_transaction_blocks_nothing_forever_and_work_recovers(tmp_path: Path) -> None:
    assert HOLD >= HEARTBEAT_TIMEOUT + REAPER_INTERVAL + MARGIN, "the hold must outlast the bounds it tests"
    async with (
        fresh_pg_database("ts_r5") as url,
        running_server(url, tmp_path, **SERVER_ENV) as server,
        graphql_client(server.url) as gql,
        fleet(tmp_path) as agents,
        db(url) as blocker,
    ):
        project = await create_project(gql, "r5")
        await create_tasks(gql, project, TASKS, maxAttempts=10)
        names = await register_agents(gql, "r5", PROCESSES)
        held_agent = names[0]
        crash_project = await create_project(gql, "r5-crash")
        crash_task, locked_crash_task = await create_tasks(gql, crash_project, 2)
        # Registered first, so the reaper meets it first among the silent agents.
        (locked_crashed,) = await register_agents(gql, "r5-crashed-locked", 1)
        (crashed,) = await register_agents(gql, "r5-crashed", 1)
        agents.start([server.url], project, grouped(names, 1), start=True, work_seconds=0.2)
        await agents.wait_ready()
        await poll_until(lambda: len(agents.completed()) >= TASKS // 5, within=RUN_DEADLINE, what="a fifth done")

        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT id FROM agents WHERE name = $1 FOR UPDATE", held_agent)
        locked = [
            str(row["id"])
            for row in await blocker.fetch(
                "SELECT id FROM tasks WHERE project_id = $1 AND status = 'PENDING' ORDER BY id LIMIT $2 FOR UPDATE",
                int(project),
                LOCKED_TASKS,
            )
        ]
        assert len(locked) == LOCKED_TASKS
        began = time.time()
        # Two agents claim a task each and die at once; the transaction also holds one of
        # those tasks (someone inspecting it).
        await gql.execute(CLAIM, id=locked_crash_task, agent=locked_crashed)
        await blocker.execute("SELECT id FROM tasks WHERE id = $1 FOR UPDATE", int(locked_crash_task))
        await gql.execute(CLAIM, id=crash_task, agent=crashed)
        completed_at_start = len(agents.completed())
        try:
            await asyncio.sleep(HOLD)
            during = len(agents.completed()) - completed_at_start
            async with db(url) as reader:  # a plain read is never blocked by row locks
                statuses = await reader.fetch(
                    "SELECT status FROM tasks WHERE id = ANY($1::bigint[])", list(map(int, locked))
                )
                crash_status = await reader.fetchval("SELECT status FROM tasks WHERE id = $1", int(crash_task))
            held_errors = [r for r in agents.records("error") if r["agent"] == held_agent and r["t"] >= began]
        finally:
            await transaction.rollback()
        ended = time.time()

        assert during > 0, "the other agents completed nothing while the transaction was open"
        # Not only tasks claimed before it began: claims go on past the locked tasks (a claim
        # that waited for them would have ended at the statement timeout, unsuccessful).
        late_claims = [r for r in agents.records("claimed") if began + STATEMENT_TIMEOUT + 2 <= r["t"] <= ended]
        assert late_claims, "no claim succeeded once the transaction held the tasks: claims wait on locked tasks"
        assert {row["status"] for row in statuses} == {"PENDING"}, "claims skip the locked tasks"
        assert crash_status == "PENDING", "the reaper requeued the crashed agent's task despite the open transaction"
        assert held_errors, "the blocked agent's calls never returned"
        assert {r["code"] for r in held_errors} == {"INTERNAL"}
        assert all(r["retryable"] and "STATEMENT_TIMEOUT_SECONDS" in r["message"] for r in held_errors), held_errors[:3]
        waits = [r["seconds"] for r in agents.records() if r["op"] in ("error", "slow") and began <= r["t"] <= ended]
        assert max(waits) <= STATEMENT_TIMEOUT + WAIT_MARGIN < HOLD, (
            f"a call waited {max(waits):.1f}s on the open transaction"
        )

        await agents.wait_all_completed(url, project, TASKS, within=RUN_DEADLINE)
        await agents.stop()
        tasks = await project_tasks(url, project)
        events = await project_events(url, project)
        assert_completed_exactly_once(tasks, events, agents.completed())
        assert [r for r in agents.records("completed") if r["agent"] == held_agent and r["t"] > ended], (
            "the blocked agent never worked again"
        )

        async def both_requeued() -> bool:
            return {t["status"] for t in (await project_tasks(url, crash_project)).values()} == {"PENDING"}

        await poll_until(both_requeued, within=60, what="both crashed agents' tasks requeued")
        crash_events = [e for e in await project_events(url, crash_project) if str(e["task_id"]) == crash_task]
        (claimed,) = [e for e in crash_events if e["type"] == "CLAIMED"]
        (expired,) = [e for e in crash_events if e["type"] == "LEASE_EXPIRED"]
        requeued = (expired["created_at"] - claimed["created_at"]).total_seconds()
        bound = HEARTBEAT_TIMEOUT + REAPER_INTERVAL
        assert requeued <= bound + MARGIN, f"the crashed agent's task came back after {requeued:.1f}s (bound {bound}s)"

    print(
        f"\nR5: a transaction held agent {held_agent}'s row and {LOCKED_TASKS} ready tasks for {ended - began:.1f}s; "
        f"meanwhile {during} tasks completed by the others "
        f"({len(late_claims)} claimed {STATEMENT_TIMEOUT + 2:g} s or more into it), "
        f"the blocked agent's {len(held_errors)} calls ended "
        f"with the statement timeout (longest wait of any call {max(waits):.1f}s, STATEMENT_TIMEOUT_SECONDS "
        f"{STATEMENT_TIMEOUT:g}), a crashed agent's task was requeued after {requeued:.1f}s (bound {bound:g}s); "
        f"after it, all {TASKS} tasks completed once"
    )
