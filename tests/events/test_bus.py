"""The event bus survives losing its LISTEN connection, and subscribers lose nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests import factories as f
from tests.events.helpers import (
    TASK_EVENTS,
    Collector,
    Sub,
    another_process,
    assert_exact_log,
    caught_up,
    register_agents,
    wait_until,
    writing,
)


@pytest.mark.postgres_only
class TestListenerLoss:
    @pytest.mark.parametrize("victim", ["writer", "subscriber"])
    async def test_killed_listener_reconnects_and_subscriber_misses_nothing(
        self, victim, gql, database_url, schema, services
    ):
        pid = await f.project(gql)
        agents = await register_agents(gql, 10)
        async with another_process(database_url) as other:
            killed = services if victim == "writer" else other
            async with Sub(schema, other, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
                async with writing(gql, project_id=pid, agents=agents):
                    await got.wait_for_count(30)
                    backend_pid = killed.bus._broadcast._backend._conn.get_server_pid()
                    async with services.read() as session:
                        kill = text("SELECT pg_terminate_backend(:pid)")
                        terminated = await session.scalar(kill, {"pid": backend_pid})
                    assert terminated
                    await wait_until(lambda: killed.bus.reconnects >= 1, within=30, what="the bus to reconnect")
                    assert killed.bus._broadcast._backend._conn.get_server_pid() != backend_pid
                    assert await killed.bus._ping(), "signals must flow through the new connection"
                    written = len(got.values)
                    await got.wait_for_count(written + 30)
                expected = await caught_up(gql, got)
        assert_exact_log(got.values, expected)
