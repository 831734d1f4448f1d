"""agentPresence: a snapshot first, then every status change, including the reaper's OFFLINE."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from task_service.api.schema import build_schema
from task_service.db.base import utcnow
from task_service.db.session import create_engine, create_sessionmaker
from task_service.reaper import Reaper
from task_service.services import Services
from tests import factories as f
from tests.conftest import Client, empty_database
from tests.events.helpers import AGENT_PRESENCE, Collector, Sub, another_process
from tests.statements import count_statements


def change(event: dict) -> tuple[str, str | None, str]:
    return event["agent"]["name"], event["previousStatus"], event["status"]


class TestAgentPresence:
    async def test_snapshot_comes_first_with_one_event_per_agent(self, gql, schema, services):
        await f.agent(gql, name="a")
        await f.agent(gql, name="b")
        async with Sub(schema, services, AGENT_PRESENCE) as sub:
            snapshot = await sub.take(2)
        assert sorted(map(change, snapshot)) == [("a", None, "ONLINE"), ("b", None, "ONLINE")]
        assert all(e["agent"]["status"] == "ONLINE" for e in snapshot)

    async def test_claim_makes_busy_and_submit_makes_online(self, gql, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        async with Sub(schema, services, AGENT_PRESENCE) as sub:
            await sub.take(1)
            await f.claim(gql, task_id=task["id"], agent="a")
            busy = await sub.next()
            await f.transition(gql, "startTask", id=task["id"], agent="a")
            await f.transition(gql, "submitTask", id=task["id"], agent="a", summary="done")
            online = await sub.next()
        assert change(busy) == ("a", "ONLINE", "BUSY")
        assert change(online) == ("a", "BUSY", "ONLINE")

    async def test_name_filter_yields_only_that_agent(self, gql, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        await f.agent(gql, name="b")
        t1 = await f.task(gql, project_id=pid, title="t1")
        t2 = await f.task(gql, project_id=pid, title="t2")
        async with Sub(schema, services, AGENT_PRESENCE, name="b") as sub:
            snapshot = await sub.next()
            await f.claim(gql, task_id=t1["id"], agent="a")
            await f.claim(gql, task_id=t2["id"], agent="b")
            following = await sub.next()
        assert change(snapshot) == ("b", None, "ONLINE")
        assert change(following) == ("b", "ONLINE", "BUSY")

    async def test_registration_of_a_new_agent_is_an_event(self, gql, schema, services):
        await f.agent(gql, name="a")
        async with Sub(schema, services, AGENT_PRESENCE) as sub:
            await sub.take(1)
            await f.agent(gql, name="newcomer")
            event = await sub.next()
        assert change(event) == ("newcomer", None, "ONLINE")

    async def test_reaper_sets_silent_agents_offline(self, database_url):
        async with another_process(database_url, heartbeat_timeout_seconds=1) as svc:
            await empty_database(svc)
            schema = build_schema(svc.settings)
            gql = Client(schema, svc)
            pid = await f.project(gql)
            await f.agent(gql, name="idle")
            await f.agent(gql, name="worker")
            task = await f.task(gql, project_id=pid)
            await f.claim(gql, task_id=task["id"], agent="worker")
            async with Sub(schema, svc, AGENT_PRESENCE) as sub:
                snapshot = await sub.take(2)
                result = await Reaper(svc).tick(now=utcnow() + timedelta(seconds=30))
                offline = await sub.take(2)
        assert result.offline == 2
        assert sorted(map(change, snapshot)) == [("idle", None, "ONLINE"), ("worker", None, "BUSY")]
        assert sorted(map(change, offline)) == [("idle", "ONLINE", "OFFLINE"), ("worker", "BUSY", "OFFLINE")]

    @pytest.mark.postgres_only
    async def test_change_in_another_process_is_delivered(self, gql, database_url, schema, services):
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        async with another_process(database_url) as other, Sub(schema, other, AGENT_PRESENCE) as sub:
            await sub.take(1)
            await f.claim(gql, task_id=task["id"], agent="a")
            event = await sub.next()
        assert change(event) == ("a", "ONLINE", "BUSY")


@contextlib.asynccontextmanager
async def writer_beside(services: Services) -> AsyncIterator[Services]:
    """`services` with an engine of its own but the same bus: its mutations reach
    `services`' subscribers, and every statement on `services`' engine is theirs."""
    engine = create_engine(services.settings.database_url)
    try:
        yield dataclasses.replace(services, engine=engine, sessionmaker=create_sessionmaker(engine))
    finally:
        await engine.dispose()


class TestSharedAgentLoads:
    async def test_many_subscribers_cost_one_agent_query_per_change(self, gql, schema, services):
        subscribers = 20
        pid = await f.project(gql)
        await f.agent(gql, name="a")
        task = await f.task(gql, project_id=pid)
        async with writer_beside(services) as writer, contextlib.AsyncExitStack() as stack:
            writing = Client(schema, writer)
            collectors = []
            for _ in range(subscribers):
                sub = await stack.enter_async_context(Sub(schema, services, AGENT_PRESENCE))
                collectors.append(await stack.enter_async_context(Collector(sub)))
            for collector in collectors:
                await collector.wait_for_count(1)  # the snapshot: each subscriber now listens

            with count_statements(services) as reads:
                await f.claim(writing, task_id=task["id"], agent="a")
                for collector in collectors:
                    await collector.wait_for_count(2)
                await f.transition(writing, "releaseTask", id=task["id"], agent="a")
                for collector in collectors:
                    await collector.wait_for_count(3)

        agent_reads = reads.selects_from("agents")
        assert len(agent_reads) == 2, f"{len(agent_reads)} agent queries for 2 changes and {subscribers} subscribers"
        for collector in collectors:
            snapshot, busy, online = collector.values
            assert change(snapshot) == ("a", None, "ONLINE")
            assert (change(busy), busy["agent"]["status"]) == (("a", "ONLINE", "BUSY"), "BUSY")
            assert (change(online), online["agent"]["status"]) == (("a", "BUSY", "ONLINE"), "ONLINE")
