"""R1: 50 agent processes work 5,000 tasks to completion through two server processes on one
database (half the agents on each, as behind a load balancer): every task is completed
exactly once (the database, the event log and the agents' own records agree), and a live
taskEvents WebSocket subscriber of one server receives every event of the run, both
servers' alike, in order, no gaps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import fresh_pg_database, graphql_client, running_server
from tests.e2e.test_subscriptions_ws import TASK_EVENTS, Collector, assert_exact_log, ws_session
from tests.resilience.helpers import (
    RUN_DEADLINE,
    assert_completed_exactly_once,
    create_project,
    create_tasks,
    fleet,
    grouped,
    project_events,
    project_tasks,
    register_agents,
)

AGENTS = 50
TASKS = int(os.environ.get("RESILIENCE_R1_TASKS", "5000"))
# Each server's pool: enough for its 25 agents' requests, modest on a PostgreSQL shared with
# other test runs (max_connections 100).
POOL = {"DB_POOL_SIZE": "8", "DB_MAX_OVERFLOW": "4"}
AGENTS_PER_PROCESS = 1  # 50 real OS processes, one agent (one HTTP connection) each
# Two calls per task. The bound grows with the task count and only stops a broken run; it
# leaves room for a machine shared with other work (README, "Guarantees", has the figures).
WITHIN = max(RUN_DEADLINE, TASKS * 0.2)
pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(int(WITHIN) + 240)]


async def test_fifty_agent_processes_complete_five_thousand_tasks_exactly_once(tmp_path: Path) -> None:
    async with (
        fresh_pg_database("ts_r1") as url,
        running_server(url, tmp_path, **POOL) as server,
        running_server(url, tmp_path, **POOL) as other,
        graphql_client(server.url) as gql,
        ws_session(server) as session,
        fleet(tmp_path) as agents,
    ):
        project = await create_project(gql, "r1")
        # Subscribed before the first task exists: every event of the run must arrive live.
        subscriber = Collector(session, TASK_EVENTS, after="0", p=project)
        await create_tasks(gql, project, TASKS)
        names = await register_agents(gql, "r1", AGENTS)
        for n, group in enumerate(grouped(names, AGENTS_PER_PROCESS)):
            agents.start([(server, other)[n % 2].url], project, [group], deadline_seconds=WITHIN + 30)
        await agents.wait_ready()
        started = time.monotonic()
        await agents.wait_all_completed(url, project, TASKS, within=WITHIN)
        elapsed = time.monotonic() - started
        await agents.stop()

        tasks = await project_tasks(url, project)
        events = await project_events(url, project)
        assert len(tasks) == TASKS
        assert_completed_exactly_once(tasks, events, agents.completed())
        assert {t["attempt"] for t in tasks.values()} == {1}, "nothing was reaped, so nothing was claimed twice"
        assert {t["assignee"] for t in tasks.values()} <= set(names)

        expected = [e["seq"] for e in events]
        assert await subscriber.wait_for_id(expected[-1], within=60), (
            f"the subscriber stopped at {subscriber.ids[-1:]} of {expected[-1]}: {subscriber.error}"
        )
        await subscriber.stop()
        assert_exact_log(subscriber.ids, expected)
        assert [e["type"] for e in subscriber.events] == [e["type"] for e in events]

    per_agent = sorted(len({r["task"] for r in agents.records("completed") if r["agent"] == n}) for n in names)
    print(
        f"\nR1: {AGENTS} agents in {len(agents.processes)} processes, two servers, "
        f"completed {TASKS} tasks in {elapsed:.1f}s "
        f"({TASKS / elapsed:.0f} tasks/s, claim+submit); per agent min {per_agent[0]} max {per_agent[-1]}; "
        f"subscriber received {len(subscriber.ids)} events = the log"
    )
