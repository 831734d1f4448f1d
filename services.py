"""The long-lived parts of a running service, built once in the app's lifespan."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import QueuePool

from .db import agents as db_agents
from .db import lifecycle as db_lifecycle
from .db.base import M
from .db.base import rows_by_ids as db_rows_by_ids
from .db.driver import Driver
from .db.effects import EffectSession
from .db.health import service_counts
from .db.lifecycle import Policy
from .db.models import Agent, Task
from .db.session import READ_ONLY, Sessionmaker, create_engine, create_sessionmaker
from .db.stats import DashboardCounts, dashboard_counts
from .events.bus import CHANNEL, EventBus
from .events.fanout import FanOut
from .events.publish import Publisher, publisher_for
from .events.sequencer import Sequencer
from .events.single_flight import SingleFlight
from .events.snapshots import AgentSnapshots, TaskSnapshots
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
    sessionmaker: Sessionmaker
    bus: EventBus
    metrics: Metrics = field(default_factory=Metrics)
    sequencer: Sequencer = field(init=False)  # runs on PostgreSQL only (events/publish.py)
    publisher: Publisher = field(init=False)
    stats_hub: StatsHub[DashboardCounts] = field(init=False)
    tail: LogTail = field(init=False)
    fan_out: FanOut = field(init=False)
    snapshots: TaskSnapshots = field(init=False)
    agent_snapshots: AgentSnapshots = field(init=False)
    shared_results: SingleFlight[Any] = field(init=False)
    is_sqlite: bool = field(init=False)
    # The lease and retry rules of the lifecycle, from settings (built once, used by every
    # mutation and the reaper).
    policy: Policy = field(init=False)
    rate_limiter: RateLimiter | None = field(init=False)
    # Sessions for read(): on PostgreSQL without BEGIN and ROLLBACK (autocommit), two round
    # trips fewer per read. Nothing is lost: at READ COMMITTED each statement of a
    # transaction took its own snapshot anyway, and reads take no locks. On SQLite a DEFERRED
    # transaction (db/session.py): a snapshot read that neither waits for the writer nor
    # makes it wait.
    read_sessionmaker: Sessionmaker = field(init=False)
    # The hot statements on asyncpg's own connection (db/driver.py); None on SQLite, which
    # runs the session path.
    driver: Driver | None = field(init=False)

    def __post_init__(self) -> None:
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.read_sessionmaker = create_sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True})
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.driver = None if self.is_sqlite else Driver(self.engine)
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
        self.fan_out = FanOut(self, max_lag=self.settings.max_subscriber_lag)
        self.snapshots = TaskSnapshots(self.sessionmaker)
        self.agent_snapshots = AgentSnapshots(self.sessionmaker)
        self.shared_results = SingleFlight(capacity=1024)
        self.sequencer = self._sequencer()
        self.publisher = publisher_for(self.engine.dialect.name, self.bus, self.sequencer)

        async def compute(project_id: int | None) -> DashboardCounts:
            async with self.read() as session:
                return await dashboard_counts(session, project_id)

        self.stats_hub = StatsHub(self.bus, compute, min_interval=self.settings.stats_min_interval_seconds)

    def _sequencer(self) -> Sequencer:
        """The event sequencer. On PostgreSQL its pass is one call through the driver; when
        the bus is LISTEN/NOTIFY on this same database (the default), that call also sends
        the pass's announcement, one round trip fewer per pass (db/driver.py)."""
        driver = self.driver
        if driver is None:
            return Sequencer(self.sessionmaker, on_sequenced=self.bus.publish_horizon)
        if not self._bus_in_database():
            return Sequencer(self.sessionmaker, stamp=driver.stamp_events, on_sequenced=self.bus.publish_horizon)
        bus = self.bus

        async def stamp_and_announce() -> int:
            try:
                return await driver.stamp_events(notify=CHANNEL, announced=bus.announced)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                # The NOTIFY failed (its queue full: a listener stuck in a transaction), and
                # took the stamps with it: stamp without it, and let the bus try to announce.
                log.warning("event sequencer: announcing in the pass failed (%s); stamping without it", exc.orig)
                horizon = await driver.stamp_events()
                await bus.publish_horizon(horizon)
                return horizon

        return Sequencer(self.sessionmaker, stamp=stamp_and_announce, on_sequenced=bus.horizon_announced)

    def _bus_in_database(self) -> bool:
        """Whether the event bus is LISTEN/NOTIFY on the database the service writes to: its
        URL is the database's, scheme aside (the default when BROADCAST_URL is unset). Any
        other spelling counts as another bus: a NOTIFY sent where the bus does not listen
        would reach no process."""
        scheme, _, rest = self.bus.url.partition("://")
        return scheme in ("postgres", "postgresql") and rest == self.settings.database_url.partition("://")[2]

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
            pre_ping=settings.db_pool_pre_ping,
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
        await self.publisher.start()

    async def close(self) -> None:
        await self.publisher.stop()
        await self.fan_out.close()
        await self.tail.close()
        await self.bus.stop()
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[EffectSession]:
        """One transaction for one mutation: commit on success, roll back on error.

        The session carries the transaction's Effects (db/effects.py); once it commits, the
        publisher announces them (events/publish.py, docs/ARCHITECTURE.md "Commit to
        publish"). Its events are stamped before the caller returns, so the client that
        made a change can read its events at once. A rollback publishes nothing.
        """
        async with self.sessionmaker() as session:
            async with session.begin():
                yield session
                await self.publisher.before_commit(session)
            await self.publisher.after_commit(session.effects)

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

    async def rows_by_ids(self, model: type[M], ids: Sequence[int]) -> dict[int, M]:
        """Rows of a model (Task, Agent or Project) by id, deleted ones included: what the
        DataLoaders batch. On the driver connection on PostgreSQL (db/driver.py)."""
        if self.driver is not None:
            return await self.driver.rows_by_ids(model, ids)
        async with self.read() as session:
            return await db_rows_by_ids(session, model, ids)

    async def agent_by_token(self, token: str) -> Agent | None:
        """The live agent whose token this is, or None: every agent's authenticated request
        asks (on the driver connection on PostgreSQL)."""
        if self.driver is not None:
            return await self.driver.agent_by_token(token)
        async with self.read() as session:
            return await db_agents.agent_by_token(session, token)

    async def heartbeat(self, name: str) -> Agent:
        """The agent called `name` sends a heartbeat (db/agents.py's `touch`): its leases
        renewed, its status and heartbeat time set; its presence change published."""
        lease_seconds = self.policy.lease_seconds
        if self.driver is not None:
            agent, effects = await self.driver.heartbeat(name, lease_seconds=lease_seconds)
            await self.publisher.after_commit(effects)
            return agent
        async with self.transaction() as session:
            agent = await db_agents.require_agent(session, name, lock=True)
            await db_agents.touch(session, agent, lease_seconds=lease_seconds)
        return agent

    async def claim_next(
        self, name: str, *, project_id: int | None = None, tags: list[str] | None = None
    ) -> Task | None:
        """claimNextTask for the agent called `name`: the best ready task it may take, or
        None. On PostgreSQL one call of claim_next_task() on the driver connection (db/driver.py), on
        SQLite the ORM path (db/lifecycle.py's claim_next), with the same rules."""
        if self.driver is not None:
            task, effects = await self.driver.claim_next(name, self.policy, project_id=project_id, tags=tags)
            await self.publisher.after_commit(effects)
            return task
        async with self.transaction() as session:
            agent = await db_agents.require_agent(session, name, lock=True)
            return await db_lifecycle.claim_next(session, agent, self.policy, project_id=project_id, tags=tags)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads (see read_sessionmaker); closed (connection returned) when the
        block ends. Not for writes: on PostgreSQL each statement commits on its own."""
        async with self.read_sessionmaker() as session:
            yield session
