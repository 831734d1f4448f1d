"""Helpers of the operations tests: the console script in a clean environment, throwaway
PostgreSQL databases (not migrated), and reading a server's log lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from task_service.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database
from tests.e2e.conftest import Server, free_port, server_env

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 120


def script() -> str:
    """The task-service console script installed beside this interpreter."""
    beside = Path(sys.executable).parent / "task-service"
    found = str(beside) if beside.exists() else shutil.which("task-service")
    assert found, "the task-service console script is not installed (pip install -e .)"
    return found


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without any service setting, plus `overrides`."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in settings}
    env.update(overrides)
    return env


def run_cli(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script(), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def libpq(url: str) -> str:
    """The libpq form (psql, pg_dump, asyncpg) of a postgresql+asyncpg:// URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.asynccontextmanager
async def empty_pg_database(prefix: str = "ts_ops") -> AsyncIterator[str]:
    """A new, empty (not migrated) PostgreSQL database; its asyncpg URL. Dropped at the end."""
    url = await create_pg_database(prefix)
    try:
        yield url
    finally:
        await drop_pg_database(url)


def one_line(text: str) -> str:
    """The only line of `text`; fails when there are several or a traceback."""
    lines = text.strip().splitlines()
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


async def start_answering_server(database_url: str, workdir: Path, **env: str) -> Server:
    """Like tests.e2e.conftest.start_server, but returns as soon as /health answers at all
    (200 or 503): for servers whose database is not ready on purpose."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "task_service.app:create_app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=workdir,
        env=server_env(database_url, port, env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, log_file)
    try:
        await wait_for(lambda: _answers(server), what="/health to answer", server=server)
    except BaseException:
        await server.stop()
        raise
    return server


async def _answers(server: Server) -> bool:
    if server.process.returncode is not None:
        pytest.fail(f"the server exited with {server.process.returncode}:\n{server.output()}", pytrace=False)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=2.0, trust_env=False) as client:
            await client.get("/health")
    except httpx.TransportError:
        return False
    return True


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 60.0, server: Server | None = None
) -> None:
    """Poll `condition` until it holds; fail with `what` (and the server's output) at the deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            output = f"; server output:\n{server.output()}" if server is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{output}", pytrace=False)
        await asyncio.sleep(0.1)


async def health(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
        response = await client.get("/health")
    return response.status_code, response.json()


async def scrape(base_url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed: {(sample name, sorted labels): value}."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
        response = await client.get("/metrics", headers=headers)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when it has not been recorded yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def answers_at(url: str) -> bool:
    """Whether anything answers an HTTP(S) GET of `url` (a self-signed certificate is fine)."""
    try:
        async with httpx.AsyncClient(verify=False, timeout=2, trust_env=False) as client:  # noqa: S501
            await client.get(url)
    except httpx.TransportError:
        return False
    return True


@contextlib.asynccontextmanager
async def serving(database_url: str, workdir: Path, **env: str) -> AsyncIterator[tuple[int, Path]]:
    """`task-service serve` with JSON logs, until /health answers; its port and log file
    (stdout and stderr). Stopped (SIGTERM) when the block ends."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            script(),
            "serve",
            "--port",
            str(port),
            cwd=workdir,
            env=clean_env(DATABASE_URL=database_url, LOG_FORMAT="json", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            await wait_for(lambda: answers_at(f"http://127.0.0.1:{port}/health"), what="the service")
            yield port, log
        finally:
            process.terminate()
            await process.wait()
