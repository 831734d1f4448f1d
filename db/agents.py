"""Agents: registration, heartbeats, presence status, unregister and restore."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import NotFound
from .base import rowcount, utcnow
from .effects import PresenceChange, effects_of
from .enums import ACTIVE_STATUSES, HELD_STATUSES, AgentStatus
from .models import Agent, Task


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "tsa_" + secrets.token_urlsafe(32)


def note_presence(session: AsyncSession, change: PresenceChange) -> None:
    """Note a status change in the transaction's Effects; it is published after commit."""
    effects_of(session).presence.append(change)


async def get_agent(session: AsyncSession, name: str) -> Agent | None:
    return await session.scalar(select(Agent).where(Agent.name == name))


async def get_agent_by_id(session: AsyncSession, agent_id: int) -> Agent | None:
    return await session.get(Agent, agent_id)


async def agent_by_token(session: AsyncSession, token: str) -> Agent | None:
    """The live agent whose token this is, or None (unknown, rotated or revoked token).

    Only the token's SHA-256 is stored: the token is 256 random bits, so a fast hash is
    enough, and a lookup by hash reveals nothing about other tokens.
    """
    return await session.scalar(select(Agent).where(Agent.token_hash == hash_token(token), Agent.deleted_at.is_(None)))


def not_registered(name: str) -> NotFound:
    """The error for an agent name that names no live agent."""
    return NotFound(f"agent '{name}' is not registered (or was unregistered); call registerAgent first")


async def require_agent(session: AsyncSession, name: str, *, lock: bool = False) -> Agent:
    """The live agent called `name`, optionally locked (FOR UPDATE), or NotFound."""
    query = select(Agent).where(Agent.name == name)
    if lock:
        query = query.with_for_update()
    agent = await session.scalar(query)
    if agent is None or agent.deleted_at is not None:
        raise not_registered(name)
    return agent


async def lock_agent_by_id(session: AsyncSession, agent_id: int, *, skip_locked: bool = False) -> Agent | None:
    """The agent locked FOR UPDATE; None when it does not exist (or, with `skip_locked`, when
    another transaction holds it: no wait)."""
    return await session.scalar(select(Agent).where(Agent.id == agent_id).with_for_update(skip_locked=skip_locked))


async def list_agents(
    session: AsyncSession,
    *,
    status: str | None = None,
    skill: str | None = None,
    include_deleted: bool = False,
) -> list[Agent]:
    query = select(Agent).order_by(Agent.name)
    if status is not None:
        query = query.where(Agent.status == status)
    if not include_deleted:
        query = query.where(Agent.deleted_at.is_(None))
    rows = list((await session.scalars(query)).all())
    if skill is not None:
        rows = [row for row in rows if skill in (row.skills or [])]
    return rows


async def register_agent(
    session: AsyncSession,
    *,
    name: str,
    role: str | None,
    skills: list[str] | None,
    capabilities: Any,
    max_concurrent_tasks: int | None,
    default_max_concurrent: int,
) -> tuple[Agent, str]:
    """Create or update the agent called `name` (restoring it if unregistered), rotate its
    token and count the call as a heartbeat. Returns the agent and the new token."""
    token = new_token()
    now = utcnow()
    agent = await session.scalar(select(Agent).where(Agent.name == name).with_for_update())
    created = agent is None
    if agent is None:
        agent = Agent(
            name=name,
            role=role,
            skills=sorted(set(skills or [])),
            capabilities=capabilities,
            max_concurrent_tasks=max_concurrent_tasks or default_max_concurrent,
            status=AgentStatus.ONLINE.value,
            registered_at=now,
        )
        session.add(agent)
    else:
        agent.role = role if role is not None else agent.role
        if skills is not None:
            agent.skills = sorted(set(skills))
        if capabilities is not None:
            agent.capabilities = capabilities
        if max_concurrent_tasks is not None:
            agent.max_concurrent_tasks = max_concurrent_tasks
        agent.deleted_at = None
    agent.token_hash = hash_token(token)
    agent.last_heartbeat_at = now
    await session.flush()
    await refresh_status(session, agent, now=now, new=created)
    return agent, token


async def touch(session: AsyncSession, agent: Agent, *, lease_seconds: float) -> None:
    """A heartbeat: note the time, renew the leases of the agent's active tasks and set its
    status (the caller holds the agent row's lock). One statement: the lease renewal returns
    the active tasks, which say whether the agent is BUSY (refresh_status without its count)."""
    await session.flush()  # the caller's changes to tasks first: they decide the status
    now = utcnow()
    renewed = await session.execute(
        update(Task)
        .where(Task.assignee_id == agent.id, Task.status.in_(ACTIVE_STATUSES))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Task.deleted_at),
        execution_options={"synchronize_session": False},
    )
    busy = any(deleted_at is None for (deleted_at,) in renewed)
    agent.last_heartbeat_at = now  # flushed with the status, at commit
    _set_status(session, agent, busy=busy, now=now)


