"""Shared by the resilience tests: agent processes (agent_worker.py) started, watched, killed
and stopped; a project of tasks set up over HTTP; the database's own view of a project read
with a plain asyncpg connection (the ground truth the tests compare against)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import GraphQLClient
from tests.e2e.test_concurrency import CREATE_PROJECT, CREATE_TASKS, REGISTER

WORKER = Path(__file__).with_name("agent_worker.py")
STOP_TIMEOUT = 30.0
# Every wait of these tests is bounded; this one only stops a broken run from hanging CI.
RUN_DEADLINE = 360.0


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def poll_until(check: Any, *, within: float, interval: float = 0.05, what: str = "the condition") -> float:
    """Await `check()` (sync or async) until truthy; the seconds it took. Fails after `within`."""
    started = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not reached within {within:.0f}s")
        await asyncio.sleep(interval)


# -- setup over HTTP ----------------------------------------------------------------------


async def create_project(gql: GraphQLClient, prefix: str) -> str:
    return (await gql.execute(CREATE_PROJECT, name=f"{prefix}-{uuid.uuid4().hex[:8]}"))["createProject"]["id"]


async def create_tasks(gql: GraphQLClient, project: str, count: int, **extra: Any) -> list[str]:
    """`count` research tasks that complete on submit (no review), in batches of 250."""
    ids: list[str] = []
    for start in range(0, count, 250):
        batch = [
            {"title": f"task {n}", "taskType": "research", "requiresReview": False, **extra}
            for n in range(start, min(start + 250, count))
        ]
        ids += [row["id"] for row in (await gql.execute(CREATE_TASKS, p=project, tasks=batch))["createTasks"]]
    assert len(set(ids)) == count
    return ids


async def register_agents(gql: GraphQLClient, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{uuid.uuid4().hex[:6]}-{n}" for n in range(count)]
    for name in names:
        await gql.execute(REGISTER, name=name)
    return names


# -- agent processes ----------------------------------------------------------------------


@dataclass
class AgentProcess:
    agents: list[str]
    out: Path
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False

    def records(self) -> list[dict[str, Any]]:
        lines = self.out.read_text(encoding="utf-8").splitlines() if self.out.exists() else []
        # A SIGKILL can cut the last line short.
        return [json.loads(line) for line in lines if line.endswith("}")]

    def kill(self) -> None:
        """SIGKILL: the agents die mid-task, telling no one."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.killed = True


@dataclass
class Fleet:
    """Agent processes, each running several agents (or one)."""

    workdir: Path
    processes: list[AgentProcess] = field(default_factory=list)
    stop_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stop_file = self.workdir / f"stop-{uuid.uuid4().hex[:6]}"

    def start(self, urls: list[str], project: str, groups: Iterable[list[str]], **config: Any) -> None:
        for n, agents in enumerate(groups):
            out = self.workdir / f"agents-{n}-{uuid.uuid4().hex[:6]}.jsonl"
            log = out.with_suffix(".log")
            settings = {
                "urls": urls,
                "agents": agents,
                "project": project,
                "stop_file": str(self.stop_file),
                "deadline_seconds": RUN_DEADLINE,
                "out": str(out),
                **config,
            }
            with log.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, str(WORKER), json.dumps(settings)], stdout=log_file, stderr=subprocess.STDOUT
                )
            self.processes.append(AgentProcess(agents, out, process, log))

    def records(self, op: str | None = None) -> list[dict[str, Any]]:
        return [r for p in self.processes for r in p.records() if op is None or r["op"] == op]

    async def wait_ready(self, within: float = 60) -> None:
        agents = sum(len(p.agents) for p in self.processes)
        await poll_until(
            lambda: len(self.records("ready")) >= agents or self.crashed(), within=within, what="agents up"
        )
        self.check()

    def crashed(self) -> list[AgentProcess]:
        return [p for p in self.processes if not p.killed and p.process.poll() not in (None, 0)]

    def check(self) -> None:
        """Fail with its output if an agent process died on its own (an unexpected error)."""
        for p in self.crashed():
            pytest.fail(
                f"agent process {p.agents} exited with {p.process.returncode}:\n{p.log.read_text()[-3000:]}",
                pytrace=False,
            )

    def check_no_double_claims(self) -> None:
        """Fail at once when two agents were both told they claimed the same task attempt."""
        holders: dict[tuple[str, int], set[str]] = {}
        for r in self.records("claimed"):
            holders.setdefault((r["task"], r["attempt"]), set()).add(r["agent"])
        doubles = {key: agents for key, agents in holders.items() if len(agents) > 1}
        assert not doubles, f"claimed by more than one agent (task, attempt): {dict(list(doubles.items())[:5])}"

    def completed(self) -> list[str]:
        return [r["task"] for r in self.records("completed")]

    async def wait_all_completed(self, database_url: str, project: str, total: int, within: float) -> float:
        counts: dict[str, int] = {}

        async def done() -> bool:
            nonlocal counts
            self.check()
            self.check_no_double_claims()
            counts = await project_counts(database_url, project)
            return counts.get("COMPLETED", 0) >= total

        try:
            return await poll_until(done, within=within, interval=0.25, what=f"all {total} tasks COMPLETED")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; tasks by status: {counts}") from None

    async def stop(self) -> None:
        """Tell the agents to stop once there is nothing left to claim; kill stragglers."""
        self.stop_file.touch()
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in self.processes:
            while p.process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a child process
                await asyncio.sleep(0.05)
            if p.process.poll() is None:
                p.kill()
        self.check()

    def kill_all(self) -> None:
        for p in self.processes:
            if p.process.poll() is None:
                p.kill()


