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
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import agents as db_agents
from .db.base import utcnow
from .db.dependencies import recount_and_unblock
from .db.enums import ACTIVE_STATUSES, TaskEventType, TaskStatus
from .db.health import problem
from .db.idempotency import purge_keys
from .db.lifecycle import Policy, lock_active_tasks, requeue_or_fail
from .db.models import Agent, Project, Task
from .db.tasks import purge_deleted
from .observability.logs import FailureLog
from .services import Services

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x7A5C_0002


@dataclass
class TickResult:
    offline: int = 0
    expired: int = 0
    offline_expired: int = field(default=0, compare=False)  # of `expired`: agents gone OFFLINE
    timed_out: int = 0
    purged: int = 0


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
                got = await self._leader_conn.scalar(select(func.pg_try_advisory_lock(LEADER_LOCK_KEY)))
                await self._leader_conn.commit()
                if not got:
                    # No lock taken on it: the connection can go back to the pool.
                    conn, self._leader_conn = self._leader_conn, None
                    await conn.close()
                    return False
                log.info("reaper: this process is the leader")
            else:
                await self._leader_conn.scalar(select(1))
                await self._leader_conn.commit()
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

    def policy(self) -> Policy:
        s = self.settings
        return Policy(s.lease, s.retry_backoff_seconds, s.retry_backoff_max_seconds)

    async def tick(self, now: datetime | None = None) -> TickResult:
        now = now or utcnow()
        result = TickResult()
        result.offline, result.offline_expired = await self.expire_offline_agents(now)
        result.expired = result.offline_expired + await self.expire_leases(now)
        result.timed_out = await self.time_out_tasks(now)
        result.purged = await self.purge(now)
        return result

    async def expire_offline_agents(self, now: datetime) -> tuple[int, int]:
        """Agents silent for HEARTBEAT_TIMEOUT_SECONDS go OFFLINE; their active tasks go back to
        PENDING (or FAILED when out of attempts) with LEASE_EXPIRED, in the same transaction."""
        cutoff = now - timedelta(seconds=self.settings.heartbeat_timeout_seconds)
        offline = expired = 0
        async with self.services.transaction() as session:
            for agent in await db_agents.stale_agents(session, older_than=cutoff):
                tasks = await lock_active_tasks(session, agent.id)
                for task in tasks:
                    await self._expire(session, task, f"agent '{agent.name}' stopped sending heartbeats")
                expired += len(tasks)
                await db_agents.refresh_status(session, agent, now=now, offline=True)
                offline += 1
        return offline, expired

    async def expire_leases(self, now: datetime) -> int:
        """Tasks whose lease ran out although their agent looks alive (LEASE_SECONDS shorter
        than the heartbeat timeout, or an agent that heartbeats but never renews)."""
        async with self.services.read() as session:
            due = (
                await session.execute(
                    select(Task.id, Task.assignee_id)
                    .where(Task.status.in_(ACTIVE_STATUSES), Task.lease_expires_at < now)
                    .limit(500)
                )
            ).all()
        count = 0
        for task_id, agent_id in due:
            async with self.services.transaction() as session:
                agent = await db_agents.lock_agent_by_id(session, agent_id) if agent_id else None
                task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
                if task is None or task.status not in ACTIVE_STATUSES or task.assignee_id != agent_id:
                    continue
                if task.lease_expires_at is None or task.lease_expires_at >= now:
                    continue
                await self._expire(session, task, "lease expired without renewal")
                if agent is not None:
                    await db_agents.refresh_status(session, agent, now=now)
                count += 1
        return count

    async def _expire(self, session, task: Task, reason: str) -> None:  # type: ignore[no-untyped-def]
        # A dead agent is not the task's fault: no backoff, so another agent can take it at once.
        await requeue_or_fail(
            session,
            task,
            self.policy(),
            event=TaskEventType.LEASE_EXPIRED,
            error=reason,
            backoff=False,
            count_failure=False,
            actor="reaper",
        )

    async def time_out_tasks(self, now: datetime) -> int:
        async with self.services.read() as session:
            running = (
                await session.execute(
                    select(Task.id, Task.assignee_id, Task.started_at, Task.timeout_minutes).where(
                        Task.status == TaskStatus.RUNNING.value, Task.deleted_at.is_(None)
                    )
                )
            ).all()
        default = self.settings.default_task_timeout_minutes
        late = [
            (task_id, agent_id)
            for task_id, agent_id, started, minutes in running
            if started is not None and started + timedelta(minutes=minutes or default) < now
        ]
        count = 0
        for task_id, agent_id in late:
            async with self.services.transaction() as session:
                agent = await db_agents.lock_agent_by_id(session, agent_id) if agent_id else None
                task = await session.scalar(select(Task).where(Task.id == task_id).with_for_update())
                if task is None or task.status != TaskStatus.RUNNING or task.started_at is None:
                    continue
                minutes = task.timeout_minutes or default
                await requeue_or_fail(
                    session,
                    task,
                    self.policy(),
                    event=TaskEventType.TIMED_OUT,
                    error=f"ran longer than timeoutMinutes ({minutes})",
                    actor="reaper",
                )
                if agent is not None:
                    await db_agents.refresh_status(session, agent, now=now)
                count += 1
        return count

    async def purge(self, now: datetime) -> int:
        """Erase rows soft-deleted before the retention window, and old idempotency keys."""
        keep = now - timedelta(days=self.settings.soft_delete_retention_days)
        async with self.services.transaction() as session:
            purged, dependents = await purge_deleted(session, older_than=keep)
            await recount_and_unblock(session, dependents, actor="reaper")
            projects = await session.execute(delete(Project).where(Project.deleted_at < keep))
            agents = await session.execute(delete(Agent).where(Agent.deleted_at < keep))
            purged += (projects.rowcount or 0) + (agents.rowcount or 0)
            await purge_keys(session, older_than=now - timedelta(hours=self.settings.idempotency_retention_hours))
        return purged
