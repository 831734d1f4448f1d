"""Logging: LOG_FORMAT=json gives one JSON object per line for everything the server writes,
with a request id, operation, caller, outcome and duration per GraphQL request; text for
people; LOG_LEVEL applies to the service's loggers and uvicorn's alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, fresh_pg_database, running_server
from tests.ops.helpers import empty_pg_database, health, run_cli, serving, wait_for

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(180)]


async def post(server: Server, query: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
        return await http.post("/graphql", json={"query": query}, headers=headers)


def log_lines(server: Server) -> list[str]:
    if not server.log_file.closed:
        server.log_file.flush()
    return server.log_path.read_text(errors="replace").splitlines()


def request_records(server: Server) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log_lines(server)]
    return [r for r in records if r.get("logger") == "task_service.requests"]


class TestJsonLogs:
    async def test_every_line_is_json_with_request_fields(self, tmp_path: Path) -> None:
        async with fresh_pg_database("ts_ops") as url, running_server(url, tmp_path, LOG_FORMAT="json") as server:
            ok = await post(server, "query Hello { projects { id } }", **{"X-Request-ID": "req-123"})
            bad = await post(server, 'query Broken { task(id: "x") { id } }')

            assert ok.headers["x-request-id"] == "req-123"
            generated = bad.headers["x-request-id"]
            assert len(generated) == 32

            async def both_logged() -> bool:
                return len(request_records(server)) >= 2

            await wait_for(both_logged, what="two request log lines", server=server)
            hello, broken = request_records(server)[:2]
            assert hello["request_id"] == "req-123"
            assert hello["operation"] == "Hello"
            assert hello["operation_type"] == "query"
            assert hello["caller"] == "open"  # API_KEY unset
            assert hello["outcome"] == "ok"
            assert hello["duration_ms"] > 0
            assert hello["client"] == "127.0.0.1"
            assert hello["level"] == "INFO"
            assert "timestamp" in hello
            assert (broken["request_id"], broken["outcome"]) == (generated, "BAD_USER_INPUT")
            records = [json.loads(line) for line in log_lines(server)]  # every line, uvicorn's included
            loggers = {r["logger"] for r in records}
            assert {"uvicorn.error", "task_service.reaper", "task_service.requests"} <= loggers
            assert any(r["message"] == "reaper: this process is the leader" for r in records)


class TestAccessLines:
    async def test_a_graphql_post_answered_200_writes_the_request_line_only(self, tmp_path: Path) -> None:
        async with fresh_pg_database("ts_ops") as url, running_server(url, tmp_path, LOG_FORMAT="json") as server:
            await post(server, "query Hello { projects { id } }")
            async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
                await http.get("/health")
                refused = await http.post("/graphql", content=b"{", headers={"content-type": "application/json"})
                graphiql = await http.get("/graphql", headers={"accept": "text/html"})
                assert refused.status_code == 400

            def access() -> list[str]:
                return [
                    r["message"]
                    for r in (json.loads(line) for line in log_lines(server))
                    if r["logger"] == "uvicorn.access"
                ]

            async def logged() -> bool:
                return len(access()) >= 3 and len(request_records(server)) >= 1

            await wait_for(logged, what="the access lines", server=server)
            lines = access()
            assert [line for line in lines if "/graphql" in line and '" 200' in line and "POST" in line] == []
            assert any('"GET /health HTTP/1.1" 200' in line for line in lines)
            assert any('"POST /graphql HTTP/1.1" 400' in line for line in lines)
            assert any(f'"GET /graphql HTTP/1.1" {graphiql.status_code}' in line for line in lines)
            assert [r["operation"] for r in request_records(server)] == ["Hello"]


class TestTextLogs:
    async def test_readable_lines(self, tmp_path: Path) -> None:
        async with fresh_pg_database("ts_ops") as url, running_server(url, tmp_path) as server:
            await post(server, "query Hello { projects { id } }")

            async def logged() -> bool:
                return any("task_service.requests: query Hello: ok in" in line for line in log_lines(server))

            await wait_for(logged, what="the request's text line", server=server)
            assert all(not line.startswith("{") for line in log_lines(server))


class TestLogLevel:
    async def test_warning_silences_info_everywhere(self, tmp_path: Path) -> None:
        async with (
            fresh_pg_database("ts_ops") as url,
            running_server(url, tmp_path, LOG_LEVEL="WARNING", LOG_FORMAT="json") as server,
        ):
            await post(server, "query Hello { projects { id } }")
            await post(server, "{ __typename }")
            await server.stop()

            assert log_lines(server) == []


class TestCallers:
    async def test_an_agent_is_logged_by_name_never_by_credential(self, tmp_path: Path) -> None:
        key = "logging-test-admin-key-0123456789"
        async with (
            fresh_pg_database("ts_ops") as url,
            running_server(url, tmp_path, API_KEY=key, LOG_FORMAT="json") as server,
        ):
            registered = await post(
                server,
                'mutation Join { registerAgent(input: {name: "w1"}) { token } }',
                **{"X-API-Key": key},
            )
            token = registered.json()["data"]["registerAgent"]["token"]
            await post(server, "mutation Beat { heartbeat { name } }", Authorization=f"Bearer {token}")

            async def both_logged() -> bool:
                return len(request_records(server)) >= 2

            await wait_for(both_logged, what="two request log lines", server=server)
            callers = {r["operation"]: r["caller"] for r in request_records(server)}
            assert callers == {"Join": "admin", "Beat": "agent:w1"}
            text = "\n".join(log_lines(server))
            assert key not in text
            assert token not in text


def json_records(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (fails on a line that is not one)."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r} in:\n{text}", pytrace=False)
    return records


class TestCommandLines:
    async def test_migrate_and_serve_write_json_lines(self, tmp_path: Path) -> None:
        """With LOG_FORMAT=json the console script's own output (migrate's result, serve's
        banner) is a log record like the rest, not a bare line among JSON objects."""
        async with empty_pg_database() as url:
            migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url, LOG_FORMAT="json")

            assert migrated.returncode == 0, migrated.stderr
            assert migrated.stdout == ""
            records = json_records(migrated.stderr)
            result = [r for r in records if r["logger"] == "task_service.cli"]
            assert [r["message"] for r in result] == [f"migrated {url} to head"]
            assert result[0]["level"] == "INFO"

            async with serving(url, tmp_path) as (port, output):
                assert (await health(f"http://127.0.0.1:{port}"))[0] == 200
            records = json_records(output.read_text())
            banners = [r["message"] for r in records if r["logger"] == "task_service.cli"]
            assert len(banners) == 1, records
            assert banners[0].startswith("task-service ")
            assert f"listening on http://127.0.0.1:{port}" in banners[0]
            assert "uvicorn.error" in {r["logger"] for r in records}
