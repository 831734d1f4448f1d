"""B3: taskEvents fan-out (docs/ARCHITECTURE.md, "Targets").

500 WebSocket subscribers on `subscription { taskEvents { ... } }`, 10 events/s for 30 s;
reports publish-to-receive latency (p50/p95/p99/max), lost, duplicated and out-of-order
deliveries, and the server's RSS. Targets: p99 < 1 s, 0 lost, RSS < 300 MB.

The script owns everything it measures: it creates a fresh database (PostgreSQL by default,
dropped at the end; `--database sqlite` for a temporary SQLite file), starts
`task-service serve` on a free port of 127.0.0.1, spreads the subscribers over client worker
processes (the client must not be the bottleneck on a 2-core machine), publishes with
`createTask` over HTTP on an absolute schedule, and always stops the server and the workers.

    python bench/b3_fanout.py                                  # the B3 run (about 60 s)
    python bench/b3_fanout.py --subscribers 50 --duration 5    # a quick check
    python bench/b3_fanout.py --json b3.json --check           # keep the figures; exit 1 on a miss

Latency is measured from `time.time()` just before the createTask request is sent to
`time.time()` when the subscriber's client reads the `next` message: an upper bound that
includes the commit, sequencing, the fan-out and the client's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import ws_client

TARGET_P99_SECONDS = 1.0
TARGET_LOST = 0
TARGET_RSS_MB = 300.0

SUBSCRIPTION = "subscription { taskEvents { id taskId type createdAt } }"
CREATE_PROJECT = "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }"
CREATE_TASK = "mutation($input: CreateTaskInput!) { createTask(input: $input) { id } }"
EVENTS_PAGE = "query($after: ID, $taskId: ID) { events(after: $after, taskId: $taskId, first: 500) { id taskId type } }"

PROTOCOL = "graphql-transport-ws"
PONG = json.dumps({"type": "pong"})
DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0
MIGRATE_TIMEOUT = 120.0
RSS_INTERVAL = 0.5
RSS_SERIES_STEP = 2.0  # seconds between the RSS points kept in the report
LATENCY_WINDOW = 5.0  # seconds of send time per latency bucket in the report
WARMUP_ATTEMPTS = 10
LISTENER_WAIT = 15.0  # seconds to wait for /health to count every subscriber as a bus listener
REQUEST_TIMEOUT = 30.0  # seconds; a createTask answered later counts as a publish error
MAX_IN_FLIGHT = 100  # concurrent createTask requests; beyond that the publisher falls behind (and reports it)
PARENT_SILENCE_LIMIT = 600.0  # a worker whose parent says nothing for this long exits


# -- client worker processes -------------------------------------------------------------


@dataclass
class Subscriber:
    """One WebSocket connection with one taskEvents subscription and what it received."""

    events: list[tuple[int, str, float]] = field(default_factory=list)  # (event id, taskId, time.time())
    task_ids: set[str] = field(default_factory=set)
    event_ids: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    subscribed: bool = False
    failed: bool = False
    completed: bool = False
    client: ws_client.WebSocketClient | None = None
    acked: asyncio.Future[None] | None = None

    def on_message(self, raw: bytes, received: float) -> None:
        """Record one graphql-transport-ws message (`received`: time.time() when it was read)."""
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "next":
            payload = message.get("payload") or {}
            if payload.get("errors"):
                self.errors.append(f"next with errors: {json.dumps(payload['errors'])[:300]}")
            event = (payload.get("data") or {}).get("taskEvents")
            if event:
                event_id = int(event["id"])
                self.events.append((event_id, event["taskId"], received))
                self.task_ids.add(event["taskId"])
                self.event_ids.add(event_id)
        elif kind == "ping":
            if self.client is not None:
                self.client.send_text(PONG)
        elif self.acked is not None and not self.acked.done():
            if kind == "connection_ack":
                self.acked.set_result(None)
            else:
                self.acked.set_exception(RuntimeError(f"expected connection_ack, got {kind!r}"))
        elif kind == "error":
            self.errors.append(f"error: {json.dumps(message.get('payload'))[:300]}")
        elif kind == "complete":
            self.completed = True
            self.errors.append("complete: the server ended the subscription")
        elif kind != "pong":
            self.errors.append(f"unexpected message type {kind!r}")


async def _subscribe(url: str, sub: Subscriber, gate: asyncio.Semaphore, compression: bool) -> None:
    """Connect, handshake, subscribe, then record every message (Subscriber.on_message) until
    the connection ends or this is cancelled."""
    sub.acked = asyncio.get_running_loop().create_future()
    try:
        async with gate:
            client = await ws_client.connect(
                url, subprotocol=PROTOCOL, on_message=sub.on_message, clock=time.time, compression=compression
            )
            sub.client = client
            client.send_text(json.dumps({"type": "connection_init", "payload": {}}))
            await asyncio.wait_for(asyncio.shield(sub.acked), 20)
            subscribe = {"type": "subscribe", "id": "1", "payload": {"query": SUBSCRIPTION, "variables": {}}}
            client.send_text(json.dumps(subscribe))
            sub.subscribed = True
    except (OSError, TimeoutError, RuntimeError) as exc:
        sub.failed = True
        sub.errors.append(f"connect: {type(exc).__name__}: {exc}")
        if sub.client is not None:
            sub.client.abort()
        return
    await client.closed
    if client.close_code is not None:
        sub.errors.append(f"closed by the server: code {client.close_code} {client.close_reason!r}")
    else:
        sub.errors.append(f"connection lost: {client.close_reason or 'no close frame'}")


async def _wait_until(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def _all_have_task(subs: list[Subscriber], task_id: str) -> bool:
    return all(task_id in s.task_ids for s in subs if s.subscribed)


def _all_have_events(subs: list[Subscriber], event_ids: set[int]) -> bool:
    return all(event_ids <= s.event_ids for s in subs if s.subscribed)


def _receive(conn: multiprocessing.connection.Connection) -> Any:
    """The parent's next command, or None when it has gone (EOF) or stayed silent too long."""
    try:
        if conn.poll(PARENT_SILENCE_LIMIT):
            return conn.recv()
    except (EOFError, OSError):
        pass
    return None


