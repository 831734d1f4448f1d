"""`taskctl mcp`: the agent operations as MCP tools over stdio.

An MCP-speaking coding assistant starts `taskctl mcp` with TASK_SERVICE_URL and AGENT_NAME
(or TASK_SERVICE_TOKEN) in its environment and gets tools to find, claim, do, submit and
review tasks and to plan projects. The server registers the agent when it has no token,
heartbeats in the background while the session lasts (keeping its claims' leases alive),
and reports contract errors as tool errors reading `CODE: message`. Lists come wrapped in
an object (`{"tasks": [...]}`) so that an empty one still reads as one JSON text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .client import TaskServiceClient
from .errors import TaskServiceError
from .models import to_json

log = logging.getLogger("task_service_client.mcp")
T = TypeVar("T")

INSTRUCTIONS = """\
You are an agent of a team coordinated by a Task Service. Work loop: claim_next_task, then
start_task, report_progress as you go, and submit_task with your result (or fail_task with
the reason; release_task if you cannot do it). A task that comes back to you carries the
reviewer's `feedback`: address it. Errors read `CODE: message`: CONFLICT or STALE_ATTEMPT
mean the task is not yours (any more): move on to the next one. Plan work with create_tasks
(refs and depends_on link tasks of one call) and follow it with project_progress."""


async def _call(action: Awaitable[T]) -> T:
    try:
        return await action
    except TaskServiceError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from None


def build_server(
    client: TaskServiceClient,
    *,
    skills: list[str] | None = None,
    role: str | None = None,
    heartbeat_every: float = 15.0,
) -> MCPServer[Any]:
    """The MCP server for `client`'s agent (not yet running)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
        await client.connect()
        if client.config.token:
            await client.whoami()
        else:
            await client.register(role=role, skills=skills)
        beats = asyncio.create_task(_heartbeats(client, heartbeat_every))
        try:
            yield
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
            await client.close()

    server: MCPServer[Any] = MCPServer("task-service", instructions=INSTRUCTIONS, lifespan=lifespan)

    @server.tool(description="Ready tasks this agent may claim, best first.")
    async def list_ready_tasks(project_id: str | None = None, limit: int = 20) -> dict[str, Any]:
        return {"tasks": to_json(await _call(client.available_tasks(project_id=project_id, first=limit)))}

    @server.tool(description="Claim the best ready task for this agent; {'task': null} when there is none.")
    async def claim_next_task(project_id: str | None = None, tags: list[str] | None = None) -> dict[str, Any]:
        return {"task": to_json(await _call(client.claim_next(project_id=project_id, tags=tags)))}

    @server.tool(description="Claim a given task (CONFLICT if another agent has it).")
    async def claim_task(task_id: str) -> dict[str, Any]:
        return to_json(await _call(client.claim(task_id)))

    @server.tool(description="Start a claimed task (ASSIGNED -> RUNNING).")
    async def start_task(task_id: str) -> dict[str, Any]:
        return to_json(await _call(client.start(task_id)))

    @server.tool(description="Report progress 0-100 on your running task, with an optional message.")
    async def report_progress(task_id: str, progress: int, message: str | None = None) -> dict[str, Any]:
        return to_json(await _call(client.progress(task_id, progress, message)))

    @server.tool(description="Submit your task's result (any JSON) and a short summary for the reviewer.")
    async def submit_task(task_id: str, result: Any = None, summary: str | None = None) -> dict[str, Any]:
        return to_json(await _call(client.submit(task_id, result, summary)))

    @server.tool(description="Report that your task failed; retryable=false fails it for good.")
    async def fail_task(task_id: str, error: str, retryable: bool = True) -> dict[str, Any]:
        return to_json(await _call(client.fail(task_id, error, retryable=retryable)))

    @server.tool(description="Give your task back to the queue without counting a failure.")
    async def release_task(task_id: str, reason: str | None = None) -> dict[str, Any]:
        return to_json(await _call(client.release(task_id, reason)))

    @server.tool(description="Approve or reject another agent's submitted task, with feedback.")
    async def review_task(task_id: str, approved: bool, feedback: str | None = None) -> dict[str, Any]:
        return to_json(await _call(client.review(task_id, approved=approved, feedback=feedback)))

    @server.tool(description="This agent's ASSIGNED, RUNNING and REVIEWING tasks.")
    async def my_tasks() -> dict[str, Any]:
        return {"tasks": to_json(await _call(client.my_tasks()))}

    @server.tool(description="One task in full: description, acceptance criteria, feedback, result.")
    async def show_task(task_id: str) -> dict[str, Any]:
        task = await _call(client.task(task_id))
        if task is None:
            raise ToolError(f"NOT_FOUND: task {task_id} does not exist")
        return to_json(task)

    @server.tool(
        description="Create tasks in one all-or-nothing call. Each task: title, taskType, and optionally "
        "ref, description, priority (1-10), tags, requiredSkills, dependsOnRefs (refs of tasks in this call), "
        "requiresReview, acceptanceCriteria. Give project_id, or project_name to create a new project."
    )
    async def create_tasks(
        tasks: list[dict[str, Any]], project_id: str | None = None, project_name: str | None = None
    ) -> dict[str, Any]:
        if project_id is None:
            if not project_name:
                raise ToolError("BAD_USER_INPUT: give project_id or project_name")
            project_id = (await _call(client.create_project(project_name))).id
        created = await _call(client.create_tasks(project_id, tasks))
        return {"projectId": project_id, "tasks": to_json(created)}

    @server.tool(description="A project's progress: counts per status and percent complete.")
    async def project_progress(project_id: str) -> dict[str, Any]:
        project = await _call(client.project(project_id))
        if project is None:
            raise ToolError(f"NOT_FOUND: project {project_id} does not exist")
        return to_json(project)

    return server


async def _heartbeats(client: TaskServiceClient, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await client.heartbeat()
        except TaskServiceError as exc:
            log.warning("heartbeat failed: %s: %s", exc.code, exc.message)


def serve(client: TaskServiceClient, **options: Any) -> None:
    """Run the MCP server on stdin/stdout until the client closes the session."""
    build_server(client, **options).run("stdio")
