"""Generated raw HTTP requests against a real server (API_KEY set): random methods, paths,
content types, headers and bodies (valid operations with junk variables, junk JSON, deep
nesting, batches, invalid UTF-8, bodies past MAX_BODY_BYTES). Never a 5xx; every answer
from /graphql that is not a success is a GraphQL-shaped error with a contract code (never
INTERNAL); the server is healthy at the end and logged no traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Server, running_server
from tests.e2e.security_helpers import ADMIN_KEY
from tests.fuzzing import CODES, DERANDOMIZE

pytestmark = pytest.mark.timeout(600)

CASES = int(os.environ.get("FUZZ_HTTP_CASES", "300"))
MAX_BODY = 64 * 1024  # the server below runs with MAX_BODY_BYTES at 64 KB, so big bodies are cheap

OPERATIONS = [
    "{ tasks { totalCount nodes { id status } } }",
    "query($id: ID!) { task(id: $id) { id status events { type } } }",
    "query($f: TaskFilter, $n: Int) { tasks(filter: $f, first: $n) { totalCount } }",
    "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
    "mutation($i: CreateTaskInput!) { createTask(input: $i) { id status } }",
    "mutation($i: RegisterAgentInput!) { registerAgent(input: $i) { agent { name } } }",
    "mutation($id: ID!, $a: String, $r: JSON) { submitTask(id: $id, agent: $a, result: $r) { id } }",
    "mutation($id: ID!, $a: String) { claimTask(id: $id, agent: $a) { id } }",
    'mutation { claimNextTask(agent: "w1") { id } }',
    "subscription { taskEvents { id } }",
    "{ __schema { types { name } } }",
    "{ dashboardStats { tasks { total } } }",
    "{",
    "query { tasks { nodes { nope } } }",
    "x" * 300,
]

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
junk_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
variables = st.one_of(
    st.none(),
    junk_json,
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from(["1", "0", "-1", "abc", "9" * 30]) | junk_json,
            "a": st.sampled_from(["w1", "", "\x00", "x" * 200]) | junk_json,
            "i": junk_json
            | st.fixed_dictionaries(
                {"name": st.text(max_size=30)}, optional={"projectId": junk_json, "title": junk_json}
            ),
            "r": junk_json,
            "f": junk_json,
            "n": st.integers(-(2**40), 2**40) | junk_json,
        },
    ),
)
operation = st.fixed_dictionaries(
    {"query": st.sampled_from(OPERATIONS) | st.text(max_size=50) | junk_json},
    optional={"variables": variables, "operationName": st.none() | st.text(max_size=10) | junk_json},
)


def _deep(depth: int, opener: str, closer: str) -> bytes:
    return (opener * depth + closer * depth).encode()


bodies = st.one_of(
    operation.map(lambda op: json.dumps(op).encode()),
    st.lists(operation, max_size=12).map(lambda ops: json.dumps(ops).encode()),  # batches
    junk_json.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),  # anything, invalid UTF-8 included
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"{",
            b'{"query": "{ tasks { totalCount } }"',
            b'{"query": NaN}',
            b'{"query": "{ tasks { totalCount } }", "variables": {"n": Infinity}}',
            b'{"query": "\\ud800"}',
            b"\xff\xfe{\x00}",
            b"query=%7B+tasks+%7B+totalCount+%7D+%7D",
            b'{"query": "mutation($r: JSON) { submitTask(id: \\"1\\", agent: \\"w1\\", result: $r) { id } }", '
            b'"variables": {"r": NaN}}',
        ]
    ),
    st.integers(10, 200_000).map(lambda depth: _deep(depth, "[", "]")),
    st.integers(10, 50_000).map(
        lambda depth: (
            b'{"query": "{ tasks { totalCount } }", "variables": '
            + _deep(depth, '{"a":', "}")[: depth * 5]
            + b"1"
            + b"}" * depth
            + b"}"
        )
    ),
    st.integers(MAX_BODY - 10, MAX_BODY * 3).map(lambda size: json.dumps({"query": " " * size}).encode()),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/graphql",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "",
        "*/*",
    ]
)
credentials = st.sampled_from(
    [
        *[{"X-API-Key": ADMIN_KEY}] * 8,
        {"X-API-Key": "wrong"},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"Authorization": "Bearer tsa_not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": ""},
        {},
    ]
)
extra_headers = st.dictionaries(
    st.sampled_from(["Accept", "X-Forwarded-For", "Origin", "Content-Encoding", "Accept-Encoding", "Cookie"]),
    st.sampled_from(["*/*", "text/html", "application/graphql-response+json", "gzip", "1.2.3.4", "evil.example", "x"]),
    max_size=3,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    headers = {**draw(credentials), **draw(extra_headers)}
    request: dict[str, Any] = {"method": method, "url": draw(st.sampled_from(["/graphql"] * 9 + ["/graphql/"]))}
    if method == "GET":
        params = draw(
            st.dictionaries(
                st.sampled_from(["query", "variables", "operationName", "extensions"]),
                st.sampled_from(OPERATIONS) | st.text(max_size=40) | junk_json.map(json.dumps),
                max_size=3,
            )
        )
        request["params"] = params
    else:
        content_type = draw(content_types)
        if content_type:
            headers["Content-Type"] = content_type
        request["content"] = draw(bodies)
    request["headers"] = headers
    return request


def check(response: httpx.Response, request: dict[str, Any]) -> None:
    where = f"{request['method']} {request['url']} {request.get('headers')} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:500]}"
    if request["method"] in ("HEAD", "OPTIONS") or response.status_code in (301, 307, 308):
        return
    if response.status_code == 200 and not response.content:
        return
    if request["method"] == "GET" and response.headers.get("content-type", "").startswith("text/html"):
        return  # GraphiQL
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{where}: not JSON: {response.text[:300]!r}") from None
    if response.status_code != 200 or (isinstance(body, dict) and body.get("errors")):
        assert isinstance(body, dict), f"{where}: {body!r:.300}"
        errors = body.get("errors")
        assert isinstance(errors, list), f"{where}: no errors list: {body!r:.300}"
        assert errors, f"{where}: an empty errors list"
        for error in errors:
            assert isinstance(error.get("message"), str), f"{where}: {error!r:.300}"
            extensions = error.get("extensions") or {}
            code = extensions.get("code")
            if code == "INTERNAL" and extensions.get("retryable") is True:
                continue  # the shared database server was out of connections
            assert code in CODES, f"{where}: code {code}: {error['message'][:300]}"
            assert "Traceback" not in error["message"]


@pytest.fixture(scope="module")
async def server(e2e_pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(
        e2e_pg_url,
        tmp_path_factory.mktemp("fuzz-http"),
        API_KEY=ADMIN_KEY,
        MAX_BODY_BYTES=str(MAX_BODY),
        CORS_ORIGINS="http://allowed.example",
    ) as running:
        yield running


async def test_generated_requests_never_break_the_server(server: Server) -> None:
    admin = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as http:
        await http.post(
            "/graphql", json={"query": 'mutation { registerAgent(input: {name: "w1"}) { token } }'}, headers=admin
        )
    seen: dict[int, int] = {}

    def fuzz() -> None:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:

            @settings(
                max_examples=CASES,
                deadline=None,
                database=None,
                derandomize=DERANDOMIZE,
                suppress_health_check=list(HealthCheck),
            )
            @given(request=requests())
            def each(request: dict[str, Any]) -> None:
                response = client.request(**request)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                check(response, request)

            each()

    await asyncio.to_thread(fuzz)
    print(f"{sum(seen.values())} requests, by status: {dict(sorted(seen.items()))}")  # pytest -s shows it
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as http:
        health = await http.get("/health")
        assert health.status_code == 200, health.text
        after = await http.post("/graphql", json={"query": "{ tasks { totalCount } }"}, headers=admin)
    assert after.status_code == 200, after.text
    assert "errors" not in after.json(), after.text
    assert "Traceback" not in server.output(tail=2_000_000), server.output()
