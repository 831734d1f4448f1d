"""R4: two servers on one database, agents working through both; the one holding the reaper's
leader lock is SIGKILLed. The other takes over within 2 x REAPER_INTERVAL_SECONDS (the
dead leader's connection closes, PostgreSQL releases its session advisory lock, the
follower takes it at its next tick), no lease that falls due around the failure is missed,
and every task still completes exactly once (agents fail over to the surviving server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, fresh_pg_database, graphql_client, running_server
from tests.e2e.test_concurrency import CLAIM
from tests.e2e.test_leases import leader_backends
from tests.ops.helpers import sample, scrape
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

PROCESSES = 6
TASKS = 120
SILENT = 3  # agents that claim a task and go quiet just before the leader dies
HEARTBEAT_TIMEOUT = 6.0
REAPER_INTERVAL = 2.0
TAKEOVER_BOUND = 2 * REAPER_INTERVAL
LEASE_BOUND = HEARTBEAT_TIMEOUT + TAKEOVER_BOUND
MARGIN = 3.0  # a tick on a loaded 2-core machine, and the sequencer's stamp of its events
SERVER_ENV = {
    "HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
    "REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
    "RETRY_BACKOFF_SECONDS": "0",
}


async def is_leader(server: Server) -> bool:
    return sample(await scrape(server.url), "task_service_reaper_leader") == 1


async def lock_holder(database_url: str) -> int | None:
    """The backend pid holding the reaper's leader lock in this database, if any."""
    holders = await leader_backends(database_url.rsplit("/", 1)[1])
    return holders[0] if holders else None


async def test_the_other_replica_takes_over_the_reaper_and_no_lease_is_missed(tmp_path: Path) -> None:
    async with (
        fresh_pg_database("ts_r4") as url,
        running_server(url, tmp_path, **SERVER_ENV) as a,
        running_server(url, tmp_path, **SERVER_ENV) as b,
        graphql_client(b.url) as gql,
        fleet(tmp_path) as agents,
    ):
        await poll_until(lambda: lock_holder(url), within=30, what="a reaper leader")
        leaders = [server for server in (a, b) if await is_leader(server)]
        assert len(leaders) == 1, "exactly one replica leads the reaper"
        leader, follower = (a, b) if leaders[0] is a else (b, a)

        project = await create_project(gql, "r4")
        await create_tasks(gql, project, TASKS, maxAttempts=10)
        names = await register_agents(gql, "r4", PROCESSES)
        # Half the agents start on the leader, half on the follower; each fails over.
        urls = [[a.url, b.url], [b.url, a.url]]
        for n, group in enumerate(grouped(names, 1)):
            agents.start(urls[n % 2], project, [group], start=True, work_seconds=0.2)
        await agents.wait_ready()
        await poll_until(lambda: len(agents.completed()) >= TASKS // 4, within=RUN_DEADLINE, what="a quarter done")

        # Leases that fall due while the leader is dead or being replaced.
        silent_project = await create_project(gql, "r4-silent")
        silent_tasks = await create_tasks(gql, silent_project, SILENT)
        silent_agents = await register_agents(gql, "r4-silent", SILENT)
        for task_id, name in zip(silent_tasks, silent_agents, strict=True):
            await gql.execute(CLAIM, id=task_id, agent=name)

        old_holder = await lock_holder(url)
        await leader.kill()
        killed_at = time.monotonic()

        async def new_holder() -> bool:
            holder = await lock_holder(url)
            return holder is not None and holder != old_holder

        locked = await poll_until(new_holder, within=60, what="the follower to take the leader lock")
        takeover = await poll_until(lambda: is_leader(follower), within=60, what="the follower to lead")
        takeover = time.monotonic() - killed_at
        assert takeover <= TAKEOVER_BOUND + MARGIN, (
            f"the follower led {takeover:.2f}s after the leader died; the bound is 2 x REAPER_INTERVAL_SECONDS"
        )

        await agents.wait_all_completed(url, project, TASKS, within=RUN_DEADLINE)
        await agents.stop()
        tasks = await project_tasks(url, project)
        events = await project_events(url, project)
        assert_completed_exactly_once(tasks, events, agents.completed())

        # Every silent agent's lease was reaped, by the new leader, within the bound.
        async def all_reaped() -> bool:
            counts = await project_tasks(url, silent_project)
            return all(t["status"] == "PENDING" for t in counts.values())

        await poll_until(all_reaped, within=60, what="the silent agents' tasks requeued")
        async with db(url) as conn:
            last_seen = dict(
                await conn.fetch(
                    "SELECT name, last_heartbeat_at FROM agents WHERE name = ANY($1::text[])", silent_agents
                )
            )
        silent_events = await project_events(url, silent_project)
        silences = []
        for task_id, name in zip(silent_tasks, silent_agents, strict=True):
            (expiry,) = [e for e in silent_events if str(e["task_id"]) == task_id and e["type"] == "LEASE_EXPIRED"]
            silence = (expiry["created_at"] - last_seen[name]).total_seconds()
            silences.append(silence)
            assert HEARTBEAT_TIMEOUT <= silence <= LEASE_BOUND + MARGIN, (
                f"task {task_id} requeued {silence:.2f}s after its agent's last heartbeat (bound {LEASE_BOUND:.1f}s)"
            )
        failovers = [r for r in agents.records("error") if r["code"] == "TRANSPORT"]

    print(
        f"\nR4: leader SIGKILLed; the follower held the lock {locked:.2f}s later and led (gauge) "
        f"{takeover:.2f}s after the kill (bound 2 x REAPER_INTERVAL_SECONDS = {TAKEOVER_BOUND:g}s); "
        f"{SILENT} silent agents' leases reaped {min(silences):.2f}-{max(silences):.2f}s after their last "
        f"heartbeat (bound {LEASE_BOUND:g}s); {len(failovers)} agent calls failed over; {TASKS} tasks completed once"
    )
