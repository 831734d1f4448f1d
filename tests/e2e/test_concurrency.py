"""Exactly-once claiming under real concurrency: many agents, each on its own HTTP
connection, racing one server process (PostgreSQL and SQLite)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import GraphQLClient, GraphQLError, Server, graphql_client, running_server

CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id } }"
CREATE_TASKS = "mutation($p: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $tasks) { id } }"
REGISTER = """mutation($name: String!) {
  registerAgent(input: {name: $name, maxConcurrentTasks: 1000}) { agent { name } }
}"""
HEARTBEAT = "mutation($agent: String!) { heartbeat(agent: $agent) { name } }"
CLAIM_NEXT = """mutation($agent: String!, $p: ID) {
  claimNextTask(agent: $agent, projectId: $p) { id status attempt assignee { name } }
}"""
CLAIM = """mutation($id: ID!, $agent: String!) {
  claimTask(id: $id, agent: $agent) { id status attempt assignee { name } }
}"""
TASKS_PAGE = """query($p: ID!, $after: String) {
  tasks(filter: {projectId: $p}, first: 500, after: $after) {
    nodes { id status attempt assignee { name } }
    pageInfo { hasNextPage endCursor }
  }
}"""
EVENTS_PAGE = """query($p: ID!, $after: ID) {
  events(projectId: $p, after: $after, first: 500) { id taskId type }
}"""

RUN_TIMEOUT = 300.0


async def create_project_with_tasks(gql: GraphQLClient, count: int) -> tuple[str, list[str]]:
    project = (await gql.execute(CREATE_PROJECT, name=f"race-{uuid.uuid4().hex[:8]}"))["createProject"]["id"]
    ids: list[str] = []
    for start in range(0, count, 250):
        batch = [{"title": f"task {n}", "taskType": "research"} for n in range(start, min(start + 250, count))]
        created = await gql.execute(CREATE_TASKS, p=project, tasks=batch)
        ids += [row["id"] for row in created["createTasks"]]
    assert len(set(ids)) == count
    return project, ids


async def register_agents(gql: GraphQLClient, count: int) -> list[str]:
    names = [f"racer-{uuid.uuid4().hex[:8]}-{n}" for n in range(count)]
    for name in names:
        await gql.execute(REGISTER, name=name)
    return names


async def all_tasks(gql: GraphQLClient, project: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        page = (await gql.execute(TASKS_PAGE, p=project, after=after))["tasks"]
        rows += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            return rows
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("tasks pagination did not end after 100 pages")


async def all_events(gql: GraphQLClient, project: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        page = (await gql.execute(EVENTS_PAGE, p=project, after=after))["events"]
        if not page:
            return rows
        rows += page
        after = page[-1]["id"]
    raise AssertionError("events pagination did not end after 100 pages")


async def claim_until_empty(base_url: str, agent: str, project: str, barrier: asyncio.Barrier, bound: int) -> list[str]:
    """One agent on its own connection: claimNextTask until it returns null."""
    claimed: list[str] = []
    async with graphql_client(base_url) as gql:
        await gql.execute(HEARTBEAT, agent=agent)  # opens this client's connection
        await barrier.wait()
        for _ in range(bound):
            task = (await gql.execute(CLAIM_NEXT, agent=agent, p=project))["claimNextTask"]
            if task is None:
                return claimed
            assert task["status"] == "ASSIGNED"
            assert task["attempt"] == 1
            assert task["assignee"]["name"] == agent
            claimed.append(task["id"])
    raise AssertionError(f"agent {agent} was still claiming after {bound} claims")


async def claim_one(base_url: str, agent: str, task_id: str, barrier: asyncio.Barrier) -> str | None:
    """One agent on its own connection: claimTask once; the error code, or None on success."""
    async with graphql_client(base_url) as gql:
        await gql.execute(HEARTBEAT, agent=agent)
        await barrier.wait()
        try:
            task = (await gql.execute(CLAIM, id=task_id, agent=agent))["claimTask"]
        except GraphQLError as failure:
            return failure.code
        assert task["assignee"]["name"] == agent
        assert task["attempt"] == 1
        return None


async def assert_claim_next_exactly_once(server: Server, *, clients: int, tasks: int) -> None:
    async with graphql_client(server.url) as gql:
        project, ids = await create_project_with_tasks(gql, tasks)
        agents = await register_agents(gql, clients)

    barrier = asyncio.Barrier(clients)
    started = time.monotonic()
    async with asyncio.timeout(RUN_TIMEOUT):
        results = await asyncio.gather(
            *(claim_until_empty(server.url, name, project, barrier, tasks + 1) for name in agents)
        )
    elapsed = time.monotonic() - started
    per_agent = sorted(len(claimed) for claimed in results)
    print(
        f"\n{clients} clients claimed {tasks} tasks in {elapsed:.2f}s ({tasks / elapsed:.0f} claims/s); "
        f"per agent min {per_agent[0]} max {per_agent[-1]}"
    )

    claimed = [task_id for batch in results for task_id in batch]
    duplicates = [task_id for task_id, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    assert sorted(claimed, key=int) == sorted(ids, key=int)

    claimant = {task_id: name for name, batch in zip(agents, results, strict=True) for task_id in batch}
    async with graphql_client(server.url) as gql:
        rows = await all_tasks(gql, project)
        events = await all_events(gql, project)
    assert len(rows) == tasks
    for row in rows:
        assert (row["status"], row["attempt"], row["assignee"]["name"]) == ("ASSIGNED", 1, claimant[row["id"]])
    claims = Counter(event["taskId"] for event in events if event["type"] == "CLAIMED")
    assert claims == Counter(dict.fromkeys(ids, 1))


async def assert_one_claim_task_winner(server: Server, *, clients: int) -> None:
    async with graphql_client(server.url) as gql:
        _, (target,) = await create_project_with_tasks(gql, 1)
        agents = await register_agents(gql, clients)
    barrier = asyncio.Barrier(clients)
    async with asyncio.timeout(RUN_TIMEOUT):
        outcomes = await asyncio.gather(*(claim_one(server.url, name, target, barrier) for name in agents))
    assert Counter(outcomes) == Counter({None: 1, "CONFLICT": clients - 1})
    winner = agents[outcomes.index(None)]
    async with graphql_client(server.url) as gql:
        task = (
            await gql.execute(
                "query($id: ID!) { task(id: $id) { status attempt assignee { name } events { type } } }", id=target
            )
        )["task"]
    assert task["status"] == "ASSIGNED"
    assert task["attempt"] == 1
    assert task["assignee"]["name"] == winner
    assert [event["type"] for event in task["events"]].count("CLAIMED") == 1


@pytest.fixture(scope="module")
async def pg_server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    workdir = tmp_path_factory.mktemp("pg-server")
    async with running_server(e2e_pg_url, workdir, DB_POOL_SIZE="10", DB_MAX_OVERFLOW="20") as server:
        yield server


@pytest.fixture(scope="module")
async def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    workdir = tmp_path_factory.mktemp("sqlite-server")
    async with running_server(f"sqlite+aiosqlite:///{workdir / 'race.db'}", workdir) as server:
        yield server


@pytest.mark.postgres_only
class TestClaimRacePostgres:
    async def test_fifty_agents_claim_next_over_a_thousand_tasks_exactly_once(self, pg_server: Server):
        await assert_claim_next_exactly_once(pg_server, clients=50, tasks=1000)

    async def test_fifty_agents_claiming_one_task_one_wins_the_rest_conflict(self, pg_server: Server):
        await assert_one_claim_task_winner(pg_server, clients=50)


class TestClaimRaceSqlite:
    async def test_ten_agents_claim_next_over_two_hundred_tasks_exactly_once(self, sqlite_server: Server):
        await assert_claim_next_exactly_once(sqlite_server, clients=10, tasks=200)

    async def test_ten_agents_claiming_one_task_one_wins_the_rest_conflict(self, sqlite_server: Server):
        await assert_one_claim_task_winner(sqlite_server, clients=10)
