"""The event bus survives losing its LISTEN connection, and subscribers lose nothing."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from tests import factories as f
from tests.events.helpers import (
    TASK_EVENTS,
    Collector,
    Sub,
    all_events,
    another_process,
    assert_exact_log,
    register_agents,
    wait_until,
    work_one_task,
)


@pytest.mark.postgres_only
class TestListenerLoss:
    @pytest.mark.parametrize("victim", ["writer", "subscriber"])
    async def test_killed_listener_reconnects_and_subscriber_misses_nothing(
        self, victim, pg_gql, pg_url, schema, pg_services
    ):
        pid = await f.project(pg_gql)
        agents = await register_agents(pg_gql, 10)
        stop = asyncio.Event()

        async def keep_writing(agent: str) -> None:
            while not stop.is_set():
                await work_one_task(pg_gql, project_id=pid, agent=agent)

        async with another_process(pg_url) as other:
            killed = pg_services if victim == "writer" else other
            async with Sub(schema, other, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
                writing = asyncio.gather(*(keep_writing(a) for a in agents))
                try:
                    await got.wait_for_count(30)
                    backend_pid = killed.bus._broadcast._backend._conn.get_server_pid()
                    async with pg_services.read() as session:
                        kill = text("SELECT pg_terminate_backend(:pid)")
                        terminated = await session.scalar(kill, {"pid": backend_pid})
                    assert terminated
                    await wait_until(lambda: killed.bus.reconnects >= 1, within=30, what="the bus to reconnect")
                    assert killed.bus._broadcast._backend._conn.get_server_pid() != backend_pid
                    assert await killed.bus._ping(), "signals must flow through the new connection"
                    written = len(got.values)
                    await got.wait_for_count(written + 30)
                finally:
                    stop.set()
                    await writing
                expected = await all_events(pg_gql)
                await wait_until(
                    lambda: bool(got.values) and int(got.values[-1]["id"]) >= int(expected[-1]["id"]),
                    within=15,
                    what="the subscriber to catch up",
                )
        assert_exact_log(got.values, expected)
