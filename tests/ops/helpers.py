"""Helpers of the operations tests: the console script in a clean environment, throwaway
PostgreSQL databases (not migrated), and reading a server's log lines."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from task_service.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database

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
