"""Per-request DataLoaders: every nested field of a page costs one statement, not one per row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import cached_property
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from ..db import agents as db_agents
from ..db import dependencies as db_dependencies
from ..db import events as db_events
from ..db import projects as db_projects
from ..db import tasks as db_tasks
from ..db.base import M
from ..db.models import Agent, Project, Task, TaskEvent
from ..services import Services

V = TypeVar("V")
Fetch = Callable[[AsyncSession, Sequence[int]], Awaitable[Mapping[int, V]]]


class Loaders:
    """One set per operation; each batch opens its own short session."""

    def __init__(self, services: Services, *, cache: bool = True):
        self._services = services
        self._cache = cache

    # Each loader is made when a resolver first asks for it: a request that reads one task
    # pays for one DataLoader, not nine.
    @cached_property
    def project(self) -> DataLoader[int, Project | None]:
        return self._rows(Project)

    @cached_property
    def agent(self) -> DataLoader[int, Agent | None]:
        return self._rows(Agent)

    @cached_property
    def task(self) -> DataLoader[int, Task | None]:
        return self._rows(Task)

    @cached_property
    def dependencies(self) -> DataLoader[int, list[Task]]:
        return self._groups(db_dependencies.dependencies_of)

    @cached_property
    def dependents(self) -> DataLoader[int, list[Task]]:
        return self._groups(db_dependencies.dependents_of)

    @cached_property
    def subtasks(self) -> DataLoader[int, list[Task]]:
        return self._groups(db_tasks.children_of)

    @cached_property
    def current_tasks(self) -> DataLoader[int, list[Task]]:
        return self._groups(db_agents.held_tasks)

    @cached_property
    def project_counts(self) -> DataLoader[int, dict[str, int]]:
        return self._groups(db_projects.status_counts)

    @cached_property
    def events(self) -> DataLoader[tuple[int, int], list[TaskEvent]]:
        return DataLoader(self._events, cache=self._cache)

    def _rows(self, model: type[M]) -> DataLoader[int, M | None]:
        """Rows by id (Services.rows_by_ids: the driver's read on PostgreSQL): None for an
        id without one."""

        async def load(keys: list[int]) -> list[M | None]:
            found = await self._services.rows_by_ids(model, keys)
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
