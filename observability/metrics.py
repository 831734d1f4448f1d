"""The service's Prometheus metrics: every definition in one place, handed down to the parts
that count (Services carries one `Metrics`; nothing below imports it from above).

Counters and histograms move where things happen, one increment each, never a query. What
describes the database (tasks by status, ready tasks, agents by status) and this process's
pool and bus is read when Prometheus scrapes: the /metrics route gathers a `Snapshot` (one
statement) and `render` writes it out with the rest. Every Metrics has its own registry, so
two apps in one process (tests) never mix their numbers; each process (uvicorn worker,
replica) reports its own counters, and the database gauges are the same from any of them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Operation names come from clients: past this many distinct ones, new names are counted
# as "other" so a client cannot grow the metrics without bound.
MAX_OPERATION_NAMES = 200
_OPERATION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class PoolUsage:
    size: int
    open: int
    checked_out: int
    overflow: int


@dataclass
class Snapshot:
    """What /metrics reads at scrape time. `tasks` and `agents` map statuses to counts and
    are empty when the database could not be read (then `database_up` is False)."""

    database_up: bool
    tasks: dict[str, int] = field(default_factory=dict)
    ready_tasks: int = 0
    agents: dict[str, int] = field(default_factory=dict)
    pool: PoolUsage | None = None
    bus_connected: bool = False
    bus_reconnects: int = 0
    bus_listeners: int = 0


class _SnapshotCollector:
    """Yields the gauges of the latest Snapshot (set just before each render)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        yield _gauge("task_service_database_up", "1 when the last scrape could read the database", s.database_up)
        if s.database_up:
            tasks = GaugeMetricFamily("task_service_tasks", "Live (not deleted) tasks by status", labels=["status"])
            for status, count in sorted(s.tasks.items()):
                tasks.add_metric([status], count)
            yield tasks
            yield _gauge("task_service_tasks_ready", "PENDING tasks that can be claimed now", s.ready_tasks)
            agents = GaugeMetricFamily("task_service_agents", "Live agents by status", labels=["status"])
            for status, count in sorted(s.agents.items()):
                agents.add_metric([status], count)
            yield agents
        if s.pool is not None:
            yield _gauge("task_service_db_pool_size", "DB_POOL_SIZE: connections the pool may keep", s.pool.size)
            yield _gauge("task_service_db_pool_open", "Connections open now (idle or in use)", s.pool.open)
            yield _gauge("task_service_db_pool_checked_out", "Connections in use", s.pool.checked_out)
            yield _gauge("task_service_db_pool_overflow", "Connections open beyond the pool size", s.pool.overflow)
        yield _gauge("task_service_bus_connected", "1 while the event bus listens", s.bus_connected)
        yield _gauge("task_service_bus_listeners", "Local subscribers registered with the bus", s.bus_listeners)
        reconnects = GaugeMetricFamily(
            "task_service_bus_reconnects", "Times the event bus reconnected since the process started"
        )
        reconnects.add_metric([], s.bus_reconnects)
        yield reconnects


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class Metrics:
    def __init__(self, version: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "task_service_graphql_requests",
            "GraphQL queries and mutations by operation name, type and outcome (ok or the error code)",
            ["operation", "type", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "task_service_graphql_request_duration_seconds",
            "Time to answer a GraphQL query or mutation, by operation name, type and outcome (ok or error)",
            ["operation", "type", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.claims = Counter("task_service_claims", "Tasks claimed, by mutation", ["via"], registry=r)
        self.claims_empty = Counter(
            "task_service_claim_next_empty", "claimNextTask calls that found no task for the agent", registry=r
        )
        self.lease_expiries = Counter(
            "task_service_lease_expiries",
            "Tasks taken back by the reaper because their lease ran out (reason: agent_offline or lease)",
            ["reason"],
            registry=r,
        )
        self.timeouts = Counter("task_service_task_timeouts", "RUNNING tasks timed out by the reaper", registry=r)
        self.agents_offline = Counter(
            "task_service_agents_marked_offline", "Agents the reaper marked OFFLINE for missing heartbeats", registry=r
        )
        self.purged = Counter("task_service_rows_purged", "Soft-deleted rows erased after retention", registry=r)
        self.reaper_runs = Counter(
            "task_service_reaper_runs",
            "Reaper passes by outcome: ok, error, or follower (another process leads)",
            ["outcome"],
            registry=r,
        )
        self.reaper_leader = Gauge(
            "task_service_reaper_leader", "1 while this process is the reaper's leader", registry=r
        )
        self.subscriptions_open = Gauge(
            "task_service_subscriptions_open", "Subscriptions running in this process", ["subscription"], registry=r
        )
        self.events_delivered = Counter(
            "task_service_subscription_events_delivered",
            "Events (results) sent to subscribers, by subscription field",
            ["subscription"],
            registry=r,
        )
        self.events_dropped = Counter(
            "task_service_subscription_events_dropped",
            "Events a subscriber did not get live: lag (ended too far behind; it resumes with after) "
            "or overflow (presence changes replaced by a fresh snapshot)",
            ["subscription", "reason"],
            registry=r,
        )
        build = Gauge("task_service_build_info", "The running version", ["version"], registry=r)
        build.labels(version).set(1)
        ProcessCollector(registry=r)
        self._snapshot = _SnapshotCollector()
        r.register(self._snapshot)
        self._names: set[str] = set()
        self._render_lock = threading.Lock()

    def operation_label(self, name: str | None) -> str:
        """The operation name as a label: "anonymous" when unnamed, "other" when malformed or
        when MAX_OPERATION_NAMES names are already in use."""
        if not name:
            return "anonymous"
        if name in self._names:
            return name
        if len(self._names) >= MAX_OPERATION_NAMES or not _OPERATION_NAME.fullmatch(name):
            return "other"
        self._names.add(name)
        return name

    def observe_request(self, operation: str, operation_type: str, outcome: str, seconds: float) -> None:
        self.requests.labels(operation, operation_type, outcome).inc()
        self.request_seconds.labels(operation, operation_type, "ok" if outcome == "ok" else "error").observe(seconds)

    def render(self, snapshot: Snapshot) -> bytes:
        """The Prometheus text exposition, with `snapshot` as the scrape-time gauges."""
        with self._render_lock:
            self._snapshot.snapshot = snapshot
            return generate_latest(self.registry)