async def count_outcome(session: AsyncSession, agent_id: int, outcome: Literal["completed", "failed"]) -> None:
    """Add one to the agent's completed (or failed) task count, in one UPDATE that needs no
    lock on the agent row (the counters only ever grow)."""
    column = Agent.completed_count if outcome == "completed" else Agent.failed_count
    await session.execute(
        update(Agent).where(Agent.id == agent_id).values({column: column + 1}),
        execution_options={"synchronize_session": False},
    )


async def active_task_count(session: AsyncSession, agent_id: int) -> int:
    return (
        await session.scalar(
            select(func.count())
            .select_from(Task)
            .where(Task.assignee_id == agent_id, Task.status.in_(ACTIVE_STATUSES), Task.deleted_at.is_(None))
        )
    ) or 0


async def refresh_status(
    session: AsyncSession,
    agent: Agent,
    *,
    now: datetime | None = None,
    offline: bool = False,
    new: bool = False,
) -> None:
    """Recompute the agent's status (the caller holds the agent row's lock) and note a
    presence change when it differs. `offline=True` forces OFFLINE (reaper, unregister);
    `new=True` reports a just-registered agent as a change from nothing."""
    await session.flush()
    busy = not offline and agent.deleted_at is None and await active_task_count(session, agent.id) > 0
    _set_status(session, agent, busy=busy, offline=offline, new=new, now=now)


def _set_status(
    session: AsyncSession,
    agent: Agent,
    *,
    busy: bool,
    offline: bool = False,
    new: bool = False,
    now: datetime | None = None,
) -> None:
    """OFFLINE when forced or unregistered, else BUSY or ONLINE; a change is noted."""
    if offline or agent.deleted_at is not None:
        status = AgentStatus.OFFLINE
    elif busy:
        status = AgentStatus.BUSY
    else:
        status = AgentStatus.ONLINE
    before = None if new else agent.status
    agent.status = status.value
    if before != status.value:
        note_presence(session, PresenceChange(agent.id, agent.name, before, status.value, now or utcnow()))


async def held_tasks(session: AsyncSession, agent_ids: Sequence[int]) -> dict[int, list[Task]]:
    """ASSIGNED, RUNNING or REVIEWING live tasks of each agent."""
    rows = await session.scalars(
        select(Task)
        .where(Task.assignee_id.in_(agent_ids), Task.status.in_(HELD_STATUSES), Task.deleted_at.is_(None))
        .order_by(Task.id)
    )
    grouped: dict[int, list[Task]] = {agent_id: [] for agent_id in agent_ids}
    for row in rows:
        grouped[row.assignee_id].append(row)  # type: ignore[index]
    return grouped


async def stale_agents(session: AsyncSession, *, older_than: datetime) -> Sequence[Agent]:
    """Live agents not OFFLINE whose last heartbeat is older than `older_than`, locked."""
    return (
        await session.scalars(
            select(Agent)
            .where(
                Agent.status != AgentStatus.OFFLINE.value,
                Agent.deleted_at.is_(None),
                Agent.last_heartbeat_at < older_than,
            )
            .order_by(Agent.id)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def soft_delete_agent(session: AsyncSession, agent: Agent) -> None:
    """Unregister `agent` (locked by the caller): its token stops working and it goes OFFLINE.
    The caller releases its tasks first (db/lifecycle.py's release_all)."""
    agent.deleted_at = agent.deleted_at or utcnow()
    agent.token_hash = None
    await refresh_status(session, agent, offline=True)


async def hard_delete_agent(session: AsyncSession, agent_id: int) -> None:
    """Erase the agent row; its tasks' assignee becomes null (ON DELETE SET NULL)."""
    await session.execute(delete(Agent).where(Agent.id == agent_id))


async def restore_agent(session: AsyncSession, agent: Agent) -> None:
    """Undo an unregister of `agent` (locked by the caller), counting it as a heartbeat; a
    live agent is left as it is."""
    if agent.deleted_at is not None:
        agent.deleted_at = None
        agent.last_heartbeat_at = utcnow()
        await refresh_status(session, agent)


async def purge_deleted_agents(session: AsyncSession, *, older_than: datetime) -> int:
    """Erase agents unregistered before `older_than`; returns how many."""
    return rowcount(await session.execute(delete(Agent).where(Agent.deleted_at < older_than)))
