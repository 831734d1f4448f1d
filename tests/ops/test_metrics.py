"""/metrics in Prometheus format: the values move as the test drives a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from task_service.observability.metrics import MAX_OPERATION_NAMES, Metrics
from tests.e2e.conftest import GraphQLClient, Server, fresh_pg_database, graphql_client, running_server
from tests.e2e.test_subscriptions_ws import RawWs
from tests.ops.helpers import libpq, sample, scrape, wait_for

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(180)]

# The lease runs out long before the heartbeat timeout: the reaper takes the task back
# from an agent that is still ONLINE. A subscriber more than MAX_LAG events behind is cut off.
MAX_LAG = 5
SETTINGS = {
    "LEASE_SECONDS": "1",
    "HEARTBEAT_TIMEOUT_SECONDS": "600",
    "REAPER_INTERVAL_SECONDS": "0.2",
    "MAX_SUBSCRIBER_LAG": str(MAX_LAG),
}


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    async with fresh_pg_database("ts_ops") as url:
        yield url


@pytest.fixture(scope="module")
async def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(database_url, tmp_path_factory.mktemp("metrics"), **SETTINGS) as running:
        yield running


async def until(server: Server, name: str, value: float, **labels: str) -> None:
    async def reached() -> bool:
        return sample(await scrape(server.url), name, **labels) >= value

    await wait_for(reached, what=f"{name}{labels} >= {value}", server=server)


class TestMetrics:
    async def test_values_follow_what_the_service_does(self, server: Server) -> None:
        async with graphql_client(server.url) as gql:
            before = await scrape(server.url)
            assert sample(before, "task_service_database_up") == 1
            assert sample(before, "task_service_tasks", status="PENDING") == 0

            project = await gql.execute('mutation MakeProject { createProject(input: {name: "m"}) { id } }')
            pid = project["createProject"]["id"]
            await gql.execute(
                "mutation MakeTasks($p: ID!) { createTasks(projectId: $p, tasks: "
                '[{title: "a", taskType: "research"}, {title: "b", taskType: "research"}, '
                '{title: "c", taskType: "research"}]) { id } }',
                p=pid,
            )
            await gql.execute('mutation Join { registerAgent(input: {name: "m1"}) { token } }')
            metrics = await scrape(server.url)
            assert sample(metrics, "task_service_tasks", status="PENDING") == 3
            assert sample(metrics, "task_service_tasks_ready") == 3
            assert sample(metrics, "task_service_agents", status="ONLINE") == 1
            ok = sample(
                metrics, "task_service_graphql_requests_total", operation="MakeTasks", type="mutation", outcome="ok"
            )
            assert ok == 1
            latency = "task_service_graphql_request_duration_seconds_count"
            assert sample(metrics, latency, operation="MakeTasks", type="mutation", outcome="ok") == 1

            error = await gql.error('query Broken { task(id: "x") { id } }')
            assert error.code == "BAD_USER_INPUT"
            metrics = await scrape(server.url)
            labels = {"operation": "Broken", "type": "query", "outcome": "BAD_USER_INPUT"}
            assert sample(metrics, "task_service_graphql_requests_total", **labels) == 1

            claimed = await gql.execute('mutation Claim { claimNextTask(agent: "m1") { id } }')
            assert claimed["claimNextTask"] is not None
            metrics = await scrape(server.url)
            assert sample(metrics, "task_service_claims_total", via="claimNextTask") == 1
            # Nobody renews the lease: the reaper takes the task back.
            await until(server, "task_service_lease_expiries_total", 1, reason="lease")
            await until(server, "task_service_tasks", 3, status="PENDING")
            await until(server, "task_service_reaper_runs_total", 1, outcome="ok")
            metrics = await scrape(server.url)
            assert sample(metrics, "task_service_reaper_leader") == 1
            assert sample(metrics, "task_service_db_pool_size") == 20
            assert sample(metrics, "task_service_bus_connected") == 1

            await self.subscriptions_are_counted(server, gql, pid)

    async def subscriptions_are_counted(self, server: Server, gql: GraphQLClient, pid: str) -> None:
        async with RawWs.connect(server) as ws:
            await ws.init()
            await ws.subscribe("1", "subscription { taskEvents { id type } }")
            await until(server, "task_service_subscriptions_open", 1, subscription="taskEvents")
            await gql.execute(
                f'mutation {{ createTask(input: {{projectId: "{pid}", title: "d", taskType: "x"}}) {{ id }} }}'
            )
            message = await ws.recv(30)
            assert message["type"] == "next"
            await until(server, "task_service_subscription_events_delivered_total", 1, subscription="taskEvents")

        async def closed() -> bool:
            return sample(await scrape(server.url), "task_service_subscriptions_open", subscription="taskEvents") == 0

        await wait_for(closed, what="the subscription gauge back to 0", server=server)

    async def test_text_format_for_prometheus(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert "# TYPE task_service_graphql_requests_total counter" in response.text
        assert 'task_service_build_info{version="' in response.text


class TestValuesThatMoveRarely:
    async def test_events_dropped_when_a_subscriber_falls_behind(self, server: Server) -> None:
        """One transaction of 4 x MAX_SUBSCRIBER_LAG events puts a live subscriber that far
        behind at once: it is cut off (CONFLICT with its cursor) and the events it did not get
        live are counted as dropped for lag."""
        dropped = "task_service_subscription_events_dropped_total"
        labels = {"subscription": "taskEvents", "reason": "lag"}
        before = sample(await scrape(server.url), dropped, **labels)
        async with graphql_client(server.url) as gql, RawWs.connect(server) as ws:
            project = await gql.execute('mutation { createProject(input: {name: "lagging"}) { id } }')
            pid = project["createProject"]["id"]
            await ws.init()
            await ws.subscribe("slow", f'subscription {{ taskEvents(projectId: "{pid}") {{ id }} }}')
            await until(server, "task_service_subscriptions_open", 1, subscription="taskEvents")
            await gql.execute(
                "mutation($p: ID!, $t: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $t) { id } }",
                p=pid,
                t=[{"title": f"burst {n}", "taskType": "research"} for n in range(4 * MAX_LAG)],
            )
            while True:
                reply = await ws.recv_operation(30)
                if reply["type"] != "next" or "errors" in reply["payload"]:
                    break
            errors = reply["payload"] if reply["type"] == "error" else reply["payload"]["errors"]
            assert errors[0]["extensions"]["code"] == "CONFLICT", reply
        after = sample(await scrape(server.url), dropped, **labels)
        assert after - before > MAX_LAG

    async def test_pool_checked_out_counts_connections_held_by_requests(
        self, server: Server, database_url: str
    ) -> None:
        """Requests blocked on a table lock hold their pooled connections: a scrape taken
        meanwhile sees them checked out, and one taken after they finish does not."""
        held = 5  # well above what the reaper and the sequencer hold between requests
        checked_out = "task_service_db_pool_checked_out"
        async with graphql_client(server.url) as gql:
            idle = sample(await scrape(server.url), checked_out)
            assert idle < held
            locker = await asyncpg.connect(libpq(database_url))
            try:
                transaction = locker.transaction()
                await transaction.start()
                # /metrics reads tasks and agents, not projects: the scrape itself is not blocked.
                await locker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
                blocked = [
                    asyncio.create_task(gql.execute(f"query Held{n} {{ projects {{ id }} }}")) for n in range(held)
                ]
                await until(server, checked_out, held)
                assert not any(request.done() for request in blocked)
                await transaction.rollback()
                await asyncio.gather(*blocked)
            finally:
                await locker.close()

            async def released() -> bool:
                return sample(await scrape(server.url), checked_out) < held

            await wait_for(released, what="the held connections back in the pool", server=server)


class TestOperationLabels:
    def test_client_chosen_names_cannot_grow_the_metrics_without_bound(self) -> None:
        metrics = Metrics()
        names = {metrics.operation_label(f"Op{i}") for i in range(MAX_OPERATION_NAMES + 50)}

        assert len(names) == MAX_OPERATION_NAMES + 1
        assert metrics.operation_label("Op0") == "Op0"
        assert metrics.operation_label("Op99999") == "other"
        assert metrics.operation_label(None) == "anonymous"
        assert Metrics().operation_label('bad"name') == "other"


class TestCredential:
    async def test_metrics_need_a_credential_when_api_key_is_set(
        self, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        key = "metrics-test-admin-key-0123456789"
        async with (
            fresh_pg_database("ts_ops") as url,
            running_server(url, tmp_path_factory.mktemp("metrics_key"), API_KEY=key) as server,
            httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as http,
        ):
            refused = await http.get("/metrics")
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer not-the-key-0123456789"})
            allowed = await http.get("/metrics", headers={"X-API-Key": key})
            # What Prometheus sends with `authorization: {credentials_file: ...}` (README "Metrics").
            bearer = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})

        assert refused.status_code == 401
        assert "task_service" not in refused.text
        assert wrong.status_code == 401
        assert "task_service" not in wrong.text
        for response in (allowed, bearer):
            assert response.status_code == 200
            assert "task_service_graphql_requests_total" in response.text
