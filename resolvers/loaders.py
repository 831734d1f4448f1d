"""Per-request DataLoaders: every nested field of a page costs one statement, not one per row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from ..db import agents as db_agents
from ..db import dependencies as db_dependencies
from ..db import events as db_events
from ..db import projects as db_projects
from ..db import tasks as db_tasks
from ..db.models import Agent, Project, Task, TaskEvent
from ..services import Services

V = TypeVar("V")
Fetch = Callable[[AsyncSession, Sequence[int]], Awaitable[Mapping[int, V]]]


class Loaders:
    """One set per operation; each batch opens its own short session."""

    def __init__(self, services: Services, *, cache: bool = True):
        self._services = services
        self._cache = cache
        self.project: DataLoader[int, Project | None] = self._rows(db_projects.projects_by_ids)
        self.agent: DataLoader[int, Agent | None] = self._rows(db_agents.agents_by_ids)
        self.task: DataLoader[int, Task | None] = self._rows(db_tasks.tasks_by_ids)
        self.dependencies: DataLoader[int, list[Task]] = self._groups(db_dependencies.dependencies_of)
        self.dependents: DataLoader[int, list[Task]] = self._groups(db_dependencies.dependents_of)
        self.subtasks: DataLoader[int, list[Task]] = self._groups(db_tasks.children_of)
        self.current_tasks: DataLoader[int, list[Task]] = self._groups(db_agents.held_tasks)
        self.project_counts: DataLoader[int, dict[str, int]] = self._groups(db_projects.status_counts)
        self.events: DataLoader[tuple[int, int], list[TaskEvent]] = DataLoader(self._events, cache=cache)

    def _rows(self, fetch: Fetch[V]) -> DataLoader[int, V | None]:
        """Rows by id: None for an id without one."""

        async def load(keys: list[int]) -> list[V | None]:
            async with self._services.read() as session:
                found = await fetch(session, keys)
            return [found.get(key) for key in keys]

        return DataLoader(load, cache=self._cache)

    def _groups(self, fetch: Fetch[V]) -> DataLoader[int, V]:
        """Groups by key: the fetch answers every key asked (an empty group when none)."""

        async def load(keys: list[int]) -> list[V]:
            async with self._services.read() as session:
                found = await fetch(session, keys)
            return [found[key] for key in keys]

        return DataLoader(load, cache=self._cache)

    async def _events(self, keys: list[tuple[int, int]]) -> list[list[TaskEvent]]:
        limit = max(first for _, first in keys)
        async with self._services.read() as session:
            found = await db_events.events_for_tasks(session, sorted({task_id for task_id, _ in keys}), limit=limit)
        return [found.get(task_id, [])[:first] for task_id, first in keys]
