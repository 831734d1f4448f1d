"""The invariants of the lifecycle (docs/ARCHITECTURE.md), checked straight from the database.

`check(services)` reads every table in one session and returns the violations as
sentences (empty: all hold). The fuzzers call it after every step; a test of a single
scenario can call `assert_invariants`. The rules:

- Status and assignee agree: PENDING has no assignee; ASSIGNED and RUNNING have a live
  (not unregistered) assignee and a lease; REVIEWING keeps its assignee unless that agent was
  erased (hard unregister); nothing but ASSIGNED and RUNNING holds a lease.
- One holder: a held task's assignee is the agent of its latest claim (CLAIMED event, or
  CREATED straight into ASSIGNED), and `attempt` is the number of claims.
- No agent above its limit: a live agent's ASSIGNED/RUNNING live tasks are at most its
  maxConcurrentTasks (except agents the caller tolerates, see `check`).
- Presence: an unregistered agent is OFFLINE; a live one is BUSY while it holds an active
  task, else ONLINE (OFFLINE only once its heartbeat is older than the timeout).
- Counters: claimed = its claims, completed = its completions, failed = its rejections,
  failTask and timeouts (lease expiry is not counted), all read back from the event log.
- Events: every task starts with CREATED; its status-carrying events form a chain
  (each starts where the previous ended) that ends at the task's status; the log is
  append-only (`Snapshot` compares with the previous check) and every row is sequenced.
- Counts: task_counts (kept by triggers) sums to a count of the tasks per project and bucket.
- Readiness: `unmet_dependencies` is the number of dependencies not COMPLETED; dependencies
  stay inside a project and form no cycle; a soft-deleted project has no live task.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from task_service.services import Services

ACTIVE = {"ASSIGNED", "RUNNING"}
HELD = {"ASSIGNED", "RUNNING", "REVIEWING"}
FAILURE_EVENTS = {"REJECTED", "FAILED", "TIMED_OUT"}


@dataclass
class Snapshot:
    """What one check saw of the event log, to compare the next check with."""

    max_event_id: int = 0
    events_upto_max: int = 0
    events_per_task: Counter[int] = field(default_factory=Counter)


@dataclass
class Result:
    violations: list[str]
    snapshot: Snapshot
    over_limit: set[int]  # live agents above their limit (tolerated or not)


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _rows(session: Any, sql: str) -> list[Any]:
    return list((await session.execute(text(sql))).all())


def _is_claim(event: Any) -> bool:
    return event.type == "CLAIMED" or (event.type == "CREATED" and event.to_status == "ASSIGNED")


async def check(
    services: Services,
    *,
    previous: Snapshot | None = None,
    tolerate_over_limit: Collection[int] = (),
    heartbeat_timeout: float | None = None,
) -> Result:
    """Every invariant above, from the database as it is now. `previous`: the snapshot of
    the last check (append-only log). `tolerate_over_limit`: agent ids allowed above their
    limit because something other than a claim put them there (see the fuzzer)."""
    timeout = heartbeat_timeout if heartbeat_timeout is not None else services.settings.heartbeat_timeout_seconds
    async with services.read() as session:
        tasks = await _rows(
            session,
            "SELECT id, project_id, status, assignee_id, attempt, lease_expires_at, deleted_at, "
            "unmet_dependencies, available_at FROM tasks ORDER BY id",
        )
        agents = await _rows(
            session,
            "SELECT id, name, status, max_concurrent_tasks, deleted_at, last_heartbeat_at, "
            "claimed_count, completed_count, failed_count FROM agents ORDER BY id",
        )
        events = await _rows(
            session, "SELECT id, seq, task_id, type, from_status, to_status, agent_id FROM task_events ORDER BY id"
        )
        deps = await _rows(session, "SELECT task_id, depends_on_id FROM task_dependencies")
        projects = await _rows(session, "SELECT id, deleted_at FROM projects")
        kept_counts = await _rows(
            session, "SELECT project_id, bucket, SUM(n) AS n FROM task_counts GROUP BY project_id, bucket"
        )

    bad: list[str] = []
    now = datetime.now(UTC)
    task_by_id = {t.id: t for t in tasks}
    agent_by_id = {a.id: a for a in agents}
    events_of: dict[int, list[Any]] = defaultdict(list)
    for event in events:
        events_of[event.task_id].append(event)

    # Status, assignee, lease, holder, attempt, event chain.
    for t in tasks:
        where = f"task {t.id} ({t.status}, assignee {t.assignee_id})"
        holder = agent_by_id.get(t.assignee_id) if t.assignee_id is not None else None
        log = events_of.get(t.id, [])
        claims = [e for e in log if _is_claim(e)]
        if t.status == "PENDING" and t.assignee_id is not None:
            bad.append(f"{where}: PENDING with an assignee")
        if t.status in ACTIVE:
            if holder is None:
                bad.append(f"{where}: active without an assignee")
            elif holder.deleted_at is not None:
                bad.append(f"{where}: held by unregistered agent '{holder.name}'")
            if t.lease_expires_at is None:
                bad.append(f"{where}: active without a lease")
        elif t.lease_expires_at is not None:
            bad.append(f"{where}: holds a lease although not ASSIGNED or RUNNING")
        if t.status == "REVIEWING" and t.assignee_id is None:
            last = claims[-1].agent_id if claims else None
            if last is None or last in agent_by_id:
                bad.append(f"{where}: REVIEWING without an assignee while its last claimer {last} still exists")
        if t.status in HELD and t.assignee_id is not None:
            last = claims[-1].agent_id if claims else None
            if last != t.assignee_id:
                bad.append(f"{where}: held by agent {t.assignee_id} but last claimed by {last}")
        if t.attempt != len(claims):
            bad.append(f"{where}: attempt {t.attempt} but {len(claims)} claims in the log")
        if not log:
            bad.append(f"{where}: no events")
            continue
        if log[0].type != "CREATED" or log[0].from_status is not None:
            bad.append(f"{where}: first event is {log[0].type} from {log[0].from_status}, not CREATED")
        state = None
        for e in log:
            if e.to_status is None:
                continue
            if state is not None and e.from_status != state:
                bad.append(f"{where}: event {e.id} {e.type} goes {e.from_status}->{e.to_status} but it was {state}")
            state = e.to_status
        if state != t.status:
            bad.append(f"{where}: its last status event says {state}")

    # Agents: limit, presence, counters.
    active_count: Counter[int] = Counter(
        t.assignee_id for t in tasks if t.status in ACTIVE and t.deleted_at is None and t.assignee_id is not None
    )
    over_limit: set[int] = set()
    for a in agents:
        where = f"agent '{a.name}' (id {a.id}, {a.status})"
        held = active_count[a.id]
        if a.deleted_at is None and held > a.max_concurrent_tasks:
            over_limit.add(a.id)
            if a.id not in tolerate_over_limit:
                bad.append(f"{where}: holds {held} active tasks, above its limit {a.max_concurrent_tasks}")
        if a.deleted_at is not None:
            if a.status != "OFFLINE":
                bad.append(f"{where}: unregistered but not OFFLINE")
        elif a.status == "OFFLINE":
            seen = _aware(a.last_heartbeat_at)
            if seen is None or seen > now - timedelta(seconds=timeout):
                bad.append(f"{where}: OFFLINE although its heartbeat is fresh")
        elif a.status != ("BUSY" if held else "ONLINE"):
            bad.append(f"{where}: holds {held} active live tasks")
        mine = [e for e in events if e.agent_id == a.id]
        counts = {
            "claimed": sum(1 for e in mine if _is_claim(e)),
            "completed": sum(1 for e in mine if e.to_status == "COMPLETED" and e.from_status != "COMPLETED"),
            "failed": sum(1 for e in mine if e.type in FAILURE_EVENTS),
        }
        kept = {"claimed": a.claimed_count, "completed": a.completed_count, "failed": a.failed_count}
        if counts != kept:
            bad.append(f"{where}: counters {kept} but the log says {counts}")

    # The log: sequenced, append-only.
    unstamped = [e.id for e in events if e.seq is None]
    if unstamped:
        bad.append(f"events {unstamped[:10]} are not sequenced after the operation returned")
    snapshot = Snapshot(
        max_event_id=max((e.id for e in events), default=0),
        events_upto_max=len(events),
        events_per_task=Counter(e.task_id for e in events),
    )
    if previous is not None:
        kept_rows = sum(1 for e in events if e.id <= previous.max_event_id)
        if kept_rows != previous.events_upto_max:
            bad.append(
                f"the event log lost rows: {previous.events_upto_max} up to id {previous.max_event_id}, now {kept_rows}"
            )
        for task_id, count in previous.events_per_task.items():
            if snapshot.events_per_task[task_id] < count:
                bad.append(f"task {task_id}: {count} events before, {snapshot.events_per_task[task_id]} now")

    # Dependencies and readiness.
    depends_on: dict[int, set[int]] = defaultdict(set)
    for d in deps:
        depends_on[d.task_id].add(d.depends_on_id)
        a, b = task_by_id.get(d.task_id), task_by_id.get(d.depends_on_id)
        if a is None or b is None:
            bad.append(f"dependency {d.task_id} -> {d.depends_on_id} names a missing task")
        elif a.project_id != b.project_id:
            bad.append(f"dependency {d.task_id} -> {d.depends_on_id} crosses projects")
    for t in tasks:
        unmet = sum(1 for d in depends_on.get(t.id, ()) if d in task_by_id and task_by_id[d].status != "COMPLETED")
        if t.unmet_dependencies != unmet:
            bad.append(f"task {t.id}: unmet_dependencies {t.unmet_dependencies} but {unmet} dependencies not COMPLETED")
    cycle = _find_cycle(depends_on)
    if cycle:
        bad.append(f"dependency cycle {' -> '.join(map(str, cycle))}")
    deleted_projects = {p.id for p in projects if p.deleted_at is not None}
    live_in_deleted = [t.id for t in tasks if t.project_id in deleted_projects and t.deleted_at is None]
    if live_in_deleted:
        bad.append(f"tasks {live_in_deleted[:10]} are live in a deleted project")
    # Counts: what the triggers keep in task_counts equals a count of the tasks.
    expected: Counter[tuple[int, str]] = Counter()
    for t in tasks:
        if t.deleted_at is not None:
            bucket = "DELETED"
        elif t.status == "PENDING" and t.unmet_dependencies == 0 and t.available_at is None:
            bucket = "READY"
        else:
            bucket = t.status
        expected[(t.project_id, bucket)] += 1
    kept = {(c.project_id, c.bucket): int(c.n) for c in kept_counts if int(c.n) != 0}
    if kept != dict(expected):
        diff = sorted(set(kept.items()) ^ set(expected.items()))
        bad.append(f"task_counts disagree with the tasks (kept vs counted, differing entries): {diff}")

    return Result(bad, snapshot, over_limit)


def _find_cycle(graph: dict[int, set[int]]) -> list[int] | None:
    """A cycle in the dependency graph, or None (iterative depth-first search)."""
    colour: dict[int, int] = {}  # 1: on the current path, 2: done
    for root in list(graph):
        if colour.get(root):
            continue
        path: list[int] = []
        stack: list[tuple[int, Any]] = [(root, iter(sorted(graph.get(root, ()))))]
        colour[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                colour[node] = 2
            elif colour.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not colour.get(child):
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


async def assert_invariants(services: Services) -> None:
    result = await check(services)
    assert not result.violations, "\n".join(result.violations)
