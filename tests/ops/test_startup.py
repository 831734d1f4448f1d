"""The console script on a database that is not ready: one line that says what to do, never a
traceback, and a non-zero exit; `serve` starts only on a migrated database (or migrates it
with AUTO_MIGRATE); concurrent migrations take turns."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import free_port
from tests.ops.helpers import (
    empty_pg_database,
    health,
    libpq,
    one_line,
    run_cli,
    serving,
    start_answering_server,
    wait_for,
)

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(180)]

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1


class TestUnreachableDatabase:
    @pytest.mark.parametrize("command", ["serve", "migrate", "seed"])
    def test_one_line_and_exit_1(self, tmp_path: Path, command: str) -> None:
        result = run_cli(command, cwd=tmp_path, DATABASE_URL=UNREACHABLE)

        assert result.returncode == 1
        line = one_line(result.stderr)
        assert line.startswith("task-service: cannot reach the database postgresql+asyncpg://postgres@127.0.0.1:1/")

    def test_auto_migrate_one_line_and_exit_1(self, tmp_path: Path) -> None:
        """With AUTO_MIGRATE, `serve` migrates first: the unreachable database is still one line."""
        result = run_cli("serve", cwd=tmp_path, DATABASE_URL=UNREACHABLE, AUTO_MIGRATE="true")

        assert result.returncode == 1
        line = one_line(result.stderr)
        assert line.startswith("task-service: cannot reach the database postgresql+asyncpg://postgres@127.0.0.1:1/")


class TestOlderRevision:
    async def test_serve_refuses_and_health_says_not_migrated(self, tmp_path: Path) -> None:
        """A database one release behind (what an upgrade finds before `migrate`)."""
        async with empty_pg_database() as url:
            migrated = run_cli("migrate", "--revision", "0001", cwd=tmp_path, DATABASE_URL=url)
            assert migrated.returncode == 0, migrated.stderr
            conn = await asyncpg.connect(libpq(url))
            try:
                assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0001"
            finally:
                await conn.close()

            # A refusal takes seconds; a server that starts anyway would run until the timeout.
            result = run_cli("serve", "--port", str(free_port()), cwd=tmp_path, timeout=30, DATABASE_URL=url)

            assert result.returncode == 1
            line = one_line(result.stderr)
            assert "0001" in line
            assert line.endswith("run `task-service migrate`")

            server = await start_answering_server(url, tmp_path)
            try:
                code, body = await health(server.url)
                assert code == 503
                assert body["database"] == "not migrated"
                assert "at 0001, needs " in body["reason"]
                assert "`task-service migrate`" in body["reason"]
            finally:
                await server.stop()


class TestNotMigrated:
    async def test_serve_refuses_naming_the_command(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url:
            result = run_cli("serve", "--port", str(free_port()), cwd=tmp_path, DATABASE_URL=url)

            assert result.returncode == 1
            line = one_line(result.stderr)
            assert "has no tables yet" in line
            assert line.endswith("run `task-service migrate`")

    async def test_seed_refuses_naming_the_command(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url:
            result = run_cli("seed", cwd=tmp_path, DATABASE_URL=url)

            assert result.returncode == 1
            assert one_line(result.stderr).endswith("run `task-service migrate`")

    async def test_a_database_from_a_newer_release_is_refused(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url:
            assert run_cli("migrate", cwd=tmp_path, DATABASE_URL=url).returncode == 0
            conn = await asyncpg.connect(libpq(url))
            try:
                await conn.execute("UPDATE alembic_version SET version_num = '9999'")
            finally:
                await conn.close()

            result = run_cli("serve", cwd=tmp_path, DATABASE_URL=url)

            assert result.returncode == 1
            assert "revision 9999" in one_line(result.stderr)

    async def test_auto_migrate_migrates_then_serves(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url, serving(url, tmp_path, AUTO_MIGRATE="true") as (port, _log):
            await wait_for(lambda: _healthy(port), what="the auto-migrated server's /health 200")


async def _healthy(port: int) -> bool:
    try:
        status, _ = await health(f"http://127.0.0.1:{port}")
    except httpx.TransportError:
        return False
    return status == 200


class TestBadSettings:
    @pytest.mark.parametrize("command", ["migrate", "seed", "serve"])
    def test_one_line_naming_the_variable(self, tmp_path: Path, command: str) -> None:
        result = run_cli(command, cwd=tmp_path, LOG_FORMAT="xml")

        assert result.returncode == 2
        assert "LOG_FORMAT" in one_line(result.stderr)


class TestConcurrentMigrations:
    async def test_replicas_migrating_at_once_take_turns(self, tmp_path: Path) -> None:
        async with empty_pg_database() as url:
            results = await asyncio.gather(
                *(asyncio.to_thread(run_cli, "migrate", cwd=tmp_path, DATABASE_URL=url) for _ in range(3))
            )

            assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
            conn = await asyncpg.connect(libpq(url))
            try:
                assert await conn.fetchval("SELECT count(*) FROM task_type_defaults") == 11
            finally:
                await conn.close()