async def _worker(conn: multiprocessing.connection.Connection, url: str, count: int, options: dict[str, Any]) -> None:
    subs = [Subscriber() for _ in range(count)]
    gate = asyncio.Semaphore(options["connect_concurrency"])
    compression = options["compression"] == "deflate"
    started = time.monotonic()
    readers = [asyncio.create_task(_subscribe(url, sub, gate, compression)) for sub in subs]
    await _wait_until(lambda: all(s.subscribed or s.failed for s in subs), options["connect_timeout"])
    conn.send(
        {
            "subscribed": sum(s.subscribed for s in subs),
            "failed": sum(s.failed for s in subs),
            "seconds": time.monotonic() - started,
            "errors": [e for s in subs for e in s.errors][:20],
        }
    )
    cpu_start = time.process_time()
    wall_start = time.monotonic()
    try:
        while True:
            command = await asyncio.to_thread(_receive, conn)
            if command is None or command[0] == "abort":
                return
            if command[0] == "warmup":
                _, task_id, timeout = command
                await _wait_until(partial(_all_have_task, subs, task_id), timeout)
                conn.send(sum(task_id in s.task_ids for s in subs))
            elif command[0] == "measure":
                cpu_start, wall_start = time.process_time(), time.monotonic()
            elif command[0] == "finish":
                _, expected, timeout = command
                waited = time.monotonic()
                await _wait_until(partial(_all_have_events, subs, set(expected)), timeout, interval=0.1)
                result = {
                    "straggler_wait_seconds": time.monotonic() - waited,
                    "cpu_seconds": time.process_time() - cpu_start,
                    "wall_seconds": time.monotonic() - wall_start,
                    "subscribers": [
                        {
                            "subscribed": s.subscribed,
                            "events": s.events,
                            "errors": s.errors,
                            "completed": s.completed,
                            "still_open": s.client is not None and s.client.open,
                        }
                        for s in subs
                    ],
                }
                conn.send(result)
                return
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        clients = [s.client for s in subs if s.client is not None]
        for client in clients:
            client.close()
        if clients:
            await asyncio.wait([c.closed for c in clients], timeout=15)
        for client in clients:
            client.abort()


