"""Leases against real time and real processes: a silent agent's task comes back, a live
agent keeps its task, and on PostgreSQL only one of several server processes reaps."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import pytest

from task_service.db.leader import LEADER_LOCK_KEY
from tests.conftest import PG_ADMIN_DSN
from tests.e2e.conftest import GraphQLClient, Server, fresh_pg_database, graphql_client, running_server

pytestmark = pytest.mark.postgres_only

HEARTBEAT_TIMEOUT = 2.0
REAPER_INTERVAL = 1.0
# docs/ARCHITECTURE.md: a crashed agent's work is claimable again within heartbeat timeout + reaper
# interval. How soon is a figure (printed here); what must hold is that it happens, and
# never before the agent has been silent for the heartbeat timeout. The deadline only
# bounds a test that would otherwise wait forever, with room for a loaded machine.
DEADLINE = 60.0
SERVER_ENV = {
    "HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
    "REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL),
}

CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id } }"
CREATE_TASK = """mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }"""
REGISTER = "mutation($name: String!) { registerAgent(input: {name: $name}) { agent { name } } }"
HEARTBEAT = "mutation($agent: String!) { heartbeat(agent: $agent) { name status } }"
CLAIM = """mutation($id: ID!, $agent: String!) {
  claimTask(id: $id, agent: $agent) { id status attempt assignee { name } leaseExpiresAt }
}"""
START = "mutation($id: ID!, $agent: String!) { startTask(id: $id, agent: $agent) { status } }"
STATE = """query($id: ID!, $agent: String!) {
  task(id: $id) {
    status attempt lastError leaseExpiresAt assignee { name }
    events { type fromStatus toStatus actor createdAt }
  }
  agent(name: $agent) { status lastHeartbeatAt }
}"""

T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T | None]], *, within: float, interval: float = 0.1) -> tuple[T, float]:
    """Call `check` until it returns a value; that value and the seconds it took."""
    started = time.monotonic()
    deadline = started + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last is not None:
            return last, time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"not reached within {within:.1f}s")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def new_task(gql: GraphQLClient, **extra: Any) -> str:
    project = (await gql.execute(CREATE_PROJECT, name=unique("leases")))["createProject"]["id"]
    task = await gql.execute(CREATE_TASK, input={"projectId": project, "title": "t", "taskType": "research", **extra})
    return task["createTask"]["id"]


async def register(gql: GraphQLClient, prefix: str) -> str:
    name = unique(prefix)
    await gql.execute(REGISTER, name=name)
    return name


async def state(gql: GraphQLClient, task_id: str, agent: str) -> dict[str, Any]:
    return await gql.execute(STATE, id=task_id, agent=agent)


def lease_expired_events(task: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for event in task["events"] if event["type"] == "LEASE_EXPIRED"]


def silence_before_expiry(seen: dict[str, Any]) -> float:
    """Seconds from the agent's last heartbeat (its claim or start counted as one) to its
    task's lease expiry, by the server's clock."""
    expired = datetime.fromisoformat(lease_expired_events(seen["task"])[-1]["createdAt"])
    return (expired - datetime.fromisoformat(seen["agent"]["lastHeartbeatAt"])).total_seconds()


async def wait_until_requeued(
    gql: GraphQLClient, task_id: str, agent: str, status: str = "PENDING"
) -> tuple[dict[str, Any], float]:
    async def requeued() -> dict[str, Any] | None:
        seen = await state(gql, task_id, agent)
        done = seen["agent"]["status"] == "OFFLINE" and seen["task"]["status"] == status
        return seen if done else None

    return await poll(requeued, within=DEADLINE, interval=0.05)


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(e2e_pg_url, tmp_path_factory.mktemp("leases"), **SERVER_ENV) as running:
        yield running


class TestSilentAgent:
    async def test_its_task_is_pending_again_and_claimable_within_timeout_plus_interval(self, server: Server):
        async with graphql_client(server.url) as gql:
            task_id = await new_task(gql)
            silent, other = await register(gql, "silent"), await register(gql, "other")
            claimed = (await gql.execute(CLAIM, id=task_id, agent=silent))["claimTask"]
            assert (claimed["status"], claimed["attempt"]) == ("ASSIGNED", 1)

            seen, elapsed = await wait_until_requeued(gql, task_id, silent)
            print(f"\nlease expiry: task PENDING and agent OFFLINE {elapsed:.2f}s after the claim")
            task = seen["task"]
            assert silence_before_expiry(seen) >= HEARTBEAT_TIMEOUT
            assert task["attempt"] == 1
            assert task["assignee"] is None
            assert task["leaseExpiresAt"] is None
            expired = lease_expired_events(task)
            assert len(expired) == 1
            assert (expired[0]["fromStatus"], expired[0]["toStatus"]) == ("ASSIGNED", "PENDING")

            again = (await gql.execute(CLAIM, id=task_id, agent=other))["claimTask"]
            assert (again["status"], again["attempt"], again["assignee"]["name"]) == ("ASSIGNED", 2, other)

    async def test_its_last_attempt_fails_with_lease_expired(self, server: Server):
        async with graphql_client(server.url) as gql:
            task_id = await new_task(gql, maxAttempts=1)
            silent = await register(gql, "silent")
            await gql.execute(CLAIM, id=task_id, agent=silent)
            await gql.execute(START, id=task_id, agent=silent)

            seen, elapsed = await wait_until_requeued(gql, task_id, silent, status="FAILED")
            print(f"\nlease expiry on the last attempt: FAILED {elapsed:.2f}s after the claim")
            task = seen["task"]
            assert silence_before_expiry(seen) >= HEARTBEAT_TIMEOUT
            assert task["attempt"] == 1
            assert "heartbeat" in task["lastError"]
            expired = lease_expired_events(task)
            assert len(expired) == 1
            assert (expired[0]["fromStatus"], expired[0]["toStatus"]) == ("RUNNING", "FAILED")


class TestHeartbeatingAgent:
    async def test_keeps_its_task_past_twice_the_heartbeat_timeout(self, server: Server):
        async with graphql_client(server.url) as gql, graphql_client(server.url) as beats:
            task_id = await new_task(gql)
            alive = await register(gql, "alive")
            claimed = (await gql.execute(CLAIM, id=task_id, agent=alive))["claimTask"]
            started = time.monotonic()

            async def heartbeat() -> None:
                while True:
                    await beats.execute(HEARTBEAT, agent=alive)
                    await asyncio.sleep(0.5)

            beating = asyncio.create_task(heartbeat())
            try:
                leases = {claimed["leaseExpiresAt"]}
                while time.monotonic() - started < 2 * HEARTBEAT_TIMEOUT + 0.5:
                    seen = await state(gql, task_id, alive)
                    assert seen["task"]["status"] == "ASSIGNED"
                    assert seen["task"]["assignee"]["name"] == alive
                    assert seen["agent"]["status"] == "BUSY"
                    leases.add(seen["task"]["leaseExpiresAt"])
                    await asyncio.sleep(0.25)
                assert not beating.done()
            finally:
                beating.cancel()
            seen = await state(gql, task_id, alive)
            assert seen["task"]["attempt"] == 1
            assert lease_expired_events(seen["task"]) == []
            assert len(leases) > 3  # renewed by the heartbeats


async def leader_backends(database: str) -> list[int]:
    """Backend pids holding the reaper's session advisory lock in `database`."""
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        rows = await conn.fetch(
            """
            SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
            WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1
              AND l.classid = $2::bigint::oid AND l.objid = $3::bigint::oid AND l.objsubid = 1
            """,
            database,
            LEADER_LOCK_KEY >> 32,
            LEADER_LOCK_KEY & 0xFFFFFFFF,
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


class TestTwoServerProcesses:
    async def test_one_leader_reaps_once_and_a_survivor_takes_over(self, tmp_path):
        async with fresh_pg_database() as url:
            database = url.rsplit("/", 1)[1]
            async with running_server(url, tmp_path, **SERVER_ENV) as first:
                (leader,), _ = await poll(lambda: _some(leader_backends(database)), within=DEADLINE)
                async with running_server(url, tmp_path, **SERVER_ENV) as second:
                    await self._expire_once(second, first)
                    assert await leader_backends(database) == [leader]

                    await first.kill()  # the leader crashes: its connection and lock go away
                    (successor,), took = await poll(lambda: _some(leader_backends(database)), within=DEADLINE)
                    print(f"\nleader killed; the other process took the lock after {took:.2f}s")
                    assert successor != leader
                    await self._expire_once(second, second)
                    assert await leader_backends(database) == [successor]

    @staticmethod
    async def _expire_once(claim_via: Server, watch_via: Server) -> None:
        async with graphql_client(claim_via.url) as gql, graphql_client(watch_via.url) as watch:
            task_id = await new_task(gql)
            silent = await register(gql, "silent")
            await gql.execute(CLAIM, id=task_id, agent=silent)
            _, elapsed = await wait_until_requeued(watch, task_id, silent)
            print(f"\ntwo processes: requeued {elapsed:.2f}s after the claim")
            # Give the other process's reaper a few ticks to (wrongly) act too.
            await asyncio.sleep(2 * REAPER_INTERVAL + 0.5)
            for client in (gql, watch):
                seen = await state(client, task_id, silent)
                assert len(lease_expired_events(seen["task"])) == 1
                assert seen["task"]["status"] == "PENDING"


async def _some(pids: Awaitable[list[int]]) -> list[int] | None:
    found = await pids
    return found or None
