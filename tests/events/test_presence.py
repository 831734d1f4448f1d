"""agentPresence: a snapshot first, then every status change, including the reaper's OFFLINE."""

from __future__ import annotations

from datetime import timedelta

import pytest

from task_service.api.schema import build_schema
from task_service.db.base import utcnow
from task_service.reaper import Reaper
from tests import factories as f
from tests.conftest import Client, empty_database
from tests.events.helpers import AGENT_PRESENCE, Sub, another_process


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
