"""Per-request DataLoaders: every nested field of a page costs one statement, not one per row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from strawberry.dataloader import DataLoader

from ..db import agents, dependencies, events, projects, tasks
from ..db.models import Agent, Project, Task, TaskEvent
from ..services import Services

K = TypeVar("K")
V = TypeVar("V")


class Loaders:
    """One set per operation; each batch opens its own short session."""

    def __init__(self, services: Services, *, cache: bool = True):
        self._services = services
        self._cache = cache
        self.project: DataLoader[int, Project | None] = self._by_key(projects.projects_by_ids)
        self.agent: DataLoader[int, Agent | None] = self._by_key(agents.agents_by_ids)
        self.task: DataLoader[int, Task | None] = self._by_key(tasks.tasks_by_ids)
        self.dependencies: DataLoader[int, list[Task]] = self._by_key(dependencies.dependencies_of)
        self.dependents: DataLoader[int, list[Task]] = self._by_key(dependencies.dependents_of)
        self.subtasks: DataLoader[int, list[Task]] = self._by_key(tasks.children_of)
        self.current_tasks: DataLoader[int, list[Task]] = self._by_key(agents.held_tasks)
        self.project_counts: DataLoader[int, dict[str, int]] = self._by_key(projects.status_counts)
        self.events: DataLoader[tuple[int, int], list[TaskEvent]] = DataLoader(self._events, cache=cache)

    def _by_key(self, fetch: Callable[[Any, Sequence[K]], Awaitable[dict[K, V]]]) -> DataLoader[K, V]:
        async def load(keys: list[K]) -> list[V | None]:
            async with self._services.read() as session:
                found = await fetch(session, keys)
            return [found.get(key) for key in keys]

        return DataLoader(load, cache=self._cache)  # type: ignore[arg-type]

    async def _events(self, keys: list[tuple[int, int]]) -> list[list[TaskEvent]]:
        limit = max(first for _, first in keys)
        async with self._services.read() as session:
            found = await events.events_for_tasks(session, sorted({task_id for task_id, _ in keys}), limit=limit)
        return [found.get(task_id, [])[:first] for task_id, first in keys]
