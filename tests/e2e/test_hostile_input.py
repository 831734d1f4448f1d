"""Hostile and malformed input against a real server with API_KEY set: every refusal is a
4xx with a GraphQL-shaped error and a contract code, nothing is exhausted, and the server
is healthy afterwards with no traceback in its log. Includes the checks graphql-cop runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from graphql import get_introspection_query

from tests.conftest import PG_ADMIN_DSN
from tests.e2e.conftest import Server, running_server
from tests.e2e.security_helpers import ADMIN_KEY, LEGACY_WS, TRANSPORT_WS, admin_headers, http_operation

pytestmark = pytest.mark.timeout(300)

MB = 1024 * 1024


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(
        e2e_pg_url,
        tmp_path_factory.mktemp("hostile"),
        API_KEY=ADMIN_KEY,
        WS_INIT_TIMEOUT_SECONDS="1",
        CORS_ORIGINS="http://allowed.example",
        STATEMENT_TIMEOUT_SECONDS="1",
    ) as running:
        yield running
        assert "Traceback" not in running.output(tail=200_000), running.output()


async def post(
    server: Server, body: bytes | str, *, content_type: str = "application/json", **kw: Any
) -> httpx.Response:
    headers = {**admin_headers(), "Content-Type": content_type, **kw.pop("headers", {})}
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as http:
        return await http.post("/graphql", content=body, headers=headers, **kw)


def refusal(response: httpx.Response, status: int, code: str) -> str:
    """Assert a GraphQL-shaped refusal; returns its message."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert list(body) == ["errors"], body
    (error,) = body["errors"]
    assert error["extensions"]["code"] == code, error
    assert "Traceback" not in error["message"]
    return str(error["message"])


