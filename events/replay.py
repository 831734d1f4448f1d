"""taskEvents: replay the log from a cursor, then follow it live, never skipping or repeating.

The subscriber registers with the bus before its first read, then alternates: read the
horizon H (the highest stamped cursor), read the stamped events in (cursor, H] page by page,
move the cursor to H, and sleep until the bus says the horizon moved (or a safety poll).
Live subscribers read from the process's in-memory tail of the log (events/tail.py), which
one query per horizon advance keeps current for all of them; a subscriber whose cursor is
older than the tail's window reads the database.
Stamps become visible as a prefix (events/sequencer.py), so every event <= H is readable
when H is, and a filtered subscriber can move its cursor past events it does not want.
A subscriber whose client does not keep up falls behind the horizon; past `max_lag`
events it is ended with an error carrying its cursor, and resumes with `after`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.events import list_events
from ..db.health import unreachable
from ..db.models import TaskEvent
from ..errors import DomainError, ErrorCode
from .bus import EventBus, Listener
from .fanout import Position, Ride
from .tail import LogTail

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE = 500
SAFETY_POLL_SECONDS = 5.0
DEFAULT_MAX_LAG = 10_000


class EventLog(Protocol):
    """What following the log needs, passed in by the caller (services.Services is one):
    the bus that signals new horizons, the process's tail, and short read sessions."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def tail(self) -> LogTail: ...

    def read(self) -> AbstractAsyncContextManager[AsyncSession]: ...


class SubscriberTooSlow(DomainError):
    code = ErrorCode.CONFLICT


@dataclass(frozen=True)
class EventFilter:
    project_id: int | None = None
    task_id: int | None = None
    agent_id: int | None = None

    def matches(self, event: TaskEvent) -> bool:
        """The same test as list_events' WHERE clause, for events read from the tail."""
        return (
            (self.project_id is None or event.project_id == self.project_id)
            and (self.task_id is None or event.task_id == self.task_id)
            and (self.agent_id is None or event.agent_id == self.agent_id)
        )


async def until_answered(read: Callable[[], Awaitable[T]]) -> T:
    """Run a read of the log, retrying with backoff while the database is unreachable (a
    restart): the cursor has not moved, so the subscriber resumes where it was."""
    delay = 0.5
    while True:
        try:
            return await read()
        except (DBAPIError, OSError) as exc:
            if not unreachable(exc):
                raise  # a real failure of the read, not an outage: the subscriber sees INTERNAL
            log.warning("subscription: the database is unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def follow_events(
    source: EventLog,
    *,
    after: int | None,
    where: EventFilter,
    max_lag: int = DEFAULT_MAX_LAG,
    ride: Ride | None = None,
    position: Position | None = None,
) -> AsyncIterator[TaskEvent]:
    """Yield stamped events with seq > after (or from now when after is None), in order.

    With `ride`, whenever the subscriber is caught up it rides its fan-out group
    (events/fanout.py), which sends it the events meanwhile, and carries on from the cursor
    the group let it go at. `position` is told when the loop waits and wakes (a group's own
    loop)."""
    bus, tail = source.bus, source.tail
    # Woken once per horizon, when the tail already holds it (LogTail.wake_when_read).
    with bus.listen(defer=tail.wake_when_read) as listener:
        # Any refresh that began after we started listening gives a valid starting point:
        # later events wake us. Subscribers arriving together share one query.
        start = await until_answered(partial(tail.refresh, started_after=time.monotonic()))
        cursor = start if after is None else after
        since: float | None = None
        while True:
            # One query per horizon advance for the whole process: the first subscriber to
            # wake refreshes the tail, the others find it already there. After a safety poll
            # timeout or a bus reconnect (signals may have been lost) a refresh must have
            # started since `since`; again one query serves them all.
            if since is not None:
                horizon = await until_answered(partial(tail.refresh, started_after=since))
            else:
                horizon = await until_answered(partial(tail.refresh, want=listener.horizon))
            bus.note_horizon(horizon)
            while cursor < horizon:
                # Lag counts only events committed since this subscription began: replaying
                # older history is not falling behind, and a resumed subscriber must progress.
                lag_from = max(cursor, start)
                if horizon - lag_from > max_lag and bus.horizon - lag_from > max_lag:
                    raise SubscriberTooSlow(
                        f"this subscription fell {bus.horizon - cursor} events behind; resubscribe "
                        f'with after: "{cursor}" to continue without loss',
                        cursor=str(cursor),
                        behind=bus.horizon - cursor,
                    )
                if tail.covers(cursor):
                    rows, next_cursor = tail.read(cursor, where.matches, PAGE, upto=horizon)
                else:
                    # Behind the window (a replay or a slow client): read the log itself.
                    rows = await until_answered(partial(_read_log, source, where, cursor, horizon))
                    next_cursor = horizon if len(rows) < PAGE else (rows[-1].seq or cursor)
                for row in rows:
                    yield row
                    cursor = row.seq or cursor
                cursor = max(cursor, next_cursor)
            since = None
            if listener.horizon <= cursor and not listener.resync_pending:
                resumed = None if ride is None else await ride.ride(cursor)
                if resumed is not None:
                    cursor = max(cursor, resumed)
                # Woken by the bus; the timeout is a safety poll of the database's horizon.
                elif not await _wait(listener, position, cursor):
                    since = time.monotonic() - SAFETY_POLL_SECONDS / 2
            if listener.take_resync():
                since = bus.resynced_at


async def _wait(listener: Listener, position: Position | None, cursor: int) -> bool:
    """listener.wait, telling `position` that meanwhile everything up to `cursor` is
    delivered (a fan-out group admits members only then)."""
    if position is None:
        return await listener.wait(SAFETY_POLL_SECONDS)
    position.idle(cursor)
    try:
        return await listener.wait(SAFETY_POLL_SECONDS)
    finally:
        position.busy()


async def _read_log(source: EventLog, where: EventFilter, cursor: int, horizon: int) -> list[TaskEvent]:
    async with source.read() as session:
        rows = await list_events(
            session,
            after=cursor,
            upto=horizon,
            project_id=where.project_id,
            task_id=where.task_id,
            agent_id=where.agent_id,
            limit=PAGE,
        )
    return list(rows)
