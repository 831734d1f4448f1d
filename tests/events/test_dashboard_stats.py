"""dashboardStats: the current value first, then throttled fresh values, computed once for
all subscribers of the same filter."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

from tests import factories as f
from tests.events.helpers import DASHBOARD_STATS, STATS_QUERY, Collector, Sub, wait_until

BURST = 30


def without_time(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "generatedAt"}


async def burst(gql, project_id: str, count: int = BURST) -> float:
    """`count` createTask mutations back to back; returns how long they took."""
    began = time.monotonic()
    for i in range(count):
        await f.task(gql, project_id=project_id, title=f"burst {i}")
    return time.monotonic() - began


class TestDashboardStats:
    async def test_first_value_is_the_current_stats(self, gql, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        await f.task(gql, project_id=pid)
        await f.claim(gql, task_id=task["id"], agent="a")
        async with Sub(schema, services, DASHBOARD_STATS) as sub:
            first = await sub.next()
        current = (await gql.execute(STATS_QUERY))["dashboardStats"]
        assert without_time(first) == current
        assert first["tasks"]["total"] == 2
        assert first["agents"]["busy"] == 1

    async def test_project_filter_counts_only_that_project(self, gql, schema, services):
        p1 = await f.project(gql, name="P1")
        p2 = await f.project(gql, name="P2")
        await f.task(gql, project_id=p1)
        async with Sub(schema, services, DASHBOARD_STATS, projectId=p2) as sub:
            first = await sub.next()
            await f.task(gql, project_id=p2)
            fresh = await sub.next()
        assert first["tasks"]["total"] == 0
        assert fresh["tasks"]["total"] == 1

    async def test_burst_is_throttled_and_the_last_value_is_the_final_state(self, gql, schema, services, monkeypatch):
        hub = services.stats_hub
        computing = hub._compute
        started: list[float] = []

        async def timed(key):  # type: ignore[no-untyped-def]
            started.append(time.monotonic())
            return await computing(key)

        monkeypatch.setattr(hub, "_compute", timed)
        pid = await f.project(gql)
        async with Sub(schema, services, DASHBOARD_STATS) as sub, Collector(sub) as got:
            await got.wait_for_count(1)
            began = time.monotonic()
            took = await burst(gql, pid)
            await wait_until(lambda: got.values[-1]["tasks"]["total"] == BURST, what="the final stats")
            span = time.monotonic() - began
            values = got.values[1:]
        # The throttle spaces the producer's computations (the first value is computed on
        # subscribing); when each value reaches the subscriber depends on the machine's load.
        gaps = [b - a for a, b in itertools.pairwise(started[1:])]
        rounded = [round(g, 2) for g in gaps]
        print(f"\n{BURST} mutations in {took:.2f}s -> {len(values)} values in {span:.2f}s, computed {rounded} apart")
        interval = services.settings.stats_min_interval_seconds
        assert len(values) <= span / interval + 2
        assert all(gap >= interval * 0.6 for gap in gaps)
        assert without_time(values[-1]) == (await gql.execute(STATS_QUERY))["dashboardStats"]

    async def test_twenty_subscribers_share_one_computation_per_change(self, gql, schema, services):
        pid = await f.project(gql)
        hub = services.stats_hub
        listeners = services.bus.listener_count
        async with contextlib.AsyncExitStack() as stack:
            subs = [Sub(schema, services, DASHBOARD_STATS) for _ in range(20)]
            await asyncio.gather(*(stack.enter_async_context(s) for s in subs))
            collectors = [Collector(s) for s in subs]
            await asyncio.gather(*(stack.enter_async_context(c) for c in collectors))
            await asyncio.gather(*(c.wait_for_count(1) for c in collectors))
            assert hub.producers == 1
            before = hub.computations

            await burst(gql, pid)
            for c in collectors:
                await wait_until(lambda c=c: c.values[-1]["tasks"]["total"] == BURST, what="the final stats")
            computed = hub.computations - before
            received = max(len(c.values) for c in collectors) - 1
        print(f"\n20 subscribers: {received} values each, {computed} computations")
        assert computed <= received + 1, "one computation per change batch, shared by every subscriber"
        await wait_until(lambda: hub.producers == 0, what="the producer to stop")
        await wait_until(lambda: services.bus.listener_count == listeners, what="the producer's listener to go")
