"""Helpers for subscription tests: in-process subscriptions read with deadlines, the full
event log through the `events` query, scripted writers, and extra Services ("processes")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from graphql import ExecutionResult

from task_service.api.schema import Schema
from task_service.resolvers.context import Context
from task_service.services import Services
from tests import factories as f
from tests.conftest import GraphQLFailure, make_settings

EVENT_FIELDS = "id taskId projectId type fromStatus toStatus actor"
TASK_EVENTS = (
    "subscription($after: ID, $projectId: ID, $taskId: ID, $agent: String) {"
    " taskEvents(after: $after, projectId: $projectId, taskId: $taskId, agent: $agent)"
    f" {{ {EVENT_FIELDS} }} }}"
)
TASK_CHANGED = (
    "subscription($projectId: ID, $status: [TaskStatus!], $assignee: String) {"
    " taskChanged(projectId: $projectId, status: $status, assignee: $assignee)"
    " { id status project { id } assignee { name } } }"
)
AGENT_PRESENCE = (
    "subscription($name: String) { agentPresence(name: $name) { agent { name status } previousStatus status at } }"
)
DASHBOARD_STATS = (
    "subscription($projectId: ID) { dashboardStats(projectId: $projectId) {"
    " tasks { total pending assigned running completed } agents { total online busy offline } generatedAt } }"
)
STATS_QUERY = (
    "query($projectId: ID) { dashboardStats(projectId: $projectId) {"
    " tasks { total pending assigned running completed } agents { total online busy offline } } }"
)
DEADLINE = 10.0


class Sub:
    """One subscription run through the schema, as a WebSocket operation would run it.

    `context` is the connection: pass the same one to count against its subscription limit.
    """

    def __init__(
        self, schema: Schema, services: Services, query: str, *, context: Context | None = None, **variables: Any
    ):
        self.schema = schema
        self.context = context or Context(services)
        self.query = query
        self.variables = variables
        self._gen: Any = None

    async def __aenter__(self) -> Sub:
        gen = await self.schema.subscribe(self.query, variable_values=self.variables, context_value=self.context)
        if isinstance(gen, ExecutionResult):
            raise GraphQLFailure(gen.errors or [])
        self._gen = gen
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._gen is not None:
            gen, self._gen = self._gen, None
            await gen.aclose()

    async def result(self, within: float = DEADLINE) -> ExecutionResult:
        """The next ExecutionResult, data or errors; fails after `within` seconds without one."""
        return await asyncio.wait_for(anext(self._gen), within)

    async def next(self, within: float = DEADLINE) -> Any:
        """The next value of the subscribed field; raises GraphQLFailure on an error result."""
        result = await self.result(within)
        if result.errors:
            raise GraphQLFailure(result.errors)
        assert result.data is not None
        return next(iter(result.data.values()))

    async def take(self, count: int, within: float = DEADLINE) -> list[Any]:
        return [await self.next(within) for _ in range(count)]

    async def read_through(self, last_id: str, seen: list[dict[str, Any]], within: float = DEADLINE) -> None:
        """Append events to `seen` until one with id >= last_id arrives."""
        while not seen or int(seen[-1]["id"]) < int(last_id):
            seen.append(await self.next(within))


async def all_events(gql: Any, **filters: Any) -> list[dict[str, Any]]:
    """The whole stored log through the `events` query, page by page, oldest first."""
    out: list[dict[str, Any]] = []
    after = "0"
    while True:
        data = await gql.execute(
            "query($after: ID, $projectId: ID, $taskId: ID) {"
            f" events(after: $after, projectId: $projectId, taskId: $taskId, first: 500) {{ {EVENT_FIELDS} }} }}",
            after=after,
            **filters,
        )
        page = data["events"]
        out.extend(page)
        if len(page) < 500:
            return out
        after = page[-1]["id"]


def assert_exact_log(seen: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """`seen` is the log itself: strictly increasing ids, none missing, none repeated."""
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(set(ids)), "events repeated or out of order"
    missing = {e["id"] for e in expected} - {e["id"] for e in seen}
    assert not missing, f"{len(missing)} events never delivered, e.g. {sorted(missing, key=int)[:5]}"
    assert seen == expected


async def wait_until(predicate: Callable[[], bool], within: float = DEADLINE, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def work_one_task(gql: Any, *, project_id: str, agent: str, title: str = "job") -> None:
    """Five events: create, claim, start, progress, submit (no review: COMPLETED)."""
    t = await f.task(gql, project_id=project_id, title=title, requiresReview=False)
    await f.claim(gql, task_id=t["id"], agent=agent)
    await f.transition(gql, "startTask", id=t["id"], agent=agent)
    await f.transition(gql, "reportProgress", id=t["id"], agent=agent, progress=50)
    await f.transition(gql, "submitTask", id=t["id"], agent=agent, summary="done")


async def writers(gql: Any, *, project_id: str, agents: list[str], rounds: int) -> None:
    """One concurrent writer per agent, each working `rounds` tasks through their lifecycle."""

    async def writer(agent: str) -> None:
        for i in range(rounds):
            await work_one_task(gql, project_id=project_id, agent=agent, title=f"{agent}-{i}")

    await asyncio.gather(*(writer(a) for a in agents))


@contextlib.asynccontextmanager
async def writing(gql: Any, *, project_id: str, agents: list[str]) -> AsyncIterator[None]:
    """While the block runs, each agent works tasks through their lifecycle, one after another;
    on leaving, the writers finish the task in hand and stop."""
    stop = asyncio.Event()

    async def keep_writing(agent: str) -> None:
        while not stop.is_set():
            await work_one_task(gql, project_id=project_id, agent=agent)

    writers_done = asyncio.gather(*(keep_writing(a) for a in agents))
    try:
        yield
    finally:
        stop.set()
        await writers_done


async def caught_up(gql: Any, got: Collector, within: float = 15) -> list[dict[str, Any]]:
    """The whole log, once `got` has received its last event (or fail after `within` s)."""
    expected = await all_events(gql)
    await wait_until(
        lambda: bool(got.values) and int(got.values[-1]["id"]) >= int(expected[-1]["id"]),
        within=within,
        what="the subscriber to catch up",
    )
    return expected


async def register_agents(gql: Any, count: int, prefix: str = "w") -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        await f.agent(gql, name=name)
    return names


@contextlib.asynccontextmanager
async def another_process(database_url: str, **overrides: Any) -> AsyncIterator[Services]:
    """A second Services on the same database: its own pool, bus connection and sequencer."""
    services = Services.build(make_settings(database_url, **overrides))
    await services.start()
    try:
        yield services
    finally:
        await services.close()


def settled(services: Services, at_least: int = 1) -> bool:
    """At least `at_least` bus listeners exist (a subscription's generator registers its
    listener only once it first runs, so "no listener yet" is not settled) and every one is
    parked waiting with no wake-up pending (nor one deferred until the log tail is read,
    Listener.deferred): each live subscription has read (and, when its consumer pulls,
    yielded) everything up to the horizon it was told about. Mutations tell local listeners
    before they return."""
    listeners = list(services.bus._listeners)
    return len(listeners) >= at_least and all(
        lst._wake._waiters and not lst._wake.is_set() and not lst.deferred  # type: ignore[attr-defined]
        for lst in listeners
    )


async def wait_settled(services: Services, within: float = DEADLINE, at_least: int = 1) -> None:
    await wait_until(lambda: settled(services, at_least), within, "subscriptions to catch up")


class Collector:
    """Pulls a subscription continuously in the background, timestamping each value."""

    def __init__(self, sub: Sub):
        self.sub = sub
        self.values: list[Any] = []
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # surface a failure of the subscription
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            value = await self.sub.next(within=3600)
            self.values.append(value)
            self.times.append(time.monotonic())

    async def wait_for_count(self, count: int, within: float = DEADLINE) -> None:
        def enough() -> bool:
            if self._task is not None and self._task.done():
                self._task.result()
            return len(self.values) >= count

        await wait_until(enough, within, f"{count} values")