async def graphql_error(server: Server, query: str, **variables: Any) -> dict[str, Any]:
    response = await post(server, json.dumps({"query": query, "variables": variables}))
    assert response.status_code == 200, response.text[:300]
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    return errors[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def assert_healthy(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http:
        assert (await http.get("/health")).status_code == 200
    outcome = await http_operation(server, admin_headers(), "{ projects { id } }")
    assert outcome.ok, outcome


class TestBodies:
    async def test_malformed_json(self, server: Server) -> None:
        refusal(await post(server, b'{"query": "{ projects { id } }"'), 400, "BAD_USER_INPUT")

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
    )
    async def test_a_post_that_is_not_json_is_refused(self, server: Server, content_type: str) -> None:
        message = refusal(await post(server, "query={projects{id}}", content_type=content_type), 415, "BAD_USER_INPUT")
        assert "application/json" in message

    async def test_a_body_that_is_not_utf8(self, server: Server) -> None:
        refusal(await post(server, b"\x80"), 400, "BAD_USER_INPUT")

    @pytest.mark.parametrize(
        "body",
        [
            '{"query": "{ projects { id } }", "operationName": true}',
            "[[]]",
            '[{"query": "{ projects { id } }", "variables": 5}]',
            "5",
        ],
    )
    async def test_operations_of_the_wrong_shape(self, server: Server, body: str) -> None:
        refusal(await post(server, body), 400, "BAD_USER_INPUT")

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
    async def test_other_methods_get_a_graphql_405(self, server: Server, method: str) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
            response = await http.request(
                method, "/graphql", json={"query": "{ projects { id } }"}, headers=admin_headers()
            )
        refusal(response, 405, "BAD_USER_INPUT")

    async def test_a_mutation_over_get_is_refused(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
            response = await http.get(
                "/graphql",
                params={"query": 'mutation { createProject(input: {name: "x"}) { id } }'},
                headers=admin_headers(),
            )
        refusal(response, 405, "BAD_USER_INPUT")
        projects = (await http_operation(server, admin_headers(), "{ projects { name } }")).data["projects"]
        assert {"name": "x"} not in projects

    async def test_json_nested_100000_deep(self, server: Server) -> None:
        message = refusal(await post(server, "[" * 100_000 + "]" * 100_000), 400, "BAD_USER_INPUT")
        assert "MAX_JSON_DEPTH" in message

    async def test_variables_nested_deeper_than_the_limit(self, server: Server) -> None:
        value: Any = 1
        for _ in range(40):
            value = {"a": value}
        body = {
            "query": 'mutation($r: JSON) { submitTask(id: 1, agent: "x", result: $r) { id } }',
            "variables": {"r": value},
        }
        refusal(await post(server, json.dumps(body)), 400, "BAD_USER_INPUT")

    async def test_a_declared_10_mb_body_is_refused_unread(self, server: Server) -> None:
        refusal(await post(server, b" " * (10 * MB)), 413, "BAD_USER_INPUT")

    async def test_a_chunked_10_mb_body_is_refused_while_reading(self, server: Server) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(160):
                yield b" " * 65536

        refusal(await post(server, chunks()), 413, "BAD_USER_INPUT")  # type: ignore[arg-type]

    async def test_memory_returns_after_a_burst_of_10_mb_bodies(self, server: Server) -> None:
        await assert_healthy(server)
        baseline = rss_kb(server.pid)
        for _ in range(4):
            responses = await asyncio.gather(*(post(server, b" " * (10 * MB)) for _ in range(5)))
            assert {r.status_code for r in responses} == {413}
        await assert_healthy(server)
        grown_mb = (rss_kb(server.pid) - baseline) / 1024
        assert grown_mb < 20, f"the server kept {grown_mb:.1f} MB after 20 refused 10 MB bodies"

    async def test_an_empty_batch_and_a_batch_of_100(self, server: Server) -> None:
        refusal(await post(server, "[]"), 400, "BAD_USER_INPUT")
        batch = [{"query": "{ __typename }"}] * 100
        message = refusal(await post(server, json.dumps(batch)), 400, "QUERY_TOO_COMPLEX")
        assert "MAX_BATCH_OPERATIONS" in message

    async def test_a_small_batch_runs(self, server: Server) -> None:
        response = await post(server, json.dumps([{"query": "{ __typename }"}] * 3))
        assert response.json() == [{"data": {"__typename": "Query"}}] * 3


class TestGraphQLCop:
    """The checks graphql-cop runs, each refused cleanly."""

    async def test_alias_overloading(self, server: Server) -> None:
        query = "{ " + " ".join(f"a{i}: __typename" for i in range(101)) + " }"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_field_duplication(self, server: Server) -> None:
        query = "{ projects { " + "name " * 1000 + "} }"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_directive_overloading(self, server: Server) -> None:
        query = "{ __typename " + "@include(if: true) " * 200 + "}"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_circular_fragments(self, server: Server) -> None:
        query = "{ projects { ...A } } fragment A on Project { id ...B } fragment B on Project { name ...A }"
        response = await post(server, json.dumps({"query": query}))
        assert response.status_code == 200
        codes = {e["extensions"]["code"] for e in response.json()["errors"]}
        assert codes <= {"BAD_USER_INPUT", "QUERY_TOO_COMPLEX"}, codes

    async def test_deep_introspection(self, server: Server) -> None:
        inner = "name"
        for _ in range(8):
            inner = f"fields {{ type {{ {inner} }} }}"
        query = f"{{ __schema {{ types {{ {inner} }} }} }}"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_the_standard_introspection_query_runs(self, server: Server) -> None:
        outcome = await http_operation(server, admin_headers(), get_introspection_query(descriptions=True))
        assert outcome.ok, outcome
        assert outcome.data["__schema"]["queryType"]["name"] == "Query"

    async def test_a_query_13_deep_is_one_error(self, server: Server) -> None:
        levels = ["tasks(first: 1)", "nodes", "project"]
        opened = [levels[i % 3] for i in range(13)]
        query = "{ " + " { ".join(opened) + " { totalCount" + " }" * 13 + " }"
        error = await graphql_error(server, query)
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_selections_nested_beyond_the_parsers_reach(self, server: Server) -> None:
        query = "{ projects " + "{ id " * 2400 + "}" * 2400 + " }"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_a_fragment_bomb_is_refused(self, server: Server) -> None:
        fragments = " ".join(f"fragment F{i} on Project {{ ...F{i + 1} ...F{i + 1} }}" for i in range(30))
        query = "{ projects { ...F0 } } " + fragments + " fragment F30 on Project { id }"
        assert (await graphql_error(server, query))["extensions"]["code"] == "QUERY_TOO_COMPLEX"

    async def test_an_unknown_fragment(self, server: Server) -> None:
        error = await graphql_error(server, "{ projects { ...Nope } }")
        assert error["extensions"]["code"] == "BAD_USER_INPUT"

    async def test_the_server_is_healthy_after_all_of_it(self, server: Server) -> None:
        await assert_healthy(server)


@pytest.fixture(scope="module")
async def production(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(
        e2e_pg_url, tmp_path_factory.mktemp("prod"), API_KEY=ADMIN_KEY, ENVIRONMENT="production"
    ) as running:
        yield running


class TestProduction:
    async def test_introspection_is_off(self, production: Server) -> None:
        outcome = await http_operation(production, admin_headers(), "{ __schema { types { name } } }")
        assert outcome.code == "BAD_USER_INPUT", outcome

    async def test_field_suggestions_are_off(self, production: Server, server: Server) -> None:
        query = "{ projects { nam } }"
        hidden = await http_operation(production, admin_headers(), query)
        shown = await http_operation(server, admin_headers(), query)
        assert "Did you mean" in (shown.message or "")  # development keeps them
        assert hidden.code == "BAD_USER_INPUT", hidden
        assert "Did you mean" not in (hidden.message or ""), hidden

    async def test_graphiql_is_off(self, production: Server) -> None:
        async with httpx.AsyncClient(base_url=production.url, timeout=10, trust_env=False) as http:
            response = await http.get("/graphql", headers={"Accept": "text/html"})
        refusal(response, 404, "NOT_FOUND")


async def drain(ws: Any) -> None:
    """Read until the server closes the socket (raises ConnectionClosed)."""
    while True:
        await ws.recv()


class TestWebSocket:
    def url(self, server: Server) -> str:
        return server.url.replace("http://", "ws://", 1) + "/graphql"

    @pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
    async def test_a_socket_that_never_initialises_is_closed(self, server: Server, protocol: str) -> None:
        async with websockets.connect(self.url(server), subprotocols=[protocol]) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 20)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4408

    async def test_an_oversized_message_closes_the_socket(self, server: Server) -> None:
        async with websockets.connect(self.url(server), subprotocols=[TRANSPORT_WS], max_size=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": admin_headers()}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"type": "ping", "payload": {"x": "a" * (2 * MB)}}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(drain(ws), 20)
        await assert_healthy(server)

    async def test_a_deeply_nested_message_closes_the_socket(self, server: Server) -> None:
        async with websockets.connect(self.url(server), subprotocols=[TRANSPORT_WS]) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": admin_headers()}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send("[" * 50_000 + "]" * 50_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(drain(ws), 20)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400

    async def test_a_page_on_another_origin_cannot_open_a_socket(self, server: Server) -> None:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(self.url(server), subprotocols=[TRANSPORT_WS], origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with websockets.connect(self.url(server), subprotocols=[TRANSPORT_WS], origin="http://allowed.example"):
            pass


class TestHeaders:
    async def test_hardening_headers_and_a_policy_on_pages(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http:
            api = await http.get("/health")
            page = await http.get("/graphql", headers={"Accept": "text/html"})
        for response in (api, page):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "content-security-policy" not in api.headers

    async def test_dashboard_files_are_revalidated(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http:
            page = await http.get("/dashboard/")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-cache"
        assert "etag" in page.headers

    async def test_cors_only_for_configured_origins(self, server: Server) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as http:
            ok = await http.options(
                "/graphql", headers={"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
            )
            evil = await http.options(
                "/graphql", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
            )
        assert ok.headers.get("access-control-allow-origin") == "http://allowed.example"
        assert "access-control-allow-origin" not in evil.headers


class TestStatementTimeout:
    async def test_a_request_blocked_on_a_lock_fails_instead_of_waiting_forever(
        self, server: Server, e2e_pg_url: str
    ) -> None:
        name = "locked-agent"
        registered = await http_operation(
            server, admin_headers(), "mutation($n: String!) { registerAgent(input: {name: $n}) { token } }", {"n": name}
        )
        assert registered.ok
        dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + e2e_pg_url.rsplit("/", 1)[1]
        blocker = await asyncpg.connect(dsn)
        try:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT id FROM agents WHERE name = $1 FOR UPDATE", name)
            # STATEMENT_TIMEOUT_SECONDS=1: the heartbeat's lock wait is cut short while the
            # blocker still holds the row (without the timeout this call would hang here).
            outcome = await asyncio.wait_for(
                http_operation(
                    server, admin_headers(), "mutation($a: String) { heartbeat(agent: $a) { name } }", {"a": name}
                ),
                timeout=60,
            )
            assert outcome.code == "INTERNAL", outcome
            assert "STATEMENT_TIMEOUT_SECONDS" in (outcome.message or "")
            await transaction.rollback()
        finally:
            await blocker.close()
        after = await http_operation(
            server, admin_headers(), "mutation($a: String) { heartbeat(agent: $a) { name } }", {"a": name}
        )
        assert after.ok, after


class TestOperationsOverHTTP:
    async def test_a_subscription_over_http_points_to_the_websocket(self, server: Server) -> None:
        message = refusal(
            await post(server, json.dumps({"query": "subscription { taskEvents { id } }"})), 400, "BAD_USER_INPUT"
        )
        assert "WebSocket" in message

    async def test_a_body_without_a_query(self, server: Server) -> None:
        refusal(await post(server, json.dumps({"variables": {}})), 400, "BAD_USER_INPUT")
