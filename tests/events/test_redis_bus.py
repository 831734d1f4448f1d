"""BROADCAST_URL=redis://: the bus across processes through a real Redis, and a Redis restart
(the server killed and started again on its port) survived with nothing lost."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import factories as f
from tests.conftest import Client
from tests.events.helpers import (
    TASK_EVENTS,
    Collector,
    Sub,
    all_events,
    another_process,
    assert_exact_log,
    caught_up,
    register_agents,
    wait_until,
    work_one_task,
    writing,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port of 127.0.0.1, killable and restartable."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server); the Redis bus cannot be tested")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        pytest.fail(f"redis-server did not listen on port {self.port} within 10 s")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def two_processes(database_url: str, bus_url: str) -> AsyncIterator[tuple[object, object]]:
    async with (
        another_process(database_url, broadcast_url=bus_url) as writer,
        another_process(database_url, broadcast_url=bus_url) as reader,
    ):
        yield writer, reader


@pytest.mark.postgres_only
class TestRedisBus:
    async def test_changes_on_one_process_reach_subscribers_of_another(
        self, database_url, services, schema, redis_server
    ):
        async with two_processes(database_url, redis_server.url) as (writer, reader):
            assert writer.bus.url.startswith("redis://")
            # Signals really travel through Redis (not just the subscribers' safety poll).
            assert await writer.bus._ping()
            assert await reader.bus._ping()
            gql = Client(schema, writer)
            pid = await f.project(gql)
            await f.agent(gql, name="w")
            async with Sub(schema, reader, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
                await work_one_task(gql, project_id=pid, agent="w")
                expected = await all_events(gql)
                await got.wait_for_count(len(expected))
            assert_exact_log(got.values, expected)

    async def test_redis_restart_is_survived_and_nothing_is_lost(self, database_url, services, schema, redis_server):
        async with two_processes(database_url, redis_server.url) as (writer, reader):
            gql = Client(schema, writer)
            pid = await f.project(gql)
            agents = await register_agents(gql, 5)
            async with Sub(schema, reader, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
                async with writing(gql, project_id=pid, agents=agents):
                    await got.wait_for_count(20)
                    redis_server.kill()
                    killed_at = time.monotonic()
                    # Writes go on while Redis is down (their signals are lost).
                    down_from = writer.sequencer.horizon
                    await wait_until(lambda: writer.sequencer.horizon >= down_from + 20, what="writes without Redis")
                    redis_server.start()
                    await wait_until(
                        lambda: writer.bus.reconnects >= 1 and reader.bus.reconnects >= 1,
                        within=30,
                        what="both buses to reconnect",
                    )
                    reconnected = time.monotonic() - killed_at
                    assert await reader.bus._ping(), "signals must flow through the new connection"
                    seen = len(got.values)
                    await got.wait_for_count(seen + 20)
                expected = await caught_up(gql, got)
            print(f"\nredis restart: buses back {reconnected:.2f}s after the kill; {len(expected)} events delivered")
        assert_exact_log(got.values, expected)
