"""The task's state after an event, loaded once per process for every taskChanged subscriber.

taskChanged yields "the task's current state after each matching change". Loading it per
subscriber would cost one query per subscriber per event; here the first subscriber to
reach an event loads the task and the others (waiting on the same future) share the row.
A small LRU keeps recent snapshots for subscribers that arrive a little later.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import Task


class TaskSnapshots:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, capacity: int = 2000):
        self._sessionmaker = sessionmaker
        self._capacity = capacity
        self._cache: OrderedDict[int, asyncio.Future[Task | None]] = OrderedDict()
        self.loads = 0

    async def after(self, seq: int, task_id: int) -> Task | None:
        """The task as it was read when the first subscriber reached event `seq`."""
        future = self._cache.get(seq)
        if future is not None:
            await asyncio.wait({future})
            if not future.cancelled():
                return future.result()
            # The loader was cancelled or failed: load it ourselves.
        future = asyncio.get_running_loop().create_future()
        self._cache[seq] = future
        self._cache.move_to_end(seq)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        try:
            self.loads += 1
            async with self._sessionmaker() as session:
                row = await session.get(Task, task_id)
        except BaseException:
            # Waiters retry on their own rather than share this caller's failure.
            if self._cache.get(seq) is future:
                del self._cache[seq]
            future.cancel()
            raise
        future.set_result(row)
        return row
