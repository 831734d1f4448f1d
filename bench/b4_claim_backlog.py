"""B4: claimNextTask with a backlog (docs/ARCHITECTURE.md, "Targets").

Times N sequential `claimNextTask` calls over HTTP against two servers, each on a fresh
database: phase A with only ready tasks, phase B with the same ready tasks plus a backlog the
agent cannot take (100k blocked by a never-completed task, 10k requiring a skill it lacks,
10k scheduled an hour ahead). Target: p50(B) <= 2x p50(A).

The script owns everything it measures: it creates the databases (PostgreSQL by default,
dropped at the end; `--database sqlite` for temporary SQLite files), starts
`task-service serve` on free ports of 127.0.0.1 (with the helpers of b3_fanout.py), creates
every task with `createTasks` over HTTP, and always stops the servers. The claims of the two
phases alternate by default, so that a machine that gets slower or faster during the run
affects both alike (`--order sequential`: all of A, then all of B).

    python bench/b4_claim_backlog.py                                 # the B4 run (about 1 minute)
    python bench/b4_claim_backlog.py --blocked 10000 --non-matching 1000 --scheduled 1000  # quicker
    python bench/b4_claim_backlog.py --json b4.json --check          # keep the figures; exit 1 on a miss

Latency is the client's round trip of one claimNextTask request (`time.perf_counter()` around
the HTTP POST and the JSON decoding), one request at a time on one keep-alive connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from b3_fanout import (
    CREATE_PROJECT,
    DEFAULT_PG_ADMIN_DSN,
    Server,
    ServerMonitor,
    create_pg_database,
    drop_pg_database,
    finish,
    git_state,
    graphql,
    launch_server,
    machine_cpu,
    percentile,
    run_migrations,
    wait_healthy,
)

TARGET_P50_RATIO = 2.0

CREATE_TASKS = "mutation($p: ID!, $tasks: [CreateTaskInput!]!) { createTasks(projectId: $p, tasks: $tasks) { id } }"
REGISTER_AGENT = "mutation($input: RegisterAgentInput!) { registerAgent(input: $input) { agent { id name } } }"
CLAIM_NEXT = "mutation($agent: String) { claimNextTask(agent: $agent) { id } }"

AGENT_SKILL = "python"
OTHER_SKILL = "rust"  # required by the non-matching tasks (and the blocker)
TASK_TYPE = "bench"
READY_PRIORITY = 5
MAX_CONCURRENT = 1000  # the highest maxConcurrentTasks registerAgent accepts
REQUEST_TIMEOUT = 120.0  # seconds per HTTP request (a createTasks of 1,000 takes well under 1 s)
SEQUENCER_WAIT = 120.0  # seconds for the server to stamp every CREATED event
QUIET_WAIT = 30.0  # seconds to wait for the server's CPU to settle before the claims
QUIET_PERCENT = 10.0  # "settled": the server used less than this % of one core over QUIET_SAMPLE
QUIET_SAMPLE = 0.5
TREND_SHARE = 0.1  # the report compares the p50 of the first and the last tenth of the claims

COUNTS_SQL = """
SELECT s.key, t.status,
       CASE WHEN t.unmet_dependencies > 0 THEN 1 ELSE 0 END,
       CASE WHEN t.available_at IS NULL THEN 0 ELSE 1 END,
       count(*)
FROM tasks t JOIN skill_sets s ON s.id = t.skill_set_id
GROUP BY 1, 2, 3, 4
"""
UNSEQUENCED_SQL = "SELECT count(*) FROM task_events WHERE seq IS NULL"
PG_SIZES_SQL = """
SELECT relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND relname IN ('tasks', 'task_dependencies', 'task_events')
"""


# -- databases ---------------------------------------------------------------------------


@dataclass
class Database:
    """One phase's database: a PostgreSQL database of its own, or a SQLite file."""

    kind: str
    url: str  # the service's DATABASE_URL
    pg_name: str | None = None
    sqlite_path: Path | None = None

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
            try:
                return [tuple(row) for row in await conn.fetch(sql, timeout=300)]
            finally:
                await conn.close()
        return await asyncio.to_thread(self._sqlite_fetch, sql)

    def _sqlite_fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(str(self.sqlite_path), timeout=30)
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    async def vacuum_analyze(self) -> float | None:
        """VACUUM (ANALYZE) on PostgreSQL, as autovacuum would do soon after a bulk load (done
        here so that it does not run during the claims of one phase only). Returns its seconds;
        None on SQLite, where nothing would run ANALYZE in production."""
        if self.kind != "postgres":
            return None
        started = time.monotonic()
        conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
        try:
            await conn.execute("VACUUM (ANALYZE)", timeout=600)
        finally:
            await conn.close()
        return time.monotonic() - started


