"""/health tells the truth: 503 with the reason while the database is unreachable or not
migrated, or the bus is down, and 200 again once it is fixed; meanwhile the background
loops say so once instead of writing a traceback per retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, fresh_pg_database
from tests.ops.helpers import (
    empty_pg_database,
    health,
    run_cli,
    sample,
    scrape,
    start_answering_server,
    wait_for,
)
from tests.ops.proxy import Proxy

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(180)]

FAST_REAPER = {"REAPER_INTERVAL_SECONDS": "0.2"}


async def health_is(server: Server, status: int, reason: str | None = None) -> bool:
    code, body = await health(server.url)
    return code == status and (reason is None or reason in body.get("reason", ""))


async def failed_reaper_runs(server: Server) -> float:
    return sample(await scrape(server.url), "task_service_reaper_runs_total", outcome="error")


def log_of(server: Server) -> str:
    server.log_file.flush()
    return server.log_path.read_text(errors="replace")


@pytest.fixture
async def proxied_pg() -> AsyncIterator[tuple[str, Proxy]]:
    """A migrated database reached through a proxy the test can cut."""
    async with fresh_pg_database("ts_ops") as url:
        proxy = Proxy(5432)
        await proxy.start()
        try:
            yield url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"), proxy
        finally:
            await proxy.cut()


class TestNotMigrated:
    async def test_503_with_the_command_to_run_until_migrated(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url:
            server = await start_answering_server(url, tmp_path, **FAST_REAPER)
            try:
                code, body = await health(server.url)
                assert code == 503
                assert body["database"] == "not migrated"
                assert "`task-service migrate`" in body["reason"]
                # Many failed passes of the reaper (and the sequencer), one warning each.
                await wait_for(lambda: _at_least(server, 10), what="10 failed reaper passes", server=server)
                output = log_of(server)
                assert "Traceback" not in output
                assert output.count("reaper paused: database not migrated") == 1, output
                assert output.count("event sequencer paused: database not migrated") == 1, output
                assert output.count("run `task-service migrate`; /health answers 503 until then") == 1

                migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=url)

                assert migrated.returncode == 0, migrated.stderr
                await wait_for(lambda: health_is(server, 200), what="/health 200 after migrate", server=server)
                await wait_for(
                    lambda: _logged(server, "reaper recovered"), what="the reaper's recovery line", server=server
                )
            finally:
                await server.stop()


class TestDatabaseOutage:
    async def test_503_while_unreachable_then_200(self, tmp_path: Path, proxied_pg: tuple[str, Proxy]) -> None:
        url, proxy = proxied_pg
        server = await start_answering_server(url, tmp_path, **FAST_REAPER)
        try:
            await wait_for(lambda: health_is(server, 200), what="a healthy start", server=server)

            await proxy.cut()

            await wait_for(
                lambda: health_is(server, 503, "database unreachable"), what="/health 503 (unreachable)", server=server
            )
            _, body = await health(server.url)
            assert body["database"] == "unreachable"
            errors = await failed_reaper_runs(server)
            await wait_for(lambda: _at_least(server, errors + 10), what="10 more failed reaper passes", server=server)
            metrics = await scrape(server.url)
            assert sample(metrics, "task_service_database_up") == 0

            await proxy.start()

            await wait_for(lambda: health_is(server, 200), what="/health 200 after the outage", server=server)
            await wait_for(lambda: _logged(server, "reaper recovered"), what="the reaper's recovery", server=server)
            output = log_of(server)
            assert "Traceback" not in output
            assert output.count("reaper paused: database unreachable") == 1, output
            assert output.count("event sequencer paused: database unreachable") <= 1, output
        finally:
            await server.stop()


class TestBusOutage:
    async def test_503_while_the_bus_is_down_then_200(self, tmp_path: Path) -> None:
        redis = Proxy(6379)
        await redis.start()
        try:
            async with fresh_pg_database("ts_ops") as url:
                server = await start_answering_server(url, tmp_path, BROADCAST_URL=f"redis://127.0.0.1:{redis.port}/0")
                try:
                    await wait_for(lambda: health_is(server, 200), what="a healthy start", server=server)

                    await redis.cut()

                    await wait_for(
                        lambda: health_is(server, 503, "event bus down"), what="/health 503 (bus)", server=server
                    )
                    _, body = await health(server.url)
                    assert body["database"] == "ok"
                    assert body["bus"]["connected"] is False

                    await redis.start()

                    await wait_for(
                        lambda: health_is(server, 200), what="/health 200 after the bus outage", server=server
                    )
                finally:
                    await server.stop()
        finally:
            await redis.cut()


async def _at_least(server: Server, runs: float) -> bool:
    return await failed_reaper_runs(server) >= runs


async def _logged(server: Server, text: str) -> bool:
    return text in log_of(server)
