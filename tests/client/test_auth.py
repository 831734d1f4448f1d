"""The client against a server with API_KEY set: the admin key, token-only agents (no agent
name) over HTTP and WebSocket, refused credentials, and rate limits waited out."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from task_service_client import RetryPolicy, TaskServiceClient, UnauthenticatedError
from tests.client.conftest import TASKCTL, Proxy, Taskctl, port_of
from tests.e2e.conftest import Server, fresh_pg_database, running_server
from tests.e2e.security_helpers import ADMIN_KEY

RATE = 5  # mutations per second per caller


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with fresh_pg_database("ts_client_auth") as url:
        async with running_server(
            url,
            tmp_path_factory.mktemp("auth"),
            API_KEY=ADMIN_KEY,
            RATE_LIMIT=f"{RATE}/second",
            RETRY_BACKOFF_SECONDS="0",
        ) as srv:
            yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(taskctl: Taskctl) -> Taskctl:
    return Taskctl(taskctl.url, taskctl.state_dir, {"API_KEY": ADMIN_KEY})


async def token_agent(admin: Taskctl, *skills: str) -> tuple[str, Taskctl]:
    """A new agent registered by the admin, and taskctl holding only its token."""
    name = unique("bot")
    registration = await admin.ok("register", name, *(f"--skill={s}" for s in skills))
    return name, Taskctl(admin.url, admin.state_dir, {"TASK_SERVICE_TOKEN": registration["token"]})


class TestTokenOnlyAgent:
    async def test_the_agent_loop_with_a_token_and_no_name(self, admin: Taskctl) -> None:
        name, agent = await token_agent(admin, "python")
        assert (await agent.ok("heartbeat"))["name"] == name
        project = (await agent.ok("project", "create", unique("p")))["id"]
        task = await agent.ok(
            "task",
            "create",
            "--project",
            project,
            "--title",
            "t",
            "--type",
            "development",
            "--skill",
            "python",
            "--no-review",
        )
        assert task["requiredSkills"] == ["python"]
        assert [t["id"] for t in await agent.ok("available", "--project", project)] == [task["id"]]
        claimed = await agent.ok("next", "--start", "--project", project)
        assert (claimed["id"], claimed["assignee"], claimed["status"]) == (task["id"], name, "RUNNING")
        await agent.ok("progress", task["id"], "50", "half")
        assert [t["id"] for t in await agent.ok("mine")] == [task["id"]]
        done = await agent.ok("submit", task["id"], "--result", '"ok"')
        assert done["status"] == "COMPLETED"

        process = await asyncio.create_subprocess_exec(
            TASKCTL,
            "watch",
            "--after",
            "0",
            "--task",
            task["id"],
            stdout=asyncio.subprocess.PIPE,
            env=agent.environment(),
        )
        try:
            assert process.stdout is not None
            events = [json.loads(await asyncio.wait_for(process.stdout.readline(), 30)) for _ in range(5)]
        finally:
            process.terminate()
            await process.wait()
        assert [e["type"] for e in events] == ["CREATED", "CLAIMED", "STARTED", "PROGRESS", "SUBMITTED"]

    async def test_a_token_cannot_act_as_another_agent(self, admin: Taskctl) -> None:
        _, agent = await token_agent(admin)
        other, _ = await token_agent(admin)
        result = await agent("next", AGENT_NAME=other)
        assert (result.code, result.stderr.split(":")[0]) == (4, "FORBIDDEN")
        new_name = await agent("register", unique("newcomer"))
        assert (new_name.code, new_name.stderr.split(":")[0]) == (4, "FORBIDDEN")

    async def test_re_registering_rotates_the_token(self, admin: Taskctl) -> None:
        name, agent = await token_agent(admin)
        rotated = await agent.ok("register", name)
        assert rotated["token"] != agent.env["TASK_SERVICE_TOKEN"]
        stale = await agent("heartbeat")
        assert (stale.code, stale.stderr.split(":")[0]) == (4, "UNAUTHENTICATED")
        fresh = await agent.ok("heartbeat", TASK_SERVICE_TOKEN=rotated["token"])
        assert fresh["name"] == name

    async def test_work_with_only_a_token(self, admin: Taskctl, tmp_path: Path) -> None:
        name, agent = await token_agent(admin)
        project = (await admin.ok("project", "create", unique("p")))["id"]
        task = await admin.ok(
            "task", "create", "--project", project, "--title", "t", "--type", "testing", "--no-review"
        )
        result = await agent(
            "work", "--once", "--project", project, "--", "sh", "-c", 'echo "{\\"by\\": \\"$AGENT_NAME\\"}"'
        )
        assert result.code == 0, result.stderr
        assert result.lines[0] == {"event": "ready", "agent": name, "concurrency": 1, "held": []}
        done = await admin.ok("show", task["id"])
        assert (done["status"], done["result"], done["assignee"]) == ("COMPLETED", {"by": name}, name)

    async def test_token_flag_wins_over_task_service_token(self, admin: Taskctl) -> None:
        _, env_agent = await token_agent(admin)
        flag_name, flag_agent = await token_agent(admin)
        flag_token = flag_agent.env["TASK_SERVICE_TOKEN"]
        beat = await env_agent.ok("heartbeat", "--token", flag_token)
        assert beat["name"] == flag_name
        wrong_env = await env_agent.ok("heartbeat", "--token", flag_token, TASK_SERVICE_TOKEN="tsa_not-a-token")
        assert wrong_env["name"] == flag_name

    async def test_the_admin_key_acts_for_a_named_agent(self, admin: Taskctl) -> None:
        name = unique("managed")
        await admin.ok("register", name)
        project = (await admin.ok("project", "create", unique("p")))["id"]
        await admin.ok("task", "create", "--project", project, "--title", "t", "--type", "testing")
        claimed = await admin.ok("next", "--project", project, AGENT_NAME=name)
        assert claimed["assignee"] == name


class TestRefusedCredentials:
    async def test_no_or_a_wrong_credential_exits_4_unauthenticated(self, taskctl: Taskctl) -> None:
        for env in ({}, {"TASK_SERVICE_TOKEN": "tsa_not-a-token"}, {"API_KEY": "wrong-key-0123456789"}):
            result = await taskctl("projects", **env)
            assert (result.code, result.stderr.split(":")[0]) == (4, "UNAUTHENTICATED"), env

    async def test_a_refused_websocket_ends_the_stream(self, server: Server) -> None:
        async with TaskServiceClient(server.url, token="tsa_not-a-token") as client:
            with pytest.raises(UnauthenticatedError):
                async for _ in client.subscribe_events(after="0"):
                    pass

    async def test_watch_with_a_wrong_token_exits_instead_of_reconnecting(self, taskctl: Taskctl) -> None:
        result = await taskctl("watch", "--after", "0", TASK_SERVICE_TOKEN="tsa_not-a-token", timeout=30)
        assert (result.code, result.stderr.split(":")[0]) == (4, "UNAUTHENTICATED")


class TestWithAuthentication:
    async def test_a_lost_answer_applies_once_for_a_token_agent(self, admin: Taskctl, server: Server) -> None:
        """The idempotency key is kept per caller: with a token the caller is the agent."""
        registration = await admin.ok("register", unique("lossy"))
        async with Proxy(port_of(server.url)) as proxy:
            async with TaskServiceClient(
                proxy.url, token=registration["token"], retry=RetryPolicy(attempts=6, base_delay=0.05)
            ) as client:
                project = await client.create_project(unique("p"))
                task = await client.create_task(project.id, "t", "testing")
                await client.claim(task.id)
                proxy.lose_answer("startTask")
                started = await client.start(task.id)
                assert proxy.lost == [b"startTask"]
                assert started.status == "RUNNING"
                events = [e.type for e in await client.events(task_id=task.id, after="0")]
        assert events == ["CREATED", "CLAIMED", "STARTED"]

    async def test_rate_limits_are_waited_out_as_the_server_says(
        self, admin: Taskctl, server: Server, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Three quick tries would all be refused; waiting extensions.retryAfter succeeds."""
        registration = await admin.ok("register", unique("hasty"))
        impatient = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
        with caplog.at_level(logging.INFO, logger="task_service_client"):
            async with TaskServiceClient(server.url, token=registration["token"], retry=impatient) as client:
                beats = [await client.heartbeat() for _ in range(3 * RATE)]
        assert len(beats) == 3 * RATE
        assert any("rate limited" in record.getMessage() for record in caplog.records)
