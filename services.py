"""The long-lived parts of a running service, built once in the app's lifespan."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import QueuePool

from .db.agents import PresenceChange
from .db.events import stamp_events
from .db.health import service_counts
from .db.lifecycle import Policy
from .db.session import create_engine, create_sessionmaker
from .db.stats import DashboardCounts, dashboard_counts
from .events.bus import EventBus
from .events.sequencer import Sequencer
from .events.single_flight import SingleFlight
from .events.snapshots import TaskSnapshots
from .events.stats_hub import StatsHub
from .events.tail import LogTail
from .observability.metrics import Metrics, PoolUsage, Snapshot
from .ratelimit import RateLimiter
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    bus: EventBus
    metrics: Metrics = field(default_factory=Metrics)
    sequencer: Sequencer = field(init=False)
    stats_hub: StatsHub[DashboardCounts] = field(init=False)
    tail: LogTail = field(init=False)
    snapshots: TaskSnapshots = field(init=False)
    shared_results: SingleFlight[Any] = field(init=False)
    is_sqlite: bool = field(init=False)
    # The lease and retry rules of the lifecycle, from settings (built once, used by every
    # mutation and the reaper).
    policy: Policy = field(init=False)
    rate_limiter: RateLimiter | None = field(init=False)

    def __post_init__(self) -> None:
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.policy = Policy(
            lease_seconds=self.settings.lease,
            backoff_seconds=self.settings.retry_backoff_seconds,
            backoff_max_seconds=self.settings.retry_backoff_max_seconds,
        )
        limit = self.settings.rate_limit
        self.rate_limiter = (
            RateLimiter(limit, self.settings.rate_limit_storage_url, namespace=self._database_key()) if limit else None
        )
        self.tail = LogTail(self.sessionmaker)
        self.snapshots = TaskSnapshots(self.sessionmaker)
        self.shared_results = SingleFlight(capacity=1024)
        self.sequencer = Sequencer(self.sessionmaker, on_sequenced=self.bus.publish_horizon)

        async def compute(project_id: int | None) -> DashboardCounts:
            async with self.read() as session:
                return await dashboard_counts(session, project_id)

        self.stats_hub = StatsHub(self.bus, compute, min_interval=self.settings.stats_min_interval_seconds)

    def _database_key(self) -> str:
        """A short stable name for the database this service runs on (its host, port and
        name; never the password)."""
        url = self.engine.url
        return hashlib.sha256(f"{url.host}:{url.port}/{url.database}".encode()).hexdigest()[:16]

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> Services:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            statement_timeout_seconds=settings.statement_timeout_seconds,
        )
        bus = EventBus(settings.effective_broadcast_url)
        return cls(settings, engine, create_sessionmaker(engine), bus, metrics or Metrics())

    async def start(self) -> None:
        try:
            await self.bus.start()
        except Exception as exc:
            # The service still works without live updates; the bus watchdog keeps trying.
            log.error("event bus %s is unreachable (%s); live updates wait for it", self.bus.url, exc)
            self.bus.start_watchdog()
        if not self.is_sqlite:
            self.sequencer.start()

    async def close(self) -> None:
        await self.sequencer.stop()
        await self.bus.stop()
        await self.engine.dispose()

    async def _after_commit(self, session: AsyncSession, horizon: int | None) -> None:
        if session.info.get("events_written"):
            if self.is_sqlite:
                if horizon:
                    await self.bus.publish_horizon(horizon)
            else:
                await self.sequencer.sync()
        changes: list[PresenceChange] = session.info.get("presence", [])
        for change in changes:
            await self.bus.publish_presence(
                {
                    "agentId": change.agent_id,
                    "name": change.name,
                    "previous": change.previous,
                    "status": change.status,
                    "at": change.at.isoformat(),
                }
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction for one mutation: commit on success, roll back on error.

        Events written in it are stamped before the caller returns, so the client that
        made a change can read its events at once.
        """
        async with self.sessionmaker() as session:
            horizon = None
            async with session.begin():
                yield session
                if self.is_sqlite and session.info.get("events_written"):
                    await session.flush()  # the stamp is raw SQL: pending event rows first
                    horizon = await stamp_events(session)
            await self._after_commit(session, horizon)

    async def metrics_snapshot(self) -> Snapshot:
        """The scrape-time values of /metrics: one query for the database's counts, the rest
        read from this process's pool and bus."""
        snapshot = Snapshot(
            database_up=False,
            bus_connected=self.bus.connected,
            bus_reconnects=self.bus.reconnects,
            bus_listeners=self.bus.listener_count,
        )
        pool = self.engine.pool
        if isinstance(pool, QueuePool):
            snapshot.pool = PoolUsage(
                size=pool.size(),
                open=pool.checkedin() + pool.checkedout(),
                checked_out=pool.checkedout(),
                overflow=max(pool.overflow(), 0),
            )
        try:
            async with self.read() as session:
                snapshot.tasks, snapshot.ready_tasks, snapshot.agents = await service_counts(session)
        except Exception as exc:  # the gauge task_service_database_up says it; /health says why
            log.debug("metrics: cannot read the database: %s", type(exc).__name__)
        else:
            snapshot.database_up = True
        return snapshot

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; closed (connection returned) when the block ends."""
        async with self.sessionmaker() as session:
            yield session
