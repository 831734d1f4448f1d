"""End-to-end helpers: a real uvicorn server in a subprocess, a fresh migrated PostgreSQL
database per test module, and a small GraphQL-over-HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from task_service.db.migrate import upgrade_to_head
from task_service.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(database_url: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any service setting, plus the given ones: a stray
    API_KEY or DATABASE_URL in the developer's shell must not change what a test runs."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings}
    env.update({"DATABASE_URL": database_url, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "INFO"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Server:
    """A uvicorn process serving the app; `url` is its base URL."""

    url: str
    process: asyncio.subprocess.Process
    log_path: Path
    log_file: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, tail: int = 4000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    async def kill(self) -> None:
        """SIGKILL: a crash, no shutdown hooks run."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it has not exited in time."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                await self.kill()
        self.log_file.close()


async def start_server(database_url: str, workdir: Path, *, port: int | None = None, **env: str) -> Server:
    """Start uvicorn against `database_url` (on `port`, else a free one) and return once
    GET /health answers 200.

    Fails the test (with the server's output) when the process exits or is not healthy
    within STARTUP_TIMEOUT seconds.
    """
    port = port or free_port()
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
        "--no-access-log",
        "--no-proxy-headers",
        # As `task-service serve` runs it.
        "--http",
        "task_service.api.http_protocol:CoalescingHttpToolsProtocol",
        cwd=workdir,
        env=server_env(database_url, port, env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, log_file)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    problem = "not healthy in time"
    async with httpx.AsyncClient(base_url=server.url, timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                problem = f"exited with code {process.returncode}"
                break
            with contextlib.suppress(httpx.TransportError):
                response = await client.get("/health")
                if response.status_code == 200:
                    return server
                problem = f"/health answered {response.status_code}: {response.text[:200]}"
            await asyncio.sleep(0.1)
    await server.stop()
    pytest.fail(f"server on port {port} {problem}; its output:\n{server.output()}", pytrace=False)


@contextlib.asynccontextmanager
async def running_server(
    database_url: str, workdir: Path, *, port: int | None = None, **env: str
) -> AsyncIterator[Server]:
    """A server for the block; always stopped (and killed if it will not stop) at the end."""
    server = await start_server(database_url, workdir, port=port, **env)
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def fresh_pg_database(prefix: str = "ts_e2e") -> AsyncIterator[str]:
    """A new PostgreSQL database at the latest migration, dropped at the end."""
    url = await create_pg_database(prefix)
    try:
        await upgrade_to_head(url)
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture(scope="module")
async def e2e_pg_url() -> AsyncIterator[str]:
    """One fresh migrated PostgreSQL database per test module."""
    async with fresh_pg_database() as url:
        yield url


class GraphQLError(AssertionError):
    """A GraphQL response with errors; `code` is the first error's extensions.code."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        self.code = (errors[0].get("extensions") or {}).get("code")
        super().__init__(f"{self.code}: {errors[0].get('message')}")


class GraphQLClient:
    """POST /graphql with {query, variables} on one httpx.AsyncClient (its own connections)."""

    def __init__(self, http: httpx.AsyncClient):
        self.http = http

    async def execute(self, query: str, **variables: Any) -> Any:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(body["errors"])
        response.raise_for_status()
        return body["data"]

    async def error(self, query: str, **variables: Any) -> GraphQLError:
        """Run an operation that must fail and return its error."""
        try:
            await self.execute(query, **variables)
        except GraphQLError as failure:
            return failure
        raise AssertionError("the operation succeeded; an error was expected")


@contextlib.asynccontextmanager
async def graphql_client(base_url: str, *, request_timeout: float = 30.0) -> AsyncIterator[GraphQLClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=request_timeout, trust_env=False) as http:
        yield GraphQLClient(http)
