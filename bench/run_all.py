"""Every benchmark of issue 10 in one run, each beside its baseline, in one table.

    python bench/run_all.py                 # the full run (~30 min, the soak 10 of them), writes bench/RESULTS.md
    python bench/run_all.py --quick         # a smoke run with tiny sizes (about a minute)
    python bench/run_all.py --only b1,b7    # some of them (b1 b2 b3 b4 b5 b6 b7)
    python bench/run_all.py --server-env DB_POOL_SIZE=20   # measure a setting

The machine is shared and busy, so absolute figures move between runs: every throughput is
compared with a baseline measured in the same run, just before or after, on the same
PostgreSQL database, at the same concurrency:

- B1: `claimNextTask(agent, projectId)`, 40 agents over 20 connections, 40k ready tasks;
  baselines: a raw asyncpg `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`
  loop on 20 connections, and the v1 workflow (list every pending task over HTTP, claim the
  first by id, retry on 409) with 20 agents against a Starlette + asyncpg server.
- B2: `heartbeat(agent)`, 50 agents over 20 connections; baseline: a Starlette + asyncpg
  `UPDATE agents` endpoint under uvicorn.
- B5: `dashboardStats` with >= 100k tasks, one connection (target p50 < 20 ms).
- B6: `createTasks`, 100 calls x 100 tasks, one at a time (target >= 2,000 tasks/s).
- B7: `query($id: ID!) { task(id: $id) { id status } }` over 1,000 ids, 20 connections;
  baseline: a Starlette + asyncpg `SELECT id, status` endpoint under uvicorn.
- B3, B4: bench/b3_fanout.py and bench/b4_claim_backlog.py, run as they are (B4 compares
  with the same claims without a backlog).
- Event delivery lag during B1 (one taskEvents subscriber; lost, repeated, lag p50/p99).
- W2: B7, B2 and B1 again with `serve --workers 2`, beside the one-process figures.
- B8: claimNextTask one at a time with 1M tasks in the database, beside the same before the
  database was grown. B9: the service's RSS over a 10-minute soak at moderate load.

HTTP load comes from wrk (2 threads, Lua scripts that cycle through pre-formatted requests
with one agent name or id each) or, for what wrk cannot express, from bench/raw_clients.py in
a separate process; the table reports the CPU the load generator took. The service is a real
`task-service serve` subprocess on a fresh PostgreSQL database (created here and dropped at
the end) with every service setting removed from its environment (API_KEY unset, RATE_LIMIT
off), except --server-env.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_caps
from b3_fanout import (
    DEFAULT_PG_ADMIN_DSN,
    HOST,
    Server,
    ServerMonitor,
    cpu_seconds,
    create_pg_database,
    drop_pg_database,
    free_port,
    git_state,
    graphql,
    launch_server,
    machine_cpu,
    percentile,
    run_migrations,
    wait_healthy,
)

BENCH_DIR = Path(__file__).resolve().parent
# run in this order on the seeded database; w2 reruns B7, B2 and B1 with `serve --workers 2`
SERVICE_STEPS = ("b7", "b2", "b5", "b1", "w2", "b8", "b9")
# w2's capped runs: processes per run, alternated so that drift during the runs falls on both
CAPPED_ORDER = (1, 2, 2, 1, 1, 2)
PAIRED_ORDER = ("service", "raw", "raw", "service", "service", "raw")
RESULTS = BENCH_DIR / "RESULTS.md"
WRK = shutil.which("wrk") or "/usr/bin/wrk"

CREATE_PROJECT = "mutation($input: CreateProjectInput!) { createProject(input: $input) { id } }"
CREATE_TASKS = "mutation($p: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $tasks) { id } }"
REGISTER = "mutation($input: RegisterAgentInput!) { registerAgent(input: $input) { agent { id } } }"
CLAIM_NEXT = "mutation($a: String, $p: ID) { claimNextTask(agent: $a, projectId: $p) { id } }"
HEARTBEAT = "mutation($a: String) { heartbeat(agent: $a) { id status } }"
TASK = "query($id: ID!) { task(id: $id) { id status } }"
STATS = (
    "{ dashboardStats { projects { total active } tasks { total pending ready assigned running reviewing "
    "completed failed cancelled } agents { total online busy offline } deleted { projects tasks agents } "
    "recentEvents { id type } generatedAt } }"
)
UNSEQUENCED_SQL = "SELECT count(*) FROM task_events WHERE seq IS NULL"

TARGETS = {
    "B1": "≥ 0.15x raw; ≥ 20x v1",
    "B2": "≥ 0.3x raw",
    "B3": "p99 < 1 s, 0 lost, RSS < 300 MB",
    "B4": "p50 ≤ 2x no backlog",
    "B5": "p50 < 20 ms",
    "B6": "≥ 2,000 tasks/s",
    "B7": "≥ 0.35x raw",
    "B9": "RSS does not grow",
}
SOAK_AGENTS = 10
SOAK_SUBSCRIBERS = 10
SOAK_RECONNECT = 30.0
SOAK_GROWTH_MB = 5.0  # allowed RSS growth over the soak: this or SOAK_GROWTH_SHARE of the start
SOAK_GROWTH_SHARE = 0.03

WRK_LUA = r"""
local bodies = %(bodies)s
local method = "%(method)s"
local path = "%(path)s"
local null_marker = %(null_marker)s
local threads = {}
local thread_count = 0
errors = 0
nulls = 0
local requests = {}
local counter = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format(method, path, {["Content-Type"] = "application/json"}, body)
  end
  -- threads start at different places in the list, so agents spread over connections
  counter = ((tid or 0) * 7919) %% #requests
end

function request()
  counter = counter %% #requests + 1
  return requests[counter]
end

function response(status, headers, body)
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    errors = errors + 1
  elseif null_marker and string.find(body, null_marker, 1, true) then
    nulls = nulls + 1
  end
end

function done(summary, latency, requests)
  local e, n = 0, 0
  for _, thread in ipairs(threads) do
    e = e + (thread:get("errors") or 0)
    n = n + (thread:get("nulls") or 0)
  end
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"mean_us":%%f,' ..
    '"socket_errors":%%d,"timeouts":%%d,"status_errors":%%d,"errors":%%d,"nulls":%%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    summary.errors.status, e, n))