async def create_database(args: argparse.Namespace, workdir: Path) -> Database:
    if args.database == "postgres":
        name = f"bench_b4_{uuid.uuid4().hex[:10]}"
        url = await create_pg_database(args.pg_admin_dsn, name)
        return Database("postgres", url, pg_name=name)
    path = workdir / "b4.db"
    return Database("sqlite", f"sqlite+aiosqlite:///{path}", sqlite_path=path)


# -- task creation -----------------------------------------------------------------------


def task_specs(kind: str, count: int, *, priority: int, blocker: str | None = None) -> list[dict[str, Any]]:
    """`count` CreateTaskInputs of one kind. Ready, blocked and scheduled tasks alternate
    between no required skills and the agent's skill, so they are in skill sets the agent
    matches (the sets claimNextTask reads); non-matching ones require a skill it lacks."""
    available_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    specs = []
    for i in range(count):
        spec: dict[str, Any] = {"title": f"b4 {kind} {i}", "taskType": TASK_TYPE, "priority": priority}
        if kind == "non-matching":
            spec["requiredSkills"] = [OTHER_SKILL]
        elif i % 2:
            spec["requiredSkills"] = [AGENT_SKILL]
        if kind == "blocked":
            spec["dependsOn"] = [blocker]
        if kind == "scheduled":
            spec["availableAt"] = available_at
        specs.append(spec)
    return specs


@dataclass
class Creator:
    """createTasks over HTTP, one call at a time, within an overall deadline."""

    http: httpx.AsyncClient
    project_id: str
    batch: int
    deadline: float
    calls: int = 0
    tasks: int = 0
    seconds: float = 0.0

    async def create(self, specs: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(specs), self.batch):
            if time.monotonic() > self.deadline:
                raise RuntimeError(f"creating the tasks took longer than --create-timeout ({self.tasks} created)")
            chunk = specs[start : start + self.batch]
            began = time.monotonic()
            data = await graphql(self.http, CREATE_TASKS, p=self.project_id, tasks=chunk)
            self.seconds += time.monotonic() - began
            created = [t["id"] for t in data["createTasks"]]
            if len(created) != len(chunk):
                raise RuntimeError(f"createTasks returned {len(created)} tasks for {len(chunk)}")
            ids.extend(created)
            self.calls += 1
            self.tasks += len(chunk)
        return ids


