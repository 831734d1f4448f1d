"""TaskServiceClient: the agent-facing operations of the Task Service contract, typed.

Built on gql: HTTP (httpx) for queries and mutations, graphql-transport-ws (websockets) for
subscriptions. What it adds on top:

- Retries with jittered exponential backoff for network failures and RATE_LIMITED (waiting
  `extensions.retryAfter`). A request whose answer was lost may have been applied, so only
  operations that are safe to repeat are resent then: queries, heartbeats and progress
  reports, and mutations carrying an idempotency key. The client generates that key once per
  call and reuses it on every retry, so a repeat returns the first result instead of acting
  twice. Other mutations are resent only when the request surely never reached the server
  (the connection was refused) or the server refused it (RATE_LIMITED).
- Fencing: the `attempt` of each task this client claimed is remembered and sent with start,
  progress, submit, release and fail, so a worker whose task was re-claimed by another agent
  gets StaleAttemptError instead of overwriting the new owner's work.
- Contract error codes as exceptions (errors.py), e.g. ConflictError, LimitReachedError.
- `subscribe_events` resumes after a disconnect from the last event it delivered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gql import Client, GraphQLRequest, gql
from gql.client import AsyncClientSession
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportError,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from . import operations as ops
from .attempts import AttemptStore, MemoryAttempts
from .config import Config, graphql_http_url, graphql_ws_url
from .errors import (
    ConfigurationError,
    RateLimitedError,
    TaskServiceError,
    TransportFailure,
    UnauthenticatedError,
    from_graphql,
)
from .models import Agent, DashboardStats, Project, Registration, Task, TaskEvent, TaskPage

log = logging.getLogger("task_service_client")

# httpx errors raised before the request left this machine: resending cannot apply it twice.
# Matched by name because gql may use either `httpx` or `httpx2`, whose classes differ.
_NOT_SENT = {"ConnectError", "ConnectTimeout", "PoolTimeout"}
# Subscription errors that a reconnect cannot cure.
_FINAL_SUBSCRIPTION_CODES = {"BAD_USER_INPUT", "NOT_FOUND", "UNAUTHENTICATED", "FORBIDDEN", "QUERY_TOO_COMPLEX"}
# graphql-transport-ws closes for a refused credential (4401 Unauthorized, 4403 Forbidden).
_REFUSED_CLOSE_CODES = {4401, 4403}
# Task results the fencing token is kept for; any other status means the task left us.
_HELD = {"ASSIGNED", "RUNNING"}


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; the n-th wait is base * 2**n, capped, with jitter."""

    attempts: int = 8
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, retry: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**retry)
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


class _LostRequest(TransportFailure):
    """A transport failure; `maybe_applied` when the server may have acted on the request."""

    def __init__(self, message: str, *, maybe_applied: bool):
        super().__init__(message)
        self.maybe_applied = maybe_applied


def _close_code(exc: BaseException) -> int | None:
    """The WebSocket close code behind a gql transport error, if the server sent one."""
    seen: BaseException | None = exc
    while seen is not None:
        received = getattr(seen, "rcvd", None)
        if received is not None and getattr(received, "code", None) is not None:
            return int(received.code)
        seen = seen.__cause__ or seen.__context__
    return None


def _new_key() -> str:
    return uuid.uuid4().hex


def _clean(variables: dict[str, Any]) -> dict[str, Any]:
    # Omitted, not null: the server's argument defaults apply.
    return {k: v for k, v in variables.items() if v is not None}