end
"""


def lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


@dataclass
class Row:
    bench: str
    what: str
    rate: float | None = None  # per second
    unit: str = "req/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu: float | None = None  # % of one core
    server_rss_mb: float | None = None
    gen_cpu: float | None = None  # % of one core
    ratio: str = ""
    target: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio_to(self, baseline: Row) -> float:
        """This row's rate over the baseline's (0 when either is missing)."""
        return (self.rate or 0.0) / baseline.rate if baseline.rate else 0.0


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


@dataclass
class Sizes:
    b1_tasks: int
    b1_agents: int
    b2_agents: int
    b5_tasks: int
    b6_calls: int
    b6_size: int
    b7_ids: int
    duration: float
    warmup: float
    v1_duration: float
    connections: int
    b3_args: list[str]
    b4_args: list[str]
    b8_tasks: int  # tasks in the database for B8's second series
    b8_claims: int
    soak_seconds: float
    soak_rate: float  # operations per second, all soak agents together


FULL = Sizes(
    b1_tasks=40_000,
    b1_agents=40,
    b2_agents=50,
    b5_tasks=100_000,
    b6_calls=100,
    b6_size=100,
    b7_ids=1000,
    duration=10.0,
    warmup=2.0,
    v1_duration=10.0,
    connections=20,
    b3_args=["--subscribers", "2000", "--duration", "30", "--rate", "10"],
    b4_args=[],
    b8_tasks=1_000_000,
    b8_claims=200,
    soak_seconds=600,
    soak_rate=40,
)
QUICK = Sizes(
    b1_tasks=1_000,
    b1_agents=40,
    b2_agents=50,
    b5_tasks=2_000,
    b6_calls=3,
    b6_size=100,
    b7_ids=100,
    duration=1,
    warmup=0,
    v1_duration=1,
    connections=20,
    b3_args=["--subscribers", "10", "--duration", "2", "--grace", "5", "--warmup", "1"],
    b4_args=[
        "--blocked",
        "200",
        "--non-matching",
        "50",
        "--scheduled",
        "50",
        "--ready",
        "50",
        "--claims",
        "10",
        "--warmup-claims",
        "2",
        "--batch",
        "500",
    ],
    b8_tasks=20_000,
    b8_claims=10,
    soak_seconds=12,
    soak_rate=40,
)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.1f} GB"
    wrk_version = ""
    with contextlib.suppress(Exception):
        wrk_version = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=5).stdout.split("\n")[0]
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.strip(),
        "loadavg": os.getloadavg(),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path):
        self.args = args
        self.sizes = sizes
        self.workdir = workdir
        self.rows: list[Row] = []
        self.info: dict[str, Any] = {}
        self.server: Server | None = None
        self.baseline: subprocess.Popen[bytes] | None = None
        self.baseline_url = ""
        self.monitor: ServerMonitor | None = None
        self.db_name = ""
        self.dsn = ""  # plain postgresql:// for asyncpg
        self.projects: dict[str, int] = {}
        self.http: httpx.AsyncClient | None = None
        self.database_url = ""
        self.log_problems = 0  # of the servers stopped before the last one
        self.log_tails: list[str] = []
        self.loads: dict[str, tuple[str, list[str], dict[str, Any]]] = {}  # bench -> B1/B2/B7's wrk load
        self.workers = 1  # the service's processes now
        self.b1_runs = 0  # B1 runs after the first, each with agents of its own (fresh_b1)
        self.raw_loads: dict[str, tuple[str, str, list[str]]] = {}  # bench -> B2/B7's baseline: what, path, bodies
        self.lag_after = 0

    async def step(self, name: str, work: Any, *, fatal: bool = False) -> None:
        """Run one part; a benchmark that fails gets a row saying so and the others still run
        (`fatal`: the ones after it cannot, e.g. the server did not start)."""
        t0 = time.monotonic()
        try:
            await work
        except Exception as exc:
            if fatal:
                raise
            print(f"run_all: {name} failed: {exc!r}", file=sys.stderr, flush=True)
            self.rows.append(Row(name.upper(), name, notes=f"failed: {type(exc).__name__}: {str(exc)[-200:]}"))
        finally:
            self.info.setdefault("step_seconds", {})[name] = round(time.monotonic() - t0, 1)
            print(f"run_all: {name} took {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)

    # -- infrastructure ------------------------------------------------------------------

    async def start(self) -> None:
        args = self.args
        self.db_name = f"bench_all_{uuid.uuid4().hex[:10]}"
        url = self.database_url = await create_pg_database(args.pg_admin_dsn, self.db_name)
        self.dsn = "postgresql://" + url.split("://", 1)[1]
        await asyncio.to_thread(run_migrations, url, self.server_env, self.workdir)
        self.workers = args.workers
        workers = ("--workers", str(args.workers)) if args.workers > 1 else ()
        self.server = launch_server(url, self.server_env, self.workdir, workers)
        await wait_healthy(self.server)
        self.monitor = ServerMonitor(self.server.process.pid)
        self.monitor.start()
        await self.start_baseline(1)
        self.http = httpx.AsyncClient(base_url=self.server.url, timeout=300, trust_env=False)
        conn = await asyncpg.connect(self.dsn)
        try:
            self.info["postgres"] = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()

    async def start_baseline(self, workers: int) -> None:
        """The raw baselines' server (baseline_app.py under uvicorn, `workers` processes)."""
        port = free_port()
        log = self.workdir / f"baseline-{workers}.log"
        self.baseline_url = f"http://{HOST}:{port}"
        # wrk's connections spread over the processes: each process pools its share.
        pool = max(self.sizes.connections // workers, 1)
        env = {**os.environ, "BENCH_DSN": self.dsn, "BENCH_POOL": str(pool)}
        self.baseline = subprocess.Popen(  # noqa: ASYNC220 (starts at once; nothing waits on it here)
            [
                sys.executable,
                "-m",
                "uvicorn",
                "baseline_app:create_app",
                "--factory",
                "--app-dir",
                str(BENCH_DIR),
                "--host",
                HOST,
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        async with httpx.AsyncClient(base_url=self.baseline_url, timeout=2, trust_env=False) as http:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                if self.baseline.poll() is not None:
                    raise RuntimeError(
                        "the baseline server exited: " + (self.workdir / f"baseline-{workers}.log").read_text()
                    )
                await asyncio.sleep(0.1)

    async def stop_baseline(self) -> None:
        if self.baseline is not None and self.baseline.poll() is None:
            self.baseline.terminate()
            try:
                self.baseline.wait(10)
            except subprocess.TimeoutExpired:
                self.baseline.kill()
                self.baseline.wait(5)

    @property
    def server_env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.args.server_env)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.monitor is not None:
            self.monitor.stop()
        if self.server is not None:
            self.server.stop()
            self.note_log(self.server)
            self.info["server_log_problems"] = self.log_problems
            if self.log_problems:
                self.info["server_log_tail"] = "\n".join(self.log_tails)
        await self.stop_baseline()
        if self.db_name:
            await drop_pg_database(self.args.pg_admin_dsn, self.db_name)

    def note_log(self, server: Server) -> None:
        """Count the server log's errors and keep the lines around each (the first ten)."""
        problems = server.log_problems()
        self.log_problems += problems
        if problems:
            lines = server.log_path.read_text(errors="replace").splitlines()
            marks = [i for i, line in enumerate(lines) if "Traceback" in line or " ERROR " in line or "ERROR:" in line]
            self.log_tails.extend("\n".join(lines[max(i - 2, 0) : i + 25]) for i in marks[:10])

    async def restart(self, workers: int) -> None:
        """The service again, on the same database, as `serve --workers N`."""
        assert self.server is not None
        assert self.monitor is not None
        assert self.http is not None
        self.monitor.stop()
        self.server.stop()
        self.note_log(self.server)
        workdir = self.workdir / f"server-{len(self.log_tails)}-{time.monotonic_ns()}"
        workdir.mkdir()
        extra = ("--workers", str(workers)) if workers > 1 else ()
        self.workers = workers
        self.server = launch_server(self.database_url, self.server_env, workdir, extra)
        await wait_healthy(self.server)
        self.monitor = ServerMonitor(self.server.process.pid)
        self.monitor.start()
        await self.http.aclose()
        self.http = httpx.AsyncClient(base_url=self.server.url, timeout=300, trust_env=False)

    async def sql(self, query: str, *params: Any) -> Any:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(query, *params)
        finally:
            await conn.close()

    async def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        assert self.http is not None
        return await graphql(self.http, query, **variables)

    async def project(self, name: str) -> int:
        data = await self.gql(CREATE_PROJECT, input={"name": name})
        self.projects[name] = int(data["createProject"]["id"])
        return self.projects[name]

    def server_sample(self) -> tuple[float, float]:
        assert self.monitor is not None
        return self.monitor.cpu(), time.monotonic()

    def server_usage(self, before: tuple[float, float]) -> tuple[float, float]:
        """(CPU % of one core since `before`, RSS MB now) of the service's process tree."""
        assert self.monitor is not None
        cpu, at = self.server_sample()
        return 100 * (cpu - before[0]) / max(at - before[1], 1e-9), self.monitor.sample() / 1024

    # -- load generators -----------------------------------------------------------------

    def wrk(
        self,
        url: str,
        path: str,
        bodies: list[str],
        duration: float,
        *,
        connections: int | None = None,
        threads: int = 2,
        null_marker: str | None = None,
        name: str = "load",
    ) -> dict[str, Any]:
        connections = connections or self.sizes.connections
        script = self.workdir / f"{name}.lua"
        script.write_text(
            WRK_LUA
            % {
                "bodies": "{" + ",".join(lua_string(b) for b in bodies) + "}",
                "method": "POST",
                "path": path,
                "null_marker": lua_string(null_marker) if null_marker else "nil",
            }
        )
        cpu0, t0 = children_cpu(), time.monotonic()
        done = subprocess.run(
            [
                WRK,
                f"-t{min(threads, connections)}",
                f"-c{connections}",
                f"-d{max(round(duration), 1)}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 90,
            check=False,
        )
        wall = time.monotonic() - t0
        for line in done.stdout.splitlines():
            if line.startswith("WRKJSON "):
                report: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
                break
        else:
            raise RuntimeError(
                f"wrk gave no summary (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
            )
        seconds = report["duration_us"] / 1e6
        report["rate"] = report["requests"] / seconds if seconds else 0.0
        report["good"] = report["requests"] - report["errors"] - report["nulls"]
        report["good_rate"] = report["good"] / seconds if seconds else 0.0
        report["gen_cpu"] = 100 * (children_cpu() - cpu0) / wall
        return report

    def measure_wrk(
        self, bench: str, what: str, url: str, path: str, bodies: list[str], *, service: bool, **kw: Any
    ) -> Row:
        if self.sizes.warmup > 0:
            self.wrk(url, path, bodies, self.sizes.warmup, name=f"{bench}-warmup", **kw)
        before = self.server_sample()
        machine0, processes0 = machine_cpu(), self.process_cpu(service)
        profiler = self.profile(bench) if service else None
        result = self.wrk(url, path, bodies, self.sizes.duration, name=bench, **kw)
        cpu, rss = self.server_usage(before)
        machine1, processes1 = machine_cpu(), self.process_cpu(service)
        wall = max(machine1[1] - machine0[1], 1) / (os.cpu_count() or 1)
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
        seconds = result["duration_us"] / 1e6
        row = Row(
            bench,
            what,
            rate=result["good_rate"],
            p50_ms=result["p50_us"] / 1000,
            p99_ms=result["p99_us"] / 1000,
            server_cpu=cpu if service else None,
            server_rss_mb=rss if service else None,
            gen_cpu=result["gen_cpu"],
            extra={"wrk": result},
        )
        if service and result["good"]:
            row.extra["server_cpu_ms_per_request"] = cpu / 100 * seconds / result["good"] * 1000
        # How busy the whole machine was (% of all its cores), and each server process's share
        # of one core (the service's or the baseline's): with --workers, whether the processes
        # shared the load.
        row.extra["machine_busy_pct"] = round(100 * (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1), 1)
        row.extra["process_cpu_pct"] = [
            round(100 * (processes1[pid] - processes0[pid]) / wall, 1)
            for pid in sorted(processes1)
            if pid in processes0
        ]
        problems = result["errors"] + result["socket_errors"] + result["timeouts"]
        if problems:
            row.notes = f"{problems} failed requests"
        return row

    def process_cpu(self, service: bool = True) -> dict[int, float]:
        """CPU jiffies (1/CLK_TCK s) so far of each serving process of the service, or of the
        baseline server (with --workers, the workers, not their supervisor)."""
        root = (self.server.process if self.server else None) if service else self.baseline
        if root is None:
            return {}
        tick = os.sysconf("SC_CLK_TCK")
        return {pid: sum(cpu_seconds(pid)) * tick for pid in cpu_caps.worker_processes(root.pid)}

    def profile(self, name: str, *, until_stopped: bool = False) -> subprocess.Popen[bytes] | None:
        """With --profile DIR: py-spy samples the service during the run (collapsed stacks,
        DIR/<name>.txt; `--format speedscope` or an SVG can be made from them): for
        --duration seconds, or `until_stopped` by `stop_profile`."""
        if self.args.profile is None or self.server is None:
            return None
        self.args.profile.mkdir(parents=True, exist_ok=True)
        if self.workers > 1:  # every worker process, in a file of its own
            name += f"-workers{self.workers}"
        out = self.args.profile / f"{name}.txt"
        return subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.server.process.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                *(["--subprocesses"] if self.workers > 1 else []),
                *([] if until_stopped else ["--duration", str(max(round(self.sizes.duration), 1))]),
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.args.profile / f"{name}.log").open("wb"),
        )

    @staticmethod
    def stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
        """Stop a profile started `until_stopped`: py-spy writes its file on SIGINT."""
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)

    def run_client(self, mode: str, *extra: str, seconds: float | None = None) -> dict[str, Any]:
        cpu0, t0 = children_cpu(), time.monotonic()
        done = subprocess.run(
            [sys.executable, str(BENCH_DIR / "raw_clients.py"), mode, *extra],
            capture_output=True,
            text=True,
            timeout=(seconds or self.sizes.duration) + 120,
            check=False,
        )
        wall = time.monotonic() - t0
        if done.returncode != 0:
            raise RuntimeError(f"raw_clients.py {mode} failed: {done.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        report["gen_cpu"] = 100 * (children_cpu() - cpu0) / wall
        return report

    # -- the data ------------------------------------------------------------------------

    async def create_tasks(self, project: int, count: int, batch: int, prefix: str) -> list[float]:
        """createTasks calls of `batch`; the seconds each call took."""
        timings: list[float] = []
        made = 0
        while made < count:
            size = min(batch, count - made)
            tasks = [{"title": f"{prefix} {made + i}", "taskType": "bench"} for i in range(size)]
            t0 = time.perf_counter()
            await self.gql(CREATE_TASKS, p=str(project), tasks=tasks)
            timings.append(time.perf_counter() - t0)
            made += size
        return timings

    async def copy_tasks(self, source: int, target: int, limit: int, *, pending: bool = False) -> None:
        """Copy up to `limit` of the source project's tasks into another project with SQL:
        the baselines' own rows, as ready as the service's (no events: nothing reads them).
        `pending`: only the tasks still waiting (not those claimed meanwhile)."""
        rows = await self.sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks' "
            "AND column_name NOT IN ('id', 'project_id', 'idempotency_key') ORDER BY ordinal_position"
        )
        columns = ", ".join(f'"{r["column_name"]}"' for r in rows)
        await self.sql(
            f"INSERT INTO tasks (project_id, {columns}) SELECT $1, {columns} FROM tasks "  # noqa: S608 (column names)
            f"WHERE project_id = $2 {'AND status = $4' if pending else ''} ORDER BY id LIMIT $3",
            target,
            source,
            limit,
            *(["PENDING"] if pending else []),
        )

    async def wait_sequenced(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (await self.sql(UNSEQUENCED_SQL))[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the sequencer did not stamp every event in time")
            await asyncio.sleep(0.2)

    async def register(self, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}-{i}" for i in range(count)]
        for start in range(0, count, 10):
            await asyncio.gather(
                *(
                    self.gql(REGISTER, input={"name": name, "maxConcurrentTasks": 1000})
                    for name in names[start : start + 10]
                )
            )
        return names

    # -- the benchmarks ------------------------------------------------------------------

    async def b6(self) -> None:
        s = self.sizes
        project = await self.project("b6")
        before = self.server_sample()
        profiler = self.profile("b6", until_stopped=True)
        t0 = time.perf_counter()
        timings = await self.create_tasks(project, s.b6_calls * s.b6_size, s.b6_size, "b6")
        seconds = time.perf_counter() - t0
        cpu, rss = self.server_usage(before)
        self.stop_profile(profiler)
        timings.sort()
        tasks = s.b6_calls * s.b6_size
        rate = tasks / seconds
        self.rows.append(
            Row(
                "B6",
                f"createTasks, {s.b6_calls} calls x {s.b6_size}, one at a time",
                rate=rate,
                unit="tasks/s",
                p50_ms=1000 * timings[len(timings) // 2],
                p99_ms=1000 * timings[min(len(timings) - 1, int(len(timings) * 0.99))],
                server_cpu=cpu,
                server_rss_mb=rss,
                ratio=f"{rate / 2000:.2f}x target",
                target=TARGETS["B6"],
                extra={"server_cpu_ms_per_task": cpu / 100 * seconds / tasks * 1000},
            )
        )

    async def seed(self) -> None:
        s = self.sizes
        for name in ("b1", "b1-raw", "b1-v1"):
            await self.project(name)
        t0 = time.perf_counter()
        await self.create_tasks(self.projects["b1"], s.b1_tasks, 1000, "b1")
        self.info["seed_seconds"] = time.perf_counter() - t0
        await self.copy_tasks(self.projects["b1"], self.projects["b1-raw"], s.b1_tasks)
        await self.copy_tasks(self.projects["b1"], self.projects["b1-v1"], s.b1_tasks)
        total = (await self.sql("SELECT count(*) FROM tasks"))[0][0]
        if total < s.b5_tasks:
            filler = await self.project("b5-filler")
            while total < s.b5_tasks:
                await self.copy_tasks(self.projects["b1"], filler, s.b5_tasks - total)
                total = (await self.sql("SELECT count(*) FROM tasks"))[0][0]
        self.info["tasks_total"] = total
        await self.wait_sequenced()
        await self.sql("VACUUM (ANALYZE)")
        # The seed dirtied some hundred MB of pages: write them now, not as a checkpoint
        # during the first measured run (B7).
        await self.sql("CHECKPOINT")
        self.b1_agents = await self.register("b1-agent", s.b1_agents)
        self.b2_agents = await self.register("b2-agent", s.b2_agents)

    async def b7(self) -> None:
        s = self.sizes
        assert self.server is not None
        rows = await self.sql(
            "SELECT id FROM tasks WHERE project_id = $1 ORDER BY random() LIMIT $2", self.projects["b1"], s.b7_ids
        )
        ids = [r["id"] for r in rows]
        self.loads["B7"] = (
            "`{ task(id) { id status } }`",
            [json.dumps({"query": TASK, "variables": {"id": str(i)}}) for i in ids],
            {},
        )
        self.raw_loads["B7"] = ("raw Starlette + asyncpg SELECT", "/task", [json.dumps({"id": i}) for i in ids])
        self.alternated("B7")

    async def b2(self) -> None:
        self.loads["B2"] = (
            f"heartbeat, {len(self.b2_agents)} agents",
            [json.dumps({"query": HEARTBEAT, "variables": {"a": a}}) for a in self.b2_agents],
            {},
        )
        self.raw_loads["B2"] = (
            "raw Starlette + asyncpg UPDATE",
            "/heartbeat",
            [json.dumps({"agent": a}) for a in self.b2_agents],
        )
        self.alternated("B2")

    async def b5(self) -> None:
        assert self.server is not None
        row = self.measure_wrk(
            "B5",
            f"dashboardStats, {self.info['tasks_total']:,} tasks, 1 connection",
            self.server.url,
            "/graphql",
            [json.dumps({"query": STATS})],
            service=True,
            connections=1,
            threads=1,
        )
        row.target = TARGETS["B5"]
        row.ratio = f"p50 {row.p50_ms / 20:.2f}x target" if row.p50_ms is not None else ""
        self.rows.append(row)

    def b1_load(self, agents: list[str]) -> None:
        project = str(self.projects["b1"])
        self.loads["B1"] = (
            f"claimNextTask, {len(agents)} agents, {self.sizes.b1_tasks:,} ready",
            [json.dumps({"query": CLAIM_NEXT, "variables": {"a": a, "p": project}}) for a in agents],
            {"null_marker": '"claimNextTask":null'},
        )

    async def fresh_b1(self) -> None:
        """Another B1 run in the state the first one started in: as many ready tasks (those
        claimed made again with createTasks), a vacuumed claim index (the claims since left dead
        entries at its head, which every claim would walk past) and agents that hold nothing
        yet. B1's agents keep what they claim, and a claim counts and renews the tasks its
        agent holds, so the same agents would make each later run costlier than the one
        before."""
        ready_sql = "SELECT count(*) FROM tasks WHERE project_id = $1 AND status = 'PENDING'"
        b1 = self.projects["b1"]
        ready = (await self.sql(ready_sql, b1))[0][0]
        self.b1_runs += 1
        if ready < self.sizes.b1_tasks:  # as many ready as the first run had
            await self.create_tasks(b1, self.sizes.b1_tasks - ready, 1000, f"b1 run {self.b1_runs}")
        await self.sql("VACUUM (ANALYZE) tasks")
        self.b1_load(await self.register(f"b1-agent-run{self.b1_runs}", self.sizes.b1_agents))

    async def b1(self) -> None:
        assert self.server is not None
        self.b1_load(self.b1_agents)
        lag = await self.lag_subscriber()
        try:
            service = self.measure_service("B1")
            lag_row = await self.lag_row(lag)
        finally:
            if lag.poll() is None:
                lag.kill()
                lag.wait(5)
        assigned = await self.sql(
            "SELECT count(*) FROM tasks WHERE project_id = $1 AND status = 'ASSIGNED'", self.projects["b1"]
        )
        service.extra["assigned_in_db"] = assigned[0][0]
        await self.retire_b1()
        runs = [("service", service), ("raw", self.b1_raw_run())]
        for which in () if self.args.quick else PAIRED_ORDER[2:]:
            if which == "raw":
                await self.fresh_raw_b1()
                runs.append((which, self.b1_raw_run()))
            else:
                await self.fresh_b1()
                runs.append((which, await self.measure_b1()))
        await self.retire_b1()
        self.b1_rows(runs)
        self.rows.append(lag_row)

    async def measure_b1(self) -> Row:
        row = self.measure_service("B1")
        await self.retire_b1()
        return row

    async def retire_b1(self) -> None:
        """Put away what B1's runs hold, before anything else is measured: the agents'
        claimed tasks COMPLETED, the raw loop's ready again (SQL, no events), the table
        vacuumed. Left held, the agents' leases ran out HEARTBEAT_TIMEOUT_SECONDS (90 s) after
        their run, and the reaper's requeue of thousands of tasks at once, with their events
        and the sequencer's stamps, ran during whatever was measured then: W2's B1 with two
        processes measured 0.38x of one process, with the machine 98 % busy and the service
        at 55 % of a core."""
        await self.sql(
            "UPDATE tasks SET status = 'COMPLETED', completed_at = now(), lease_expires_at = NULL "
            "WHERE project_id = $1 AND status IN ('ASSIGNED', 'RUNNING')",
            self.projects["b1"],
        )
        await self.fresh_raw_b1()

    def alternated(self, bench: str) -> None:
        """The service and its raw endpoint in alternated runs (service, raw, raw, service,
        service, raw; one of each with --quick), and the pair whose ratio is the median. One
        run of a raw endpoint moved by up to a third between bench runs (B7: 4,717 to 6,485
        requests/s on one day), more than the service did, so a single pair's ratio depended
        on which of them caught the machine's better moment."""
        order = ("service", "raw") if self.args.quick else PAIRED_ORDER
        runs: dict[str, list[Row]] = {"service": [], "raw": []}
        for which in order:
            runs[which].append(self.measure_service(bench) if which == "service" else self.measure_raw(bench))
        self.median_pair(bench, runs["service"], runs["raw"])

    def median_pair(self, bench: str, services: list[Row], raws: list[Row]) -> Row:
        """The n-th service run paired with the n-th raw run; the pair with the median ratio
        goes into the table, every pair's ratio in its notes. Returns its service row."""
        pairs = list(zip(services, raws, strict=True))
        service, raw = sorted(pairs, key=lambda p: p[0].ratio_to(p[1]))[len(pairs) // 2]
        if len(pairs) > 1:
            ratios = ", ".join(f"{s.ratio_to(r):.3f}" for s, r in pairs)
            service.notes = _joined(service.notes, f"median of {len(pairs)} alternated pairs, ratios {ratios}")
            service.extra["pairs"] = [{"service": s.rate, "raw": r.rate} for s, r in pairs]
            raw.notes = _joined(raw.notes, "runs " + ", ".join(fmt(r.rate, ",.0f") for _, r in pairs))
        self.pair(service, raw, TARGETS[bench])
        return service

    def measure_service(self, bench: str) -> Row:
        assert self.server is not None
        what, bodies, kw = self.loads[bench]
        return self.measure_wrk(bench, what, self.server.url, "/graphql", bodies, service=True, **kw)

    def measure_raw(self, bench: str) -> Row:
        what, path, bodies = self.raw_loads[bench]
        return self.measure_wrk(bench, what, self.baseline_url, path, bodies, service=False)

    async def lag_subscriber(self) -> subprocess.Popen[str]:
        """A taskEvents subscriber (raw_clients.py lag) from the newest event on, ready."""
        assert self.server is not None
        self.lag_after = (await self.sql("SELECT coalesce(max(seq), 0) FROM task_events"))[0][0]
        process = subprocess.Popen(  # noqa: ASYNC220 (starts at once)
            [
                sys.executable,
                str(BENCH_DIR / "raw_clients.py"),
                "lag",
                "--url",
                self.server.url,
                "--after",
                str(self.lag_after),
                "--grace",
                "60",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        if line.strip() != "READY":
            process.kill()
            raise RuntimeError(f"the lag subscriber did not start: {line!r} {process.communicate()[1][-1000:]}")
        return process

    async def lag_row(self, process: subprocess.Popen[str]) -> Row:
        """The subscriber's lag over B1's claims, and the events it did not get."""
        await self.wait_sequenced()
        last = (await self.sql("SELECT coalesce(max(seq), 0) FROM task_events"))[0][0]
        assert process.stdin is not None
        process.stdin.write(f"{last}\n")
        process.stdin.flush()
        out, err = await asyncio.to_thread(process.communicate, timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"the lag subscriber failed: {err[-2000:]}")
        report = json.loads(out.strip().splitlines()[-1])
        written = {
            r["seq"]
            for r in await self.sql("SELECT seq FROM task_events WHERE seq > $1 AND seq <= $2", self.lag_after, last)
        }
        got = report["ids"]
        lost = len(written - set(got))
        repeated = len(got) - len(set(got))
        in_order = all(a < b for a, b in itertools.pairwise(got))
        return Row(
            "B1",
            "taskEvents delivery lag during the claims above (1 subscriber)",
            p50_ms=report["lag_p50_ms"],
            p99_ms=report["lag_p99_ms"],
            unit="",
            ratio=f"lost {lost}, repeated {repeated}",
            target="0 lost",
            notes=f"{len(got):,} events, max {fmt(report['lag_max_ms'], '.0f')} ms"
            + ("" if in_order else ", OUT OF ORDER"),
            extra={"lag": {k: v for k, v in report.items() if k != "ids"}, "written": len(written)},
        )

    def b1_rows(self, runs: list[tuple[str, Row]]) -> None:
        """B1's service row beside the raw loop's: the pair with the median ratio of the
        alternated runs (in PAIRED_ORDER, or one of each with --quick), then the v1
        workflow's row."""
        raws = [row for which, row in runs if which == "raw"]
        services = [row for which, row in runs if which == "service"]
        for row in services:
            if row.extra["wrk"]["nulls"]:
                row.notes = _joined(row.notes, "ran out of ready tasks")
            row.unit = "claims/s"
        self.b1_v1(self.median_pair("B1", services, raws))

    def b1_raw_run(self) -> Row:
        s = self.sizes
        raw_report = self.run_client(
            "claim",
            "--dsn",
            self.dsn,
            "--project",
            str(self.projects["b1-raw"]),
            "--concurrency",
            str(s.connections),
            "--duration",
            str(s.duration),
        )
        return Row(
            "B1",
            "raw asyncpg SKIP LOCKED loop",
            rate=raw_report["rate"],
            unit="claims/s",
            p50_ms=raw_report["p50_ms"],
            p99_ms=raw_report["p99_ms"],
            gen_cpu=raw_report["gen_cpu"],
            extra={"client": raw_report},
            notes="ran out of ready tasks" if raw_report.get("ran_out") else "",
        )

    async def fresh_raw_b1(self) -> None:
        """The raw loop's project as it started: its claimed tasks ready again, the table
        vacuumed (fresh_b1 does the same for the service)."""
        await self.sql(
            "UPDATE tasks SET status = 'PENDING', attempt = 0, assigned_at = NULL, lease_expires_at = NULL "
            "WHERE project_id = $1 AND status = 'ASSIGNED'",
            self.projects["b1-raw"],
        )
        await self.sql("VACUUM (ANALYZE) tasks")

    def b1_v1(self, service: Row) -> None:
        s = self.sizes
        try:
            v1_report = self.run_client(
                "v1",
                "--url",
                self.baseline_url,
                "--project",
                str(self.projects["b1-v1"]),
                "--concurrency",
                str(s.connections),
                "--duration",
                str(s.v1_duration),
            )
        except Exception as exc:
            self.rows.append(Row("B1", "v1 workflow: list pending, claim first, retry on 409", notes=f"failed: {exc}"))
            return
        v1 = Row(
            "B1",
            "v1 workflow: list pending, claim first, retry on 409",
            rate=v1_report["rate"],
            unit="claims/s",
            p50_ms=v1_report["p50_ms"],
            p99_ms=v1_report["p99_ms"],
            gen_cpu=v1_report["gen_cpu"],
            notes=f"{v1_report['conflicts']} conflicts, lists of {v1_report['mean_list_kb']:.0f} kB",
            extra={"client": v1_report},
        )
        v1.ratio = f"service {service.rate / v1.rate:.1f}x" if v1.rate else "service ∞x"
        self.rows.append(v1)

    async def w2(self) -> None:
        """B7, B2 and B1 again with `serve --workers 2` (two processes for two cores), each
        beside the one-process figure of this run; then one process again. B7's and B2's
        baselines too, as `uvicorn --workers 2`: how far two processes can scale on this
        machine, where PostgreSQL and the load generator share the same cores."""
        one = {r.bench: r for r in reversed(self.rows) if r.server_cpu is not None and r.bench in self.loads}
        raw_one = {r.bench: r for r in reversed(self.rows) if r.ratio == "baseline" and r.bench in self.raw_loads}
        await self.restart(2)
        try:
            for bench in ("B7", "B2", "B1"):
                if bench not in one:
                    continue
                if bench == "B1":
                    await self.fresh_b1()
                row = await self.measure_b1() if bench == "B1" else self.measure_service(bench)
                self.w2_row(row, one[bench], ", serve --workers 2")
        finally:
            await self.restart(1)
        await self.stop_baseline()
        await self.start_baseline(2)
        try:
            for bench in ("B7", "B2"):
                if bench in raw_one:
                    self.w2_row(self.measure_raw(bench), raw_one[bench], ", uvicorn --workers 2")
        finally:
            await self.stop_baseline()
            await self.start_baseline(1)
        why_not = cpu_caps.unavailable()
        if why_not is not None:
            self.rows.append(Row("W2", "one core each (cgroup CPU quota)", notes=f"not run: {why_not}"))
        else:
            await self.w2_cores(one, raw_one)

    async def w2_cores(self, one: dict[str, Row], raw_one: dict[str, Row]) -> None:
        """B7, B2 and B1 with one process on one core and with two processes on two, where
        each core is a cgroup with a quota of --core-share of a real core (bench/cpu_caps.py);
        B7's and B2's baselines the same way. PostgreSQL and wrk keep the rest of the machine.
        Each configuration runs three times, in the order 1, 2, 2, 1, 1, 2 processes, and each
        row is the run with the median figure: a capped process's figure moved between runs by
        up to a half (B1: 194 and 358 claims/s)."""
        share = self.args.core_share
        runs: dict[tuple[str, int], list[Row]] = {}
        order = (1, 2) if self.args.quick else CAPPED_ORDER
        for workers in order:
            await self.restart(workers)
            assert self.server is not None
            for bench in ("B7", "B2", "B1"):
                if bench in one:
                    if bench == "B1":
                        await self.fresh_b1()
                    row = await self.capped_run(self.server.process.pid, share, bench, service=True)
                    runs.setdefault((bench, workers), []).append(row)
        await self.restart(1)
        for workers in order:
            await self.stop_baseline()
            await self.start_baseline(workers)
            assert self.baseline is not None
            for bench in ("B7", "B2"):
                if bench in raw_one:
                    row = await self.capped_run(self.baseline.pid, share, bench, service=False)
                    runs.setdefault(("raw " + bench, workers), []).append(row)
        await self.stop_baseline()
        await self.start_baseline(1)
        core = f"{100 * share:.0f} % core"
        median = {key: sorted(rows, key=lambda r: r.rate or 0.0)[len(rows) // 2] for key, rows in runs.items()}
        for (bench, workers), rows in runs.items():
            row = median[bench, workers]
            rates = [r.rate or 0.0 for r in rows]
            row.extra["runs"] = [{"rate": r.rate, **r.extra} for r in rows]
            if workers == 1:
                row.what += f", 1 process on one {core}"
                row.ratio = "reference"
            else:
                base = median[bench, 1]
                row.what += f", {'serve' if bench in one else 'uvicorn'} --workers 2 on two {core}s"
                row.ratio = f"{row.rate / base.rate:.2f}x 1 process" if base.rate and row.rate else ""
                row.target = "scales with the cores (≥ 1.8x)" if bench in one else "(reference)"
            row.unit = (one.get(bench) or raw_one[bench.removeprefix("raw ")]).unit
            row.bench = "W2"
            shares = " / ".join(" + ".join(f"{c:.0f} %" for c in r.extra.get("process_cpu_pct", [])) for r in rows)
            row.notes = "; ".join(
                filter(
                    None,
                    [
                        row.notes,
                        "median of " + ", ".join(fmt(rate, ",.0f") for rate in rates),
                        f"processes {shares}",
                        "throttled " + " / ".join(str(r.extra["throttled_periods"]) for r in rows) + " periods",
                        "machine busy " + " / ".join(f"{r.extra['machine_busy_pct']:.0f} %" for r in rows),
                    ],
                )
            )
            self.rows.append(row)

    async def capped_run(self, root: int, share: float, bench: str, *, service: bool) -> Row:
        """One measured run of `bench` with each serving process under `root` on a core of
        `share` (bench/cpu_caps.py), once they are idle."""
        pids = cpu_caps.worker_processes(root)
        caps = cpu_caps.CpuCaps(share, f"{'service' if service else 'baseline'}{len(pids)}")
        try:
            caps.cap(pids)
            await cpu_caps.settle(pids)
            throttled = sum(caps.throttled())
            row = self.measure_service(bench) if service else self.measure_raw(bench)
            row.extra["throttled_periods"] = sum(caps.throttled()) - throttled
        finally:
            caps.release()
        if bench == "B1":
            await self.retire_b1()
        return row

    def w2_row(self, row: Row, one: Row, what: str) -> None:
        row.what += what
        row.unit = one.unit
        row.ratio = f"{row.rate / one.rate:.2f}x 1 process" if one.rate and row.rate else ""
        row.target = "scales with the cores"
        shares = " + ".join(f"{c:.0f} %" for c in row.extra.get("process_cpu_pct", []))
        busy = f"machine busy {row.extra['machine_busy_pct']:.0f} %"
        row.notes = "; ".join(filter(None, [row.notes, f"processes {shares}" if shares else "", busy]))
        self.rows.append(row)

    async def claim_series(self, agent: str, count: int) -> list[float]:
        """Seconds of `count` claimNextTask calls (any project), one at a time, after a few
        untimed ones."""
        timings: list[float] = []
        untimed = max(count // 10, 2)
        for i in range(untimed + count):
            t0 = time.perf_counter()
            data = await self.gql(CLAIM_NEXT, a=agent, p=None)
            elapsed = time.perf_counter() - t0
            if data["claimNextTask"] is None:
                raise RuntimeError("no ready task left to claim")
            if i >= untimed:
                timings.append(elapsed)
        return sorted(timings)

    async def b8(self) -> None:
        """claimNextTask one at a time on the database as it is, then again once SQL copies
        have grown it to b8_tasks tasks (ready ones, in another project)."""
        s = self.sizes
        (agent,) = await self.register("b8-agent", 1)
        before_total = (await self.sql("SELECT count(*) FROM tasks"))[0][0]
        before = await self.claim_series(agent, s.b8_claims)
        filler = await self.project("b8-filler")
        t0 = time.perf_counter()
        total = before_total
        while total < s.b8_tasks:
            await self.copy_tasks(self.projects["b1"], filler, s.b8_tasks - total, pending=True)
            total = (await self.sql("SELECT count(*) FROM tasks"))[0][0]
        await self.sql("VACUUM (ANALYZE) tasks")
        grown = time.perf_counter() - t0
        after = await self.claim_series(agent, s.b8_claims)
        p50_before, p50_after = percentile(before, 50) or 0, percentile(after, 50) or 0
        self.rows.append(
            Row(
                "B8",
                f"claimNextTask one at a time, {total:,} tasks, {s.b8_claims} claims",
                p50_ms=1000 * p50_after,
                p99_ms=1000 * (percentile(after, 99) or 0),
                unit="",
                ratio=f"{p50_after / p50_before:.2f}x (p50 {1000 * p50_before:.1f} ms at {before_total:,} tasks)",
                target="p50 ≤ 2x the smaller database",
                notes=f"grown by SQL in {grown:.0f} s",
                extra={"before_ms": [1000 * t for t in before], "after_ms": [1000 * t for t in after]},
            )
        )

    async def b9(self) -> None:
        """The service's RSS over a soak at moderate load (raw_clients.py soak): it must not
        grow. The first fifth of the soak is warm-up (caches filling); the RSS at the start
        is the mean of the next tenth, the RSS at the end the mean of the last tenth."""
        s = self.sizes
        assert self.server is not None
        assert self.monitor is not None
        project = await self.project("soak")
        await self.copy_tasks(self.projects["b1"], project, int(s.soak_rate * s.soak_seconds / 4) + 100, pending=True)
        await self.register("soak-agent", SOAK_AGENTS)
        before = self.server_sample()
        t0 = time.time()
        report = await asyncio.to_thread(
            self.run_client,
            "soak",
            "--url",
            self.server.url,
            "--project",
            str(project),
            "--agents",
            str(SOAK_AGENTS),
            "--agent-prefix",
            "soak-agent",
            "--rate",
            str(s.soak_rate),
            "--subscribers",
            str(SOAK_SUBSCRIBERS),
            "--reconnect",
            str(SOAK_RECONNECT),
            "--duration",
            str(s.soak_seconds),
            seconds=s.soak_seconds,
        )
        t1 = time.time()
        cpu, _ = self.server_usage(before)
        samples = [(t, kb / 1024) for t, kb in self.monitor.samples if t0 <= t <= t1]
        series = soak_series(samples, t0, t1)
        passed = series["end_mb"] - series["start_mb"] <= max(SOAK_GROWTH_MB, SOAK_GROWTH_SHARE * series["start_mb"])
        problems = f"; {report['errors']} failed operations" if report["errors"] else ""
        self.rows.append(
            Row(
                "B9",
                f"RSS soak: {s.soak_seconds / 60:g} min, {SOAK_AGENTS} agents' task cycles paced at {s.soak_rate:g} "
                f"operations/s, {SOAK_SUBSCRIBERS} subscribers reconnecting every {SOAK_RECONNECT:g} s",
                rate=report["rate"],
                unit="ops/s",
                p50_ms=report["p50_ms"],
                p99_ms=report["p99_ms"],
                server_cpu=cpu,
                server_rss_mb=series["end_mb"],
                gen_cpu=report["gen_cpu"],
                ratio=f"RSS {series['start_mb']:.1f} → {series['end_mb']:.1f} MB "
                f"({series['slope_mb_per_min']:+.2f} MB/min)",
                target=TARGETS["B9"],
                notes=("PASS" if passed else "FAIL") + problems,
                extra={"soak": report, "rss": series},
            )
        )

    def pair(self, service: Row, baseline: Row, target: str) -> None:
        service.target = target
        service.ratio = f"{service.rate / baseline.rate:.3f}" if baseline.rate and service.rate is not None else ""
        baseline.ratio = "baseline"
        baseline.unit = service.unit
        self.rows.extend([service, baseline])

    def script(self, name: str, extra: list[str]) -> None:
        """Run b3_fanout.py or b4_claim_backlog.py as they are; one row from their JSON."""
        out = self.workdir / f"{name}.json"
        cpu0, t0 = children_cpu(), time.monotonic()
        env_args = [a for item in self.args.server_env for a in ("--server-env", item)]
        done = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / f"{name}.py"),
                "--json",
                str(out),
                "--pg-admin-dsn",
                self.args.pg_admin_dsn,
                *env_args,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        wall = time.monotonic() - t0
        (self.workdir / f"{name}.out").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not out.exists():
            self.rows.append(
                Row(name[:2].upper(), name, notes=f"failed (exit {done.returncode}): {done.stderr[-300:]}")
            )
            return
        report = json.loads(out.read_text())
        if name.startswith("b3"):
            lat, dlv = report["latency_seconds"], report["deliveries"]
            pub = report["published"]
            subs = extra[len(extra) - 1 - extra[::-1].index("--subscribers") + 1] if "--subscribers" in extra else 500
            self.rows.append(
                Row(
                    "B3",
                    f"taskEvents fan-out, {subs} subscribers, {report.get('rate', 10)} events/s",
                    rate=(dlv["received"] / max(pub["publish_seconds"] or 1, 1e-9)),
                    unit="deliveries/s",
                    p50_ms=None if lat["p50"] is None else 1000 * lat["p50"],
                    p99_ms=None if lat["p99"] is None else 1000 * lat["p99"],
                    server_cpu=report.get("server_cpu_percent"),
                    server_rss_mb=report.get("rss_peak_mb"),
                    gen_cpu=None,
                    ratio=f"lost {dlv['lost']}",
                    target=TARGETS["B3"],
                    notes="PASS"
                    if report.get("pass")
                    else "FAIL " + ",".join(k for k, v in report["targets"].items() if not v),
                    extra={"client_cpu_percent_per_worker": report.get("client_cpu_percent_per_worker")},
                )
            )
        else:
            a, b = report["phase_a"], report["phase_b"]
            self.rows.append(
                Row(
                    "B4",
                    "claimNextTask one at a time, backlog vs none",
                    p50_ms=b["latency"]["p50_ms"],
                    p99_ms=b["latency"]["p99_ms"],
                    unit="",
                    ratio=f"{report['ratios']['p50']:.2f}x (p50 {a['latency']['p50_ms']:.1f} ms without)",
                    target=TARGETS["B4"],
                    notes="PASS" if report.get("pass") else "FAIL",
                    extra={"server_cpu_ms_per_claim": b.get("server_cpu_ms_per_claim")},
                )
            )
        self.rows[-1].gen_cpu = 100 * (children_cpu() - cpu0) / wall  # the whole script: clients and its server


def soak_series(samples: list[tuple[float, float]], t0: float, t1: float) -> dict[str, float]:
    """RSS (MB) at the start and end of a soak, and its trend after the warm-up."""
    span = t1 - t0
    warm, window = t0 + 0.2 * span, 0.1 * span

    def mean(lo: float, hi: float) -> float:
        values = [mb for t, mb in samples if lo <= t <= hi]
        return sum(values) / len(values) if values else float("nan")

    steady = [(t, mb) for t, mb in samples if t >= warm]
    slope = 0.0
    if len(steady) >= 2:
        mt = sum(t for t, _ in steady) / len(steady)
        mm = sum(mb for _, mb in steady) / len(steady)
        var = sum((t - mt) ** 2 for t, _ in steady)
        slope = 60 * sum((t - mt) * (mb - mm) for t, mb in steady) / var if var else 0.0
    return {
        "start_mb": mean(warm, warm + window),
        "end_mb": mean(t1 - window, t1),
        "peak_mb": max((mb for _, mb in samples), default=float("nan")),
        "slope_mb_per_min": slope,
        "samples": len(samples),
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    head = (
        "| bench | workload | throughput | p50 ms | p99 ms | server CPU % | server RSS MB | load gen CPU % "
        "| ratio | target | notes |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        rate = "-" if r.rate is None else f"{r.rate:,.0f} {r.unit}".strip()
        lines.append(
            f"| {r.bench} | {r.what} | {rate} | {fmt(r.p50_ms, '.1f')} | {fmt(r.p99_ms, '.1f')} | "
            f"{fmt(r.server_cpu, '.0f')} | {fmt(r.server_rss_mb, '.0f')} | {fmt(r.gen_cpu, '.0f')} | {r.ratio} | "
            f"{r.target} | {r.notes} |"
        )
    return "\n".join(lines)


def results_md(bench: Bench, started: datetime, seconds: float) -> str:
    m = bench.info["machine"]
    git = bench.info.get("git", {})
    dirty = ", ".join(git.get("uncommitted", [])[:10])
    env = " ".join(bench.args.server_env) or "none (defaults)"
    per_request = [
        f"{r.bench} {r.what}: {r.extra['server_cpu_ms_per_request']:.2f} ms"
        for r in bench.rows
        if "server_cpu_ms_per_request" in r.extra
    ]
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Written by `python bench/run_all.py{' --quick' if bench.args.quick else ''}`"
            f" on {started:%Y-%m-%d %H:%M} UTC"
            f" in {seconds:.0f} s; code at {git.get('commit', '?')[:12]}{' + uncommitted: ' + dirty if dirty else ''}.",
            "",
            f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory']} RAM, Linux {m['kernel']}, Python "
            f"{m['python']}, PostgreSQL {bench.info.get('postgres', '?')} (127.0.0.1), {m['wrk']}. Load average at the"
            f" start: {' '.join(f'{x:.2f}' for x in m['loadavg'])}"
            " (the machine is shared: compare ratios, not absolutes).",
            f"Service: `task-service serve`{' --workers ' + str(bench.args.workers) if bench.args.workers > 1 else ''}"
            f" (B1, B2, B5-B7), server settings: {env}. "
            f"Load: wrk, {bench.sizes.connections} connections, {bench.sizes.duration:g} s per run after a"
            f" {bench.sizes.warmup:g} s warm-up; tasks in the database for B5: {bench.info.get('tasks_total', 0):,}.",
            "",
            table(bench.rows),
            "",
            "Server CPU is the service's process tree in % of one core during the run; ratio = service ÷ baseline"
            " throughput (B1's v1 row: service ÷ v1). For B3/B4 the load generator column is the whole script"
            " (its clients and its own server).",
            "",
            "Server CPU per request: " + ("; ".join(per_request) or "-") + ".",
            "",
        ]
    )


async def main_async(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    only = set(args.only.lower().split(",")) if args.only else {*SERVICE_STEPS, "b3", "b4", "b6"}
    started = datetime.now(UTC)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench_all_"))
    bench = Bench(args, sizes, workdir)
    bench.info["machine"] = machine()
    bench.info["git"] = git_state()
    scripts = [("b3", "b3_fanout", sizes.b3_args + args.b3), ("b4", "b4_claim_backlog", sizes.b4_args + args.b4)]
    scripts = [(name, script, extra) for name, script, extra in scripts if name in only]
    # --quick checks that everything runs, not the figures: B3 and B4 start their own servers
    # and run beside the rest, to keep the smoke run short. A full run runs one thing at a time.
    background = (
        [
            asyncio.create_task(bench.step(name, asyncio.to_thread(bench.script, script, extra)))
            for name, script, extra in scripts
        ]
        if args.quick
        else []
    )
    try:
        if only & {*SERVICE_STEPS, "b6"}:
            await bench.step("start", bench.start(), fatal=True)
            if "b6" in only:
                await bench.step("b6", bench.b6())
            await bench.step("seed", bench.seed(), fatal=True)
            for name in SERVICE_STEPS:
                if name in only and not (name == "w2" and args.workers > 1):
                    await bench.step(name, getattr(bench, name)())
    finally:
        await bench.step("stop", bench.stop())
        await asyncio.gather(*background)
    if not args.quick:
        for name, script, extra in scripts:
            await bench.step(name, asyncio.to_thread(bench.script, script, extra))
    bench.rows.sort(key=lambda row: row.bench)
    seconds = time.monotonic() - t0
    print(table(bench.rows))
    text = results_md(bench, started, seconds)
    output = args.output or (None if args.quick else RESULTS)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        print(f"written: {output}")
    line = {
        "rows": [r.__dict__ for r in bench.rows],
        "info": bench.info,
        "seconds": seconds,
        "quick": args.quick,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(line, default=str) + "\n", encoding="utf-8")
    if bench.info.get("server_log_problems"):
        print(f"server log problems: {bench.info['server_log_problems']}\n{bench.info.get('server_log_tail', '')}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1.5 s runs: a smoke test of the harness")
    parser.add_argument("--only", help="comma-separated: b1,b2,b3,b4,b5,b6,b7,b8,b9,w2 (default all)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for every server started (repeatable)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, --quick 1.5)")
    parser.add_argument("--workers", type=int, default=1, help="`serve --workers N` for B1, B2, B5-B7 (default 1)")
    parser.add_argument(
        "--core-share",
        type=float,
        default=0.25,
        help="W2's cores: each server process's CPU quota, as a share of one real core (default 0.25)",
    )
    parser.add_argument("--b1-tasks", type=int, help="ready tasks for B1 (default 40,000; --quick 1,000)")
    parser.add_argument("--soak-seconds", type=float, help="B9's soak (default 600; --quick 12)")
    parser.add_argument("--b3", action="append", default=[], metavar="ARG", help="extra argument for b3_fanout.py")
    parser.add_argument(
        "--b4", action="append", default=[], metavar="ARG", help="extra argument for b4_claim_backlog.py"
    )
    parser.add_argument(
        "--output", type=Path, help="write the results here (default bench/RESULTS.md; none with --quick)"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the service during B1, B2, B5, B6, B7")
    parser.add_argument("--json", type=Path, help="also write every figure as one JSON line")
    parser.add_argument("--pg-admin-dsn", default=os.environ.get("BENCH_PG_ADMIN_DSN", DEFAULT_PG_ADMIN_DSN))
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(WRK).exists():
        print("run_all.py: wrk is not installed", file=sys.stderr)
        return 2
    if args.b1_tasks:
        QUICK.b1_tasks = FULL.b1_tasks = args.b1_tasks
    if args.soak_seconds:
        QUICK.soak_seconds = FULL.soak_seconds = args.soak_seconds
    if args.duration:
        QUICK.duration = FULL.duration = args.duration
        FULL.v1_duration = args.duration
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
