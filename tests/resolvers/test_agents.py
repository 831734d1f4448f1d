"""Agent mutations: unregistering an agent gives its work back."""

from __future__ import annotations

from typing import Any

import pytest

from tests import factories as f

UNREGISTER = "mutation($name: String!, $hard: Boolean) { unregisterAgent(name: $name, hard: $hard) }"
TASK = "query($id: ID!) { task(id: $id) { status ready assignee { name } leaseExpiresAt } }"


@pytest.fixture
async def pid(gql: Any) -> str:
    """A project, an agent that will leave (`leaving`) and one that stays."""
    project_id = await f.project(gql)
    await f.agent(gql, name="leaving", maxConcurrentTasks=5)
    await f.agent(gql, name="staying")
    return project_id


class TestUnregisterAgent:
    @pytest.mark.parametrize("hard", [False, True])
    async def test_its_active_tasks_go_back_to_pending_for_others(self, gql, pid, hard):
        assigned = (await f.task(gql, project_id=pid, title="assigned"))["id"]
        running = (await f.task(gql, project_id=pid, title="running"))["id"]
        await f.claim(gql, task_id=assigned, agent="leaving")
        await f.claim(gql, task_id=running, agent="leaving")
        await f.transition(gql, "startTask", id=running, agent="leaving")

        assert await gql.execute(UNREGISTER, name="leaving", hard=hard) == {"unregisterAgent": True}

        for task_id, was in ((assigned, "ASSIGNED"), (running, "RUNNING")):
            task = (await gql.execute(TASK, id=task_id))["task"]
            assert task == {"status": "PENDING", "ready": True, "assignee": None, "leaseExpiresAt": None}
            last = (await f.events(gql, task_id=task_id))[-1]
            assert (last["type"], last["fromStatus"], last["toStatus"]) == ("RELEASED", was, "PENDING")
            again = await f.claim(gql, task_id=task_id, agent="staying")
            assert (again["status"], again["attempt"], again["assignee"]) == ("ASSIGNED", 2, {"name": "staying"})

    async def test_a_soft_unregistered_agent_is_offline_and_holds_nothing(self, gql, pid):
        task_id = (await f.task(gql, project_id=pid))["id"]
        await f.claim(gql, task_id=task_id, agent="leaving")

        await gql.execute(UNREGISTER, name="leaving", hard=False)

        data = await gql.execute('{ agent(name: "leaving") { status deletedAt currentTasks { id } } }')
        assert data["agent"]["status"] == "OFFLINE"
        assert data["agent"]["deletedAt"] is not None
        assert data["agent"]["currentTasks"] == []
