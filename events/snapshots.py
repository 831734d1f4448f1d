"""Rows after a change, loaded once per process for every subscriber that reports it.

taskChanged yields "the task's current state after each matching change", agentPresence
the agent with each status change. Loading the row per subscriber would cost one query
per subscriber per change; here the first subscriber to reach a change loads the row and
the others share it (events/single_flight.py).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from ..db.agents import get_agent_by_id
from ..db.models import Agent, Task
from ..db.tasks import get_task
from .single_flight import SingleFlight


class TaskSnapshots:
    def __init__(self, sessionmaker: Callable[[], AsyncSession], *, capacity: int = 2000):
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


class AgentSnapshots:
    def __init__(self, sessionmaker: Callable[[], AsyncSession], *, capacity: int = 2000):
        self._sessionmaker = sessionmaker
        self._rows: SingleFlight[Agent | None] = SingleFlight(capacity)

    @property
    def loads(self) -> int:
        return self._rows.computed

    async def after(self, heard: int, agent_id: int) -> Agent | None:
        """The agent as it was read when the first subscriber reached presence change number
        `heard` (events/bus.py's PresenceSignal.n)."""

        async def load() -> Agent | None:
            async with self._sessionmaker() as session:
                return await get_agent_by_id(session, agent_id)

        return await self._rows.get(heard, load)