def classify(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """Task counts by kind from COUNTS_SQL rows (key of the skill set, status, blocked, scheduled)."""
    counts = {"ready": 0, "blocked": 0, "non_matching": 0, "scheduled": 0, "not_pending": 0, "total": 0}
    for key, status, blocked, scheduled, n in rows:
        skills = set(key.split("\n")) if key else set()
        counts["total"] += n
        if status != "PENDING":
            counts["not_pending"] += n
            counts[f"status_{status.lower()}"] = counts.get(f"status_{status.lower()}", 0) + n
        elif blocked:
            counts["blocked"] += n
        elif not skills <= {AGENT_SKILL}:
            counts["non_matching"] += n
        elif scheduled:
            counts["scheduled"] += n
        else:
            counts["ready"] += n
    return counts


async def wait_sequenced(db: Database) -> float:
    """Wait until every CREATED event is stamped (the server's sequencer works through the
    bulk load after the last commit); returns the seconds waited."""
    started = time.monotonic()
    while (await db.fetch(UNSEQUENCED_SQL))[0][0]:
        if time.monotonic() - started > SEQUENCER_WAIT:
            raise RuntimeError(f"the server left events unsequenced for {SEQUENCER_WAIT:g} s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def wait_quiet(monitor: ServerMonitor) -> tuple[float, float]:
    """Wait (at most QUIET_WAIT s) until the server uses < QUIET_PERCENT of a core; returns
    (seconds waited, its last CPU %)."""
    started = time.monotonic()
    percent = math.inf
    while time.monotonic() - started < QUIET_WAIT:
        before = monitor.cpu()
        await asyncio.sleep(QUIET_SAMPLE)
        percent = 100 * (monitor.cpu() - before) / QUIET_SAMPLE
        if percent < QUIET_PERCENT:
            break
    return time.monotonic() - started, percent


# -- a phase -----------------------------------------------------------------------------


def latency_stats(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    tenth = max(1, int(len(seconds) * TREND_SHARE))
    ms = [s * 1000 for s in ordered]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "min_ms": ms[0] if ms else None,
        "max_ms": ms[-1] if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "first_tenth_p50_ms": percentile(sorted(s * 1000 for s in seconds[:tenth]), 50),
        "last_tenth_p50_ms": percentile(sorted(s * 1000 for s in seconds[-tenth:]), 50),
    }


@dataclass
class Phase:
    """One side of the comparison: its database, server, client and what it measured."""

    name: str
    backlog: bool
    report: dict[str, Any] = field(default_factory=dict)
    db: Database | None = None
    server: Server | None = None
    monitor: ServerMonitor | None = None
    http: httpx.AsyncClient | None = None
    agents: list[str] = field(default_factory=list)
    ready_ids: set[str] = field(default_factory=set)
    claimed: list[str] = field(default_factory=list)
    timings: list[float] = field(default_factory=list)  # seconds, warm-up claims excluded

    async def close(self, args: argparse.Namespace) -> None:
        """Stop the server and drop the database (whatever got started)."""
        if self.http is not None:
            await self.http.aclose()
        if self.server is not None:
            self.server.stop()
            self.report["server_exit_code"] = self.server.process.returncode
            self.report["server_log_problems"] = self.server.log_problems()
            if self.report["server_log_problems"]:
                self.report["server_log_tail"] = self.server.log_tail(40)
        if self.db is not None and self.db.pg_name is not None:
            await drop_pg_database(args.pg_admin_dsn, self.db.pg_name)


async def start_phase(phase: Phase, args: argparse.Namespace, workdir: Path) -> None:
    """A fresh database and server for the phase (the caller closes them)."""
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    phase.db = await create_database(args, workdir)
    if phase.db.kind == "postgres":
        await asyncio.to_thread(run_migrations, phase.db.url, extra_env, workdir)
    phase.server = launch_server(phase.db.url, extra_env, workdir)
    await wait_healthy(phase.server)
    phase.monitor = ServerMonitor(phase.server.process.pid)
    phase.http = httpx.AsyncClient(base_url=phase.server.url, timeout=REQUEST_TIMEOUT, trust_env=False)
    server = phase.server
    print(f"[{phase.name}] server pid {server.process.pid} on {server.url} ({phase.db.kind}); log {server.log_path}")


async def fill_phase(phase: Phase, args: argparse.Namespace) -> None:
    """Create the phase's tasks over HTTP; wait for the sequencer; VACUUM (ANALYZE); count them."""
    assert phase.http is not None
    assert phase.db is not None
    name, http, report = phase.name, phase.http, phase.report
    planned = {
        "ready": args.ready,
        "blocked": args.blocked if phase.backlog else 0,
        "non_matching": args.non_matching if phase.backlog else 0,
        "scheduled": args.scheduled if phase.backlog else 0,
        "blocker": 1 if phase.backlog and args.blocked else 0,
    }
    report.update(phase=name, backlog=phase.backlog, planned=planned, creation_method="api")
    project = await graphql(http, CREATE_PROJECT, input={"name": f"b4 {name} {uuid.uuid4().hex[:6]}"})
    project_id = project["createProject"]["id"]
    creator = Creator(http, project_id, args.batch, time.monotonic() + args.create_timeout)
    began = time.monotonic()
    # The backlog first (work that piled up), then the ready tasks; phase A has only the latter.
    if planned["blocker"]:
        spec = {"title": "b4 blocker (never completed)", "taskType": TASK_TYPE, "requiredSkills": [OTHER_SKILL]}
        (blocker,) = await creator.create([spec])
        print(f"[{name}] creating {planned['blocked']:,} blocked tasks ...", flush=True)
        await creator.create(task_specs("blocked", planned["blocked"], priority=args.backlog_priority, blocker=blocker))
    if planned["non_matching"]:
        print(f"[{name}] creating {planned['non_matching']:,} non-matching tasks ...", flush=True)
        await creator.create(task_specs("non-matching", planned["non_matching"], priority=args.backlog_priority))
    if planned["scheduled"]:
        print(f"[{name}] creating {planned['scheduled']:,} scheduled tasks ...", flush=True)
        await creator.create(task_specs("scheduled", planned["scheduled"], priority=args.backlog_priority))
    print(f"[{name}] creating {planned['ready']:,} ready tasks ...", flush=True)
    phase.ready_ids = set(await creator.create(task_specs("ready", planned["ready"], priority=READY_PRIORITY)))
    wall = time.monotonic() - began
    report["creation"] = {
        "tasks": creator.tasks,
        "calls": creator.calls,
        "seconds": wall,
        "tasks_per_second": creator.tasks / wall if wall > 0 else None,
    }
    print(f"[{name}] created {creator.tasks:,} tasks in {creator.calls} calls, {wall:.1f} s", flush=True)
    report["sequencer_wait_seconds"] = await wait_sequenced(phase.db)
    report["vacuum_analyze_seconds"] = None if args.no_vacuum else await phase.db.vacuum_analyze()
    report["counts_before"] = classify(await phase.db.fetch(COUNTS_SQL))
    if phase.db.kind == "postgres":
        report["pg_sizes_mb"] = {rel: size / 2**20 for rel, size in await phase.db.fetch(PG_SIZES_SQL)}


async def register_agents(phase: Phase, args: argparse.Namespace) -> None:
    """Just before the claims: every claim is also a heartbeat, which keeps them online from here."""
    assert phase.http is not None
    assert phase.monitor is not None
    quiet_seconds, quiet_percent = await wait_quiet(phase.monitor)
    phase.report["quiet_wait"] = {"seconds": quiet_seconds, "server_cpu_percent": quiet_percent}
    phase.agents = [f"b4-agent-{phase.name}-{i}" for i in range(args.agents)]
    for agent in phase.agents:
        agent_input = {"name": agent, "skills": [AGENT_SKILL], "maxConcurrentTasks": MAX_CONCURRENT}
        await graphql(phase.http, REGISTER_AGENT, input=agent_input)


async def claim_once(phase: Phase, index: int, timed: bool) -> None:
    assert phase.http is not None
    started = time.perf_counter()
    data = await graphql(phase.http, CLAIM_NEXT, agent=phase.agents[index % len(phase.agents)])
    elapsed = time.perf_counter() - started
    task = data["claimNextTask"]
    if task is None:
        raise RuntimeError(f"[{phase.name}] claimNextTask returned null after {index} claims; no ready task left")
    phase.claimed.append(task["id"])
    if timed:
        phase.timings.append(elapsed)


async def measure(phases: list[Phase], args: argparse.Namespace) -> dict[str, Any]:
    """The claims: interleaved (A, B, then B, A, ...: both phases share every moment of the
    run, so drift of the machine cancels out) or sequential (all of A, then all of B)."""
    total = args.warmup_claims + args.claims
    cpu_before = [p.monitor.cpu() if p.monitor else 0.0 for p in phases]
    machine_before, wall_before = machine_cpu(), time.monotonic()
    if args.order == "interleaved":
        print(f"{args.warmup_claims} warm-up + {args.claims} timed claims per phase, interleaved ...", flush=True)
        for i in range(total):
            for phase in phases if i % 2 == 0 else phases[::-1]:
                await claim_once(phase, i, timed=i >= args.warmup_claims)
    else:
        for phase in phases:
            print(f"[{phase.name}] {args.warmup_claims} warm-up + {args.claims} timed claims ...", flush=True)
            for i in range(total):
                await claim_once(phase, i, timed=i >= args.warmup_claims)
    wall = time.monotonic() - wall_before
    busy, all_jiffies = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
    for phase, before in zip(phases, cpu_before, strict=True):
        assert phase.monitor is not None
        assert phase.db is not None
        phase.report["server_cpu_ms_per_claim"] = 1000 * (phase.monitor.cpu() - before) / total
        phase.report["latency"] = latency_stats(phase.timings)
        phase.report["claims"] = {
            "total": len(phase.claimed),
            "distinct": len(set(phase.claimed)),
            "not_ready_tasks": sum(1 for t in phase.claimed if t not in phase.ready_ids),
        }
        phase.report["counts_after"] = classify(await phase.db.fetch(COUNTS_SQL))
    return {"seconds": wall, "machine_cpu_percent": 100 * busy / all_jiffies if all_jiffies else None}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "bench": "B4",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": args.database,
        "claims": args.claims,
        "warmup_claims": args.warmup_claims,
        "agents": args.agents,
        "order": args.order,
        "backlog_priority": args.backlog_priority,
        "vacuum_analyze": not args.no_vacuum and args.database == "postgres",
        "git": git_state(),
        "loadavg_at_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="b4_claim_backlog_"))
    phases = [Phase("A", backlog=False), Phase("B", backlog=True)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for phase in phases:
                phase_dir = workdir / phase.name
                phase_dir.mkdir()
                stack.push_async_callback(phase.close, args)
                await start_phase(phase, args, phase_dir)
            for phase in phases:
                await fill_phase(phase, args)
            for phase in phases:
                await register_agents(phase, args)
            report["loadavg_at_claims"] = os.getloadavg()
            report["measurement"] = await measure(phases, args)
    finally:
        for phase in phases:
            report[f"phase_{phase.name.lower()}"] = phase.report
        if args.keep_workdir:
            report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    a, b = report["phase_a"]["latency"], report["phase_b"]["latency"]
    report["ratios"] = {q: b[f"{q}_ms"] / a[f"{q}_ms"] if a[f"{q}_ms"] else None for q in ("p50", "p95", "p99")}
    return report


def verdict(report: dict[str, Any]) -> dict[str, bool]:
    ratio = report.get("ratios", {}).get("p50")
    valid = all(
        p["claims"]["not_ready_tasks"] == 0 and p["claims"]["distinct"] == p["claims"]["total"]
        for p in (report["phase_a"], report["phase_b"])
    )
    return {"p50_ratio": ratio is not None and ratio <= TARGET_P50_RATIO, "claims_valid": valid}


def summary(report: dict[str, Any]) -> str:
    def f(value: Any, fmt: str = ".2f") -> str:
        return "n/a" if value is None else format(value, fmt)

    a, b = report["phase_a"], report["phase_b"]
    mark = {True: "PASS", False: "FAIL"}
    checks = report["targets"]
    git = report["git"]
    code = "uncommitted: " + ", ".join(git["uncommitted"]) if git["uncommitted"] else "clean"
    rows = [
        ("ready (claimable by the agent)", "ready"),
        ("blocked (unmet dependency)", "blocked"),
        ("non-matching (requires rust)", "non_matching"),
        ("scheduled (availableAt +1 h)", "scheduled"),
        ("total tasks in the database", "total"),
    ]
    width = 34

    def line(label: str, left: str, right: str) -> str:
        return f"    {label:<{width}} {left:>12} {right:>12}"

    lines = [
        f"B4 claimNextTask with a backlog on {report['database']}: {report['claims']} timed claims per phase"
        f" (+{report['warmup_claims']} warm-up), one at a time over HTTP, {report['order']},"
        f" {report['agents']} agent(s) per phase",
        f"  code: {git['commit']} ({code})",
        f"  tasks created with createTasks over HTTP (method: api); backlog priority {report['backlog_priority']}"
        f" (ready {READY_PRIORITY}); VACUUM (ANALYZE) before the claims: {'yes' if report['vacuum_analyze'] else 'no'}",
        line("", "A: no backlog", "B: backlog"),
    ]
    for label, key in rows:
        lines.append(
            line(label, format(a["counts_before"].get(key, 0), ",d"), format(b["counts_before"].get(key, 0), ",d"))
        )
    lines.append(line("  of which the blocker task", "-", format(b["planned"]["blocker"], "d")))
    for q in ("p50", "p95", "p99", "mean", "min", "max", "first_tenth_p50", "last_tenth_p50"):
        label = (
            q.replace("_", " ")
            .replace("first tenth p50", "p50, first 10% of claims")
            .replace("last tenth p50", "p50, last 10% of claims")
        )
        lines.append(line(f"claim {label} (ms)", f(a["latency"][f"{q}_ms"]), f(b["latency"][f"{q}_ms"])))
    for label, key in (("creation (s)", "seconds"), ("creation rate (tasks/s)", "tasks_per_second")):
        lines.append(line(label, f(a["creation"][key], ".1f"), f(b["creation"][key], ".1f")))
    lines += [
        line("VACUUM (ANALYZE) (s)", f(a["vacuum_analyze_seconds"], ".1f"), f(b["vacuum_analyze_seconds"], ".1f")),
        line("server CPU per claim (ms)", f(a["server_cpu_ms_per_claim"]), f(b["server_cpu_ms_per_claim"])),
        line(
            "claimed: distinct / not ready",
            f"{a['claims']['distinct']} / {a['claims']['not_ready_tasks']}",
            f"{b['claims']['distinct']} / {b['claims']['not_ready_tasks']}",
        ),
        line("server log problems", str(a["server_log_problems"]), str(b["server_log_problems"])),
        f"  claims took {report['measurement']['seconds']:.1f} s; whole machine CPU during them"
        f" {f(report['measurement']['machine_cpu_percent'], '.0f')}% of {report['cpus']} CPUs; load average"
        f" at start {' '.join(f'{x:.2f}' for x in report['loadavg_at_start'])},"
        f" before the claims {' '.join(f'{x:.2f}' for x in report['loadavg_at_claims'])}",
        f"  ratio B/A: p50 {f(report['ratios']['p50'])}x, p95 {f(report['ratios']['p95'])}x,"
        f" p99 {f(report['ratios']['p99'])}x",
        f"  targets: p50(B) <= {TARGET_P50_RATIO:g}x p50(A) {mark[checks['p50_ratio']]};"
        f" claims only ready tasks, each once {mark[checks['claims_valid']]} => {mark[report['pass']]}",
    ]
    for p in (a, b):
        if p.get("server_log_tail"):
            lines.append(f"  server log tail (phase {p['phase']}):\n" + p["server_log_tail"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--claims", type=int, default=300, help="timed claimNextTask calls per phase (default 300)")
    parser.add_argument("--warmup-claims", type=int, default=20, help="untimed claims before them (default 20)")
    parser.add_argument("--ready", type=int, default=2000, help="ready tasks in both phases (default 2000)")
    parser.add_argument("--blocked", type=int, default=100_000, help="blocked tasks in phase B (default 100000)")
    parser.add_argument("--non-matching", type=int, default=10_000, help="phase B tasks requiring rust (default 10000)")
    parser.add_argument("--scheduled", type=int, default=10_000, help="phase B tasks due in 1 h (default 10000)")
    parser.add_argument("--backlog-priority", type=int, default=10, help="priority of the backlog (default 10)")
    parser.add_argument(
        "--order",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="claims alternate between A and B (default), or all of A then all of B",
    )
    parser.add_argument("--agents", type=int, default=1, help="agents taking turns to claim (default 1)")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per createTasks call (default 1000, the max)")
    parser.add_argument("--create-timeout", type=float, default=900.0, help="seconds allowed to create a phase's tasks")
    parser.add_argument("--no-vacuum", action="store_true", help="skip VACUUM (ANALYZE) after the bulk creation")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--pg-admin-dsn",
        default=os.environ.get("BENCH_PG_ADMIN_DSN", DEFAULT_PG_ADMIN_DSN),
        help=f"where to create the bench databases (default $BENCH_PG_ADMIN_DSN or {DEFAULT_PG_ADMIN_DSN})",
    )
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra server setting (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as one JSON line to this file")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the server logs (and SQLite files)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.claims < 1 or args.warmup_claims < 0 or args.agents < 1:
        parser.error("--claims and --agents must be positive, --warmup-claims not negative")
    if min(args.blocked, args.non_matching, args.scheduled) < 0:
        parser.error("--blocked, --non-matching and --scheduled must not be negative")
    if args.ready < args.claims + args.warmup_claims:
        parser.error("--ready must be at least --claims + --warmup-claims (the ready set must not run out)")
    if args.claims + args.warmup_claims > args.agents * MAX_CONCURRENT:
        parser.error(f"an agent holds at most {MAX_CONCURRENT} tasks: raise --agents for that many claims")
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be between 1 and 1000")
    if not 1 <= args.backlog_priority <= 10:
        parser.error("--backlog-priority must be between 1 and 10")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return finish(args, asyncio.run(run(args)), verdict, summary)


if __name__ == "__main__":
    sys.exit(main())
