"""Every taskctl command against a real server: JSON shapes, human tables, exit codes and the
one-line `CODE: message` on stderr."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from task_service_client.cli.app import build_parser
from tests.client.conftest import TASKCTL, Taskctl

TASK_KEYS = {
    "id",
    "projectId",
    "title",
    "taskType",
    "status",
    "priority",
    "attempt",
    "maxAttempts",
    "ready",
    "requiresReview",
    "assignee",
    "dependencies",
    "blockedBy",
    "result",
    "summary",
    "feedback",
    "lastError",
    "progress",
    "progressMessage",
    "leaseExpiresAt",
    "tags",
    "requiredSkills",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def new_project(taskctl: Taskctl) -> str:
    return (await taskctl.ok("project", "create", unique("project")))["id"]


async def new_task(taskctl: Taskctl, project: str, *extra: str) -> dict:
    return await taskctl.ok(
        "task", "create", "--project", project, "--title", unique("task"), "--type", "testing", *extra
    )


class TestHelp:
    def test_every_command_explains_itself_with_an_example(self) -> None:
        parser = build_parser()
        commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        expected = {
            "register",
            "heartbeat",
            "available",
            "next",
            "claim",
            "start",
            "progress",
            "submit",
            "release",
            "fail",
            "review",
            "retry",
            "cancel",
            "mine",
            "tasks",
            "show",
            "watch",
            "projects",
            "project",
            "task",
            "breakdown",
            "stats",
            "work",
            "mcp",
        }
        assert expected <= set(commands)
        nested = [commands["project"], commands["task"]]
        leaves = [p for name, p in commands.items() if name not in {"project", "task"}]
        for group in nested:
            leaves += list(group._subparsers._group_actions[0].choices.values())  # type: ignore[union-attr]
        for command in leaves:
            text = command.format_help()
            assert "example:\n  taskctl" in text or "example:\n  {" in text, command.prog
            assert command.description, command.prog

    async def test_main_help_names_configuration_and_exit_codes(self, taskctl: Taskctl) -> None:
        result = await taskctl("--help")
        assert result.code == 0
        for needle in (
            "TASK_SERVICE_URL",
            "AGENT_NAME",
            "TASK_SERVICE_TOKEN",
            "API_KEY",
            "3 nothing available",
            "1 error (bad usage too: BAD_USER_INPUT",
            "4 refused",
            "STALE_ATTEMPT",
        ):
            assert needle in result.stdout

    @pytest.mark.parametrize(
        ("args", "complaint"),
        [
            (["frobnicate"], "invalid choice: 'frobnicate'"),
            (["next", "--frobnicate"], "unrecognized arguments: --frobnicate"),
            (["progress", "7", "half"], "argument percent: invalid int value: 'half'"),
            (["review", "7"], "one of the arguments --approve --reject is required"),
            (["task", "create", "--project", "1"], "the following arguments are required: --title, --type"),
        ],
    )
    async def test_usage_errors_exit_1_with_bad_user_input(
        self, taskctl: Taskctl, args: list[str], complaint: str
    ) -> None:
        result = await taskctl(*args)
        assert result.code == 1
        assert result.stdout == ""
        *usage, last = result.stderr.splitlines()
        assert usage[0].startswith("usage: taskctl")
        assert last.startswith("BAD_USER_INPUT: taskctl")
        assert complaint in last


class TestAgentLoop:
    async def test_register_prints_the_agent_and_its_token(self, taskctl: Taskctl) -> None:
        name = unique("writer")
        out = await taskctl.ok(
            "register",
            name,
            "--role",
            "copywriter",
            "--skill",
            "copywrite,review",
            "--max-concurrent",
            "2",
            "--capabilities",
            '{"languages": ["en"]}',
        )
        assert out["token"]
        assert out["agent"]["name"] == name
        assert out["agent"]["skills"] == ["copywrite", "review"]
        assert out["agent"]["maxConcurrentTasks"] == 2
        assert out["agent"]["capabilities"] == {"languages": ["en"]}
        beat = await taskctl.ok("heartbeat", AGENT_NAME=name)
        assert beat["name"] == name
        assert beat["status"] == "ONLINE"

    async def test_heartbeat_every_keeps_beating_one_line_each(self, taskctl: Taskctl) -> None:
        name = unique("beater")
        await taskctl.ok("register", name)
        process = await asyncio.create_subprocess_exec(
            TASKCTL,
            "heartbeat",
            "--every",
            "0.2",
            stdout=asyncio.subprocess.PIPE,
            env=taskctl.environment(AGENT_NAME=name),
        )
        try:
            assert process.stdout is not None
            lines = [json.loads(await asyncio.wait_for(process.stdout.readline(), 30)) for _ in range(3)]
        finally:
            process.terminate()
            await process.wait()
        assert [line["name"] for line in lines] == [name] * 3
        assert lines[0]["lastHeartbeatAt"] < lines[2]["lastHeartbeatAt"]

    async def test_claim_start_progress_submit_review(self, taskctl: Taskctl) -> None:
        writer, editor = taskctl.as_agent(unique("writer")), taskctl.as_agent(unique("editor"))
        await writer.ok("register", "--skill", "copywrite")
        await editor.ok("register")
        project = await new_project(writer)
        created = await new_task(
            writer, project, "--skill", "copywrite", "--priority", "9", "--tag", "launch", "--acceptance", "400 words"
        )
        assert TASK_KEYS <= set(created)
        assert created["status"] == "PENDING"
        assert created["requiredSkills"] == ["copywrite"]

        available = await writer.ok("available", "--project", project)
        assert [t["id"] for t in available] == [created["id"]]
        nothing = await editor("available", "--project", project)
        assert (nothing.code, nothing.json) == (3, [])

        claimed = await writer.ok("next", "--project", project)
        assert (claimed["id"], claimed["status"], claimed["attempt"]) == (created["id"], "ASSIGNED", 1)
        assert claimed["assignee"] == writer.env["AGENT_NAME"]
        empty = await writer("next", "--project", project)
        assert (empty.code, empty.json, empty.stderr) == (3, None, "")

        started = await writer.ok("start", created["id"])
        assert started["status"] == "RUNNING"
        progressed = await writer.ok("progress", created["id"], "60", "draft", "done")
        assert (progressed["progress"], progressed["progressMessage"]) == (60, "draft done")
        mine = await writer.ok("mine")
        assert [t["id"] for t in mine] == [created["id"]]

        submitted = await writer.ok("submit", created["id"], "--result", '{"words": 420}', "--summary", "Brief")
        assert (submitted["status"], submitted["result"], submitted["summary"]) == (
            "REVIEWING",
            {"words": 420},
            "Brief",
        )
        own = await writer("review", created["id"], "--approve")
        assert own.code == 4
        assert own.stderr.startswith("FORBIDDEN: ")
        assert own.stderr.count("\n") == 1

        waiting = await editor.ok("tasks", "--status", "REVIEWING", "--project", project)
        assert [t["id"] for t in waiting] == [created["id"]]
        reviewed = await editor.ok("review", created["id"], "--approve", "--feedback", "Clear")
        assert (reviewed["status"], reviewed["feedback"]) == ("COMPLETED", "Clear")
        shown = await writer.ok("show", created["id"], "--events")
        assert shown["task"]["status"] == "COMPLETED"
        assert [e["type"] for e in shown["events"]] == [
            "CREATED",
            "CLAIMED",
            "STARTED",
            "PROGRESS",
            "SUBMITTED",
            "APPROVED",
        ]
        assert await writer.ok("mine") == []

    async def test_rejection_comes_back_with_feedback(self, taskctl: Taskctl) -> None:
        writer, editor = taskctl.as_agent(unique("writer")), taskctl.as_agent(unique("editor"))
        await writer.ok("register")
        await editor.ok("register")
        project = await new_project(writer)
        task = await new_task(writer, project)
        await writer.ok("claim", task["id"], "--start")
        result_file = taskctl.state_dir.parent / "result.json"
        result_file.write_text('{"draft": 1}')
        await writer.ok("submit", task["id"], "--result", f"@{result_file}")
        rejected = await editor.ok("review", task["id"], "--reject", "--feedback", "Cite sources")
        assert (rejected["status"], rejected["feedback"]) == ("PENDING", "Cite sources")
        again = await writer.ok("next", "--project", project)
        assert (again["id"], again["attempt"], again["feedback"]) == (task["id"], 2, "Cite sources")

    async def test_release_fail_retry_cancel(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("worker"))
        await agent.ok("register")
        project = await new_project(agent)
        task = await new_task(agent, project, "--max-attempts", "3")
        await agent.ok("claim", task["id"])
        released = await agent.ok("release", task["id"], "--reason", "no database")
        assert (released["status"], released["assignee"]) == ("PENDING", None)
        await agent.ok("claim", task["id"], "--start")
        failed = await agent.ok("fail", task["id"], "the", "API", "said", "500")
        assert (failed["status"], failed["lastError"]) == ("PENDING", "the API said 500")
        await agent.ok("claim", task["id"])
        final = await agent.ok("fail", task["id"], "spec contradicts itself", "--no-retry")
        assert final["status"] == "FAILED"
        retried = await agent.ok("retry", task["id"])
        assert retried["status"] == "PENDING"
        cancelled = await agent.ok("cancel", task["id"], "--reason", "duplicate")
        assert cancelled["status"] == "CANCELLED"
        again = await agent("cancel", task["id"])
        assert again.code == 4
        assert again.stderr.startswith("INVALID_TRANSITION: ")


class TestRefusals:
    async def test_claim_of_a_claimed_task_is_a_conflict(self, taskctl: Taskctl) -> None:
        first, second = taskctl.as_agent(unique("a")), taskctl.as_agent(unique("b"))
        await first.ok("register")
        await second.ok("register")
        task = await new_task(first, await new_project(first))
        await first.ok("claim", task["id"])
        result = await second("claim", task["id"])
        assert result.code == 4
        assert result.stdout == ""
        assert result.stderr.startswith("CONFLICT: ")

    async def test_dependencies_not_met_and_limit_reached(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("busy"))
        await agent.ok("register", "--max-concurrent", "1")
        project = await new_project(agent)
        first = await new_task(agent, project)
        blocked = await new_task(agent, project, "--depends-on", first["id"])
        assert blocked["blockedBy"] == [first["id"]]
        result = await agent("claim", blocked["id"])
        assert (result.code, result.stderr.split(":")[0]) == (4, "DEPENDENCIES_NOT_MET")
        other = await new_task(agent, project)
        await agent.ok("claim", first["id"])
        result = await agent("claim", other["id"])
        assert (result.code, result.stderr.split(":")[0]) == (4, "LIMIT_REACHED")

    async def test_a_stale_worker_is_fenced_by_the_remembered_attempt(self, taskctl: Taskctl, tmp_path: Path) -> None:
        """`claim` remembers the attempt in the state file; a later `progress` in another
        process sends it, so after the task was re-claimed the old worker is refused."""
        old, new = taskctl.as_agent(unique("old")), taskctl.as_agent(unique("new"))
        await old.ok("register")
        await new.ok("register")
        task = await new_task(old, await new_project(old))
        await old.ok("claim", task["id"])
        # Released behind the old worker's back (another machine, no shared state file).
        await old.ok("release", task["id"], TASK_SERVICE_STATE=str(tmp_path / "elsewhere.json"))
        await new.ok("claim", task["id"])
        result = await old("progress", task["id"], "50")
        assert (result.code, result.stderr.split(":")[0]) == (4, "STALE_ATTEMPT")
        explicit = await old("progress", task["id"], "50", "--attempt", "1")
        assert explicit.code == 4

    async def test_errors_that_are_not_refusals_exit_1(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("x"))
        await agent.ok("register")
        missing = await agent("show", "999999")
        assert (missing.code, missing.stderr) == (1, "NOT_FOUND: task 999999 does not exist\n")
        task = await new_task(agent, await new_project(agent))
        await agent.ok("claim", task["id"], "--start")
        bad = await agent("submit", task["id"], "--result", "{not json")
        assert (bad.code, bad.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
        progress = await agent("progress", task["id"], "150")
        assert (progress.code, progress.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
        nobody = await taskctl("next")
        assert (nobody.code, nobody.stderr.split(":")[0]) == (1, "CONFIGURATION")
        offline = await agent("show", task["id"], TASK_SERVICE_URL="http://127.0.0.1:9", TASK_SERVICE_RETRIES="2")
        assert (offline.code, offline.stderr.split(":")[0]) == (1, "NETWORK_ERROR")
        assert offline.stderr.count("\n") == 1


class TestFlagsOverrideTheEnvironment:
    async def test_url_flag_wins_over_task_service_url(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("flagged"))
        await agent.ok("register")
        project = await new_project(agent)
        unreachable = {"TASK_SERVICE_URL": "http://127.0.0.1:9", "TASK_SERVICE_RETRIES": "1"}
        assert (await agent("project", "show", project, **unreachable)).code == 1
        after = await agent.ok("project", "show", project, "--url", taskctl.url, **unreachable)
        before = await agent.ok("--url", taskctl.url, "project", "show", project, **unreachable)
        assert after["id"] == before["id"] == project

    async def test_agent_flag_wins_over_agent_name(self, taskctl: Taskctl) -> None:
        a, b = unique("a"), unique("b")
        await taskctl.ok("register", a)
        await taskctl.ok("register", b)
        project = await new_project(taskctl.as_agent(a))
        await new_task(taskctl.as_agent(a), project)
        claimed = await taskctl.ok("next", "--project", project, "--agent", b, AGENT_NAME=a)
        assert claimed["assignee"] == b
        mine = await taskctl.ok("--agent", b, "mine", AGENT_NAME=a)
        assert [t["id"] for t in mine] == [claimed["id"]]
        assert await taskctl.ok("mine", AGENT_NAME=a) == []


class TestTags:
    async def test_next_with_a_tag_claims_only_a_matching_task(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("tagged"))
        await agent.ok("register")
        project = await new_project(agent)
        # The untagged and the other-tag tasks rank first: only the filter keeps them out.
        untagged = await new_task(agent, project, "--priority", "10")
        frontend = await new_task(agent, project, "--priority", "9", "--tag", "frontend")
        backend = await new_task(agent, project, "--priority", "1", "--tag", "backend", "--tag", "api")
        claimed = await agent.ok("next", "--project", project, "--tag", "backend")
        assert (claimed["id"], claimed["tags"], claimed["status"]) == (backend["id"], ["backend", "api"], "ASSIGNED")
        none_left = await agent("next", "--project", project, "--tag", "backend")
        assert none_left.code == 3
        no_such_tag = await agent("next", "--project", project, "--tag", "mobile")
        assert no_such_tag.code == 3
        for task in (untagged, frontend):
            shown = await agent.ok("show", task["id"])
            assert (shown["status"], shown["assignee"]) == ("PENDING", None)


class TestLooking:
    async def test_projects_project_show_and_stats(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("viewer"))
        await agent.ok("register")
        project = await new_project(agent)
        await new_task(agent, project)
        projects = await agent.ok("projects")
        shown = next(p for p in projects if p["id"] == project)
        assert shown["progress"]["total"] == 1
        assert shown["progress"]["pending"] == 1
        one = await agent.ok("project", "show", project)
        assert (one["id"], one["progress"]["percentComplete"]) == (project, 0.0)
        stats = await agent.ok("stats", "--project", project, "--recent", "5")
        assert set(stats) == {"projects", "tasks", "agents", "deleted", "recentEvents", "generatedAt"}
        assert stats["tasks"]["total"] == 1
        assert stats["recentEvents"][0]["type"] == "CREATED"

    async def test_human_output_is_a_table(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("human"))
        await agent.ok("register")
        project = await new_project(agent)
        task = await new_task(agent, project)
        result = await agent("available", "--project", project, "--human")
        header, row = result.stdout.splitlines()
        assert header.split() == ["ID", "STATUS", "PRI", "TYPE", "TRY", "ASSIGNEE", "READY", "TITLE"]
        assert row.split()[:2] == [task["id"], "PENDING"]
        projects = await agent("projects", "--human")
        assert projects.stdout.splitlines()[0].split()[:2] == ["ID", "STATUS"]

    async def test_watch_streams_json_lines_and_resumes_after_a_cursor(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("watcher"))
        await agent.ok("register")
        task = await new_task(agent, await new_project(agent))

        async def watch(*args: str, count: int) -> list[dict]:
            process = await asyncio.create_subprocess_exec(
                TASKCTL,
                "watch",
                "--task",
                task["id"],
                *args,
                stdout=asyncio.subprocess.PIPE,
                env=agent.environment(),
            )
            try:
                assert process.stdout is not None
                return [json.loads(await asyncio.wait_for(process.stdout.readline(), 30)) for _ in range(count)]
            finally:
                process.terminate()
                await process.wait()

        await agent.ok("claim", task["id"], "--start")
        history = await watch("--after", "0", count=3)
        assert [e["type"] for e in history] == ["CREATED", "CLAIMED", "STARTED"]
        assert set(history[0]) == {
            "id",
            "taskId",
            "projectId",
            "type",
            "fromStatus",
            "toStatus",
            "actor",
            "message",
            "data",
            "createdAt",
        }
        # Resuming replays what came after the cursor, then streams what happens next.
        live = asyncio.create_task(watch("--after", history[1]["id"], count=2))
        await agent.ok("progress", task["id"], "10")
        resumed = await live
        assert [e["type"] for e in resumed] == ["STARTED", "PROGRESS"]

    async def test_watch_count_exits_after_that_many_events(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("counter"))
        await agent.ok("register")
        task = await new_task(agent, await new_project(agent))
        await agent.ok("claim", task["id"], "--start")
        replayed = await agent("watch", "--task", task["id"], "--after", "0", "--count", "3", timeout=120)
        assert replayed.code == 0, replayed.stderr
        assert [e["type"] for e in replayed.lines] == ["CREATED", "CLAIMED", "STARTED"]
        # Waits for the next event, prints it alone and exits (what SKILL.md tells agents).
        waiting = asyncio.create_task(
            agent("watch", "--task", task["id"], "--after", replayed.lines[-1]["id"], "--count", "1", timeout=120)
        )
        nothing_yet = await agent("watch", "--task", task["id"], "--after", "0", "--count", "0")
        assert (nothing_yet.code, nothing_yet.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
        await agent.ok("progress", task["id"], "10")
        one = await waiting
        assert one.code == 0, one.stderr
        assert [e["type"] for e in one.lines] == ["PROGRESS"]


class TestBreakdown:
    async def test_a_yaml_plan_creates_the_project_and_links_refs(self, taskctl: Taskctl, tmp_path: Path) -> None:
        agent = taskctl.as_agent(unique("planner"))
        await agent.ok("register")
        name = unique("Launch")
        plan = tmp_path / "plan.yaml"
        plan.write_text(
            f"project: {{name: {name}, description: Ship it}}\n"
            "defaults: {requires_review: false, priority: 6}\n"
            "tasks:\n"
            "  - {ref: brief, title: Write the brief, type: copywrite, skills: [copywrite], tags: [launch]}\n"
            "  - {ref: design, title: Design the page, type: design}\n"
            "  - title: Publish\n"
            "    type: publish\n"
            "    priority: 9\n"
            "    depends_on: [brief, design]\n"
        )
        out = await agent.ok("breakdown", str(plan))
        assert out["project"]["name"] == name
        assert out["project"]["progress"]["total"] == 3
        brief, design, publish = out["tasks"]
        assert out["refs"] == {"brief": brief["id"], "design": design["id"]}
        assert sorted(publish["dependencies"]) == sorted([brief["id"], design["id"]])
        assert (publish["ready"], publish["priority"], brief["priority"]) == (False, 9, 6)
        assert brief["requiredSkills"] == ["copywrite"]
        assert brief["requiresReview"] is False
        assert {t["projectId"] for t in out["tasks"]} == {out["project"]["id"]}

    async def test_a_json_plan_goes_into_an_existing_project(self, taskctl: Taskctl, tmp_path: Path) -> None:
        agent = taskctl.as_agent(unique("planner"))
        await agent.ok("register")
        project = await new_project(agent)
        plan = tmp_path / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "tasks": [
                        {"ref": "a", "title": "A", "taskType": "research"},
                        {"ref": "b", "title": "B", "taskType": "analysis", "dependsOnRefs": ["a"]},
                    ]
                }
            )
        )
        out = await agent.ok("breakdown", str(plan), "--project", project)
        a, b = out["tasks"]
        assert b["dependencies"] == [a["id"]]
        assert out["project"]["id"] == project

    async def test_a_bad_plan_creates_nothing(self, taskctl: Taskctl, tmp_path: Path) -> None:
        agent = taskctl.as_agent(unique("planner"))
        await agent.ok("register")
        project = await new_project(agent)
        unknown_key = tmp_path / "typo.yaml"
        unknown_key.write_text("tasks:\n  - {title: A, type: research, prioirty: 3}\n")
        result = await agent("breakdown", str(unknown_key), "--project", project)
        assert (result.code, result.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
        assert "prioirty" in result.stderr
        unknown_ref = tmp_path / "ref.yaml"
        unknown_ref.write_text(
            "tasks:\n  - {ref: a, title: A, type: research}\n  - {title: B, type: research, depends_on: [nope]}\n"
        )
        result = await agent("breakdown", str(unknown_ref), "--project", project)
        assert (result.code, result.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
        assert (await agent.ok("project", "show", project))["progress"]["total"] == 0

    async def test_plan_from_stdin(self, taskctl: Taskctl) -> None:
        agent = taskctl.as_agent(unique("planner"))
        await agent.ok("register")
        project = await new_project(agent)
        out = await agent.ok("breakdown", "-", "--project", project, stdin="- {title: Only, type: testing}\n")
        assert [t["title"] for t in out["tasks"]] == ["Only"]


@pytest.mark.parametrize("args", [["work"], ["work", "--"]])
async def test_work_without_a_command_is_refused(taskctl: Taskctl, args: list[str]) -> None:
    result = await taskctl(*args, AGENT_NAME="nobody")
    assert (result.code, result.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")
