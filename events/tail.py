"""The recent end of the event log, kept in memory once per process for all subscribers.

Without it every live subscriber would query the log on every new event: 500 subscribers
and 10 events/s would be 5,000 queries a second. Here one refresh (one query) per horizon
advance fetches the newly stamped events; subscribers whose cursor is inside the window
read them from memory and filter them in Python. A subscriber behind the window (a replay,
a slow client) reads the database itself.

The window holds what live subscribers need: the rows read in the last WINDOW_SECONDS, at
most `capacity` of them. Each row costs about 2 KB (the ORM instance and its shared
payload), so a window bounded only by count (10,000) held 20 MB once full, and at moderate
load (25 events/s) took 7 minutes to fill: the server's RSS grew for that long (B9,
bench/PROFILE.md). Bounded by age too, it is full after a minute at any event rate.

Stamped events are visible as a gap-free prefix (events/sequencer.py), so "seq > end,
in order" always returns a contiguous run and the window never has holes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.events import list_events, max_seq
from ..db.models import TaskEvent
from .bus import Listener

log = logging.getLogger(__name__)
REFRESH_LIMIT = 2000
WINDOW_SECONDS = 60.0  # rows read longer ago than this leave the window


class LogTail:
    def __init__(
        self,
        sessionmaker: Callable[[], AsyncSession],
        *,
        capacity: int = 10_000,
        max_age: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._sessionmaker = sessionmaker
        self._capacity = capacity
        self._max_age = max_age
        self._clock = clock  # what rows are aged by (tests pass their own)
        self._seqs: list[int] = []
        self._rows: list[TaskEvent] = []
        self._read_at: list[float] = []  # the clock when each row was read, non-decreasing
        self._refreshing: asyncio.Event | None = None  # set when the refresh in flight ends
        self.start = 0  # the window holds seq in (start, end]
        self.end = -1  # -1: not initialised
        self.refreshes = 0
        self._last_started = float("-inf")
        self._to_wake: list[Listener] = []
        self._waker: asyncio.Task[None] | None = None

    async def refresh(self, *, want: int | None = None, started_after: float | None = None) -> int:
        """Fetch events stamped since the window's end; returns the new end.

        Without arguments it always queries. With `want`, it returns at once when the window
        already reaches that seq; with `started_after` (a time.monotonic() value), when a
        refresh began after that moment. One refresh runs at a time: a crowd woken by one
        signal runs one query, and the rest wait for it together (one wake-up each, not a
        lock handed from one to the next) and find its result.
        """
        while self._refreshing is not None:
            if self._answered(want, started_after):
                return self.end
            await self._refreshing.wait()
        if self._answered(want, started_after):
            return self.end
        done = self._refreshing = asyncio.Event()
        try:
            return await self._fetch()
        finally:
            self._refreshing = None
            done.set()

    def wake_when_read(self, listener: Listener) -> None:
        """Wake `listener` (Listener's `defer`) once the window reaches its horizon: one
        refresh, in a task of its own, for every subscriber waiting when the horizon moved,
        each then woken once and finding its events here. Only waiting subscribers ask for
        it, so the window never runs ahead for a subscriber that stopped reading."""
        if self.end >= listener.horizon:
            listener.wake()
            return
        self._to_wake.append(listener)
        if self._waker is None:
            self._waker = asyncio.create_task(self._wake_readers(), name="log-tail-refresh")

    async def _wake_readers(self) -> None:
        try:
            while self._to_wake:
                before = self.end
                try:
                    await self.refresh(want=max(listener.horizon for listener in self._to_wake))
                except Exception as exc:
                    # Each subscriber reads on its own, with until_answered's retries.
                    log.debug("log tail: refresh for waiting subscribers failed (%s)", type(exc).__name__)
                    self._wake(self._to_wake)
                    return
                waiting = [listener for listener in self._to_wake if listener.horizon > self.end]
                self._wake([listener for listener in self._to_wake if listener.horizon <= self.end])
                self._to_wake = waiting
                if self.end == before:
                    # Told of more than the log shows: let each subscriber find out.
                    self._wake(waiting)
                    return
        finally:
            self._waker = None

    def _wake(self, listeners: list[Listener]) -> None:
        if listeners is self._to_wake:
            self._to_wake = []
        for listener in listeners:
            listener.wake()

    async def close(self) -> None:
        """Stop a refresh for waiting subscribers still in flight (the service is stopping)."""
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await waker

    def _answered(self, want: int | None, started_after: float | None) -> bool:
        return self.end >= 0 and (
            (want is not None and self.end >= want)
            or (started_after is not None and self._last_started >= started_after)
        )

    async def _fetch(self) -> int:
        began = time.monotonic()
        read_at = self._clock()
        async with self._sessionmaker() as session:
            if self.end < 0:
                self.start = self.end = await max_seq(session)
                self._last_started = began
                return self.end
            while True:
                rows = await list_events(session, after=self.end, limit=REFRESH_LIMIT)
                self.refreshes += 1
                for row in rows:
                    assert row.seq is not None
                    self._seqs.append(row.seq)
                    self._rows.append(row)
                    self._read_at.append(read_at)
                if rows:
                    self.end = rows[-1].seq or self.end
                if len(rows) < REFRESH_LIMIT:
                    break
        # Only a refresh that answered counts for callers waiting on `started_after`.
        self._last_started = began
        self._trim(read_at)
        return self.end

    def _trim(self, now: float) -> None:
        """Drop the oldest rows beyond `capacity` and those read more than `max_age` ago; the
        window then starts after the last one dropped."""
        expired = bisect.bisect_left(self._read_at, now - self._max_age)
        drop = max(len(self._rows) - self._capacity, expired)
        if drop > 0:
            self.start = self._seqs[drop - 1]
            del self._seqs[:drop]
            del self._rows[:drop]
            del self._read_at[:drop]

    def covers(self, cursor: int) -> bool:
        return self.end >= 0 and self.start <= cursor <= self.end

    def read(
        self, cursor: int, keep: Callable[[TaskEvent], bool], limit: int, *, upto: int
    ) -> tuple[list[TaskEvent], int]:
        """Events in (cursor, upto] of the window that `keep` accepts (at most `limit`), and
        the cursor to continue from. Call only when covers(cursor)."""
        upto = min(upto, self.end)
        index = bisect.bisect_right(self._seqs, cursor)
        stop = bisect.bisect_right(self._seqs, upto)
        out: list[TaskEvent] = []
        for i in range(index, stop):
            row = self._rows[i]
            if keep(row):
                out.append(row)
                if len(out) >= limit:
                    return out, self._seqs[i]
        return out, max(cursor, upto)
