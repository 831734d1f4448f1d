"""R3: PostgreSQL restarts in the middle of a run (a private cluster, as in
tests/e2e/test_pg_restart.py, so no other test's database goes down). Mutations in flight
and during the outage fail with the clear, retryable error the service promises (code
INTERNAL per the contract, `extensions.retryable: true`, a message naming the database,
never the masked "Internal server error."); the same server process recovers without a
restart; a taskEvents subscriber that loses its stream resumes with `after:` from the last
event it received; nothing is lost or duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import graphql_client, running_server
from tests.e2e.test_pg_restart import TempCluster, own_pg
from tests.e2e.test_subscriptions_ws import TASK_EVENTS, Collector, assert_exact_log, ws_session
from tests.resilience.helpers import (
    RUN_DEADLINE,
    assert_completed_exactly_once,
    create_project,
    create_tasks,
    fleet,
    grouped,
    poll_until,
    project_events,
    project_tasks,
    register_agents,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(300)]
__all__ = ["own_pg"]  # the private cluster fixture, shared with test_pg_restart.py

PROCESSES = 4
TASKS = 200
OUTAGE_SECONDS = 6.0
SERVER_ENV = {"HEARTBEAT_TIMEOUT_SECONDS": "60", "REAPER_INTERVAL_SECONDS": "1", "RETRY_BACKOFF_SECONDS": "0"}
UNAVAILABLE_WORDS = "database"


async def test_mutations_fail_retryably_the_service_recovers_and_nothing_is_lost(
    own_pg: tuple[TempCluster, str], tmp_path: Path
) -> None:
    cluster, url = own_pg
    async with (
        running_server(url, tmp_path, **SERVER_ENV) as server,
        graphql_client(server.url) as gql,
        fleet(tmp_path) as agents,
        contextlib.AsyncExitStack() as stack,
    ):
        project = await create_project(gql, "r3")
        # `steady` stays connected through the outage; `resumer` is a client that lost its
        # connection during the outage and comes back with taskEvents(after: its last id).
        steady = Collector(await stack.enter_async_context(ws_session(server)), TASK_EVENTS, after="0", p=project)
        first_connection = contextlib.AsyncExitStack()
        subscribers = [
            Collector(await first_connection.enter_async_context(ws_session(server)), TASK_EVENTS, after="0", p=project)
        ]
        await create_tasks(gql, project, TASKS, maxAttempts=10)
        names = await register_agents(gql, "r3", PROCESSES)
        agents.start([server.url], project, grouped(names, 1), start=True, work_seconds=0.1)
        await agents.wait_ready()
        await poll_until(lambda: len(agents.completed()) >= TASKS // 4, within=RUN_DEADLINE, what="a quarter done")

        errors_before = len(agents.records("error"))
        await asyncio.to_thread(cluster.stop, "fast")
        stopped = time.monotonic()
        await poll_until(
            lambda: len(agents.records("error")) > errors_before, within=30, what="agents to see the outage"
        )
        await subscribers[0].stop()
        await first_connection.aclose()
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        await asyncio.to_thread(cluster.start)
        restarted = time.monotonic()
        # Back while the agents are still at work: replay from the log, then live.
        last = subscribers[0].ids[-1] if subscribers[0].ids else 0
        session = await stack.enter_async_context(ws_session(server))
        subscribers.append(Collector(session, TASK_EVENTS, after=str(last), p=project))
        completed_at_restart = len(agents.completed())
        await poll_until(
            lambda: len(agents.completed()) > completed_at_restart, within=60, what="work to resume after the restart"
        )
        resumed = time.monotonic() - restarted
        await agents.wait_all_completed(url, project, TASKS, within=RUN_DEADLINE)
        await agents.stop()
        assert server.process.returncode is None, "the server recovered by itself, without a restart"

        tasks = await project_tasks(url, project)
        events = await project_events(url, project)
        assert_completed_exactly_once(tasks, events, agents.completed())

        # What the agents were told while the database was away.
        failures = [r for r in agents.records("error") if r["code"] != "TRANSPORT"]
        assert failures, "no call failed: was the database really down?"
        unclear = [r for r in failures if not (r["retryable"] and UNAVAILABLE_WORDS in r["message"])]
        assert unclear == [], f"failures without the retryable database error: {unclear[:3]}"
        assert {r["code"] for r in failures} == {"INTERNAL"}
        assert not [r for r in agents.records("error") if r["code"] == "TRANSPORT"], "the server kept answering"

        # Both subscribers end with exactly the log: the steady one live through the outage,
        # the other by resuming from the log with `after:` (again whenever its stream ends).
        expected = [e["seq"] for e in events]
        assert await steady.wait_for_id(expected[-1], within=60), f"steady stopped at {steady.ids[-1:]}: {steady.error}"
        await steady.stop()
        assert_exact_log(steady.ids, expected)
        resumes = 1
        give_up = time.monotonic() + 90
        while True:
            received = [i for s in subscribers for i in s.ids]
            if received and received[-1] >= expected[-1]:
                break
            current = subscribers[-1]
            assert time.monotonic() < give_up, f"the subscriber never caught up: {current.error}"
            if current.done:
                resumes += 1
                session = await stack.enter_async_context(ws_session(server))
                after = str(received[-1]) if received else "0"
                subscribers.append(Collector(session, TASK_EVENTS, after=after, p=project))
            else:
                await current.wait_for_id(expected[-1], within=5)
        for subscriber in subscribers:
            await subscriber.stop()
        received = [i for s in subscribers for i in s.ids]
        assert_exact_log(received, expected)
        adopted = agents.records("adopted")

    print(
        f"\nR3: PostgreSQL down {OUTAGE_SECONDS:g}s mid-run; {len(failures)} calls failed with the retryable "
        f"database error (e.g. {failures[0]['message']!r}); work resumed {resumed:.2f}s after the restart, same "
        f"server process; subscriber resumed {resumes} time(s) with after:, received {len(received)} events = "
        f"the log; {len(adopted)} lost claims adopted; {TASKS} tasks completed once"
    )
