"""Several server processes on one PostgreSQL database behave as one service: a change made
through one process reaches subscribers of another, live and in order, and survives the loss
of a process's bus listener connection."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import factories
from tests.conftest import PG_ADMIN_DSN
from tests.e2e.conftest import (
    STARTUP_TIMEOUT,
    Server,
    free_port,
    fresh_pg_database,
    graphql_client,
    running_server,
    server_env,
)
from tests.e2e.test_subscriptions_ws import (
    DEADLINE,
    TASK_EVENTS,
    Collector,
    all_event_ids,
    assert_exact_log,
    health,
    last_event_id,
    poll,
    run_lifecycle,
    tcp_connections,
    ws_session,
)

pytestmark = pytest.mark.timeout(300)


def pg_dsn(database_url: str) -> str:
    """The asyncpg DSN of a test database (same server and user as the admin DSN)."""
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database_url.rsplit("/", 1)[1]


def pg_port() -> int:
    netloc = PG_ADMIN_DSN.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    return int(netloc.rsplit(":", 1)[1]) if ":" in netloc else 5432


async def terminate_bus_listeners(database_url: str, server_pid: int) -> list[int]:
    """pg_terminate_backend on the bus listener connection(s) of one server process.

    The listener's backend shows its last statement in pg_stat_activity.query: `LISTEN
    "task_service"` right after connecting, then the `SELECT pg_notify(...)` of the bus's
    own pings and publishes (the bus publishes on its listener connection; nothing else
    calls pg_notify). Other servers' listeners look the same, so the backends are matched
    to this process by the client ports of its TCP connections (from /proc)."""
    ports = [local for local, remote in tcp_connections(server_pid) if remote == pg_port()]
    assert ports, f"process {server_pid} holds no connection to PostgreSQL"
    conn = await asyncpg.connect(pg_dsn(database_url), timeout=10)
    try:
        rows = await conn.fetch(
            """SELECT pid, pg_terminate_backend(pid) AS done FROM pg_stat_activity
               WHERE datname = current_database() AND client_port = ANY($1::int[])
                 AND (query ILIKE 'LISTEN%' OR query ILIKE '%pg_notify%')""",
            ports,
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows if row["done"]]


class TestTwoServersOneDatabase:
    async def test_a_change_made_on_one_reaches_a_subscriber_of_the_other(self, tmp_path: Path) -> None:
        async with (
            fresh_pg_database("ts_multi") as url,
            running_server(url, tmp_path) as a,
            running_server(url, tmp_path) as b,
            graphql_client(a.url) as writer,
            ws_session(b) as subscriber,
        ):
            await run_lifecycle(writer, subscriber)

    async def test_subscribers_survive_the_loss_of_their_servers_listener(self, tmp_path: Path) -> None:
        writers, changes = 4, 40
        async with (
            fresh_pg_database("ts_multi") as url,
            running_server(url, tmp_path) as a,
            running_server(url, tmp_path) as b,
            graphql_client(a.url) as gql,
        ):
            suffix = uuid.uuid4().hex[:8]
            project_id = await factories.project(gql, name=f"loss-{suffix}")
            tasks = []
            for n in range(writers):
                name = f"w{n}-{suffix}"
                await factories.agent(gql, name=name, skills=["research"])
                task_id = (await factories.task(gql, project_id=project_id))["id"]
                await factories.claim(gql, task_id=task_id, agent=name)
                await factories.transition(gql, "startTask", id=task_id, agent=name)
                tasks.append((task_id, name))
            written = 0

            async def write(task_id: str, name: str) -> None:
                nonlocal written
                async with graphql_client(a.url) as client:
                    for n in range(changes):
                        await factories.transition(client, "reportProgress", id=task_id, agent=name, progress=n)
                        written += 1

            async with ws_session(b) as session:
                collector = Collector(session, TASK_EVENTS, after="0")
                assert await collector.wait_for_count(1, within=10)
                writing = asyncio.gather(*(write(*task) for task in tasks))
                try:
                    assert await poll(lambda: written >= writers * changes // 4, within=60)
                    killed = await terminate_bus_listeners(url, b.pid)
                    assert killed, "no bus listener backend of server B found in pg_stat_activity"
                    await writing
                finally:
                    with contextlib.suppress(BaseException):
                        await writing
                expected = await all_event_ids(gql)
                assert await collector.wait_for_id(expected[-1], within=30), (
                    f"B's subscriber stopped at {collector.ids[-1:]} of {expected[-1]}: {collector.error}"
                )
                assert_exact_log(collector.ids, expected)

                async def reconnected() -> bool:
                    bus = (await health(b))["bus"]
                    return bus["reconnects"] >= 1 and bus["connected"]

                # The live path is back: a reconnect counts only once the bus's own ping has
                # come back through the new LISTEN connection. And a new change still arrives.
                assert await poll(reconnected, within=DEADLINE, interval=0.2), (await health(b))["bus"]
                count = len(collector.events)
                await factories.transition(gql, "reportProgress", id=tasks[0][0], agent=tasks[0][1], progress=99)
                assert await collector.wait_for_count(count + 1, within=DEADLINE)
                assert collector.ids == await all_event_ids(gql)
                await collector.stop()
        print(f"listener loss: killed backends {killed}; B received {len(collector.ids)} events, all of them")


@contextlib.asynccontextmanager
async def serve_with_workers(
    database_url: str, workdir: Path, workers: int
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """`task-service serve --workers N`, healthy, stopped at the end."""
    port = free_port()
    command = shutil.which("task-service")
    argv = [command] if command else [sys.executable, "-m", "task_service.cli"]
    log_path = workdir / f"serve-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the server runs on its own
            [*argv, "serve", "--workers", str(workers)],
            cwd=workdir,
            env=server_env(database_url, port, {}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:

            async def healthy() -> bool:
                if process.poll() is not None:
                    return True
                with contextlib.suppress(httpx.TransportError):
                    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
                        return (await http.get(base + "/health")).status_code == 200
                return False

            ok = await poll(healthy, within=STARTUP_TIMEOUT, interval=0.2)
            if not ok or process.poll() is not None:
                pytest.fail(f"serve --workers {workers} did not start:\n{log_path.read_text()[-3000:]}", pytrace=False)
            yield base, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class TestServeWithWorkers:
    async def test_every_subscriber_gets_every_change_whichever_worker_serves_it(self, tmp_path: Path) -> None:
        subscribers = 10
        async with fresh_pg_database("ts_workers") as url, serve_with_workers(url, tmp_path, 2) as (base, process):
            server = Server(base, process, tmp_path / "unused.log", None)
            port = int(base.rsplit(":", 1)[1])
            async with graphql_client(base) as gql, contextlib.AsyncExitStack() as stack:
                project_id = await factories.project(gql, name="workers")
                await factories.agent(gql, name="worker", skills=["research"])
                after = await last_event_id(gql)
                collectors: list[Collector] = []

                def holders() -> dict[int, int]:
                    """Connections to the service port held by each worker process."""
                    return {
                        worker: sum(1 for local, _ in tcp_connections(worker) if local == port)
                        for worker in children(process.pid)
                    }

                # The kernel picks the worker for each connection; open a few more (at most
                # 20) when the first ten all landed on one, so both workers serve some.
                while len(collectors) < subscribers or (
                    sum(1 for count in holders().values() if count) < 2 and len(collectors) < subscribers + 20
                ):
                    session = await stack.enter_async_context(ws_session(server))
                    collectors.append(Collector(session, TASK_EVENTS, after=after, p=project_id))
                    if len(collectors) >= subscribers:
                        await asyncio.sleep(0.05)
                spread = holders()
                # Changes over fresh HTTP connections, so they too land on either worker.
                ids = []
                for n in range(6):
                    async with graphql_client(base) as client:
                        ids.append((await factories.task(client, project_id=project_id, title=f"t{n}"))["id"])
                async with graphql_client(base) as client:
                    await factories.claim(client, task_id=ids[0], agent="worker")
                expected = await all_event_ids(gql, project_id=project_id)
                assert len(expected) == 7
                for collector in collectors:
                    assert await collector.wait_for_id(expected[-1], within=15), (
                        f"a subscriber stopped at {collector.ids[-1:]}: {collector.error}"
                    )
                    assert collector.ids == expected
                    await collector.stop()
        print(f"serve --workers 2: {len(collectors)} subscribers; connections per worker process {spread}")
        assert sum(spread.values()) >= subscribers
