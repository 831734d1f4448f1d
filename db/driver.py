"""The hottest statements on PostgreSQL, on asyncpg's own connection (docs/ARCHITECTURE.md,
"Claiming and the hot paths").

A read of one task by id costs about 570 µs of CPU through an ORM session and 180 µs as the
same SELECT on the asyncpg connection under it (bench/PROFILE.md); a heartbeat is five
round trips through the unit of work. Here the DataLoaders' rows by id, the heartbeat (one
call of migration 0004's heartbeat_agent()), claimNextTask (one call of migration 0005's
claim_next_task()) and the event sequencer's pass (migration 0006's stamp_events()) run as
prepared statements on a connection
borrowed from the engine's own pool (same size, same pre-ping, same statement timeout), and
come back as the ORM's model instances, filled without the ORM's per-row machinery, so every
caller above sees the same types.
SQLite keeps the session path (services.Services chooses once).

Failures look like the ORM's: a driver error is raised as SQLAlchemy's DBAPIError around
the asyncpg exception (its SQLSTATE is found as before: a statement timeout or an
unreachable database is still a retryable error), and a connection that failed or was
interrupted mid-statement is closed instead of going back to the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import instrumentation

from .agents import hash_token, not_registered
from .base import Base, M, utcnow
from .effects import Effects, PresenceChange, WrittenEvent
from .enums import ACTIVE_STATUSES, AgentStatus, TaskEventType
from .events import SEQUENCER_LOCK_KEY
from .lifecycle import Policy, limit_reached
from .models import Agent, Project, Task

# Client-side failures that leave the connection gone or in an unknown state.
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_ACTIVE = [status.value for status in ACTIVE_STATUSES]
# The pass, and the bus's "seq" message (events/bus.py) as a NOTIFY when the horizon moved
# past what the bus already carried.
_STAMP_AND_NOTIFY = (
    "SELECT h, CASE WHEN h > $3 THEN pg_notify($2, json_build_object('k', 'seq', 'n', h)::text) END "
    "FROM stamp_events($1) AS h"
)
_BUSY, _ONLINE = AgentStatus.BUSY.value, AgentStatus.ONLINE.value


class _Table:
    """One model's columns, its SELECT by ids, and how to make instances from records."""

    def __init__(self, model: type[M]):
        mapper = model.__mapper__
        self.attributes = [(prop.key, prop.columns[0].name) for prop in mapper.column_attrs]
        self.keys = tuple(key for key, _name in self.attributes)
        self.column_names = [name for _key, name in self.attributes]
        self.columns = ", ".join(self.column_names)
        # Built from the models' own names, never from input (here and below).
        self.by_ids = f"SELECT {self.columns} FROM {model.__tablename__} WHERE id = ANY($1::bigint[])"  # noqa: S608
        self.manager = instrumentation.manager_of_class(model)

    def instance(self, record: asyncpg.Record) -> Any:
        """A model instance holding the record's values, attached to no session: reading its
        columns reads them from its __dict__ (the ORM's own loading costs ten times more)."""
        return self.from_values(record.values())

    def from_values(self, values: Any) -> Any:
        """instance() from the column values, in the order of `columns`."""
        obj = self.manager.new_instance()
        obj.__dict__.update(zip(self.keys, values, strict=True))
        return obj


