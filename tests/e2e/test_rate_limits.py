"""Rate limits on mutations per caller, over real HTTP: per agent token and admin key, per
client address when the service is open (X-Forwarded-For only from TRUSTED_PROXIES), and
one budget shared by two server processes through Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, running_server
from tests.e2e.security_helpers import ADMIN_KEY, Outcome, admin_headers, bearer, close_clients, http_operation

pytestmark = pytest.mark.timeout(300)

HEARTBEAT = "mutation { heartbeat { name } }"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True, scope="module")
async def _clients():  # type: ignore[no-untyped-def]
    yield
    await close_clients()


async def register(server: Server) -> str:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    outcome = await http_operation(
        server, admin_headers(), "mutation($n: String!) { registerAgent(input: {name: $n}) { token } }", {"n": name}
    )
    assert outcome.ok, outcome
    return str(outcome.data["registerAgent"]["token"])


def refused(outcome: Outcome) -> bool:
    return outcome.code == "RATE_LIMITED"


class TestPerCaller:
    @pytest.fixture(scope="class")
    async def server(self, e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
        async with running_server(
            e2e_pg_url, tmp_path_factory.mktemp("rate"), API_KEY=ADMIN_KEY, RATE_LIMIT="5/minute"
        ) as running:
            yield running

    async def test_an_agent_over_its_budget_is_refused_with_retry_after(self, server: Server) -> None:
        token = await register(server)
        for _ in range(5):
            assert (await http_operation(server, bearer(token), HEARTBEAT)).ok

        outcome = await http_operation(server, bearer(token), HEARTBEAT)

        assert refused(outcome), outcome
        assert outcome.status == 429
        # retryAfter: how long until the window lets this caller in again (a minute here).
        from tests.e2e.security_helpers import _client

        response = await _client(server, bearer(token)).post("/graphql", json={"query": HEARTBEAT})
        error = response.json()["errors"][0]
        assert 1 <= error["extensions"]["retryAfter"] <= 60
        assert response.headers["retry-after"] == str(error["extensions"]["retryAfter"])

    async def test_other_callers_keep_their_own_budget(self, server: Server) -> None:
        spent, fresh = await register(server), await register(server)
        for _ in range(6):
            await http_operation(server, bearer(spent), HEARTBEAT)
        assert refused(await http_operation(server, bearer(spent), HEARTBEAT))

        assert (await http_operation(server, bearer(fresh), HEARTBEAT)).ok
        assert (await http_operation(server, bearer(spent), "{ agents { name } }")).ok  # queries are not limited

    async def test_each_root_field_of_a_mutation_counts(self, server: Server) -> None:
        token = await register(server)
        three = "mutation { a: heartbeat { name } b: heartbeat { name } c: heartbeat { name } }"
        assert (await http_operation(server, bearer(token), three)).ok
        assert (await http_operation(server, bearer(token), HEARTBEAT)).ok
        assert (await http_operation(server, bearer(token), HEARTBEAT)).ok

        assert refused(await http_operation(server, bearer(token), HEARTBEAT))

    async def test_a_refused_mutation_changes_nothing(self, server: Server) -> None:
        token = await register(server)
        for _ in range(5):
            await http_operation(server, bearer(token), HEARTBEAT)
        name = f"p-{uuid.uuid4().hex[:6]}"

        outcome = await http_operation(
            server, bearer(token), "mutation($n: String!) { createProject(input: {name: $n}) { id } }", {"n": name}
        )

        assert refused(outcome)
        projects = (await http_operation(server, admin_headers(), "{ projects { name } }")).data["projects"]
        assert {"name": name} not in projects


class TestClientAddress:
    """Open service: the budget is per client address, taken from X-Forwarded-For only when
    the peer is a trusted proxy."""

    XFF = "X-Forwarded-For"

    async def spend(self, server: Server, address: str, times: int) -> list[Outcome]:
        return [
            await http_operation(server, {self.XFF: address}, 'mutation { createProject(input: {name: "p"}) { id } }')
            for _ in range(times)
        ]

    async def test_behind_a_trusted_proxy_each_client_has_a_budget(self, e2e_pg_url: str, tmp_path: Path) -> None:
        async with running_server(e2e_pg_url, tmp_path, RATE_LIMIT="3/minute", TRUSTED_PROXIES="127.0.0.1") as server:
            first = await self.spend(server, "10.0.0.1", 4)
            second = await self.spend(server, "10.0.0.2", 1)
        assert [o.ok for o in first] == [True, True, True, False]
        assert refused(first[-1])
        assert second[0].ok

    async def test_without_trusted_proxies_the_header_is_ignored(self, e2e_pg_url: str, tmp_path: Path) -> None:
        async with running_server(e2e_pg_url, tmp_path, RATE_LIMIT="3/minute") as server:
            first = await self.spend(server, "10.0.0.1", 3)
            second = await self.spend(server, "10.0.0.2", 1)
        assert all(o.ok for o in first)
        assert refused(second[0]), "a client chose its own address with X-Forwarded-For"


class TestSharedBudget:
    async def test_two_processes_share_one_budget_through_redis(self, e2e_pg_url: str, tmp_path: Path) -> None:
        settings = {"API_KEY": ADMIN_KEY, "RATE_LIMIT": "6/minute", "RATE_LIMIT_STORAGE_URL": REDIS_URL}
        for workdir in (tmp_path / "a", tmp_path / "b"):
            workdir.mkdir()
        async with (
            running_server(e2e_pg_url, tmp_path / "a", **settings) as one,
            running_server(e2e_pg_url, tmp_path / "b", **settings) as two,
        ):
            token = await register(one)
            spent = [await http_operation(server, bearer(token), HEARTBEAT) for server in (one, two) * 3]
            assert all(o.ok for o in spent), spent

            assert refused(await http_operation(one, bearer(token), HEARTBEAT))
            assert refused(await http_operation(two, bearer(token), HEARTBEAT))
