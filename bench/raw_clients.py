"""Load generators that wrk cannot express, each run as its own process by bench/run_all.py.

    python bench/raw_clients.py claim --dsn DSN --project P --concurrency 20 --duration 10
        B1's raw baseline: `concurrency` asyncpg connections, each claiming the best PENDING
        task of project P with one `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
        LOCKED LIMIT 1) RETURNING id` in a loop (autocommit: one statement, one transaction).
    python bench/raw_clients.py v1 --url URL --project P --concurrency 20 --duration 10
        B1's second baseline, the v1 workflow: each agent lists every PENDING task of the
        project over HTTP (bench/baseline_app.py's GET /v1/tasks), claims the first by id
        (POST /v1/tasks/{id}/claim) and, on 409, lists again.
    python bench/raw_clients.py lag --url http://127.0.0.1:PORT --after CURSOR
        One taskEvents subscriber (graphql-transport-ws) from event CURSOR on: prints READY
        once subscribed, records when each event arrives, and when a line with the last
        event id the parent expects comes on stdin, waits for it (at most --grace seconds).
        Delivery lag = arrival time - the event's createdAt (one machine, one clock).
    python bench/raw_clients.py soak --url http://127.0.0.1:PORT --project P --agents 10 --rate 40 --duration 600
        Moderate, steady load for an RSS soak: `agents` agents, together `rate` operations
        a second (heartbeat, claimNextTask, startTask, reportProgress, submitTask, task(id)
        and now and then dashboardStats), and `subscribers` taskEvents subscribers that
        reconnect every `reconnect` seconds with `after` (connection churn).

Each prints one JSON line: claims, seconds, claims/s, p50/p99 of one claim in ms (for v1:
from the first list to the successful claim, retries included), conflicts, errors (lag:
events, lag p50/p99, ids; soak: operations, p50/p99 of one operation, errors).
Its own CPU is measured by the parent (the load generator's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import time
from datetime import datetime
from typing import Any

import asyncpg
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

PROTOCOL = Subprotocol("graphql-transport-ws")
EVENTS = "subscription($after: ID) { taskEvents(after: $after) { id type createdAt } }"

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


# -- taskEvents subscribers ------------------------------------------------------------------


async def open_subscription(url: str, after: int | None) -> ClientConnection:
    """A graphql-transport-ws connection with one taskEvents subscription from `after`."""
    ws = await connect(
        url.replace("http://", "ws://", 1) + "/graphql",
        subprotocols=[PROTOCOL],
        compression=None,
        proxy=None,
        open_timeout=20,
        ping_interval=None,  # the server's protocol pings are answered in read_events
        max_queue=None,
    )
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if message.get("type") == "connection_ack":
            break
        if message.get("type") != "ping":
            raise RuntimeError(f"expected connection_ack, got {message!r}")
        await ws.send(json.dumps({"type": "pong"}))
    variables = {"after": None if after is None else str(after)}
    await ws.send(json.dumps({"type": "subscribe", "id": "1", "payload": {"query": EVENTS, "variables": variables}}))
    return ws


async def read_events(ws: ClientConnection, on_event: Any) -> None:
    """Call on_event(event, arrival time) for each event until the connection closes."""
    async for raw in ws:
        arrived = time.time()
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "next":
            payload = message.get("payload") or {}
            if payload.get("errors"):
                raise RuntimeError(f"the subscription failed: {payload['errors']}")
            on_event(payload["data"]["taskEvents"], arrived)
        elif kind == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif kind in ("error", "complete"):
            raise RuntimeError(f"the server ended the subscription: {message!r}")


def created_at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["createdAt"].replace("Z", "+00:00")).timestamp()


async def event_lag(args: argparse.Namespace) -> dict[str, Any]:
    lags: list[float] = []
    ids: list[int] = []
    last = asyncio.Event()
    expected: list[int] = []

    def on_event(event: dict[str, Any], arrived: float) -> None:
        ids.append(int(event["id"]))
        lags.append(arrived - created_at(event))
        if expected and ids[-1] >= expected[0]:
            last.set()

    ws = await open_subscription(args.url, args.after)
    reader = asyncio.create_task(read_events(ws, on_event))
    print("READY", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    expected.append(int(line))
    if ids and ids[-1] >= expected[0]:
        last.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(last.wait(), args.grace)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
        await reader
    await ws.close()
    if reader.done() and not reader.cancelled() and reader.exception() is not None:
        raise reader.exception()  # type: ignore[misc]
    lags.sort()
    return {
        "events": len(ids),
        "ids": ids,
        "lag_p50_ms": None if not lags else 1000 * (percentile(lags, 50) or 0),
        "lag_p99_ms": None if not lags else 1000 * (percentile(lags, 99) or 0),
        "lag_max_ms": None if not lags else 1000 * lags[-1],
    }


# -- the soak's steady load -----------------------------------------------------------------

SOAK = {
    "heartbeat": "mutation($a: String) { heartbeat(agent: $a) { id status } }",
    "claim": "mutation($a: String, $p: ID) { claimNextTask(agent: $a, projectId: $p) { id attempt } }",
    "start": "mutation($id: ID!, $a: String, $n: Int) { startTask(id: $id, agent: $a, attempt: $n) { id status } }",
    "progress": "mutation($id: ID!, $a: String, $n: Int) "
    '{ reportProgress(id: $id, progress: 50, agent: $a, attempt: $n, message: "half") { id progress } }',
    "submit": "mutation($id: ID!, $a: String, $n: Int, $r: JSON) "
    '{ submitTask(id: $id, agent: $a, attempt: $n, result: $r, summary: "done") { id status } }',
    "task": "query($id: ID!) { task(id: $id) { id status progress assignee { name } events { id type } } }",
    "stats": "{ dashboardStats { tasks { total ready completed } agents { online busy } recentEvents { id } } }",
}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    host, port = args.url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors: list[str] = []
    counts: dict[str, int] = dict.fromkeys(SOAK, 0)
    received = reconnects = 0
    start = time.perf_counter()
    deadline = start + args.duration
    interval = args.agents / args.rate  # each agent's pause between operations

    async def call(client: HTTPClient, name: str, **variables: Any) -> dict[str, Any] | None:
        body = json.dumps({"query": SOAK[name], "variables": variables}).encode()
        t0 = time.perf_counter()
        status, raw = await client.request("POST", "/graphql", body)
        latencies.append(time.perf_counter() - t0)
        counts[name] += 1
        reply = json.loads(raw)
        if status != 200 or reply.get("errors"):
            errors.append(f"{name}: {status} {raw[:200]!r}")
            return None
        data: dict[str, Any] = reply["data"]
        return data

    async def paced(client: HTTPClient, name: str, **variables: Any) -> dict[str, Any] | None:
        await asyncio.sleep(interval * random.uniform(0.5, 1.5))
        return await call(client, name, **variables)

    async def agent(index: int) -> None:
        client = HTTPClient(host, int(port))
        name = f"{args.agent_prefix}-{index}"
        try:
            while time.perf_counter() < deadline:
                await paced(client, "heartbeat", a=name)
                claimed = await paced(client, "claim", a=name, p=str(args.project))
                task = (claimed or {}).get("claimNextTask")
                if not task:
                    continue
                ids = {"id": task["id"], "a": name, "n": task["attempt"]}
                await paced(client, "start", **ids)
                await paced(client, "progress", **ids)
                await paced(client, "task", id=task["id"])
                await paced(client, "submit", **ids, r={"ok": True, "by": name})
                if random.random() < 0.1:
                    await paced(client, "stats")
        finally:
            await client.close()

    async def subscriber() -> None:
        nonlocal received, reconnects
        cursor: int | None = None

        def on_event(event: dict[str, Any], arrived: float) -> None:
            nonlocal received, cursor
            received += 1
            cursor = int(event["id"])

        while time.perf_counter() < deadline:
            try:
                ws = await open_subscription(args.url, cursor)
            except (OSError, TimeoutError, RuntimeError, ConnectionClosed) as exc:
                errors.append(f"subscribe: {exc!r}")
                await asyncio.sleep(1)
                continue
            reader = asyncio.create_task(read_events(ws, on_event))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(reader), min(args.reconnect, max(deadline - time.perf_counter(), 0))
                )
            if reader.done() and reader.exception() is not None:
                errors.append(f"subscription: {reader.exception()!r}")
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, RuntimeError):
                await reader
            await ws.close()
            reconnects += 1

    await asyncio.gather(*(agent(i) for i in range(args.agents)), *(subscriber() for _ in range(args.subscribers)))
    seconds = time.perf_counter() - start
    report = result(latencies, seconds, errors=len(errors), error_samples=errors[:5], operations=counts)
    report.update(events_received=received, reconnects=reconnects)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["claim", "v1", "lag", "soak"])
    parser.add_argument("--dsn", help="postgresql:// DSN (claim)")
    parser.add_argument("--url", help="the server, http://127.0.0.1:PORT (v1: the baseline; lag, soak: the service)")
    parser.add_argument("--project", type=int)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--after", type=int, help="lag: the event id to subscribe after")
    parser.add_argument("--grace", type=float, default=30.0, help="lag: seconds to wait for the last event")
    parser.add_argument("--agents", type=int, default=10, help="soak: agents")
    parser.add_argument("--agent-prefix", default="soak-agent", help="soak: agent names are PREFIX-0, PREFIX-1...")
    parser.add_argument("--rate", type=float, default=40.0, help="soak: operations per second, all agents together")
    parser.add_argument("--subscribers", type=int, default=10, help="soak: taskEvents subscribers")
    parser.add_argument("--reconnect", type=float, default=30.0, help="soak: seconds between a subscriber's reconnects")
    args = parser.parse_args(argv)
    runner = {"claim": raw_claim, "v1": v1_workflow, "lag": event_lag, "soak": soak}[args.mode]
    try:
        import uvloop

        report = uvloop.run(runner(args))
    except ImportError:
        report = asyncio.run(runner(args))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
