"""A real PostgreSQL restart is survived: the LISTEN/NOTIFY bus notices its listener connection
died, retries with backoff while the server is down, reconnects once it is back; the pools
recover, mutations work again, and a live taskEvents subscriber ends with exactly the log.

The shared server on 127.0.0.1:5432 serves every other test, so this one runs its own
throwaway cluster (initdb as the `postgres` OS user into a temporary directory, on a free
port) and restarts that."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from task_service.api.schema import Schema
from task_service.db.migrate import upgrade_to_head
from task_service.services import Services
from tests import factories as f
from tests.conftest import Client, GraphQLFailure, make_settings
from tests.e2e.conftest import free_port
from tests.events.helpers import (
    TASK_EVENTS,
    Collector,
    Sub,
    all_events,
    another_process,
    assert_exact_log,
    caught_up,
    register_agents,
    wait_settled,
    wait_until,
    work_one_task,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(120)]

PG_OS_USER = "postgres"
COMMAND_TIMEOUT = 60.0
OUTAGE_SECONDS = 6.0  # longer than the subscribers' 5 s safety poll, so they read while it is down
RETRY_WITHIN = 30.0  # a client retries a failing mutation this long before giving up


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (TEST_PG_BIN overrides); fails loudly."""
    override = os.environ.get("TEST_PG_BIN")
    if override:
        candidates = [Path(override)]
    else:

        def version(path: Path) -> tuple[int, ...]:
            return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())

        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    pytest.fail(
        "the PostgreSQL server binaries (initdb, pg_ctl, postgres) are required to test a PostgreSQL restart "
        f"and were not found in {override or '/usr/lib/postgresql/*/bin'}: install postgresql "
        "(apt-get install postgresql) or set TEST_PG_BIN",
        pytrace=False,
    )


class TempCluster:
    """A private PostgreSQL cluster: trust auth, user postgres, on 127.0.0.1:`port`."""

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run its programs as the postgres OS user.
            try:
                self.owner = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                pytest.fail(
                    f"running as root and there is no '{PG_OS_USER}' OS user to run PostgreSQL as", pytrace=False
                )
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.fail(
                    "running as root and `runuser` is missing: cannot run PostgreSQL as postgres", pytrace=False
                )
            self.prefix = [runuser, "-u", PG_OS_USER, "--"]
        else:
            self.owner = None
            self.prefix = []
        self.dir = Path(tempfile.mkdtemp(prefix="ts_pg_restart_"))
        if self.owner is not None:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def server_log(self, tail: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-tail:]
        return "(no server log)"

    def run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self.prefix, str(self.bin / program), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{' '.join(command)} did not finish in {COMMAND_TIMEOUT:.0f}s\n{self.server_log()}", pytrace=False
            )
        if check and done.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed with code {done.returncode}:\n{done.stdout}{done.stderr}\n"
                f"server log:\n{self.server_log()}",
                pytrace=False,
            )
        return done

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                "fsync = off\nmax_connections = 50\n"
            )

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        """Stop the server however it can be stopped, then remove the directory."""
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        with contextlib.suppress(OSError, ValueError, IndexError):  # still running: kill our postmaster
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            if str(self.data).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def own_pg() -> AsyncIterator[tuple[TempCluster, str]]:
    """A temporary cluster with one migrated database; the cluster and its files always go."""
    cluster = TempCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        conn = await asyncpg.connect(cluster.admin_dsn(), timeout=10)
        try:
            await conn.execute('CREATE DATABASE "ts_restart"')
        finally:
            await conn.close()
        url = cluster.url("ts_restart")
        await upgrade_to_head(url)
        yield cluster, url
    finally:
        await asyncio.to_thread(cluster.destroy)


async def retrying(operation: Callable[[], Awaitable[Any]], counts: dict[str, int]) -> None:
    """Run `operation` until it succeeds, as a client would across an outage, counting
    counts["failed"] attempts as they fail. Gives up (re-raising) after RETRY_WITHIN seconds."""
    deadline = time.monotonic() + RETRY_WITHIN
    while True:
        try:
            await operation()
            return
        except GraphQLFailure:
            counts["failed"] += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def pool_only(url: str) -> AsyncIterator[Services]:
    """Services that are never started (no bus, no sequencer), so only our own requests use
    its pool: a started process's sequencer polls every second and would heal a broken pool
    before a client noticed."""
    services = Services.build(make_settings(url))
    try:
        yield services
    finally:
        await services.close()


