"""The event bus survives losing its LISTEN connection, and subscribers lose nothing; a
listener's wait times out and defers as it says."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from task_service.events.bus import Listener
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


class TestListenerWait:
    async def test_a_wait_times_out_a_full_timeout_after_it_began(self) -> None:
        # The listener keeps its timer across waits; a timer set for an earlier wait must
        # not cut a later one short.
        listener = Listener()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, listener.advance, 1)
        assert await listener.wait(0.3) is True
        began = loop.time()
        assert await listener.wait(0.3) is False
        assert loop.time() - began >= 0.29

    async def test_a_signal_before_the_wait_returns_at_once(self) -> None:
        listener = Listener()
        listener.advance(3)
        assert await asyncio.wait_for(listener.wait(60), 1) is True
        assert listener.horizon == 3

    async def test_a_waiting_listener_with_defer_is_woken_by_defer_only(self) -> None:
        deferred: list[Listener] = []
        listener = Listener(defer=deferred.append)
        waiter = asyncio.create_task(listener.wait(60))
        await asyncio.sleep(0.01)
        listener.advance(5)
        listener.advance(6)
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert deferred == [listener]  # handed over once, however often the horizon moves
        assert listener.deferred
        assert listener.horizon == 6
        listener.wake()
        assert await asyncio.wait_for(waiter, 1) is True
        assert not listener.deferred

    async def test_a_listener_that_is_not_waiting_is_not_deferred(self) -> None:
        # Only waiting subscribers ask the tail to read ahead (tests/events/test_task_events.py:
        # a stalled subscriber must not buffer the events it misses).
        deferred: list[Listener] = []
        listener = Listener(defer=deferred.append)
        listener.advance(5)
        assert deferred == []
        assert await asyncio.wait_for(listener.wait(60), 1) is True
