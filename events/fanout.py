"""taskEvents fan-out: one follower of the log for every live subscriber of one selection.

Each live subscriber used to run its own pipeline per event: its follow_events loop woke,
filtered the tail, and handed the row through Strawberry's and graphql-core's generators
and the transport's send (bench/PROFILE.md, B3). Subscribers that would render an event
identically (same selection and variables, same caller scope, same filter: the group's
key, chosen by the caller) can instead ride a Group: one follow_events loop reads the log
for all of them, renders each event once (`Seat.render`, on any member's seat), and hands
the same payload to every member's `Seat.send`, which writes it to the member's socket.

A subscriber rides only while it is live: it asks to join when it has delivered everything
up to its cursor, and is admitted when the group is idle (waiting for the next horizon; at
once if it is) at a cursor no later than its own, else let go at once to catch up alone and
ask again. The group sends a member only events past the member's own cursor.
It is let go, with the cursor of the last event it was sent, whenever anything is unusual
(its send declines: back-pressure, closing; an event does not render to a shared payload;
the group's read fails or ends), and it then carries on alone from that cursor
(events/replay.py), where everything behaves as before. So nothing is skipped or repeated,
and a slow member never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..db.models import TaskEvent

if TYPE_CHECKING:  # replay.py imports this module
    from .replay import EventFilter, EventLog

log = logging.getLogger(__name__)


class Seat(Protocol):
    """One subscriber's end of a group, made by the transport (api/broadcast.py)."""

    @property
    def key(self) -> Hashable:
        """What must be equal for two subscribers to share a rendering (selection, scope)."""
        ...

    async def render(self, payload: Any) -> bytes | None:
        """The payload's encoded result, the same for every member; None when it cannot be
        shared (errors, anything unusual): every member then goes on alone."""
        ...

    def send(self, rendered: bytes) -> bool:
        """Write a rendered event to this subscriber now; False (nothing written) when it
        cannot be (back-pressure, closing): the member then goes on alone."""
        ...


@dataclass(frozen=True)
class Ride:
    """What a subscriber hands follow_events to ride a group: its seat, its filter, how a
    row becomes the payload its selection executes on, and the delivery counter."""

    fan_out: FanOut
    seat: Seat
    where: EventFilter
    payload: Callable[[TaskEvent], Any]
    delivered: Callable[[int], None]

    async def ride(self, cursor: int) -> int | None:
        """FanOut.ride for this subscriber."""
        return await self.fan_out.ride(self, cursor)


class Position(Protocol):
    """Told by a follow_events loop when it waits for a new horizon having delivered
    everything up to `cursor` (idle), and when it wakes (busy)."""

    def idle(self, cursor: int) -> None: ...

    def busy(self) -> None: ...


class _Member:
    __slots__ = ("cursor", "left", "seat")

    def __init__(self, seat: Seat, cursor: int, left: asyncio.Future[int]):
        self.seat = seat
        self.cursor = cursor
        self.left = left  # resolved with the cursor to go on from alone


class FanOut:
    """The process's groups, by key (one per Services)."""

    def __init__(self, source: EventLog, *, max_lag: int):
        self._source = source
        self._max_lag = max_lag
        self._groups: dict[Hashable, _Group] = {}
        self.groups_started = 0

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def riders(self) -> int:
        return sum(len(group.members) for group in self._groups.values())

    async def ride(self, ride: Ride, cursor: int) -> int | None:
        """Ride the group of `ride`'s key from `cursor` (everything up to it delivered);
        returns the cursor to go on from alone once let go, or None at once when the group
        is busy or ahead of `cursor` (wait as usual and try again later). Cancelling the
        caller (unsubscribe, close) leaves the group before anything more is sent."""
        key = (ride.seat.key, ride.where)
        group = self._groups.get(key)
        left: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        member = _Member(ride.seat, cursor, left)
        if group is None:
            group = self._groups[key] = _Group(self, key, ride, cursor)
            self.groups_started += 1
            group.members[member] = None
        else:
            group.join(member)
        try:
            return await left
        finally:
            group.leave(member)

    def _forget(self, group: _Group) -> None:
        if self._groups.get(group.key) is group:
            del self._groups[group.key]

    async def close(self) -> None:
        """Stop every group (the service is stopping); their members go on alone."""
        for group in list(self._groups.values()):
            await group.stop()


class _Group:
    def __init__(self, fan_out: FanOut, key: Hashable, ride: Ride, cursor: int):
        self.fan_out = fan_out
        self.key = key
        self.where = ride.where
        self._payload = ride.payload
        self._delivered = ride.delivered
        self.members: dict[_Member, None] = {}
        self._pending: dict[_Member, None] = {}  # to admit when the group is next idle
        self._cursor = cursor
        self._idle = False
        # Its own context: the driver must not carry the first member's (request id, seat).
        self._task = asyncio.create_task(self._run(cursor), name="taskEvents-fan-out", context=contextvars.Context())

    def join(self, member: _Member) -> None:
        """Admit `member` now when the group is idle at or before its cursor; when the group
        is busy, at its next idle point; let it go when the group is past it."""
        if not self._idle:
            self._pending[member] = None
        elif self._cursor <= member.cursor:
            self.members[member] = None
        else:
            self._let_go(member)

    def idle(self, cursor: int) -> None:
        self._cursor, self._idle = cursor, True
        pending, self._pending = self._pending, {}
        for member in pending:
            if not member.left.done():
                self.join(member)

    def busy(self) -> None:
        self._idle = False

    def leave(self, member: _Member) -> None:
        self.members.pop(member, None)
        self._pending.pop(member, None)
        if not self.members and not self._pending:
            # Nobody to serve: stop reading now, and let the next subscriber start afresh.
            self.fan_out._forget(self)
            if not self._task.done():
                self._task.cancel()

    def _let_go(self, member: _Member) -> None:
        self.members.pop(member, None)
        if not member.left.done():
            member.left.set_result(member.cursor)

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except BaseException:  # noqa: S110 - its members were let go in _run's finally
            pass

    async def _run(self, cursor: int) -> None:
        from .replay import follow_events  # replay.py imports this module

        try:
            async for row in follow_events(
                self.fan_out._source,
                after=cursor,
                where=self.where,
                max_lag=self.fan_out._max_lag,
                position=self,
            ):
                if not self.members:
                    return
                rendered = await self._render(row)
                if rendered is None:
                    return  # every member renders this one itself (errors, anything unusual)
                seq = row.seq or 0
                sent = 0
                for member in list(self.members):
                    if member.left.done():  # cancelled: unsubscribed or closed, not yet gone
                        self.members.pop(member, None)
                    elif member.cursor >= seq:
                        continue  # joined past this event
                    elif member.seat.send(rendered):
                        member.cursor = seq
                        sent += 1
                    else:
                        self._let_go(member)
                if sent:
                    self._delivered(sent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Each member reads on its own and meets (and reports) any real failure itself.
            log.debug("taskEvents fan-out: the group's read failed (%s)", type(exc).__name__)
        finally:
            self.fan_out._forget(self)
            for member in [*self.members, *self._pending]:
                self._let_go(member)
            self._pending.clear()

    async def _render(self, row: TaskEvent) -> bytes | None:
        payload = self._payload(row)
        for member in list(self.members):
            if not member.left.done():
                return await member.seat.render(payload)
        return None


__all__ = ["FanOut", "Position", "Ride", "Seat"]
