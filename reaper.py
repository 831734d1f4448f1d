"""The background loop: presence, leases, timeouts and purges, leader-elected.

Every process runs a Reaper; on PostgreSQL only the holder of a session-level advisory lock
does the work, so N replicas act once. If the leader dies its connection closes, the lock
is released and another process takes over at its next tick. Each step is also a
conditional change of locked rows, so even two leaders could not expire a lease twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .db import agents as db_agents
from .db.base import utcnow
from .db.counts import compact as compact_counts
from .db.dependencies import recount_and_unblock
from .db.enums import TaskEventType
from .db.health import problem
from .db.idempotency import purge_keys
from .db.leader import still_connected, try_lead
from .db.lifecycle import lock_active_tasks_unless_busy, requeue_or_fail
from .db.models import Task
from .db.projects import purge_deleted_projects
from .db.tasks import lease_overdue, leases_due, lock_task, purge_deleted, run_deadline, timeouts_due
from .observability.logs import FailureLog
from .services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Overdue:
    """A way a held task runs out of time, and what the reaper does about it."""

    event: TaskEventType
    # The unlocked scan (session, now, default timeout minutes): (task id, assignee id) of
    # the tasks that look due.
    scan: Callable[[AsyncSession, datetime, int], Awaitable[list[tuple[int, int | None]]]]
    # Checked again on the locked task (task, now, default timeout minutes): the error to
    # record, or None when it is no longer due.
    reason: Callable[[Task, datetime, int], str | None]
    # A timeout backs off and counts as the agent's failure. A lost lease means the agent
    # is gone, which is not the task's fault: requeued at once, no failure counted.
    penalise: bool


def _lease_reason(task: Task, now: datetime, _default: int) -> str | None:
    return "lease expired without renewal" if lease_overdue(task, now) else None


def _timeout_reason(task: Task, now: datetime, default: int) -> str | None:
    deadline = run_deadline(task, default)
    if deadline is None or deadline >= now:
        return None
    return f"ran longer than timeoutMinutes ({task.timeout_minutes or default})"


async def _leases_due(session: AsyncSession, now: datetime, _default: int) -> list[tuple[int, int | None]]:
    return await leases_due(session, now=now)


async def _timeouts_due(session: AsyncSession, now: datetime, default: int) -> list[tuple[int, int | None]]:
    return await timeouts_due(session, now=now, default_minutes=default)


LEASE_EXPIRY = Overdue(TaskEventType.LEASE_EXPIRED, _leases_due, _lease_reason, penalise=False)
TIMEOUT = Overdue(TaskEventType.TIMED_OUT, _timeouts_due, _timeout_reason, penalise=True)


@dataclass
class TickResult:
    offline: int = 0
    expired: int = 0
    offline_expired: int = field(default=0, compare=False)  # of `expired`: agents gone OFFLINE
    timed_out: int = 0
    purged: int = 0
    folded: int = field(default=0, compare=False)  # task_counts rows folded away (db/counts.py)


class Reaper:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self._task: asyncio.Task[None] | None = None
        self._leader_conn: AsyncConnection | None = None
        self.is_leader = False
        self.metrics = services.metrics
        self._failures = FailureLog(log, "reaper")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._resign()

    async def _run(self) -> None:
        while True:
            try:
                if await self.lead():
                    result = await self.tick()
                    self._count(result)
                    if result.offline or result.expired or result.timed_out or result.purged:
                        log.info("reaper: %s", result)
                else:
                    self.metrics.reaper_runs.labels("follower").inc()
                self._failures.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = problem(exc)
                self._failures.failed(reason, exc)
                self.metrics.reaper_runs.labels("error").inc()
                await self._resign()
            self.metrics.reaper_leader.set(int(self.is_leader))
            await asyncio.sleep(self.settings.reaper_interval_seconds)

    def _count(self, result: TickResult) -> None:
        m = self.metrics
        m.reaper_runs.labels("ok").inc()
        m.agents_offline.inc(result.offline)
        m.lease_expiries.labels("agent_offline").inc(result.offline_expired)
        m.lease_expiries.labels("lease").inc(result.expired - result.offline_expired)
        m.timeouts.inc(result.timed_out)
        m.purged.inc(result.purged)

    async def lead(self) -> bool:
        """True when this process holds (or just took) the leader lock; raises (after giving
        up the lock) when the database cannot be asked."""
        if self.services.is_sqlite:
            self.is_leader = True
            return True
        try:
            if self._leader_conn is None:
                self._leader_conn = await self.services.engine.connect()
                if not await try_lead(self._leader_conn):
                    # No lock taken on it: the connection can go back to the pool.
                    conn, self._leader_conn = self._leader_conn, None
                    await conn.close()
                    return False
                log.info("reaper: this process is the leader")
            else:
                await still_connected(self._leader_conn)
            self.is_leader = True
        except Exception:
            if self.is_leader:
                log.warning("reaper: lost the leader connection; will try again")
            await self._resign()
            raise
        return self.is_leader

    async def _resign(self) -> None:
        self.is_leader = False
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None:
            # The session-level advisory lock belongs to the database connection, and a
            # pool's reset-on-return does not release it: discard the connection instead of
            # returning it, so the lock goes with it and another process can lead.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def tick(self, now: datetime | None = None) -> TickResult:
        now = now or utcnow()
        result = TickResult()
        result.offline, result.offline_expired = await self.expire_offline_agents(now)
        result.expired = result.offline_expired + await self.expire_leases(now)
        result.timed_out = await self.time_out_tasks(now)
        result.purged = await self.purge(now)
        result.folded = await self.fold_counts()
        return result

    async def expire_offline_agents(self, now: datetime) -> tuple[int, int]:
        """Agents silent for HEARTBEAT_TIMEOUT_SECONDS go OFFLINE; their active tasks go back to
        PENDING (or FAILED when out of attempts) with LEASE_EXPIRED, in the same transaction."""
        cutoff = now - timedelta(seconds=self.settings.heartbeat_timeout_seconds)
        offline = expired = 0
        async with self.services.transaction() as session:
            for agent in await db_agents.stale_agents(session, older_than=cutoff):
                tasks = await lock_active_tasks_unless_busy(session, agent.id)
                if tasks is None:
                    continue  # a task of its is locked elsewhere: next pass
                for task in tasks:
                    await self._requeue(session, task, LEASE_EXPIRY, f"agent '{agent.name}' stopped sending heartbeats")
                expired += len(tasks)
                await db_agents.refresh_status(session, agent, now=now, offline=True)
                offline += 1
        return offline, expired

    async def expire_leases(self, now: datetime) -> int:
        """Tasks whose lease ran out although their agent looks alive (LEASE_SECONDS shorter
        than the heartbeat timeout, or an agent that heartbeats but never renews)."""
        return await self._sweep(LEASE_EXPIRY, now)

    async def time_out_tasks(self, now: datetime) -> int:
        """RUNNING tasks that ran longer than their timeoutMinutes."""
        return await self._sweep(TIMEOUT, now)

    async def _sweep(self, overdue: Overdue, now: datetime) -> int:
        """Requeue (or fail) every task `overdue` finds due: one unlocked scan, then one short
        transaction per task that locks its agent and the task (the claim order) and checks
        again, since a heartbeat or a transition may have committed since the scan."""
        default = self.settings.default_task_timeout_minutes
        async with self.services.read() as session:
            due = await overdue.scan(session, now, default)
        count = 0
        for task_id, agent_id in due:
            async with self.services.transaction() as session:
                # Rows another transaction holds are left for a later pass: waiting would
                # stall every other expiry behind, say, a long-running admin session.
                agent = await db_agents.lock_agent_by_id(session, agent_id, skip_locked=True) if agent_id else None
                task = await lock_task(session, task_id, skip_locked=True)
                if task is None or task.assignee_id != agent_id or (agent_id and agent is None):
                    continue
                reason = overdue.reason(task, now, default)
                if reason is None:
                    continue
                await self._requeue(session, task, overdue, reason)
                if agent is not None:
                    await db_agents.refresh_status(session, agent, now=now)
                count += 1
        return count

    async def _requeue(self, session: AsyncSession, task: Task, overdue: Overdue, reason: str) -> None:
        await requeue_or_fail(
            session,
            task,
            self.services.policy,
            event=overdue.event,
            error=reason,
            backoff=overdue.penalise,
            count_failure=overdue.penalise,
            actor="reaper",
        )

    async def fold_counts(self) -> int:
        """Fold task_counts' delta rows into one per project and bucket (db/counts.py)."""
        async with self.services.transaction() as session:
            return await compact_counts(session)

    async def purge(self, now: datetime) -> int:
        """Erase rows soft-deleted before the retention window, and old idempotency keys."""
        keep = now - timedelta(days=self.settings.soft_delete_retention_days)
        async with self.services.transaction() as session:
            purged, dependents = await purge_deleted(session, older_than=keep)
            await recount_and_unblock(session, dependents, actor="reaper")
            purged += await purge_deleted_projects(session, older_than=keep)
            purged += await db_agents.purge_deleted_agents(session, older_than=keep)
            await purge_keys(session, older_than=now - timedelta(hours=self.settings.idempotency_retention_hours))
        return purged
