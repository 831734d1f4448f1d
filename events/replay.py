"""taskEvents: replay the log from a cursor, then follow it live, never skipping or repeating.

The subscriber registers with the bus before its first read, then alternates: read the
horizon H (the highest stamped cursor), read the stamped events in (cursor, H] page by page,
move the cursor to H, and sleep until the bus says the horizon moved (or a safety poll).
Stamps become visible as a prefix (events/sequencer.py), so every event <= H is readable
when H is, and a filtered subscriber can move its cursor past events it does not want.
A subscriber whose client does not keep up falls behind the horizon; past `max_lag`
events it is ended with an error carrying its cursor, and resumes with `after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..db.events import list_events, max_seq
from ..db.models import TaskEvent
from ..errors import DomainError, ErrorCode
from ..services import Services

PAGE = 500
SAFETY_POLL_SECONDS = 5.0
DEFAULT_MAX_LAG = 10_000


class SubscriberTooSlow(DomainError):
    code = ErrorCode.CONFLICT


@dataclass(frozen=True)
class EventFilter:
    project_id: int | None = None
    task_id: int | None = None
    agent_id: int | None = None


async def follow_events(
    services: Services, *, after: int | None, where: EventFilter, max_lag: int = DEFAULT_MAX_LAG
) -> AsyncIterator[TaskEvent]:
    """Yield stamped events with seq > after (or from now when after is None), in order."""
    bus = services.bus
    with bus.listen() as listener:
        async with services.read() as session:
            start = await max_seq(session)
        cursor = start if after is None else after
        while True:
            async with services.read() as session:
                horizon = await max_seq(session)
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
                    )
                async with services.read() as session:
                    rows = await list_events(
                        session,
                        after=cursor,
                        upto=horizon,
                        project_id=where.project_id,
                        task_id=where.task_id,
                        agent_id=where.agent_id,
                        limit=PAGE,
                    )
                if len(rows) < PAGE:
                    for row in rows:
                        yield row
                    cursor = horizon
                    break
                for row in rows:
                    yield row
                    cursor = row.seq or cursor
            if listener.horizon <= cursor and not listener.resync:
                # Woken by the bus; the timeout is a safety poll of the database's horizon.
                await listener.wait(SAFETY_POLL_SECONDS)
            listener.resync = False
