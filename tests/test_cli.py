"""The `task-service` console script, run for real in subprocesses."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from task_service.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _script() -> str:
    # The script installed beside this interpreter, so a stray one on PATH cannot answer.
    beside = Path(sys.executable).parent / "task-service"
    found = str(beside) if beside.exists() else shutil.which("task-service")
    assert found, "the task-service console script is not installed (pip install -e .)"
    return found


def _env(**overrides: str) -> dict[str, str]:
    """The current environment without any service setting, plus `overrides`."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in settings}
    env.update(overrides)
    return env


def _run(*args: str, cwd: Path, within: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the script to its end; a run longer than `within` seconds fails the test."""
    return subprocess.run(
        [_script(), *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestHelp:
    def test_lists_the_four_commands(self, tmp_path: Path) -> None:
        result = _run("--help", cwd=tmp_path)

        assert result.returncode == 0, result.stderr
        for command in ("serve", "migrate", "seed", "export-schema"):
            assert command in result.stdout


class TestExportSchema:
    def test_prints_the_sdl_without_database_or_environment(self, tmp_path: Path) -> None:
        result = _run("export-schema", cwd=tmp_path)

        assert result.returncode == 0, result.stderr
        assert "type Query" in result.stdout
        assert "claimNextTask" in result.stdout
        assert result.stdout.endswith("\n")
        assert list(tmp_path.iterdir()) == []  # no database file was created

    def test_writes_the_sdl_to_a_file(self, tmp_path: Path) -> None:
        output = tmp_path / "schema.graphql"

        result = _run("export-schema", "--output", str(output), cwd=tmp_path)

        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        assert "type Mutation" in output.read_text()


class TestServe:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("PORT", "notanumber"),
            ("HEARTBEAT_TIMEOUT_SECONDS", "-1"),
            ("LOG_LEVEL", "loud"),
            ("API_KEY", "short"),
            ("RATE_LIMIT", "lots"),
            ("RATE_LIMIT_STORAGE_URL", "memcached://x"),
            ("MAX_BODY_BYTES", "10"),
        ],
    )
    def test_invalid_setting_stops_startup_with_one_line(self, tmp_path: Path, variable: str, value: str) -> None:
        result = _run("serve", cwd=tmp_path, within=30, **{variable: value})  # it stops, rather than serving

        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert variable in lines[0]
        assert "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []  # stopped before touching the database

    def test_several_workers_need_a_shared_bus(self, tmp_path: Path) -> None:
        result = _run("serve", "--workers", "2", cwd=tmp_path)

        assert result.returncode != 0
        assert "BROADCAST_URL" in result.stderr
        assert "Traceback" not in result.stderr

    def test_serves_a_fresh_sqlite_file(self, tmp_path: Path) -> None:
        port = _free_port()
        database = tmp_path / "x.db"
        server = subprocess.Popen(
            [_script(), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_env(DATABASE_URL=f"sqlite:///{database}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            root = _wait_for(f"http://127.0.0.1:{port}/", server)

            assert root.json()["status"] == "ok"
            assert root.json()["service"] == "task-service"
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            assert health.status_code == 200, health.text
            assert health.json()["database"] == "ok"
            assert database.exists()  # migrated on start: the SQLite default
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            assert server.stdout is not None
            output = server.stdout.read()
        assert f"listening on http://127.0.0.1:{port}" in output
        assert "GraphiQL http://127.0.0.1" in output


def _wait_for(url: str, server: subprocess.Popen[str], deadline: float = 60) -> httpx.Response:
    """GET url once the server answers; fail early if it exits."""
    until = time.monotonic() + deadline
    while True:
        if server.poll() is not None:
            assert server.stdout is not None
            pytest.fail(f"server exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > until:
                pytest.fail(f"{url} did not answer within {deadline} s")
            time.sleep(0.1)


class TestSeed:
    def test_creates_the_demo_project_twice(self, tmp_path: Path) -> None:
        database = f"sqlite:///{tmp_path / 'seed.db'}"

        first = _run("seed", cwd=tmp_path, DATABASE_URL=database)
        second = _run("seed", cwd=tmp_path, DATABASE_URL=database)

        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert "'Launch campaign'" in first.stdout
        assert "with 8 tasks" in first.stdout
        for agent in ("researcher", "writer", "designer"):
            assert f"  {agent} (" in first.stdout
        assert first.stdout.count("token: ") == 3


class TestWebSocketCompression:
    """`serve` negotiates permessage-deflate only with WS_COMPRESSION on: with many
    subscribers the per-message compression costs more CPU than it saves (bench/PROFILE.md)."""

    @pytest.mark.parametrize(("setting", "negotiated"), [(None, False), ("true", True), ("false", False)])
    def test_compression_follows_the_setting(self, tmp_path: Path, setting: str | None, negotiated: bool) -> None:
        port = _free_port()
        env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
        if setting is not None:
            env["WS_COMPRESSION"] = setting
        server = subprocess.Popen(
            [_script(), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_for(f"http://127.0.0.1:{port}/health", server)
            extensions = asyncio.run(_ws_extensions(port))
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        assert ("permessage-deflate" in extensions) is negotiated, extensions


async def _ws_extensions(port: int) -> str:
    """The extensions the server accepted for a WebSocket that offers permessage-deflate, as
    browsers do."""
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"], compression="deflate"
    ) as ws:
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions") or ""
