"""`taskctl mcp` through a real MCP client session over stdio (the mcp package's client)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client

from task_service_client import TaskServiceClient
from tests.client.conftest import TASKCTL, client_env
from tests.e2e.conftest import Server

TOOLS = {
    "list_ready_tasks",
    "claim_next_task",
    "claim_task",
    "start_task",
    "report_progress",
    "submit_task",
    "fail_task",
    "release_task",
    "review_task",
    "my_tasks",
    "show_task",
    "create_tasks",
    "project_progress",
}


def payload(result: Any) -> Any:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


@contextlib.asynccontextmanager
async def mcp_session(server: Server, state: Path, name: str, *args: str) -> AsyncIterator[ClientSession]:
    """A real MCP client session with `taskctl mcp` acting as agent `name`."""
    params = StdioServerParameters(
        command=TASKCTL, args=["mcp", *args], env=client_env(server.url, state, AGENT_NAME=name)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def test_an_mcp_session_lists_the_tools_and_completes_a_task(server: Server, tmp_path: Path) -> None:
    name = f"assistant-{uuid.uuid4().hex[:8]}"
    async with mcp_session(server, tmp_path / "state", name, "--skill", "python") as session:
        listed = await session.list_tools()
        tools = {tool.name: tool for tool in listed.tools}
        assert set(tools) >= TOOLS
        assert all(tool.description for tool in tools.values())

        plan = payload(
            await session.call_tool(
                "create_tasks",
                {
                    "project_name": f"mcp-{uuid.uuid4().hex[:6]}",
                    "tasks": [
                        {"ref": "code", "title": "Write code", "taskType": "development", "requiredSkills": ["python"]},
                        {"title": "Review code", "taskType": "review", "dependsOnRefs": ["code"]},
                    ],
                },
            )
        )
        project_id = plan["projectId"]
        code_task, review_task = plan["tasks"]
        assert review_task["dependencies"] == [code_task["id"]]

        ready = payload(await session.call_tool("list_ready_tasks", {"project_id": project_id}))
        assert [t["id"] for t in ready["tasks"]] == [code_task["id"]]
        claimed = payload(await session.call_tool("claim_next_task", {"project_id": project_id}))["task"]
        assert (claimed["id"], claimed["assignee"]) == (code_task["id"], name)
        assert payload(await session.call_tool("start_task", {"task_id": claimed["id"]}))["status"] == "RUNNING"
        progressed = payload(
            await session.call_tool("report_progress", {"task_id": claimed["id"], "progress": 70, "message": "tests"})
        )
        assert progressed["progress"] == 70
        submitted = payload(
            await session.call_tool(
                "submit_task", {"task_id": claimed["id"], "result": {"pr": 12}, "summary": "Added it"}
            )
        )
        assert submitted["status"] == "REVIEWING"

        refused = await session.call_tool("review_task", {"task_id": claimed["id"], "approved": True})
        assert refused.is_error
        assert "FORBIDDEN: " in refused.content[0].text
        none_left = payload(await session.call_tool("claim_next_task", {"project_id": project_id}))
        assert none_left == {"task": None}
        mine = payload(await session.call_tool("my_tasks", {}))
        assert [(t["id"], t["status"]) for t in mine["tasks"]] == [(claimed["id"], "REVIEWING")]

        # A second MCP session, another agent, reviews it: the task completes through MCP alone.
        reviewer = f"reviewer-{uuid.uuid4().hex[:6]}"
        async with mcp_session(server, tmp_path / "reviewer-state", reviewer) as second:
            approved = payload(
                await second.call_tool("review_task", {"task_id": claimed["id"], "approved": True, "feedback": "Good"})
            )
        assert (approved["status"], approved["feedback"]) == ("COMPLETED", "Good")

        progress = payload(await session.call_tool("project_progress", {"project_id": project_id}))
        assert (progress["progress"]["completed"], progress["progress"]["pending"]) == (1, 1)
        shown = payload(await session.call_tool("show_task", {"task_id": claimed["id"]}))
        assert (shown["status"], shown["result"], shown["feedback"]) == ("COMPLETED", {"pr": 12}, "Good")

    async with TaskServiceClient(server.url) as observer:
        agent = await observer.get_agent(name)
        approvals = [e.actor for e in await observer.events(task_id=claimed["id"], after="0") if e.type == "APPROVED"]
    assert approvals == [reviewer]
    assert agent is not None
    assert agent.skills == ["python"]
    assert agent.stats is not None
    assert agent.stats.completed_tasks == 1


async def test_mcp_release_and_fail_change_the_tasks_status(server: Server, tmp_path: Path) -> None:
    name = f"assistant-{uuid.uuid4().hex[:8]}"
    async with mcp_session(server, tmp_path / "state", name) as session:
        plan = payload(
            await session.call_tool(
                "create_tasks",
                {
                    "project_name": f"mcp-{uuid.uuid4().hex[:6]}",
                    "tasks": [
                        {"title": "Give back", "taskType": "research", "priority": 9},
                        {"title": "Cannot be done", "taskType": "research", "priority": 1},
                    ],
                },
            )
        )
        project_id = plan["projectId"]
        give_back, hopeless = (t["id"] for t in plan["tasks"])

        first = payload(await session.call_tool("claim_next_task", {"project_id": project_id}))["task"]
        assert first["id"] == give_back
        released = payload(await session.call_tool("release_task", {"task_id": give_back, "reason": "no time"}))
        assert (released["status"], released["assignee"]) == ("PENDING", None)

        claimed = payload(await session.call_tool("claim_task", {"task_id": hopeless}))
        assert claimed["assignee"] == name
        payload(await session.call_tool("start_task", {"task_id": hopeless}))
        failed = payload(
            await session.call_tool("fail_task", {"task_id": hopeless, "error": "spec contradicts", "retryable": False})
        )
        assert failed["status"] == "FAILED"

    async with TaskServiceClient(server.url) as observer:
        back, gone = await observer.task(give_back), await observer.task(hopeless)
        released_events = [e.type for e in await observer.events(task_id=give_back, after="0")]
    assert back is not None
    assert gone is not None
    assert (back.status, back.assignee) == ("PENDING", None)
    assert released_events == ["CREATED", "CLAIMED", "RELEASED"]
    assert (gone.status, gone.last_error) == ("FAILED", "spec contradicts")
