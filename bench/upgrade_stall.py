"""How long `task-service migrate` takes on a large database, and how long it holds up the
service's reads and writes meanwhile.

    python bench/upgrade_stall.py                     # 1,000,000 tasks, from 0001 and from 0007
    python bench/upgrade_stall.py --tasks 200000 --from 0006

On a fresh PostgreSQL database: migrate to head, `task-service seed`, then copy the seeded
tasks with SQL until there are --tasks tasks (every copy ready to claim: the claim indexes'
worst case), VACUUM ANALYZE. Then, for each --from revision: downgrade to it (alembic), and
run `task-service migrate` (one transaction, as an operator's upgrade does) while two probes
run against the same database, one statement at a time: a write (UPDATE of one task's
updated_at) and a read (SELECT of one task by id). It reports the migration's wall time and
each probe's longest wait and how many of its statements took over a second.

Loopback only; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# Columns the copies take as they are; the rest are set so that every copy is ready.
READY = {
    "status": "'PENDING'",
    "unmet_dependencies": "0",
    "available_at": "NULL",
    "deleted_at": "NULL",
    "assignee_id": "NULL",
    "lease_expires_at": "NULL",
}


@dataclass
class Probe:
    """One statement at a time until stopped: the longest wait and the slow ones."""

    name: str
    statement: str
    waits: list[float] = field(default_factory=list)

    async def run(self, dsn: str, ids: list[int], stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                await conn.execute(self.statement, random.choice(ids))
                self.waits.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    def summary(self) -> str:
        if not self.waits:
            return f"{self.name}: no statement finished"
        slow = sum(1 for w in self.waits if w > 1)
        return f"{self.name}: {len(self.waits)} statements, longest {max(self.waits):.2f} s, {slow} over 1 s"


def task_service(*args: str, url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        ["task-service", *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )


def alembic(*args: str, url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )


async def grow(dsn: str, tasks: int) -> list[int]:
    """Copy the seeded tasks until there are `tasks`; returns some ids for the probes."""
    conn = await asyncpg.connect(dsn)
    try:
        names = [
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks' "
                "AND column_name NOT IN ('id', 'idempotency_key') ORDER BY ordinal_position"
            )
        ]
        columns = ", ".join(f'"{n}"' for n in names)
        values = ", ".join(READY.get(n, f'"{n}"') for n in names)
        while (total := await conn.fetchval("SELECT count(*) FROM tasks")) < tasks:
            await conn.execute(
                f"INSERT INTO tasks ({columns}) SELECT {values} FROM tasks ORDER BY id LIMIT $1",  # noqa: S608 (column names)
                min(total, tasks - total),
            )
        await conn.execute("VACUUM ANALYZE")
        return [r["id"] for r in await conn.fetch("SELECT id FROM tasks ORDER BY random() LIMIT 1000")]
    finally:
        await conn.close()


async def upgrade_from(revision: str, url: str, dsn: str, ids: list[int]) -> None:
    t0 = time.perf_counter()
    await asyncio.to_thread(alembic, "downgrade", revision, url=url)
    print(f"downgrade to {revision}: {time.perf_counter() - t0:.1f} s", flush=True)
    probes = [
        Probe("write (UPDATE tasks ... WHERE id = $1)", "UPDATE tasks SET updated_at = now() WHERE id = $1"),
        Probe("read (SELECT ... FROM tasks WHERE id = $1)", "SELECT id, status FROM tasks WHERE id = $1"),
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(p.run(dsn, ids, stop)) for p in probes]
    await asyncio.sleep(1)
    t0 = time.perf_counter()
    await asyncio.to_thread(task_service, "migrate", url=url)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*running)
    print(f"migrate {revision} -> head: {elapsed:.1f} s", flush=True)
    for probe in probes:
        print(f"  {probe.summary()}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--from", dest="revisions", action="append", help="revision to upgrade from (repeatable)")
    args = parser.parse_args()
    name = f"bench_upgrade_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        task_service("migrate", url=url)
        task_service("seed", url=url)
        t0 = time.perf_counter()
        ids = await grow(dsn, args.tasks)
        print(f"{args.tasks:,} tasks in {time.perf_counter() - t0:.1f} s", flush=True)
        for revision in args.revisions or ["0007", "0001"]:
            await upgrade_from(revision, url, dsn, ids)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
