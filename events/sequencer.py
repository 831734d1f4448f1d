"""Stamps committed events with their public cursor, in commit order.

Event ids come from a sequence at insert time, so two transactions can commit out of id
order; a reader that moved its cursor past id 11 would never see a later-committed 10.
Instead of exposing ids, a sequencer stamps committed, unstamped rows with `seq` values in
one short transaction serialised by an advisory lock (db/events.py). Every process runs
one; the lock makes them act one at a time, so stamps only ever become visible in
increasing order and `seq` is safe to use as a resume cursor. Writers wake the local
sequencer after commit and wait for its next pass, so a client reads its own events.
On SQLite the single writer already commits in id order: the writing transaction stamps
its own rows before commit and no background pass is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.events import stamp_events
from ..db.health import problem
from ..observability.logs import FailureLog

log = logging.getLogger(__name__)

SequencedCallback = Callable[[int], Awaitable[None]]
# How long a writer waits after its commit for its events to be stamped (read-your-writes).
SYNC_TIMEOUT = 5.0


class Sequencer:
    def __init__(
        self,
        sessionmaker: Callable[[], AsyncSession],
        *,
        stamp: Callable[[], Awaitable[int]] | None = None,
        poll_interval: float = 1.0,
        on_sequenced: SequencedCallback | None = None,
    ):
        """`stamp`: a pass in one call returning the horizon (PostgreSQL's driver, db/driver.py);
        None: db/events.py's stamp_events in a transaction of its own."""
        self._sessionmaker = sessionmaker
        self._stamp = stamp
        self._poll_interval = poll_interval
        self._on_sequenced = on_sequenced
        self._wake = asyncio.Event()
        self._passes_started = 0
        self._passes_done = 0
        self._done = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._failures = FailureLog(log, "event sequencer")
        self.horizon = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-sequencer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def sync(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Wait until a pass that started after this call has finished: the events committed
        before the call are then stamped and announced. Returns False, with a warning in
        the log, when that takes longer than `timeout` (the writer goes on; its events reach
        subscribers with the sequencer's next pass)."""
        if self._task is None:
            await self.stamp_once()
            return True
        target = self._passes_started + 1
        self.wake()
        try:
            async with asyncio.timeout(timeout), self._done:
                await self._done.wait_for(lambda: self._passes_done >= target)
        except TimeoutError:
            log.warning(
                "event sequencer: no pass finished within %.1fs of a commit; its events reach "
                "subscribers late (a long stamping transaction, or the database is slow or unreachable)",
                timeout,
            )
            return False
        return True

    async def stamp_once(self) -> int:
        if self._stamp is not None:
            horizon = await self._stamp()
        else:
            async with self._sessionmaker() as session, session.begin():
                horizon = await stamp_events(session)
        if horizon > self.horizon:
            self.horizon = horizon
            if self._on_sequenced is not None:
                await self._on_sequenced(horizon)
        return horizon

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            self._passes_started += 1
            try:
                await self.stamp_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failed(problem(exc), exc)
                await asyncio.sleep(min(self._poll_interval, 1.0))
            else:
                self._failures.ok()
            async with self._done:
                self._passes_done = self._passes_started
                self._done.notify_all()