def worker_main(conn: multiprocessing.connection.Connection, url: str, count: int, options: dict[str, Any]) -> None:
    """Entry point of a client worker process: `count` subscribers on one asyncio loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_worker(conn, url, count, options))
        else:
            uvloop.run(_worker(conn, url, count, options))
    except Exception as exc:
        with contextlib.suppress(OSError, ValueError):
            conn.send({"crashed": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        conn.close()


# -- server, database, RSS ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def service_command() -> list[str]:
    """The `task-service` console script of this interpreter (not a pyenv shim), else the module."""
    script = Path(sys.executable).parent / "task-service"
    if script.exists():
        return [str(script)]
    found = shutil.which("task-service")
    return [found] if found else [sys.executable, "-m", "task_service.cli"]


def service_env(database_url: str, extra: dict[str, str]) -> dict[str, str]:
    """Our environment minus every service setting (a stray API_KEY or RATE_LIMIT in the shell
    must not change what is measured), plus DATABASE_URL and the --server-env overrides."""
    from task_service.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


async def create_pg_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+asyncpg://{base}/{name}"


async def drop_pg_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (uvicorn runs in-process today; --workers would fork)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class ServerMonitor:
    """Samples the server tree's RSS (sum of VmRSS) and CPU time every RSS_INTERVAL seconds."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> int:
        total = sum(rss_kb(pid) for pid in process_tree(self.pid))
        self.samples.append((time.time(), total))
        return total

    def cpu(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server tree so far."""
        times = [cpu_seconds(pid) for pid in process_tree(self.pid)]
        return sum(user for user, _ in times), sum(system for _, system in times)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self.sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_problems(self) -> int:
        text = self.log_path.read_text(errors="replace")
        return text.count("Traceback") + text.count(" ERROR ") + text.count("ERROR:")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def run_migrations(database_url: str, env_extra: dict[str, str], workdir: Path) -> None:
    done = subprocess.run(
        [*service_command(), "migrate"],
        env=service_env(database_url, env_extra),
        cwd=workdir,
        capture_output=True,
        timeout=MIGRATE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"task-service migrate failed: {done.stderr.decode(errors='replace')[-2000:]}")


def launch_server(
    database_url: str, env_extra: dict[str, str], workdir: Path, extra_args: tuple[str, ...] = ()
) -> Server:
    port = free_port()
    log_path = workdir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*service_command(), "serve", "--host", HOST, "--port", str(port), *extra_args],
            env=service_env(database_url, env_extra),
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Server(process, f"http://{HOST}:{port}", log_path)


async def wait_healthy(server: Server) -> None:
    """Return once GET /health answers 200; stop the server and raise if it does not in time."""
    process = server.process
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    async with httpx.AsyncClient(base_url=server.url, timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not become healthy (exit code {process.poll()}):\n{server.log_tail()}")


# -- the run -----------------------------------------------------------------------------


class GraphQLFailure(RuntimeError):
    pass


async def graphql(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    body = response.json()
    if body.get("errors") or response.status_code != 200:
        raise GraphQLFailure(f"HTTP {response.status_code}: {json.dumps(body.get('errors'))[:500]}")
    return body["data"]


async def events_after(http: httpx.AsyncClient, after: int) -> list[dict[str, Any]]:
    """Every stamped event with id > after, oldest first."""
    events: list[dict[str, Any]] = []
    for _ in range(1000):
        page = (await graphql(http, EVENTS_PAGE, after=str(after)))["events"]
        events.extend(page)
        if len(page) < 500:
            break
        after = int(page[-1]["id"])
    return events


@dataclass
class Published:
    sent_at: dict[str, float] = field(default_factory=dict)  # taskId -> time.time() before the request
    send_times: list[float] = field(default_factory=list)
    round_trips: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempted: int = 0
    behind_max: float = 0.0  # worst lateness of a send against its scheduled time


async def publish(http: httpx.AsyncClient, project_id: str, rate: float, duration: float) -> Published:
    """createTask at `rate`/s on an absolute schedule for `duration` s; requests overlap as needed."""
    out = Published()
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    total = max(1, round(rate * duration))
    start = time.monotonic() + 0.05

    async def one(index: int, scheduled: float) -> None:
        async with gate:
            out.behind_max = max(out.behind_max, time.monotonic() - scheduled)
            variables = {"input": {"projectId": project_id, "title": f"b3 event {index}", "taskType": "bench"}}
            sent = time.time()
            out.send_times.append(sent)
            try:
                data = await graphql(http, CREATE_TASK, **variables)
            except (httpx.HTTPError, GraphQLFailure, ValueError) as exc:
                out.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                return
            out.round_trips.append(time.time() - sent)
            out.sent_at[data["createTask"]["id"]] = sent

    tasks = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        out.attempted += 1
        tasks.append(asyncio.create_task(one(index, scheduled)))
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
    for task in pending:
        task.cancel()
        out.errors.append(f"not answered {REQUEST_TIMEOUT + 5:g} s after the last scheduled send")
    return out


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def git_state() -> dict[str, Any]:
    """The commit and uncommitted paths of the code under test (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout  # not stripped: porcelain lines start with a meaningful blank

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
        return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted": dirty}
    return {"commit": None, "uncommitted": []}


class Workers:
    """The client worker processes and their pipes."""

    def __init__(self, url: str, counts: list[int], options: dict[str, Any]):
        context = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for count in counts:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_main, args=(child_end, url, count, options), name="b3-client", daemon=True
            )
            process.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.processes.append(process)

    def send(self, message: Any) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    async def gather(self, timeout: float) -> list[Any]:
        """One reply from every worker, within `timeout` seconds."""

        def receive(pipe: multiprocessing.connection.Connection) -> Any:
            if not pipe.poll(timeout):
                raise TimeoutError(f"a client worker did not answer within {timeout:.0f} s")
            reply = pipe.recv()
            if isinstance(reply, dict) and "crashed" in reply:
                raise RuntimeError(f"a client worker crashed: {reply['crashed']}")
            return reply

        return list(await asyncio.gather(*(asyncio.to_thread(receive, pipe) for pipe in self.pipes)))

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                pipe.send(("abort",))
        for process in self.processes:
            process.join(20)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()


async def bus_listeners(http: httpx.AsyncClient) -> int | None:
    """The server's count of bus listeners from /health, None when it does not report one."""
    with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
        listeners = (await http.get("/health")).json().get("bus", {}).get("listeners")
        return listeners if isinstance(listeners, int) else None
    return None


async def warm_up(http: httpx.AsyncClient, workers: Workers, project_id: str, n: int, timeout: float) -> dict[str, Any]:
    """Wait until the server reports `n` bus listeners (a sent `subscribe` is registered
    asynchronously), then publish one event at a time until every subscriber has received
    one. Returns the last warm-up event id: the cursor after which the run is measured."""
    deadline = time.monotonic() + LISTENER_WAIT
    for _ in range(int(LISTENER_WAIT * 10) + 1):
        listeners = await bus_listeners(http)
        if listeners is None or listeners >= n or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    received: list[int] = []
    for attempt in range(1, WARMUP_ATTEMPTS + 1):
        variables = {"input": {"projectId": project_id, "title": f"b3 warm-up {attempt}", "taskType": "bench"}}
        task_id = (await graphql(http, CREATE_TASK, **variables))["createTask"]["id"]
        started = time.monotonic()
        workers.send(("warmup", task_id, timeout))
        received.append(sum(await workers.gather(timeout + 10)))
        if received[-1] == n:
            break
    events = (await graphql(http, EVENTS_PAGE, taskId=task_id))["events"]
    return {
        "bus_listeners_before": listeners,
        "attempts": attempt,
        "received_per_attempt": received,
        "subscribers_ready": received[-1],
        "last_fanout_seconds": time.monotonic() - started,
        "cursor": int(events[-1]["id"]),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "bench": "B3",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": args.database,
        "subscribers": args.subscribers,
        "client_workers": args.workers,
        "rate": args.rate,
        "duration": args.duration,
        "git": git_state(),
        "loadavg_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    workdir = Path(tempfile.mkdtemp(prefix="b3_fanout_"))
    db_name: str | None = None
    server: Server | None = None
    monitor: ServerMonitor | None = None
    marks: dict[str, float] = {}  # phase name -> time.time() when it began
    workers: Workers | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        if args.database == "postgres":
            db_name = f"bench_b3_{uuid.uuid4().hex[:10]}"
            database_url = await create_pg_database(args.pg_admin_dsn, db_name)
            await asyncio.to_thread(run_migrations, database_url, extra_env, workdir)
        else:
            database_url = f"sqlite+aiosqlite:///{workdir / 'b3.db'}"
        serve_args = ("--workers", str(args.serve_workers)) if args.serve_workers > 1 else ()
        server = launch_server(database_url, extra_env, workdir, serve_args)
        await wait_healthy(server)
        monitor = ServerMonitor(server.process.pid)
        monitor.start()
        print(f"server pid {server.process.pid} on {server.url} ({args.database}); log {server.log_path}", flush=True)

        async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT, trust_env=False) as http:
            project = await graphql(http, CREATE_PROJECT, input={"name": f"b3 {uuid.uuid4().hex[:6]}"})
            project_id = project["createProject"]["id"]
            await asyncio.sleep(1.0)
            report["rss_baseline_mb"] = monitor.sample() / 1024
            marks["connect"] = time.time()

            n, k = args.subscribers, max(1, min(args.workers, args.subscribers))
            counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
            options = {
                "connect_concurrency": args.connect_concurrency,
                "connect_timeout": args.connect_timeout,
                "compression": args.compression,
            }
            ws_url = server.url.replace("http://", "ws://", 1) + "/graphql"
            workers = Workers(ws_url, counts, options)
            ready = await workers.gather(args.connect_timeout + 10)
            report["connect"] = {
                "subscribed": sum(r["subscribed"] for r in ready),
                "failed": sum(r["failed"] for r in ready),
                "seconds": max(r["seconds"] for r in ready),
                "errors": [e for r in ready for e in r["errors"]][:10],
            }
            connected = report["connect"]
            print(f"connected {connected['subscribed']}/{n} in {connected['seconds']:.1f} s", flush=True)
            report["warmup"] = await warm_up(http, workers, project_id, report["connect"]["subscribed"], args.warmup)
            print(f"warm-up: {report['warmup']['subscribers_ready']}/{n} subscribers got the event", flush=True)
            report["rss_after_connect_mb"] = monitor.sample() / 1024
            report["health_after_connect"] = (await http.get("/health")).json()

            workers.send(("measure",))
            profiler = start_profiler(server.process.pid, args.profile) if args.profile else None
            cpu_before, wall_before, machine_before = monitor.cpu_split(), time.monotonic(), machine_cpu()
            marks["publish"] = time.time()
            print(f"publishing {args.rate:g} events/s for {args.duration:g} s ...", flush=True)
            published = await publish(http, project_id, args.rate, args.duration)
            publish_seconds = time.monotonic() - wall_before
            marks["published"] = time.time()

            # What the log holds after the warm-up: the events every subscriber must receive.
            log_events: list[dict[str, Any]] = []
            created = set(published.sent_at)
            for _ in range(50):
                log_events = await events_after(http, report["warmup"]["cursor"])
                if created <= {e["taskId"] for e in log_events}:
                    break
                await asyncio.sleep(0.1)
            workers.send(("finish", [int(e["id"]) for e in log_events], args.grace))
            results = await workers.gather(args.grace + 30)
            cpu_after = monitor.cpu_split()
            report["server_cpu_user_seconds"] = cpu_after[0] - cpu_before[0]
            report["server_cpu_system_seconds"] = cpu_after[1] - cpu_before[1]
            report["server_cpu_seconds"] = report["server_cpu_user_seconds"] + report["server_cpu_system_seconds"]
            report["server_cpu_percent"] = 100 * report["server_cpu_seconds"] / (time.monotonic() - wall_before)
            if profiler is not None:
                report["profile"] = stop_profiler(profiler, args.profile)
            machine_after = machine_cpu()
            busy, total = (after - before for after, before in zip(machine_after, machine_before, strict=True))
            report["machine_cpu_percent"] = 100 * busy / total if total else None
            report["rss_end_mb"] = monitor.sample() / 1024
        report.update(analyse(published, publish_seconds, log_events, report["warmup"]["cursor"], results, args))
        report["cpu_us_per_delivery"] = cpu_per_delivery(report)
    finally:
        if profiler is not None and profiler.poll() is None:
            stop_profiler(profiler, args.profile)
        if workers is not None:
            workers.close()
        if monitor is not None:
            monitor.stop()
            report["rss_peak_mb"] = monitor.peak_kb / 1024
            report["rss_samples"] = len(monitor.samples)
            report["rss_series"] = rss_series(monitor.samples, marks)
        if server is not None:
            server.stop()
            report["server_exit_code"] = server.process.returncode
            report["server_log_problems"] = server.log_problems()
            if report["server_log_problems"]:
                report["server_log_tail"] = server.log_tail(40)
        if db_name is not None:
            await drop_pg_database(args.pg_admin_dsn, db_name)
        if args.keep_workdir:
            report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def analyse(
    published: Published,
    publish_seconds: float,
    log_events: list[dict[str, Any]],
    cursor: int,
    results: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Deliveries, losses and latencies over every (subscriber, event) pair."""
    expected_ids = {int(e["id"]) for e in log_events}
    created = set(published.sent_at)
    per_task: dict[str, int] = {}
    for event in log_events:
        per_task[event["taskId"]] = per_task.get(event["taskId"], 0) + 1
    subscribers = [s for r in results for s in r["subscribers"]]
    latencies: list[float] = []
    first_send = min(published.sent_at.values(), default=0.0)
    by_window: dict[int, list[float]] = {}
    received = duplicates = out_of_order = unexpected = 0
    missing_subscribers = 0
    errors: dict[str, int] = {}
    for sub in subscribers:
        seen: set[int] = set()
        last = 0
        for event_id, task_id, at in sub["events"]:
            if event_id not in expected_ids:
                unexpected += event_id > cursor  # warm-up events (<= cursor) are not measured
                continue
            if event_id in seen:
                duplicates += 1
                continue
            if event_id < last:
                out_of_order += 1
            last = max(last, event_id)
            seen.add(event_id)
            if task_id in published.sent_at:
                latency = at - published.sent_at[task_id]
                latencies.append(latency)
                window = int((published.sent_at[task_id] - first_send) // LATENCY_WINDOW)
                by_window.setdefault(window, []).append(latency)
        received += len(seen)
        missing_subscribers += len(seen) < len(expected_ids)
        for error in sub["errors"]:
            key = error.split(":", 1)[0]
            errors[key] = errors.get(key, 0) + 1
    latencies.sort()
    expected = len(expected_ids) * args.subscribers  # a subscriber that never connected lost everything
    send_times = sorted(published.send_times)
    span = send_times[-1] - send_times[0] if len(send_times) > 1 else 0.0
    trips = sorted(published.round_trips)
    cpu = [r["cpu_seconds"] / r["wall_seconds"] * 100 for r in results if r["wall_seconds"] > 0]
    client_cpu_seconds = sum(r["cpu_seconds"] for r in results)
    return {
        "published": {
            "attempted": published.attempted,
            "ok": len(published.sent_at),
            "errors": len(published.errors),
            "error_samples": published.errors[:5],
            "achieved_rate": (len(send_times) - 1) / span if span > 0 else None,
            "publish_seconds": publish_seconds,
            "max_send_lateness_seconds": published.behind_max,
            "mutation_p50_seconds": percentile(trips, 50),
            "mutation_p99_seconds": percentile(trips, 99),
        },
        "log": {
            "events": len(expected_ids),
            "created_tasks_without_exactly_one_event": sum(per_task.get(t, 0) != 1 for t in created),
            "foreign_events": sum(1 for e in log_events if e["taskId"] not in created),
            "non_created_events": sum(1 for e in log_events if e["type"] != "CREATED"),
        },
        "deliveries": {
            "expected": expected,
            "received": received,
            "lost": expected - received,
            "subscribers_missing_events": missing_subscribers + (args.subscribers - len(subscribers)),
            "duplicates": duplicates,
            "out_of_order": out_of_order,
            "unexpected": unexpected,
        },
        "latency_seconds": {
            "pairs": len(latencies),
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else None,
            "min": latencies[0] if latencies else None,
        },
        "latency_by_send_window": [
            {
                "from_seconds": window * LATENCY_WINDOW,
                "pairs": len(values),
                "p50": percentile(sorted(values), 50),
                "p99": percentile(sorted(values), 99),
            }
            for window, values in sorted(by_window.items())
        ],
        "straggler_wait_seconds": max((r["straggler_wait_seconds"] for r in results), default=None),
        "client_errors": errors,
        "client_cpu_percent_per_worker": cpu,
        "client_cpu_seconds": client_cpu_seconds,
        "connections_open_at_finish": sum(s["still_open"] for s in subscribers),
    }


def cpu_per_delivery(report: dict[str, Any]) -> dict[str, float | None]:
    """CPU time (µs) per delivery received, of the server and of the client workers together,
    over publish + drain: what each side pays for one event reaching one subscriber."""
    received = report["deliveries"]["received"]
    if not received:
        return {"server": None, "server_user": None, "server_system": None, "client": None}
    return {
        "server": 1e6 * report["server_cpu_seconds"] / received,
        # What a change to the Python path moves is user time; the socket writes (one per
        # delivery) are mostly system time.
        "server_user": 1e6 * report["server_cpu_user_seconds"] / received,
        "server_system": 1e6 * report["server_cpu_system_seconds"] / received,
        "client": 1e6 * report["client_cpu_seconds"] / received,
    }


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy samples the server (collapsed stacks, `--format raw`) from now until
    stop_profiler; needs `pip install py-spy`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--nonblocking"]
    return subprocess.Popen(
        [*command, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=out.with_suffix(".log").open("wb"),
    )


def stop_profiler(profiler: subprocess.Popen[bytes], out: Path) -> str:
    profiler.send_signal(signal.SIGINT)  # py-spy writes its samples on Ctrl-C
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(5)
    return str(out)


def rss_series(samples: list[tuple[float, int]], marks: dict[str, float]) -> dict[str, Any]:
    """The RSS samples thinned to one per RSS_SERIES_STEP seconds, as [seconds, MB] from the
    first sample, with the phase marks on the same clock."""
    if not samples:
        return {"marks": {}, "points": []}
    origin = samples[0][0]
    points: list[list[float]] = []
    for at, kb in samples:
        if not points or at - origin - points[-1][0] >= RSS_SERIES_STEP:
            points.append([round(at - origin, 1), round(kb / 1024, 1)])
    return {"marks": {name: round(at - origin, 1) for name, at in marks.items()}, "points": points}


def verdict(report: dict[str, Any]) -> dict[str, bool]:
    p99 = (report.get("latency_seconds") or {}).get("p99")
    lost = (report.get("deliveries") or {}).get("lost")
    events = (report.get("log") or {}).get("events")
    return {
        "p99": p99 is not None and p99 < TARGET_P99_SECONDS,
        "lost": lost is not None and lost <= TARGET_LOST and bool(events),
        "rss": report.get("rss_peak_mb", math.inf) < TARGET_RSS_MB,
    }


def summary(report: dict[str, Any]) -> str:
    def f(value: Any, fmt: str = ".3f") -> str:
        return "n/a" if value is None else format(value, fmt)

    pub, log, dlv, lat = report["published"], report["log"], report["deliveries"], report["latency_seconds"]
    checks = report["targets"]
    mark = {True: "PASS", False: "FAIL"}
    git = report["git"]
    dirty = [p for p in git["uncommitted"] if p.startswith(("events/", "resolvers/"))]
    code = "uncommitted: " + ", ".join(git["uncommitted"]) if git["uncommitted"] else "clean"
    connect, warmup = report["connect"], report["warmup"]
    lines = [
        f"B3 taskEvents fan-out on {report['database']}: {report['subscribers']} subscribers "
        f"({report['client_workers']} client processes), {report['rate']:g} events/s for {report['duration']:g} s",
        f"  code: {git['commit']} ({code})" + (" [events/ or resolvers/ modified]" if dirty else ""),
        f"  connected {connect['subscribed']}/{report['subscribers']} in {connect['seconds']:.1f} s;"
        f" warm-up: {warmup['subscribers_ready']} ready after {warmup['attempts']} attempt(s);"
        f" bus listeners {report['health_after_connect'].get('bus', {}).get('listeners')}",
        f"  published {pub['ok']}/{pub['attempted']} ({pub['errors']} errors),"
        f" achieved {f(pub['achieved_rate'], '.2f')} events/s,"
        f" createTask p50 {f(pub['mutation_p50_seconds'])} s p99 {f(pub['mutation_p99_seconds'])} s,"
        f" worst send lateness {pub['max_send_lateness_seconds']:.3f} s",
        f"  log: {log['events']} events after the warm-up; tasks without exactly one event:"
        f" {log['created_tasks_without_exactly_one_event']};"
        f" of unknown tasks (createTask unanswered) {log['foreign_events']}",
        f"  deliveries: expected {dlv['expected']}, received {dlv['received']}, lost {dlv['lost']}"
        f" ({dlv['subscribers_missing_events']} subscribers missing some), duplicates {dlv['duplicates']},"
        f" out of order {dlv['out_of_order']}",
        f"  latency (publish-to-receive, {lat['pairs']} pairs): p50 {f(lat['p50'])} s, p95 {f(lat['p95'])} s,"
        f" p99 {f(lat['p99'])} s, max {f(lat['max'])} s",
        f"  server RSS: baseline {report['rss_baseline_mb']:.1f} MB, after connect {report['rss_after_connect_mb']:.1f}"
        f" MB, end {report['rss_end_mb']:.1f} MB, peak {report['rss_peak_mb']:.1f} MB"
        f" ({report['rss_samples']} samples)",
        f"  p99 per {LATENCY_WINDOW:g} s of send time: "
        + ", ".join(f(w["p99"], ".2f") for w in report["latency_by_send_window"]),
        f"  RSS MB every {RSS_SERIES_STEP:g} s (publishing from {report['rss_series']['marks'].get('publish')} s): "
        + " ".join(f"{mb:.0f}" for _, mb in report["rss_series"]["points"]),
        f"  CPU during publish + drain: server {report['server_cpu_percent']:.0f}% of one core; client workers "
        + ", ".join(f"{c:.0f}%" for c in report["client_cpu_percent_per_worker"])
        + f"; whole machine {f(report['machine_cpu_percent'], '.0f')}% of {report['cpus']} CPUs"
        + f" (load average at start {' '.join(f'{x:.2f}' for x in report['loadavg_at_start'])})",
        f"  CPU per delivery: server {f(report['cpu_us_per_delivery']['server'], '.1f')} µs"
        f" (user {f(report['cpu_us_per_delivery']['server_user'], '.1f')},"
        f" system {f(report['cpu_us_per_delivery']['server_system'], '.1f')}),"
        f" client workers {f(report['cpu_us_per_delivery']['client'], '.1f')} µs",
        f"  client errors: {report['client_errors'] or 'none'}; server log problems: {report['server_log_problems']}",
        f"  targets: p99 < {TARGET_P99_SECONDS:g} s {mark[checks['p99']]}; lost = {TARGET_LOST} {mark[checks['lost']]};"
        f" RSS < {TARGET_RSS_MB:g} MB {mark[checks['rss']]} => {mark[all(checks.values())]}",
    ]
    if report.get("server_log_tail"):
        lines.append("  server log tail:\n" + report["server_log_tail"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=500, help="WebSocket subscribers (default 500)")
    parser.add_argument("--workers", type=int, default=2, help="client processes sharing them (default 2)")
    parser.add_argument(
        "--serve-workers",
        type=int,
        default=1,
        help="server processes (`serve --workers N`; needs the PostgreSQL database or a BROADCAST_URL; "
        "RSS is then the whole process tree's; default 1)",
    )
    parser.add_argument("--rate", type=float, default=10.0, help="events per second (default 10)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of publishing (default 30)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per warm-up attempt (default 3)")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--pg-admin-dsn",
        default=os.environ.get("BENCH_PG_ADMIN_DSN", DEFAULT_PG_ADMIN_DSN),
        help=f"where to create the bench database (default $BENCH_PG_ADMIN_DSN or {DEFAULT_PG_ADMIN_DSN})",
    )
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting (repeatable)"
    )
    parser.add_argument("--compression", choices=["deflate", "none"], default="deflate", help="WebSocket compression")
    parser.add_argument("--connect-concurrency", type=int, default=50, help="handshakes in flight per client process")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to connect every subscriber")
    parser.add_argument("--json", type=Path, help="also write the figures as one JSON line to this file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the server log (and SQLite file)")
    parser.add_argument(
        "--profile", type=Path, metavar="PATH", help="py-spy the server during publish + drain (raw stacks to PATH)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.workers < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--subscribers, --workers, --rate and --duration must be positive")
    if args.serve_workers < 1:
        parser.error("--serve-workers must be positive")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    return args


def finish(
    args: argparse.Namespace,
    report: dict[str, Any],
    verdict: Callable[[dict[str, Any]], dict[str, bool]],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """Judge the report against its targets, print it (and write --json); the exit code."""
    report["targets"] = verdict(report)
    report["pass"] = all(report["targets"].values())
    print(summary(report))
    line = json.dumps(report, sort_keys=True, default=str)
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n", encoding="utf-8")
    return 1 if args.check and not report["pass"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(args, asyncio.run(run(args)), verdict, summary)


if __name__ == "__main__":
    sys.exit(main())