async def test_postgres_restart_is_survived_and_nothing_is_lost(
    own_pg: tuple[TempCluster, str], schema: Schema, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, url = own_pg
    caplog.set_level(logging.WARNING, logger="task_service.events.bus")

    def failed_reconnects() -> int:
        return sum("reconnect failed" in record.getMessage() for record in caplog.records)

    # `writer` takes a stream of mutations that clients retry through the outage; `reader`
    # serves the subscriber (its bus carries the writer's signals); `idle`'s pool is filled
    # before the restart and untouched until after it, when it must serve at the first try.
    async with another_process(url) as writer, another_process(url) as reader, pool_only(url) as idle:
        assert writer.bus.url.startswith("postgres://"), "the default bus on PostgreSQL is LISTEN/NOTIFY"
        gql, reader_gql, idle_gql = Client(schema, writer), Client(schema, reader), Client(schema, idle)
        pid = await f.project(gql)
        agents = await register_agents(gql, 3)
        await asyncio.gather(*(all_events(idle_gql) for _ in range(3)))  # several pooled connections
        stop = asyncio.Event()
        written = {"ok": 0, "failed": 0}

        async def keep_writing(agent: str) -> None:
            for i in itertools.count():
                if stop.is_set():
                    return
                # createTask is safe to repeat: a retry after a lost reply only adds a task
                # (and its event), which the log comparison below covers.
                create = functools.partial(f.task, gql, project_id=pid, title=f"{agent}-{i}")
                await retrying(create, written)
                written["ok"] += 1
                await asyncio.sleep(0.01)

        async with Sub(schema, reader, TASK_EVENTS, after="0") as sub, Collector(sub) as got:
            for agent in agents:
                await work_one_task(gql, project_id=pid, agent=agent)
            await got.wait_for_count(len(await all_events(gql)))
            old_backends = [s.bus._broadcast._backend._conn.get_server_pid() for s in (writer, reader)]

            writing = asyncio.gather(*(keep_writing(a) for a in agents))
            try:
                await wait_until(lambda: written["ok"] >= 10, within=15, what="writes before the restart")
                stopping = time.monotonic()
                await asyncio.to_thread(cluster.stop, "fast")
                stopped = time.monotonic()
                # Down until both buses have noticed and failed reconnects (the backoff path),
                # and for at least OUTAGE_SECONDS.
                await wait_until(
                    lambda: not writer.bus.connected and not reader.bus.connected and failed_reconnects() >= 2,
                    within=20,
                    what="both buses to notice the outage and retry",
                )
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
                failed_while_down = written["failed"]
                starting = time.monotonic()
                await asyncio.to_thread(cluster.start)
                await wait_until(
                    lambda: writer.bus.reconnects >= 1 and reader.bus.reconnects >= 1,
                    within=30,
                    what="both buses to reconnect",
                )
                reconnected = max(writer.bus.resynced_at, reader.bus.resynced_at) - starting
                for services, old_backend in zip((writer, reader), old_backends, strict=True):
                    assert services.bus.connected
                    assert services.bus._broadcast._backend._conn.get_server_pid() != old_backend
                    assert await services.bus._ping(), "signals must flow through the new connection"
                ok_at_reconnect = written["ok"]
                await wait_until(lambda: written["ok"] >= ok_at_reconnect + 10, within=15, what="writes after it")
            finally:
                stop.set()
                await writing
            assert failed_while_down >= 1, "the writers never saw the outage: was the server really down?"

            # Mutations work again at the first attempt (no retry here), in every process,
            # also through the pool whose connections all died in the restart.
            await asyncio.gather(*(all_events(idle_gql) for _ in range(3)))
            await asyncio.gather(
                work_one_task(idle_gql, project_id=pid, agent=agents[0]),
                work_one_task(gql, project_id=pid, agent=agents[1]),
                work_one_task(reader_gql, project_id=pid, agent=agents[2]),
            )
            await got.wait_for_count(len(await all_events(gql)), within=15)  # raises if the subscription failed
            expected = await caught_up(gql, got)
            assert await all_events(reader_gql) == expected
            await wait_settled(reader)
        print(
            f"\npostgres restart: server down {starting - stopping:.2f}s (fast stop {stopped - stopping:.2f}s); "
            f"buses reconnected {reconnected:.2f}s after pg_ctl start, "
            f"{failed_reconnects()} failed reconnect attempts with backoff before; "
            f"{written['failed']} failed writes retried; {len(got.values)} events received "
            f"(the log has {len(expected)})"
        )
    assert_exact_log(got.values, expected)
