"""api/direct.py: known queries and mutations run without strawberry's HTTP view, and every
answer is the one strawberry's view gives.

Two apps, one with GRAPHQL_DIRECT on and one with it off, each on its own fresh database,
receive the same requests in the same order; each answer (status, body, the headers that
matter), request log line and request counter must be the same. Each script repeats its
texts, so the direct path serves most of the second and later sightings, and the tests
check that it did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from task_service.api import direct
from task_service.api.direct import DirectGraphQL
from task_service.api.schema import Schema, build_schema
from task_service.api.transport import GraphQLApp
from task_service.app import create_app
from task_service.services import Services
from task_service.settings import Settings

API_KEY = "k" * 32
PROJECT = "mutation($input: CreateProjectInput!) { createProject(input: $input) { id name } }"
CREATE_TASKS = (
    "mutation($p: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $tasks) { id title status } }"
)
REGISTER = "mutation($input: RegisterAgentInput!) { registerAgent(input: $input) { agent { id name status } token } }"
HEARTBEAT = "mutation($a: String) { heartbeat(agent: $a) { id name status } }"
CLAIM = "mutation($a: String, $p: ID) { claimNextTask(agent: $a, projectId: $p) { id status assignee { name } } }"
TASK = "query($id: ID!) { task(id: $id) { id title status project { name } } }"
NAMED = "query One($id: ID!) { task(id: $id) { id } } query Two($id: ID!) { task(id: $id) { status } }"
# The headers an answer is compared on (x-request-id separately: it is fresh unless given).
COMPARED_HEADERS = (
    "content-type",
    "retry-after",
    "www-authenticate",
    "allow",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)

Step = dict[str, Any]


def op(query: str, headers: dict[str, str] | None = None, **variables: Any) -> Step:
    return {"json": {"query": query, "variables": variables}, "headers": headers or {}}


def raw(content: bytes | str, content_type: str = "application/json", method: str = "POST", **extra: Any) -> Step:
    return {"content": content, "headers": {"content-type": content_type}, "method": method, **extra}


def answer(client: TestClient, step: Step, tokens: dict[str, str]) -> dict[str, Any]:
    """One exchange, as compared: status, body with its secrets and times blanked, headers."""
    headers = {k: v.format(**tokens) for k, v in step.get("headers", {}).items()}
    if "json" in step:
        response = client.post("/graphql", json=step["json"], headers=headers)
    else:
        response = client.request(
            step.get("method", "POST"), step.get("url", "/graphql"), content=step["content"], headers=headers
        )
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    compared = {name: response.headers.get(name) for name in COMPARED_HEADERS}
    given = headers.get("X-Request-ID")
    rid = response.headers.get("x-request-id")
    compared["x-request-id"] = "given" if rid and rid == given else ("fresh" if rid and len(rid) == 32 else rid)
    return {"status": response.status_code, "body": _blank(body, tokens), "headers": compared}


def _blank(value: Any, tokens: dict[str, str]) -> Any:
    """Agent tokens differ between the two databases: each is kept for later steps and
    blanked; so are times."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "token" and isinstance(item, str):
                tokens[f"token{len(tokens)}"] = item
                item = "<token>"
            elif key.endswith("At") and item is not None:
                item = "<time>"
            out[key] = _blank(item, tokens)
        return out
    if isinstance(value, list):
        return [_blank(item, tokens) for item in value]
    return value


