"""The hottest statements on PostgreSQL, on asyncpg's own connection (docs/ARCHITECTURE.md,
"Claiming and the hot paths").

A read of one task by id costs about 570 µs of CPU through an ORM session and 180 µs as the
same SELECT on the asyncpg connection under it (bench/PROFILE.md); a heartbeat is five
round trips through the unit of work. Here the DataLoaders' rows by id and the heartbeat
run as prepared statements on a connection borrowed from the engine's own pool (same
size, same pre-ping, same statement timeout), and come back as the ORM's model instances,
filled without the ORM's per-row machinery, so every caller above sees the same types.
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
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import instrumentation

from ..errors import NotFound
from .base import Base, utcnow
from .effects import Effects, PresenceChange
from .enums import ACTIVE_STATUSES, AgentStatus
from .models import Agent, Project, Task

M = TypeVar("M", bound=Base)

# Client-side failures that leave the connection gone or in an unknown state.
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_ACTIVE = [status.value for status in ACTIVE_STATUSES]
_BUSY, _ONLINE = AgentStatus.BUSY.value, AgentStatus.ONLINE.value


# $1 the agent, $2 the new lease end, $3 the active statuses, $4 now, $5 BUSY, $6 ONLINE.
_TOUCH = (
    "WITH renewed AS (UPDATE tasks SET lease_expires_at = $2"
    " WHERE assignee_id = $1 AND status = ANY($3::varchar[]) RETURNING deleted_at)"
    " UPDATE agents SET last_heartbeat_at = $4,"
    " status = CASE WHEN EXISTS (SELECT 1 FROM renewed WHERE deleted_at IS NULL) THEN $5 ELSE $6 END"
    " WHERE id = $1 RETURNING {columns}"
)


class _Table:
    """One model's columns, its SELECT by ids, and how to make instances from records."""

    def __init__(self, model: type[M]):
        mapper = model.__mapper__
        self.attributes = [(prop.key, prop.columns[0].name) for prop in mapper.column_attrs]
        self.keys = tuple(key for key, _name in self.attributes)
        self.columns = ", ".join(name for _key, name in self.attributes)
        # Built from the models' own names, never from input (here and below).
        self.by_ids = f"SELECT {self.columns} FROM {model.__tablename__} WHERE id = ANY($1::bigint[])"  # noqa: S608
        self.manager = instrumentation.manager_of_class(model)

    def instance(self, record: asyncpg.Record) -> Any:
        """A model instance holding the record's values, attached to no session: reading its
        columns reads them from its __dict__ (the ORM's own loading costs ten times more)."""
        obj = self.manager.new_instance()
        obj.__dict__.update(zip(self.keys, record.values(), strict=True))
        return obj


class Driver:
    """The hot statements on PostgreSQL's driver connection (see the module docstring)."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.tables: dict[type[Base], _Table] = {model: _Table(model) for model in (Task, Agent, Project)}
        agent = self.tables[Agent]
        self._lock_agent = f"SELECT {agent.columns} FROM agents WHERE name = $1 FOR UPDATE"  # noqa: S608
        # The lock above first, in its own statement: this one's snapshot is then taken after
        # any claim that held the agent has committed, so its task is renewed and counted.
        self._touch = _TOUCH.format(columns=agent.columns)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection from the engine's pool, returned when the block ends; closed
        instead when a statement failed on the connection or was interrupted."""
        proxied = await self.engine.raw_connection()
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

    async def heartbeat(self, name: str, *, lease_seconds: float) -> tuple[Agent, Effects]:
        """db/agents.py's `touch` for the agent called `name`, in one transaction of two
        statements: lock the agent; renew its leases and set its status and heartbeat.
        NotFound for an unknown or unregistered agent. The caller publishes the Effects."""
        agents = self.tables[Agent]
        now = utcnow()
        async with self.connection() as conn, conn.transaction():
            locked = await conn.fetchrow(self._lock_agent, name)
            if locked is None or locked["deleted_at"] is not None:
                raise NotFound(f"agent '{name}' is not registered (or was unregistered); call registerAgent first")
            record = await conn.fetchrow(
                self._touch, locked["id"], now + timedelta(seconds=lease_seconds), _ACTIVE, now, _BUSY, _ONLINE
            )
        agent: Agent = agents.instance(record)
        effects = Effects()
        if agent.status != locked["status"]:
            effects.presence.append(PresenceChange(agent.id, agent.name, locked["status"], agent.status, now))
        return agent, effects
