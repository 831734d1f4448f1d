"""Helpers for the agent client's tests: a real server, the installed `taskctl` run as a
subprocess with a clean environment, and a TCP proxy that can lose answers and cut links."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.conftest import Server, free_port, fresh_pg_database, running_server

TASKCTL = str(Path(sys.executable).with_name("taskctl"))
CLIENT_SETTINGS = ("TASK_SERVICE_URL", "AGENT_NAME", "TASK_SERVICE_TOKEN", "API_KEY", "TASK_SERVICE_STATE")
T = TypeVar("T")


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One server on a fresh PostgreSQL database per test module (no retry backoff)."""
    async with fresh_pg_database("ts_client") as url:
        async with running_server(url, tmp_path_factory.mktemp("server"), RETRY_BACKOFF_SECONDS="0") as srv:
            yield srv


def client_env(url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without client settings, pointed at `url`."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_SETTINGS}
    env.update({"TASK_SERVICE_URL": url, "XDG_STATE_HOME": str(state_dir)})
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@dataclass
class Taskctl:
    """Runs the installed console script against one server."""

    url: str
    state_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, **extra: str) -> dict[str, str]:
        return client_env(self.url, self.state_dir, **{**self.env, **extra})

    async def __call__(self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str) -> Result:
        process = await asyncio.create_subprocess_exec(
            TASKCTL,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(**env),
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else b""), timeout)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, **kwargs: Any) -> Any:
        """Run a command that must succeed and return its JSON output."""
        result = await self(*args, **kwargs)
        assert result.code == 0, f"taskctl {' '.join(args)} exited {result.code}: {result.stderr}"
        return result.json

    def as_agent(self, name: str) -> Taskctl:
        return Taskctl(self.url, self.state_dir, {**self.env, "AGENT_NAME": name})


@pytest.fixture
def taskctl(server: Server, tmp_path: Path) -> Taskctl:
    return Taskctl(server.url, tmp_path / "state")


async def poll(
    check: Callable[[], Awaitable[T | None] | T | None], *, within: float = 60.0, interval: float = 0.1
) -> T:
    """Call `check` (sync or async) until it returns something other than None; fail after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


class Proxy:
    """A TCP relay to `upstream` that a test can make misbehave.

    `lose_answer(marker, times)`: for the next `times` requests containing `marker`, forward
    the request, wait until the server starts answering (it has committed by then), and
    close the client's connection without relaying the answer. `cut()` closes every open
    connection (a network blip).
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._lose: dict[bytes, int] = {}
        self.lost: list[bytes] = []
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def lose_answer(self, marker: str, times: int = 1) -> None:
        self._lose[marker.encode()] = times

    def cut(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._links.update({client_writer, up_writer})
        answered = asyncio.Event()
        losing = asyncio.Event()

        async def upward() -> None:
            while chunk := await client_reader.read(65536):
                marker = next((m for m, n in self._lose.items() if n > 0 and m in chunk), None)
                if marker is not None:
                    self._lose[marker] -= 1
                    self.lost.append(marker)
                    losing.set()
                up_writer.write(chunk)
                await up_writer.drain()
                if marker is not None:
                    await answered.wait()
                    client_writer.transport.abort()
                    up_writer.transport.abort()
                    return

        async def downward() -> None:
            while chunk := await up_reader.read(65536):
                if losing.is_set():
                    answered.set()
                    return
                client_writer.write(chunk)
                await client_writer.drain()

        pair = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        self._tasks.update(pair)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
        for task in pair:
            task.cancel()
        await asyncio.gather(*pair, return_exceptions=True)
        self._tasks.difference_update(pair)
        for writer in (client_writer, up_writer):
            writer.transport.abort()
            self._links.discard(writer)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
