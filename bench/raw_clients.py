"""Load generators that wrk cannot express, each run as its own process by bench/run_all.py.

    python bench/raw_clients.py claim --dsn DSN --project P --concurrency 20 --duration 10
        B1's raw baseline: `concurrency` asyncpg connections, each claiming the best PENDING
        task of project P with one `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
        LOCKED LIMIT 1) RETURNING id` in a loop (autocommit: one statement, one transaction).
    python bench/raw_clients.py v1 --url URL --project P --concurrency 20 --duration 10
        B1's second baseline, the v1 workflow: each agent lists every PENDING task of the
        project over HTTP (bench/baseline_app.py's GET /v1/tasks), claims the first by id
        (POST /v1/tasks/{id}/claim) and, on 409, lists again.

Each prints one JSON line: claims, seconds, claims/s, p50/p99 of one claim in ms (for v1:
from the first list to the successful claim, retries included), conflicts, errors.
Its own CPU is measured by the parent (the load generator's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any

import asyncpg

RAW_CLAIM_SQL = """
UPDATE tasks SET status = 'ASSIGNED', attempt = attempt + 1, assigned_at = now(), updated_at = now(),
       lease_expires_at = now() + interval '1 day'
WHERE id = (
    SELECT id FROM tasks
    WHERE project_id = $1 AND status = 'PENDING' AND deleted_at IS NULL AND unmet_dependencies = 0
      AND available_at IS NULL AND skill_set_id = (SELECT id FROM skill_sets WHERE key = '')
    ORDER BY priority DESC, due_at, created_at, id
    LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


def percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def result(latencies: list[float], seconds: float, **extra: Any) -> dict[str, Any]:
    latencies.sort()
    return {
        "claims": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds if seconds > 0 else 0.0,
        "p50_ms": None if not latencies else 1000 * (percentile(latencies, 50) or 0),
        "p99_ms": None if not latencies else 1000 * (percentile(latencies, 99) or 0),
        **extra,
    }


async def raw_claim(args: argparse.Namespace) -> dict[str, Any]:
    conns = [await asyncpg.connect(args.dsn, ssl=False) for _ in range(args.concurrency)]
    latencies: list[float] = []
    empty = 0
    start = time.perf_counter()
    deadline = start + args.duration

    async def loop(conn: asyncpg.Connection) -> None:
        nonlocal empty
        statement = await conn.prepare(RAW_CLAIM_SQL)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            row = await statement.fetchrow(args.project)
            if row is None:
                empty += 1
                return
            latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(loop(c) for c in conns))
    finally:
        seconds = time.perf_counter() - start
        await asyncio.gather(*(c.close() for c in conns))
    return result(latencies, seconds, ran_out=empty)


class HTTPClient:
    """A minimal HTTP/1.1 keep-alive client (Content-Length bodies only): the load generator
    stays light, so that what is measured is the server."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request; on a connection the server has closed meanwhile (keep-alive timeout),
        once more on a new one."""
        try:
            return await self._request(method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            await self.close()
            self.reader = self.writer = None
            return await self._request(method, path, body)

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


FIRST_ID = re.compile(rb'"id":(\d+)')


async def v1_workflow(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    conflicts = errors = lists = 0
    list_bytes = 0
    start = time.perf_counter()
    deadline = start + args.duration

    async def agent(index: int) -> None:
        nonlocal conflicts, errors, lists, list_bytes
        client = HTTPClient(host, int(port))
        body = json.dumps({"agent": f"v1-agent-{index}"}).encode()
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                while time.perf_counter() < deadline:
                    status, listing = await client.request("GET", f"/v1/tasks?project={args.project}")
                    lists += 1
                    list_bytes += len(listing)
                    # v1 agents parsed the whole list and took the first; the id of the first
                    # is all this one needs, so the generator does not parse megabytes.
                    match = FIRST_ID.search(listing, 0, 200)
                    if status != 200 or match is None:
                        errors += status != 200
                        return
                    status, _ = await client.request("POST", f"/v1/tasks/{match.group(1).decode()}/claim", body)
                    if status == 200:
                        latencies.append(time.perf_counter() - t0)
                        break
                    if status == 409:
                        conflicts += 1
                    else:
                        errors += 1
        finally:
            await client.close()

    await asyncio.gather(*(agent(i) for i in range(args.concurrency)))
    seconds = time.perf_counter() - start
    return result(
        latencies,
        seconds,
        conflicts=conflicts,
        errors=errors,
        lists=lists,
        mean_list_kb=list_bytes / max(lists, 1) / 1024,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["claim", "v1"])
    parser.add_argument("--dsn", help="postgresql:// DSN (claim)")
    parser.add_argument("--url", help="the baseline server, http://127.0.0.1:PORT (v1)")
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    runner = raw_claim if args.mode == "claim" else v1_workflow
    try:
        import uvloop

        report = uvloop.run(runner(args))
    except ImportError:
        report = asyncio.run(runner(args))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
