"""`taskctl mcp` through a real MCP client session over stdio (the mcp package's client)."""

from __future__ import annotations

import json
import uuid
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


async def test_an_mcp_session_lists_the_tools_and_completes_a_task(server: Server, tmp_path: Path) -> None:
    name = f"assistant-{uuid.uuid4().hex[:8]}"
    params = StdioServerParameters(
        command=TASKCTL,
        args=["mcp", "--skill", "python"],
        env=client_env(server.url, tmp_path / "state", AGENT_NAME=name),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
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

        async with TaskServiceClient(server.url, agent=f"reviewer-{uuid.uuid4().hex[:6]}") as reviewer:
            await reviewer.register()
            await reviewer.review(claimed["id"], approved=True, feedback="Good")

        progress = payload(await session.call_tool("project_progress", {"project_id": project_id}))
        assert (progress["progress"]["completed"], progress["progress"]["pending"]) == (1, 1)
        shown = payload(await session.call_tool("show_task", {"task_id": claimed["id"]}))
        assert (shown["status"], shown["result"], shown["feedback"]) == ("COMPLETED", {"pr": 12}, "Good")

    async with TaskServiceClient(server.url) as observer:
        agent = await observer.get_agent(name)
    assert agent is not None
    assert agent.skills == ["python"]
    assert agent.stats is not None
    assert agent.stats.completed_tasks == 1