@contextlib.asynccontextmanager
async def fleet(workdir: Path) -> AsyncIterator[Fleet]:
    agents = Fleet(workdir)
    try:
        yield agents
    finally:
        agents.kill_all()


def grouped(names: list[str], per_process: int) -> list[list[str]]:
    return [names[i : i + per_process] for i in range(0, len(names), per_process)]


# -- the database's view ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def project_counts(database_url: str, project: str) -> dict[str, int]:
    async with db(database_url) as conn:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM tasks WHERE project_id = $1 AND deleted_at IS NULL GROUP BY status",
            int(project),
        )
    return {row["status"]: row["n"] for row in rows}


async def project_tasks(database_url: str, project: str) -> dict[str, dict[str, Any]]:
    async with db(database_url) as conn:
        rows = await conn.fetch(
            "SELECT t.id, t.status, t.attempt, a.name AS assignee FROM tasks t "
            "LEFT JOIN agents a ON a.id = t.assignee_id WHERE t.project_id = $1",
            int(project),
        )
    return {str(row["id"]): dict(row) for row in rows}


async def project_events(database_url: str, project: str) -> list[dict[str, Any]]:
    """The project's log as subscribers see it: stamped rows, in cursor order. Fails if a
    row is still unstamped (the sequencer has settled by the time the tests ask)."""
    async with db(database_url) as conn:
        unstamped = await conn.fetchval(
            "SELECT count(*) FROM task_events WHERE project_id = $1 AND seq IS NULL", int(project)
        )
        rows = await conn.fetch(
            "SELECT seq, task_id, type, to_status, actor, created_at FROM task_events "
            "WHERE project_id = $1 AND seq IS NOT NULL ORDER BY seq",
            int(project),
        )
    assert unstamped == 0, f"{unstamped} events of the project were never sequenced"
    return [dict(row) for row in rows]


def assert_completed_exactly_once(
    tasks: dict[str, dict[str, Any]], events: list[dict[str, Any]], completed_by_agents: list[str]
) -> None:
    """Every task COMPLETED; one COMPLETED transition per task in the log; one successful
    submit per task as the agents saw it; one CLAIMED event per attempt."""
    assert Counter(t["status"] for t in tasks.values()) == Counter({"COMPLETED": len(tasks)})
    completions = Counter(str(e["task_id"]) for e in events if e["to_status"] == "COMPLETED")
    assert completions == Counter(dict.fromkeys(tasks, 1)), "a task completed twice or never (log)"
    by_agents = Counter(completed_by_agents)
    twice = {task: n for task, n in by_agents.items() if n > 1}
    assert twice == {}, f"tasks submitted successfully by more than one agent: {twice}"
    assert set(by_agents) == set(tasks), "the agents' completions differ from the tasks"
    claims = Counter(str(e["task_id"]) for e in events if e["type"] == "CLAIMED")
    for task_id, task in tasks.items():
        assert claims[task_id] == task["attempt"], (
            f"task {task_id}: attempt {task['attempt']}, {claims[task_id]} claims"
        )