class Recorder:
    """The direct path's runs, and the request log lines, per app."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
        self.direct_runs = 0
        self.caplog = caplog
        original = DirectGraphQL._run

        async def counted(lane: DirectGraphQL, *args: Any, **kwargs: Any) -> None:
            self.direct_runs += 1
            await original(lane, *args, **kwargs)

        monkeypatch.setattr(DirectGraphQL, "_run", counted)
        caplog.set_level(logging.INFO, logger="task_service.requests")

    def log_lines(self) -> list[tuple[Any, ...]]:
        lines = [
            (r.operation_type, r.operation, r.outcome, r.caller, r.client)  # type: ignore[attr-defined]
            for r in self.caplog.records
            if r.name == "task_service.requests"
        ]
        self.caplog.clear()
        return lines


def request_counts(client: TestClient) -> dict[tuple[str, ...], float]:
    counts = {}
    for metric in client.app.state.metrics.requests.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts[tuple(sorted(sample.labels.items()))] = sample.value
    return counts


def compare(tmp_path: Path, recorder: Recorder, steps: list[Step | Callable[[], None]], **settings: Any) -> None:
    """Runs the steps against both apps, step by step, and compares everything."""
    with ExitStack() as stack:
        apps = {}
        for direct_on in (False, True):
            app_settings = Settings(
                database_url=f"sqlite:///{tmp_path}/direct-{direct_on}.db", graphql_direct=direct_on, **settings
            )
            apps[direct_on] = stack.enter_context(TestClient(create_app(app_settings)))
        tokens: dict[bool, dict[str, str]] = {False: {}, True: {}}
        for number, step in enumerate(steps):
            if callable(step):
                step()
                continue
            answers, lines = {}, {}
            for direct_on, client in apps.items():
                answers[direct_on] = answer(client, step, tokens[direct_on])
                lines[direct_on] = recorder.log_lines()
            assert answers[True] == answers[False], f"step {number}: {step}"
            assert lines[True] == lines[False], f"step {number}: {step}"
        assert request_counts(apps[True]) == request_counts(apps[False])


def lifecycle_steps() -> list[Step | Callable[[], None]]:
    return [
        op(PROJECT, input={"name": "alpha"}),
        op(PROJECT, input={"name": "beta"}),
        op(PROJECT, input={"name": "alpha"}),  # a conflict
        op(CREATE_TASKS, p="1", tasks=[{"title": f"t{i}", "taskType": "x"} for i in range(3)]),
        op(CREATE_TASKS, p="2", tasks=[{"title": "b", "taskType": "x", "priority": 3}]),
        op(CREATE_TASKS, p="999", tasks=[{"title": "c", "taskType": "x"}]),  # NOT_FOUND
        op(REGISTER, input={"name": "ann", "maxConcurrentTasks": 1}),
        op(REGISTER, input={"name": "bob"}),
        op(HEARTBEAT, a="ann"),
        op(HEARTBEAT, a="nobody"),
        op(CLAIM, a="ann", p="1"),
        op(CLAIM, a="ann", p="1"),  # over maxConcurrentTasks
        op(CLAIM, a="bob", p="2"),
        op(CLAIM, a="bob", p="2"),  # nothing ready: null
        op(TASK, id="1"),
        op(TASK, id="2"),
        op(TASK, id="12345"),  # null
        op(TASK, id={"not": "an id"}),  # variable coercion
        op(TASK),  # a required variable missing
        op(TASK, headers={"X-Request-ID": "trace-42"}, id="1"),
        op(TASK, headers={"X-Request-ID": "not a sane id!"}, id="1"),
        {"json": {"query": NAMED, "operationName": "Two", "variables": {"id": "1"}}},
        {"json": {"query": NAMED, "operationName": "Two", "variables": {"id": "3"}}},
        {"json": {"query": NAMED, "operationName": "Three", "variables": {"id": "3"}}},
        {"json": {"query": NAMED, "variables": {"id": "3"}}},  # which one?
        {"json": {"query": "{ task(id: 1) { id nope } }"}},  # invalid, twice
        {"json": {"query": "{ task(id: 1) { id nope } }"}},
        {"json": {"query": TASK, "variables": {"id": "1"}, "extensions": {"x": 1}}},
        {"json": [{"query": TASK, "variables": {"id": "1"}}, {"query": TASK, "variables": {"id": "2"}}]},
        {"json": {"query": "subscription { taskEvents { id } }"}},
        {"json": {"query": "subscription { taskEvents { id } }"}},
        raw(json.dumps({"query": TASK, "variables": {"id": "1"}}), content_type="text/plain"),
        raw(json.dumps({"query": TASK, "variables": {"id": "1"}}), content_type="application/json; charset=utf-8"),
        raw(b'{"query": "{ __typename }"'),  # not JSON
        raw(b'"just a string"'),
        raw(json.dumps({"query": 42})),
        raw(json.dumps({"query": TASK, "variables": [1]})),
        raw(json.dumps({"query": TASK, "variables": {"id": "1", "deep": _nested(40)}})),
        raw(json.dumps({"query": TASK, "variables": {"id": "1", "pad": "x" * 2_000_000}})),
        raw(b"", method="GET", url="/graphql?query=%7B__typename%7D"),
        raw(b"", method="PUT"),
        op('mutation { unregisterAgent(name: "bob") }'),
        op('mutation { unregisterAgent(name: "bob") }'),
    ]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Recorder:
    return Recorder(monkeypatch, caplog)


def test_open_service_answers_the_same_both_ways(tmp_path: Path, recorder: Recorder) -> None:
    compare(tmp_path, recorder, lifecycle_steps())
    # Second and later sightings of a valid query or mutation, POSTed as plain JSON: HEARTBEAT
    # 1, CLAIM 3, CREATE_TASKS 2, PROJECT 2, REGISTER 1, TASK 7 (charset included), NAMED 2.
    assert recorder.direct_runs == 18


def test_unexpected_errors_are_masked_both_ways(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a secret detail of the server")

    steps: list[Step | Callable[[], None]] = [
        op(PROJECT, input={"name": "alpha"}),
        op(CREATE_TASKS, p="1", tasks=[{"title": "t", "taskType": "x"}]),
        op(TASK, id="1"),
        lambda: monkeypatch.setattr(Services, "rows_by_ids", broken),
        op(TASK, id="1"),
        op(TASK, id="1"),
    ]
    compare(tmp_path, recorder, steps)
    assert recorder.direct_runs == 2


def test_credentials_are_checked_the_same_both_ways(tmp_path: Path, recorder: Recorder) -> None:
    admin = {"X-API-Key": API_KEY}
    steps: list[Step | Callable[[], None]] = [
        op(TASK, id="1"),  # no credential: 401
        op(PROJECT, headers=admin, input={"name": "alpha"}),
        op(PROJECT, headers=admin, input={"name": "beta"}),
        op(TASK, id="1"),
        op(TASK, headers={"X-API-Key": "wrong" * 8}, id="1"),
        op(TASK, headers={"Authorization": "Basic abc"}, id="1"),
        op(TASK, headers={"Authorization": "Bearer tsa_unknown"}, id="1"),
        op(TASK, headers={"Authorization": f"Bearer {API_KEY}"}, id="1"),
        # TASK is known now: the same refusals from the direct path.
        op(TASK, id="1"),
        op(TASK, headers={"X-API-Key": "wrong" * 8}, id="1"),
        op(TASK, headers={"Authorization": "Basic abc"}, id="1"),
        op(TASK, headers={"Authorization": "Bearer tsa_unknown"}, id="1"),
        op(REGISTER, headers=admin, input={"name": "ann"}),  # token0
        op(REGISTER, headers=admin, input={"name": "bob"}),  # token1
        op(HEARTBEAT, headers={"Authorization": "Bearer {token0}"}),
        op(HEARTBEAT, headers={"Authorization": "Bearer {token0}"}, a="ann"),
        op(HEARTBEAT, headers={"Authorization": "Bearer {token0}"}, a="bob"),  # FORBIDDEN
        op(HEARTBEAT, headers={"Authorization": "bearer {token1}"}),
        op(HEARTBEAT, headers=admin, a="bob"),
    ]
    compare(tmp_path, recorder, steps, api_key=API_KEY)
    # PROJECT 1, the four refusals of a known TASK, REGISTER 1, HEARTBEAT 4.
    assert recorder.direct_runs == 10


def test_rate_limits_are_counted_the_same_both_ways(tmp_path: Path, recorder: Recorder) -> None:
    steps: list[Step | Callable[[], None]] = [
        op(PROJECT, input={"name": "alpha"}),
        op(PROJECT, input={"name": "beta"}),
        op(PROJECT, input={"name": "gamma"}),  # the third in a minute: 429
        op(PROJECT, input={"name": "delta"}),
        op(TASK, id="1"),  # queries are not limited
        op(TASK, id="1"),
    ]
    compare(tmp_path, recorder, steps, rate_limit="2/minute")
    assert recorder.direct_runs == 4


class TestValidDocuments:
    @pytest.fixture
    def client(self, tmp_path: Path) -> Iterator[TestClient]:
        with TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path}/app.db"))) as client:
            yield client

    def test_only_texts_that_passed_validation_are_remembered(self, client: TestClient) -> None:
        schema: Schema = client.app.state.schema  # type: ignore[attr-defined]
        invalid = "{ task(id: 1) { id nope } }"
        for _ in range(2):
            response = client.post("/graphql", json={"query": invalid})
            assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        too_deep = "{ " + "task(id: 1) { project { " * 8 + "id" + " } }" * 8 + " }"
        for _ in range(2):
            response = client.post("/graphql", json={"query": too_deep})
            assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        assert schema.valid_documents.get(invalid) is None
        assert schema.valid_documents.get(too_deep) is None
        client.post("/graphql", json={"query": TASK, "variables": {"id": "1"}})
        assert schema.valid_documents.get(TASK) is not None

    def test_only_the_most_recent_texts_are_kept(self, client: TestClient) -> None:
        schema: Schema = client.app.state.schema  # type: ignore[attr-defined]
        capacity = schema.valid_documents._capacity
        texts = [f"{{ t{i}: task(id: {i}) {{ id }} }}" for i in range(capacity + 5)]
        for text in texts:
            assert client.post("/graphql", json={"query": text}).status_code == 200
        assert len(schema.valid_documents) == capacity
        assert schema.valid_documents.get(texts[0]) is None
        assert schema.valid_documents.get(texts[-1]) is not None


def test_an_extension_the_direct_path_does_not_know_stops_the_service() -> None:
    from strawberry.extensions import SchemaExtension

    class Audit(SchemaExtension):
        def on_operation(self) -> Iterator[None]:
            yield

    settings = Settings(database_url="sqlite:///unused.db")
    schema = build_schema(settings)
    schema.extensions = [*schema.extensions, Audit]
    with pytest.raises(RuntimeError, match="Audit"):
        DirectGraphQL(lambda *a: None, GraphQLApp(schema, settings=settings))  # type: ignore[arg-type, misc]
    assert Audit not in direct.HANDLED_EXTENSIONS