class TaskServiceClient:
    """Async client; use `async with TaskServiceClient.from_env() as client:`.

    `agent` names the agent acting; it may be omitted when `token` (an agent's bearer token)
    is given. Raises ConfigurationError when an agent operation has neither.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        agent: str | None = None,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        attempts: AttemptStore | None = None,
        config: Config | None = None,
    ):
        base = config or Config()
        self.config = Config(
            url=url or base.url,
            agent=agent or base.agent,
            token=token or base.token,
            api_key=api_key or base.api_key,
            timeout=timeout if config is None else base.timeout,
            retries=base.retries,
        )
        self.http_url = graphql_http_url(self.config.url)
        self.ws_url = graphql_ws_url(self.config.url)
        self.retry = retry or RetryPolicy(attempts=self.config.retries)
        self.attempts: AttemptStore = attempts if attempts is not None else MemoryAttempts()
        self._agent_name = self.config.agent
        self._client: Client | None = None
        self._session: AsyncClientSession | None = None
        self._claim_lock = asyncio.Lock()
        self._documents: dict[str, GraphQLRequest] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> TaskServiceClient:
        """A client configured from TASK_SERVICE_URL, AGENT_NAME, TASK_SERVICE_TOKEN, API_KEY."""
        attempts = overrides.pop("attempts", None)
        retry = overrides.pop("retry", None)
        return cls(config=Config.from_env(**overrides), attempts=attempts, retry=retry)

    # -- connection ---------------------------------------------------------------------

    async def __aenter__(self) -> TaskServiceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._session is not None:
            return
        transport = HTTPXAsyncTransport(self.http_url, headers=self.config.auth_headers(), timeout=self.config.timeout)
        self._client = Client(transport=transport, execute_timeout=self.config.timeout + 5)
        self._session = await self._client.connect_async()  # type: ignore[assignment]

    async def close(self) -> None:
        client, self._client, self._session = self._client, None, None
        if client is not None:
            await client.close_async()

    @property
    def agent(self) -> str | None:
        """The agent's name: configured, or learnt from the server for a token (see whoami)."""
        return self._agent_name

    def _agent_arg(self) -> str | None:
        """The `agent` argument: the name if known; None lets the token name the agent."""
        if self._agent_name is None and not self.config.token:
            raise ConfigurationError("no agent name: set AGENT_NAME (or --agent), or use an agent token")
        return self._agent_name

    async def agent_name(self) -> str:
        """The acting agent's name, asking the server (a heartbeat) when only a token is known."""
        if self._agent_name is None:
            await self.whoami()
        assert self._agent_name is not None
        return self._agent_name

    # -- the request loop ---------------------------------------------------------------

    def _request(self, document: str, variables: dict[str, Any]) -> GraphQLRequest:
        parsed = self._documents.get(document)
        if parsed is None:
            parsed = self._documents[document] = gql(document)
        return GraphQLRequest(parsed, variable_values=_clean(variables))

    async def _send(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            await self.connect()
        assert self._session is not None
        try:
            return await self._session.execute(self._request(document, variables))
        except TransportQueryError as exc:
            raise from_graphql(exc.errors) from None
        except TransportConnectionFailed as exc:
            sent = type(exc.__cause__).__name__ not in _NOT_SENT
            raise _LostRequest(f"cannot reach {self.http_url}: {exc}", maybe_applied=sent) from exc
        except TransportServerError as exc:
            raise _LostRequest(f"{self.http_url} answered HTTP {exc.code}: {exc}", maybe_applied=True) from exc
        except (TransportProtocolError, TransportClosed, TimeoutError) as exc:
            raise _LostRequest(f"no valid answer from {self.http_url}: {exc!r}", maybe_applied=True) from exc

    async def execute(
        self,
        document: str,
        variables: dict[str, Any] | None = None,
        *,
        repeatable: bool = True,
        before_resend: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
    ) -> dict[str, Any]:
        """Run one operation with retries and return its `data`.

        `repeatable`: resending is harmless even if the lost attempt was applied (queries,
        idempotency-keyed mutations); otherwise a maybe-applied loss raises TransportFailure.
        `before_resend` runs before resending a maybe-applied request and may return the data
        to use instead (claimNextTask adopts the task a lost answer had claimed).
        Raises the contract error's class, or TransportFailure when the retries run out.
        """
        variables = variables or {}
        lost = False
        for retry in range(self.retry.attempts):
            last = retry == self.retry.attempts - 1
            if lost and before_resend is not None:
                found = await before_resend()
                if found is not None:
                    return found
            try:
                return await self._send(document, variables)
            except RateLimitedError as exc:
                if last:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else self.retry.delay(retry)
                log.info("rate limited; retrying in %.2f s", wait)
                await asyncio.sleep(wait)
            except _LostRequest as exc:
                if last:
                    raise TransportFailure(exc.message) from exc
                if exc.maybe_applied and not repeatable and before_resend is None:
                    raise TransportFailure(
                        f"{exc.message}; not resent, since the server may have applied it: check before repeating"
                    ) from exc
                lost = lost or exc.maybe_applied
                wait = self.retry.delay(retry)
                log.info("%s; retrying in %.2f s", exc.message, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last retry returns or raises")

    # -- fencing --------------------------------------------------------------------------

    def _attempt(self, task_id: str, attempt: int | None) -> int | None:
        return attempt if attempt is not None else self.attempts.get(str(task_id))

    def _note(self, task: Task) -> Task:
        """Keep the fencing token of a task we hold; drop it once the task has left us."""
        if task.status in _HELD:
            self.attempts.keep(task.id, task.attempt)
        else:
            self.attempts.forget(task.id)
        return task

    async def _task_mutation(self, name: str, variables: dict[str, Any], *, repeatable: bool = True) -> Task:
        data = await self.execute(ops.TASK_MUTATION[name], variables, repeatable=repeatable)
        return Task.from_dict(data[name])

    # -- agents -------------------------------------------------------------------------

    async def register(
        self,
        name: str | None = None,
        *,
        role: str | None = None,
        skills: list[str] | None = None,
        capabilities: Any = None,
        max_concurrent_tasks: int | None = None,
    ) -> Registration:
        """Create or update the agent (upsert by name) and return it with its new token.

        Registering again rotates the token: the previous one stops working.
        """
        name = name or self._agent_name
        if not name:
            raise ConfigurationError("register needs an agent name: set AGENT_NAME or pass --agent")
        data = await self.execute(
            ops.REGISTER_AGENT,
            {
                "input": _clean(
                    {
                        "name": name,
                        "role": role,
                        "skills": skills,
                        "capabilities": capabilities,
                        "maxConcurrentTasks": max_concurrent_tasks,
                    }
                )
            },
        )
        registration = Registration.from_dict(data["registerAgent"])
        self._agent_name = registration.agent.name
        return registration

    async def heartbeat(self) -> Agent:
        """Tell the server this agent is alive; renews the leases of its tasks."""
        data = await self.execute(ops.HEARTBEAT, {"agent": self._agent_arg()})
        agent = Agent.from_dict(data["heartbeat"])
        self._agent_name = agent.name
        return agent

    async def whoami(self) -> Agent:
        """The acting agent (a heartbeat, which also tells a token-only client its name)."""
        return await self.heartbeat()

    async def unregister(self, *, hard: bool = False) -> bool:
        """Leave the team: the agent's active tasks return to PENDING."""
        data = await self.execute(ops.UNREGISTER_AGENT, {"name": await self.agent_name(), "hard": hard})
        return bool(data["unregisterAgent"])

    async def get_agent(self, name: str | None = None) -> Agent | None:
        data = await self.execute(ops.AGENT_QUERY, {"name": name or await self.agent_name()})
        return Agent.from_dict(data["agent"]) if data["agent"] else None

    async def agents(self, *, status: str | None = None, skill: str | None = None) -> list[Agent]:
        data = await self.execute(ops.AGENTS_QUERY, {"status": status, "skill": skill})
        return [Agent.from_dict(a) for a in data["agents"]]

    async def my_tasks(self) -> list[Task]:
        """The agent's ASSIGNED, RUNNING and REVIEWING tasks."""
        data = await self.execute(ops.AGENT_TASKS, {"name": await self.agent_name()})
        return [Task.from_dict(t) for t in (data["agent"] or {}).get("currentTasks", [])]

    # -- claiming and working -------------------------------------------------------------

    async def available_tasks(self, *, project_id: str | None = None, first: int | None = None) -> list[Task]:
        """Ready tasks this agent may claim, best first."""
        data = await self.execute(
            ops.AVAILABLE_TASKS, {"agent": self._agent_arg(), "projectId": project_id, "first": first}
        )
        return [Task.from_dict(t) for t in data["availableTasks"]]

    async def claim(self, task_id: str) -> Task:
        """Claim the given task. ConflictError if another agent has it, DependenciesNotMetError,
        LimitReachedError when the agent holds maxConcurrentTasks already."""
        task = await self._task_mutation(
            "claimTask", {"id": task_id, "agent": self._agent_arg(), "idempotencyKey": _new_key()}
        )
        return self._note(task)

    async def claim_next(self, *, project_id: str | None = None, tags: list[str] | None = None) -> Task | None:
        """Claim the best ready task this agent may take, or None when there is none.

        claimNextTask takes no idempotency key, so when an answer is lost the client first
        looks for an ASSIGNED task of this agent that it does not know yet (the lost claim)
        and adopts it instead of claiming a second one. Claims of one client are serialised
        so that search never mistakes a concurrent claim's task for a lost one.
        """
        variables = {"agent": self._agent_arg(), "projectId": project_id, "tags": tags}
        async with self._claim_lock:
            data = await self.execute(
                ops.TASK_MUTATION["claimNextTask"],
                variables,
                before_resend=lambda: self._lost_claim(project_id, tags),
            )
        found = data["claimNextTask"]
        return self._note(Task.from_dict(found)) if found else None

    async def _lost_claim(self, project_id: str | None, tags: list[str] | None) -> dict[str, Any] | None:
        try:
            mine = await self.my_tasks()
        except TransportFailure:
            return None
        known = self.attempts.task_ids()
        for task in sorted(mine, key=lambda t: (t.assigned_at is None, t.assigned_at, int(t.id))):
            if task.status != "ASSIGNED" or task.id in known:
                continue
            if project_id is not None and task.project_id != str(project_id):
                continue
            if tags and not set(tags) & set(task.tags):
                continue
            log.warning("adopting task %s: the answer to its claim was lost", task.id)
            data = await self.execute(ops.TASK_QUERY, {"id": task.id})
            return {"claimNextTask": data["task"]}
        return None

    async def start(self, task_id: str, *, attempt: int | None = None) -> Task:
        """ASSIGNED -> RUNNING."""
        task = await self._task_mutation(
            "startTask",
            {
                "id": task_id,
                "agent": self._agent_arg(),
                "attempt": self._attempt(task_id, attempt),
                "idempotencyKey": _new_key(),
            },
        )
        return self._note(task)

    async def progress(
        self, task_id: str, progress: int, message: str | None = None, *, attempt: int | None = None
    ) -> Task:
        """Report 0..100 progress (renews the lease)."""
        return await self._task_mutation(
            "reportProgress",
            {
                "id": task_id,
                "agent": self._agent_arg(),
                "progress": progress,
                "message": message,
                "attempt": self._attempt(task_id, attempt),
            },
        )

    async def submit(
        self, task_id: str, result: Any = None, summary: str | None = None, *, attempt: int | None = None
    ) -> Task:
        """Hand in the result: REVIEWING, or COMPLETED when the task needs no review."""
        task = await self._task_mutation(
            "submitTask",
            {
                "id": task_id,
                "agent": self._agent_arg(),
                "result": result,
                "summary": summary,
                "attempt": self._attempt(task_id, attempt),
                "idempotencyKey": _new_key(),
            },
        )
        return self._note(task)

    async def release(self, task_id: str, reason: str | None = None, *, attempt: int | None = None) -> Task:
        """Give the task back (PENDING) without counting a failure."""
        task = await self._task_mutation(
            "releaseTask",
            {
                "id": task_id,
                "agent": self._agent_arg(),
                "reason": reason,
                "attempt": self._attempt(task_id, attempt),
                "idempotencyKey": _new_key(),
            },
        )
        return self._note(task)

    async def fail(self, task_id: str, error: str, *, retryable: bool = True, attempt: int | None = None) -> Task:
        """Report a failure: PENDING again after a backoff while attempts remain, else FAILED."""
        task = await self._task_mutation(
            "failTask",
            {
                "id": task_id,
                "agent": self._agent_arg(),
                "error": error,
                "retryable": retryable,
                "attempt": self._attempt(task_id, attempt),
                "idempotencyKey": _new_key(),
            },
        )
        return self._note(task)

    async def review(self, task_id: str, *, approved: bool, feedback: str | None = None) -> Task:
        """Approve (COMPLETED) or reject (back to PENDING with feedback) another agent's work."""
        return await self._task_mutation(
            "reviewTask",
            {
                "id": task_id,
                "reviewer": await self.agent_name(),
                "approved": approved,
                "feedback": feedback,
                "idempotencyKey": _new_key(),
            },
        )

    async def retry_task(self, task_id: str) -> Task:
        """FAILED or CANCELLED -> PENDING."""
        return await self._task_mutation("retryTask", {"id": task_id, "idempotencyKey": _new_key()})

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        return await self._task_mutation("cancelTask", {"id": task_id, "reason": reason, "idempotencyKey": _new_key()})

    # -- planning -------------------------------------------------------------------------

    async def create_project(self, name: str, *, description: str | None = None, status: str | None = None) -> Project:
        """A new project. Not resent after a lost answer (it has no idempotency key)."""
        data = await self.execute(
            ops.CREATE_PROJECT,
            {"input": _clean({"name": name, "description": description, "status": status})},
            repeatable=False,
        )
        return Project.from_dict(data["createProject"])

    async def update_project(self, project_id: str, **fields: Any) -> Project:
        data = await self.execute(ops.UPDATE_PROJECT, {"id": project_id, "input": _clean(fields)})
        return Project.from_dict(data["updateProject"])

    async def project(self, project_id: str) -> Project | None:
        data = await self.execute(ops.PROJECT_QUERY, {"id": project_id})
        return Project.from_dict(data["project"]) if data["project"] else None

    async def projects(self, *, status: str | None = None) -> list[Project]:
        data = await self.execute(ops.PROJECTS_QUERY, {"status": status})
        return [Project.from_dict(p) for p in data["projects"]]

    async def create_task(self, project_id: str, title: str, task_type: str, **fields: Any) -> Task:
        """One task; `fields` are CreateTaskInput's (camelCase). An idempotencyKey is added
        when absent, so a retry after a lost answer returns the task instead of a copy."""
        task_input = _clean({"projectId": project_id, "title": title, "taskType": task_type, **fields})
        task_input.setdefault("idempotencyKey", _new_key())
        data = await self.execute(ops.TASK_MUTATION["createTask"], {"input": task_input})
        return Task.from_dict(data["createTask"])

    async def create_tasks(self, project_id: str, tasks: list[dict[str, Any]]) -> list[Task]:
        """Up to MAX_BATCH_SIZE tasks in one all-or-nothing call (`ref`/`dependsOnRefs` link
        them). Each item gets an idempotencyKey when absent, so a retry is safe."""
        items = [{"idempotencyKey": _new_key(), **_clean(item)} for item in tasks]
        data = await self.execute(ops.CREATE_TASKS, {"projectId": project_id, "tasks": items})
        return [Task.from_dict(t) for t in data["createTasks"]]

    async def update_task(self, task_id: str, **fields: Any) -> Task:
        """Change UpdateTaskInput's fields (camelCase); repeating it sets the same values."""
        return await self._task_mutation("updateTask", {"id": task_id, "input": _clean(fields)})

    async def add_dependency(self, task_id: str, depends_on: str) -> Task:
        return await self._task_mutation(
            "addDependency", {"taskId": task_id, "dependsOn": depends_on}, repeatable=False
        )

    async def remove_dependency(self, task_id: str, depends_on: str) -> Task:
        return await self._task_mutation(
            "removeDependency", {"taskId": task_id, "dependsOn": depends_on}, repeatable=False
        )

    async def delete_task(self, task_id: str, *, hard: bool = False) -> bool:
        data = await self.execute(ops.DELETE_TASK, {"id": task_id, "hard": hard}, repeatable=False)
        return bool(data["deleteTask"])

    async def restore_task(self, task_id: str) -> Task:
        return await self._task_mutation("restoreTask", {"id": task_id}, repeatable=False)

    # -- looking --------------------------------------------------------------------------

    async def task(self, task_id: str) -> Task | None:
        data = await self.execute(ops.TASK_QUERY, {"id": task_id})
        return Task.from_dict(data["task"]) if data["task"] else None

    async def tasks(self, *, first: int | None = None, after: str | None = None, **task_filter: Any) -> TaskPage:
        """One page of tasks; `task_filter` takes TaskFilter's fields (camelCase)."""
        data = await self.execute(
            ops.TASKS_QUERY, {"filter": _clean(task_filter) or None, "first": first, "after": after}
        )
        return TaskPage.from_dict(data["tasks"])

    async def events(
        self,
        *,
        after: str | None = None,
        project_id: str | None = None,
        task_id: str | None = None,
        first: int | None = None,
    ) -> list[TaskEvent]:
        """Stored events after `after`, oldest first."""
        data = await self.execute(
            ops.EVENTS_QUERY, {"after": after, "projectId": project_id, "taskId": task_id, "first": first}
        )
        return [TaskEvent.from_dict(e) for e in data["events"]]

    async def stats(self, *, project_id: str | None = None, recent: int | None = None) -> DashboardStats:
        data = await self.execute(ops.DASHBOARD_STATS, {"projectId": project_id, "recent": recent})
        return DashboardStats.from_dict(data["dashboardStats"])

    async def latest_event_id(self) -> str:
        """The id of the newest event ("0" when there is none): a cursor for 'from now on'."""
        data = await self.execute(ops.LATEST_EVENT)
        recent = data["dashboardStats"]["recentEvents"]
        return str(recent[0]["id"]) if recent else "0"

    # -- watching -------------------------------------------------------------------------

    def _ws_client(self) -> Client:
        headers = self.config.auth_headers()
        transport = WebsocketsTransport(
            url=self.ws_url,
            init_payload=headers,
            headers=headers,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=self.config.timeout,
            ack_timeout=self.config.timeout,
        )
        return Client(transport=transport)

    async def subscribe_events(
        self,
        *,
        after: str | None = None,
        project_id: str | None = None,
        task_id: str | None = None,
        agent: str | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> AsyncGenerator[TaskEvent, None]:
        """Every task event after `after` ("0": all history; None: from now on), then live ones,
        forever. After a lost connection it reconnects with backoff and resumes from the last
        event it yielded, so none is skipped or repeated. `on_reconnect` is called each time.
        Raises the contract error when the server rejects the subscription itself.
        """
        cursor = after if after is not None else await self.latest_event_id()
        failures = 0
        while True:
            _raise_if_cancelled()
            try:
                async with self._ws_client() as session:
                    _raise_if_cancelled()
                    if failures and on_reconnect is not None:
                        on_reconnect()
                    request = self._request(
                        ops.TASK_EVENTS, {"after": cursor, "projectId": project_id, "taskId": task_id, "agent": agent}
                    )
                    async for data in session.subscribe(request):
                        event = TaskEvent.from_dict(data["taskEvents"])
                        cursor, failures = event.id, 0
                        yield event
            except TransportQueryError as exc:
                error = from_graphql(exc.errors)
                if error.code in _FINAL_SUBSCRIPTION_CODES:
                    raise error from None
                log.info("subscription ended (%s); resuming after event %s", error.message, cursor)
            except (TransportError, OSError, TimeoutError) as exc:
                if _close_code(exc) in _REFUSED_CLOSE_CODES:
                    raise UnauthenticatedError(
                        f"{self.ws_url} refused the credential (WebSocket close {_close_code(exc)}):"
                        " check TASK_SERVICE_TOKEN or API_KEY"
                    ) from None
                log.info("subscription connection lost (%r); resuming after event %s", exc, cursor)
            _raise_if_cancelled()
            await asyncio.sleep(self.retry.delay(min(failures, 6)))
            failures += 1


def _raise_if_cancelled() -> None:
    """Re-raise a cancel that a library swallowed. Python 3.11's wait_for returns the result
    instead of raising when the awaited step completes together with the cancel (gql awaits
    the connection_ack that way); the task's cancel request then stays pending, and a stream
    that went on would reconnect or wait for events for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


__all__ = ["RetryPolicy", "TaskServiceClient", "TaskServiceError"]
