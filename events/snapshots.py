"""The task's state after an event, loaded once per process for every taskChanged subscriber.

taskChanged yields "the task's current state after each matching change". Loading it per
subscriber would cost one query per subscriber per event; here the first subscriber to
reach an event loads the task and the others share the row (events/single_flight.py).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import Task
from ..db.tasks import get_task
from .single_flight import SingleFlight


class TaskSnapshots:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, capacity: int = 2000):
        self._sessionmaker = sessionmaker
        self._rows: SingleFlight[Task | None] = SingleFlight(capacity)

    @property
    def loads(self) -> int:
        return self._rows.computed

    async def after(self, seq: int, task_id: int) -> Task | None:
        """The task as it was read when the first subscriber reached event `seq`."""

        async def load() -> Task | None:
            async with self._sessionmaker() as session:
                return await get_task(session, task_id)

        return await self._rows.get(seq, load)
