"""What a subscription holds: a slot of its connection's limit while it runs, and nothing
(no task, no bus listener, no stats producer) once it is closed."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest
from graphql.execution.collect_fields import FieldDetails

from task_service.resolvers.context import Context
from tests import factories as f
from tests.events.helpers import AGENT_PRESENCE, DASHBOARD_STATS, TASK_EVENTS, Sub, wait_settled, wait_until


class TestSubscriptionLimit:
    async def test_one_connection_past_the_limit_gets_query_too_complex(self, gql, schema, services):
        limit = services.settings.max_subscriptions_per_connection
        connection = Context(services)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(limit):
                sub = await stack.enter_async_context(Sub(schema, services, DASHBOARD_STATS, context=connection))
                await sub.next()
            async with Sub(schema, services, DASHBOARD_STATS, context=connection) as extra:
                refused = await extra.result()
            async with Sub(schema, services, DASHBOARD_STATS) as elsewhere:
                await elsewhere.next()  # another connection has its own limit
            assert refused.errors[0].extensions["code"] == "QUERY_TOO_COMPLEX"
            assert connection.subscriptions == limit

    async def test_closing_a_subscription_frees_its_slot(self, gql, schema, services):
        limit = services.settings.max_subscriptions_per_connection
        connection = Context(services)
        async with contextlib.AsyncExitStack() as stack:
            subs = []
            for _ in range(limit):
                subs.append(await stack.enter_async_context(Sub(schema, services, DASHBOARD_STATS, context=connection)))
                await subs[-1].next()
            await subs[0].close()
            assert connection.subscriptions == limit - 1
            async with Sub(schema, services, DASHBOARD_STATS, context=connection) as again:
                assert (await again.next())["tasks"]["total"] == 0

    async def test_a_failed_subscription_holds_no_slot(self, gql, schema, services):
        connection = Context(services)
        async with Sub(schema, services, TASK_EVENTS, context=connection, agent="ghost") as failed:
            assert (await failed.result()).errors[0].extensions["code"] == "NOT_FOUND"
        assert connection.subscriptions == 0


class TestNoLeaks:
    async def test_a_thousand_closed_subscriptions_leave_nothing_behind(self, gql, schema, services):
        pid = await f.project(gql)
        await f.task(gql, project_id=pid)
        await f.agent(gql, name="a")
        listeners = services.bus.listener_count
        tasks = len(asyncio.all_tasks())

        async def replaying() -> None:
            async with Sub(schema, services, TASK_EVENTS, after="0") as sub:
                await sub.next()

        async def first_value(query: str) -> None:
            async with Sub(schema, services, query) as sub:
                await sub.next()

        for _ in range(10):
            # 100 at once: 25 replaying taskEvents, 25 waiting live (their connection drops
            # mid-wait), 25 dashboardStats, 25 agentPresence.
            live = [Sub(schema, services, TASK_EVENTS) for _ in range(25)]
            for sub in live:
                await sub.__aenter__()
            readers = [asyncio.create_task(sub.next(within=3600)) for sub in live]
            await asyncio.gather(
                *(replaying() for _ in range(25)),
                *(first_value(DASHBOARD_STATS) for _ in range(25)),
                *(first_value(AGENT_PRESENCE) for _ in range(25)),
            )
            await wait_until(lambda: services.bus.listener_count >= listeners + 25, what="live subscribers")
            await wait_settled(services)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for sub in live:
                await sub.close()

        await wait_until(lambda: services.bus.listener_count == listeners, what="bus listeners to be released")
        await wait_until(lambda: services.stats_hub.producers == 0, what="stats producers to stop")
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks, what="tasks to finish")
        assert services.stats_hub._feeds == {}

    @pytest.mark.parametrize("shared", [True, False], ids=["shared", "unshared"])
    async def test_a_long_subscription_keeps_nothing_per_event(self, gql, schema, services, shared):
        """A live subscription holds the same whatever the number of events it delivered.
        graphql-core's per-event executors shared the subscription's memo of collected
        subfields and added an entry per event (B9's growth): count the FieldDetails alive.
        `shared`: the payload's execution is shared (api/shared_results.py) or, for a
        connection without shared results, run by graphql-core for this subscriber."""
        pid = await f.project(gql)
        connection = Context(services) if shared else _Unshared(services)

        async def deliver(count: int) -> None:
            for i in range(count):
                await f.task(gql, project_id=pid, title=f"t{i}")
                assert (await sub.next())["type"] == "CREATED"

        def field_details_alive() -> int:
            gc.collect()
            return sum(1 for o in gc.get_objects() if type(o) is FieldDetails)

        events = 40
        async with Sub(schema, services, TASK_EVENTS, context=connection, after="0") as sub:
            await deliver(5)
            before = field_details_alive()
            await deliver(events)
            grown = field_details_alive() - before
        # With the shared memo: one entry per event, holding a FieldDetails per selected field (7).
        assert grown < events, f"{grown} more FieldDetails alive after {events} more events"


class _Unshared(Context):
    """A connection whose subscriptions execute each event themselves."""

    shared_results = None