class Driver:
    """The hot statements on PostgreSQL's driver connection (see the module docstring)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self._dbapi_error: Any = engine.dialect.loaded_dbapi.Error  # the driver adapter's PEP 249 base
        self.tables: dict[type[Base], _Table] = {model: _Table(model) for model in (Task, Agent, Project)}
        agent = self.tables[Agent]
        self._by_token = f"SELECT {agent.columns} FROM agents WHERE token_hash = $1 AND deleted_at IS NULL"  # noqa: S608
        # heartbeat_agent() (migration 0004) locks the agent, then renews its leases and sets its
        # status in a second statement, whose snapshot is taken after any claim that held the
        # agent has committed (so its task is renewed and counted), in one round trip.
        touched = ", ".join(f"(h.agent).{name}" for name in agent.column_names)
        self._heartbeat = f"SELECT (h.previous).status, {touched} FROM heartbeat_agent($1, $2, $3, $4, $5, $6) AS h"  # noqa: S608
        # claim_next_task() (migration 0005) locks the agent, then counts its active tasks, then
        # claims (docs/ARCHITECTURE.md, "Claiming"), each with a fresh snapshot, in one round trip.
        claimed = ", ".join(f"(c.task).{name}" for name in self.tables[Task].column_names)
        self._claim = (
            "SELECT (c.agent).id, (c.agent).status, (c.agent).deleted_at, (c.agent).max_concurrent_tasks, c.active,"  # noqa: S608
            f" {claimed} FROM claim_next_task($1, $2, $3, $4, $5, $6) AS c"
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection from the engine's pool, returned when the block ends; closed
        instead when a statement failed on the connection or was interrupted."""
        try:
            proxied = await self.engine.raw_connection()
        except self._dbapi_error as exc:
            # What SQLAlchemy's Connection raises for a failed checkout (a refused, starting
            # or full database): its DBAPIError class of the same name.
            invalidated = self.engine.dialect.is_disconnect(exc, None, None)
            raise DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=invalidated, dialect=self.engine.dialect
            ) from exc
        broken = False
        try:
            yield proxied.driver_connection
        except asyncpg.PostgresError as exc:
            # A connection exception (08...) or an operator intervention (57P..: shutdown)
            # ends the connection; anything else (a constraint, a timeout) leaves it usable.
            broken = (exc.sqlstate or "").startswith(("08", "57P"))
            raise (OperationalError if broken else DBAPIError)(None, None, exc, connection_invalidated=broken) from exc
        except _CONNECTION_ERRORS as exc:
            broken = True
            raise OperationalError(None, None, exc, connection_invalidated=True) from exc
        except Exception:
            raise  # raised by the caller between statements (NotFound...): the connection is fine
        except BaseException:
            broken = True  # cancelled, perhaps mid-statement: the connection's state is unknown
            raise
        finally:
            if broken:
                proxied.invalidate()  # closes it and gives its place in the pool back
            else:
                proxied.close()

    async def rows_by_ids(self, model: type[M], ids: Sequence[int]) -> dict[int, M]:
        """The rows of `model` with these ids (deleted ones included), by id."""
        table = self.tables[model]
        async with self.connection() as conn:
            records = await conn.fetch(table.by_ids, list(ids))
        return {record["id"]: table.instance(record) for record in records}

    async def agent_by_token(self, token: str) -> Agent | None:
        """db/agents.py's agent_by_token: the live agent whose token this is, or None."""
        async with self.connection() as conn:
            record = await conn.fetchrow(self._by_token, hash_token(token))
        return None if record is None else self.tables[Agent].instance(record)

    async def heartbeat(self, name: str, *, lease_seconds: float) -> tuple[Agent, Effects]:
        """db/agents.py's `touch` for the agent called `name`, in one round trip: the
        heartbeat_agent() function locks the agent, then renews its leases and sets its status
        and heartbeat.
        NotFound for an unknown or unregistered agent. The caller publishes the Effects."""
        now = utcnow()
        async with self.connection() as conn:
            record = await conn.fetchrow(
                self._heartbeat, name, now + timedelta(seconds=lease_seconds), _ACTIVE, now, _BUSY, _ONLINE
            )
        if record is None:
            raise not_registered(name)
        previous, *values = record.values()
        agent: Agent = self.tables[Agent].from_values(values)
        effects = Effects()
        if agent.status != previous:
            effects.presence.append(PresenceChange(agent.id, agent.name, previous, agent.status, now))
        return agent, effects

    async def stamp_events(self, *, notify: str | None = None, announced: int = 0) -> int:
        """The event sequencer's pass (db/events.py's stamp_events) in one round trip: one
        call of the stamp_events() function (migration 0006). Returns the horizon.

        With `notify`, the event bus's LISTEN/NOTIFY channel on this same database, the pass
        also announces a horizon above `announced` with a NOTIFY of the bus's own message, in
        the same round trip and transaction: the message is sent when the stamps commit,
        while the sequencer lock is still held, so announcements leave in stamp order."""
        async with self.connection() as conn:
            if notify is None:
                horizon: int = await conn.fetchval("SELECT stamp_events($1)", SEQUENCER_LOCK_KEY)
            else:
                horizon = await conn.fetchval(_STAMP_AND_NOTIFY, SEQUENCER_LOCK_KEY, notify, announced)
        return horizon

    async def claim_next(
        self, name: str, policy: Policy, *, project_id: int | None = None, tags: list[str] | None = None
    ) -> tuple[Task | None, Effects]:
        """claimNextTask for the agent called `name`: lifecycle.claim_next's rules in one call
        of the claim_next_task() function (docs/ARCHITECTURE.md, "Claiming"). NotFound for an
        unknown or unregistered agent, LimitReached when it holds its maxConcurrentTasks. The
        caller publishes the Effects (the CLAIMED event; the agent turning BUSY)."""
        now = utcnow()
        lease = now + timedelta(seconds=policy.lease_seconds)
        async with self.connection() as conn:
            record = await conn.fetchrow(self._claim, name, now, lease, _ACTIVE, project_id, tags or None)
        if record is None:
            raise not_registered(name)
        agent_id, status, deleted_at, limit, active, *values = record.values()
        if deleted_at is not None:
            raise not_registered(name)
        if active >= limit:
            raise limit_reached(name, active, limit)
        effects = Effects()
        if values[0] is None:  # nothing claimed (the task's id is NULL)
            return None, effects
        task: Task = self.tables[Task].from_values(values)
        effects.events.append(WrittenEvent(task.id, TaskEventType.CLAIMED.value))
        if status != _BUSY:
            effects.presence.append(PresenceChange(agent_id, name, status, _BUSY, now))
        return task, effects
