"""`taskctl work` as real processes against a real server on PostgreSQL: many workers do each
task exactly once, a killed worker's task is re-run elsewhere, failures and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from task_service_client import RetryPolicy, TaskServiceClient
from tests.client.conftest import TASKCTL, client_env, poll
from tests.e2e.conftest import Server, fresh_pg_database, running_server

pytestmark = pytest.mark.postgres_only

# Small enough for a crashed worker's task to come back in seconds; workers beat 6x as often.
HEARTBEAT_TIMEOUT = 3.0
LEASE_ENV = {"HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT), "REAPER_INTERVAL_SECONDS": "0.5"}
# Long: a worker that finds work sooner than this was woken by the event stream.
IDLE_RECHECK = "600"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with fresh_pg_database("ts_work") as url:
        async with running_server(url, tmp_path_factory.mktemp("work"), RETRY_BACKOFF_SECONDS="0", **LEASE_ENV) as srv:
            yield srv


@pytest.fixture(scope="module")
async def steady_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """Default leases: under load no lease may expire while the 100 tasks run."""
    async with fresh_pg_database("ts_work") as url:
        async with running_server(url, tmp_path_factory.mktemp("steady"), RETRY_BACKOFF_SECONDS="0") as srv:
            yield srv


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Worker:
    """A `taskctl work` process in its own session; its JSON lines are collected."""

    def __init__(self, process: asyncio.subprocess.Process, name: str):
        self.process = process
        self.name = name
        self.lines: list[dict] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    def events(self, kind: str) -> list[dict]:
        return [line for line in self.lines if line["event"] == kind]

    async def wait(self, timeout: float = 60) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)


async def start_worker(url: str, tmp: Path, *args: str, script: str, name: str | None = None) -> Worker:
    name = name or unique("worker")
    process = await asyncio.create_subprocess_exec(
        TASKCTL,
        "work",
        "--heartbeat-every",
        "0.5",
        "--idle-recheck",
        IDLE_RECHECK,
        *args,
        "--",
        "sh",
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        env=client_env(url, tmp / "state", AGENT_NAME=name),
        start_new_session=True,
    )
    worker = Worker(process, name)
    await poll(lambda: True if worker.events("ready") else None, within=60)
    return worker


async def sdk(url: str) -> TaskServiceClient:
    client = TaskServiceClient(url, agent=unique("planner"), retry=RetryPolicy(attempts=10))
    await client.connect()
    await client.register()
    return client


class TestManyWorkers:
    async def test_five_workers_complete_100_tasks_exactly_once(self, steady_server: Server, tmp_path: Path) -> None:
        runs = tmp_path / "runs.log"
        script = (
            f'read -r task; echo "$TASK_ID" >> {runs}; echo "PROGRESS 50 half way"; echo "{{\\"done\\": $TASK_ID}}"'
        )
        client = await sdk(steady_server.url)
        project = await client.create_project(unique("hundred"))
        workers = [
            await start_worker(steady_server.url, tmp_path, "--project", project.id, script=script) for _ in range(4)
        ]
        workers.append(
            await start_worker(
                steady_server.url, tmp_path, "--project", project.id, "--concurrency", "3", script=script
            )
        )
        try:
            # Created after the workers went idle: only the event stream can wake them in time.
            for batch in range(4):
                await client.create_tasks(
                    project.id,
                    [{"title": f"t{batch}-{n}", "taskType": "testing", "requiresReview": False} for n in range(25)],
                )

            async def all_done() -> bool | None:
                progress = (await client.project(project.id)).progress  # type: ignore[union-attr]
                return True if progress.completed == 100 else None  # type: ignore[union-attr]

            await poll(all_done, within=240, interval=0.5)
        finally:
            codes = [await w.stop() for w in workers]
            await client.close()
        assert codes == [143] * 5
        ran = runs.read_text().split()
        assert len(ran) == 100
        assert len(set(ran)) == 100
        async with TaskServiceClient(steady_server.url) as reader:
            events = []
            cursor = "0"
            while batch_events := await reader.events(project_id=project.id, after=cursor, first=500):
                events += batch_events
                cursor = batch_events[-1].id
            tasks = (await reader.tasks(projectId=project.id, first=500)).tasks
        claims = Counter(e.task_id for e in events if e.type == "CLAIMED")
        assert set(claims.values()) == {1}
        assert len(claims) == 100
        assert {t.status for t in tasks} == {"COMPLETED"}
        assert all(t.result == {"done": int(t.id)} and t.progress == 50 for t in tasks)
        submitted = [len(w.events("submitted")) for w in workers]
        assert sum(submitted) == 100
        assert sum(1 for n in submitted if n) >= 2, submitted


class TestConcurrency:
    async def test_concurrency_runs_tasks_at_the_same_time(self, server: Server, tmp_path: Path) -> None:
        """One worker with --concurrency 3: the runs' [start, end] intervals overlap (a check
        of concurrency, not of speed: any overlap at all proves two ran at once)."""
        log = tmp_path / "times.log"
        script = (
            f'read -r t; start=$(date +%s.%N); sleep 1; echo "$TASK_ID $start $(date +%s.%N)" >> {log}; echo "{{}}"'
        )
        client = await sdk(server.url)
        project = await client.create_project(unique("concurrent"))
        tasks = await client.create_tasks(
            project.id, [{"title": f"c{n}", "taskType": "testing", "requiresReview": False} for n in range(6)]
        )
        worker = await start_worker(
            server.url, tmp_path, "--project", project.id, "--concurrency", "3", "--max-tasks", "6", script=script
        )
        try:
            assert await worker.wait(timeout=180) == 0
        finally:
            await worker.stop()
            await client.close()
        runs = [(task, float(start), float(end)) for task, start, end in map(str.split, log.read_text().splitlines())]
        assert sorted(task for task, _, _ in runs) == sorted(t.id for t in tasks)
        overlapping = [(a[0], b[0]) for i, a in enumerate(runs) for b in runs[i + 1 :] if a[1] < b[2] and b[1] < a[2]]
        assert overlapping, runs
        assert worker.events("ready")[0]["concurrency"] == 3
        assert len(worker.events("submitted")) == 6


class TestCrashes:
    async def test_a_killed_workers_task_is_rerun_by_another_after_the_lease_expires(
        self, server: Server, tmp_path: Path
    ) -> None:
        log = tmp_path / "runs.log"
        # The first attempt hangs (and records its pid so the test can kill it with its worker).
        script = (
            f'read -r task; echo "$TASK_ID $TASK_ATTEMPT $$" >> {log}; '
            'if [ "$TASK_ATTEMPT" = 1 ]; then sleep 600; fi; echo "{\\"attempt\\": $TASK_ATTEMPT}"'
        )
        client = await sdk(server.url)
        project = await client.create_project(unique("crash"))
        doomed = await start_worker(server.url, tmp_path, "--project", project.id, script=script)
        task = await client.create_task(project.id, "survive a crash", "testing", requiresReview=False)
        await poll(lambda: True if log.exists() and log.read_text().strip() else None)
        first_pid = int(log.read_text().split()[2])
        rescuer = await start_worker(server.url, tmp_path, "--project", project.id, script=script)
        try:
            doomed.kill()
            os.kill(first_pid, signal.SIGKILL)

            async def completed() -> str | None:
                current = await client.task(task.id)
                return current.status if current and current.status == "COMPLETED" else None

            await poll(completed, within=60 + HEARTBEAT_TIMEOUT)
        finally:
            await rescuer.stop()
            await doomed.wait()
            await client.close()
        async with TaskServiceClient(server.url) as reader:
            done = await reader.task(task.id)
            events = [e.type for e in await reader.events(task_id=task.id, after="0")]
        assert done is not None
        assert (done.attempt, done.result, done.assignee) == (2, {"attempt": 2}, rescuer.name)
        assert events == ["CREATED", "CLAIMED", "STARTED", "LEASE_EXPIRED", "CLAIMED", "STARTED", "SUBMITTED"]
        assert [line.split()[:2] for line in log.read_text().splitlines()] == [[task.id, "1"], [task.id, "2"]]
        assert [e["task"] for e in rescuer.events("submitted")] == [task.id]

    async def test_background_heartbeats_keep_a_silent_tasks_lease(self, server: Server, tmp_path: Path) -> None:
        """A command that prints nothing for longer than two lease timeouts keeps its task:
        only the worker's background heartbeats renew the lease meanwhile."""
        done_marker = tmp_path / "done"
        silent = 2 * HEARTBEAT_TIMEOUT + 2
        script = f'read -r t; sleep {silent}; touch {done_marker}; echo "{{\\"slept\\": {silent}}}"'
        client = await sdk(server.url)
        project = await client.create_project(unique("silent"))
        task = await client.create_task(project.id, "quiet and slow", "testing", requiresReview=False)
        worker = await start_worker(server.url, tmp_path, "--project", project.id, "--once", script=script)
        try:
            assert await worker.wait(timeout=120) == 0
            done = await client.task(task.id)
            events = [e.type for e in await client.events(task_id=task.id, after="0")]
        finally:
            await worker.stop()
            await client.close()
        assert done_marker.exists()
        assert done is not None
        assert (done.status, done.attempt, done.result) == ("COMPLETED", 1, {"slept": silent})
        assert "LEASE_EXPIRED" not in events
        assert events == ["CREATED", "CLAIMED", "STARTED", "SUBMITTED"]

    async def test_a_restarted_worker_finishes_what_its_previous_run_left(
        self, steady_server: Server, tmp_path: Path
    ) -> None:
        """Restarted under the same name before its lease ran out, the worker runs the task it
        still holds (its heartbeats would otherwise keep that task's lease alive for ever)."""
        first_run, pid = tmp_path / "first", tmp_path / "pid"
        script = f"read -r t; if [ ! -e {first_run} ]; then touch {first_run}; echo $$ > {pid}; sleep 600; fi; echo 1"
        client = await sdk(steady_server.url)
        project = await client.create_project(unique("restart"))
        task = await client.create_task(project.id, "held", "testing", requiresReview=False)
        name = unique("phoenix")
        crashed = await start_worker(steady_server.url, tmp_path, "--project", project.id, script=script, name=name)
        await poll(lambda: True if pid.exists() and pid.read_text().strip() else None)
        crashed.kill()
        os.kill(int(pid.read_text()), signal.SIGKILL)
        await crashed.wait()
        restarted = await start_worker(
            steady_server.url, tmp_path, "--project", project.id, "--max-tasks", "1", script=script, name=name
        )
        try:
            assert await restarted.wait() == 0
            done = await client.task(task.id)
        finally:
            await restarted.stop()
            await client.close()
        assert restarted.events("ready")[0]["held"] == [task.id]
        assert done is not None
        assert (done.status, done.attempt) == ("COMPLETED", 1)

    async def test_a_failing_script_fails_the_task_after_its_attempts(self, server: Server, tmp_path: Path) -> None:
        client = await sdk(server.url)
        project = await client.create_project(unique("failing"))
        task = await client.create_task(project.id, "always fails", "testing", maxAttempts=2)
        worker = await start_worker(
            server.url,
            tmp_path,
            "--project",
            project.id,
            "--max-tasks",
            "2",
            script='read -r task; echo "PROGRESS 10 trying"; echo "boom on attempt $TASK_ATTEMPT" >&2; exit 7',
        )
        try:
            assert await worker.wait(timeout=120) == 0
            failed = await client.task(task.id)
        finally:
            await worker.stop()
            await client.close()
        assert failed is not None
        assert (failed.status, failed.attempt) == ("FAILED", 2)
        assert failed.last_error == "exit status 7: boom on attempt 2"
        assert [(e["task"], e["status"], e["exit_status"]) for e in worker.events("failed")] == [
            (task.id, "PENDING", 7),
            (task.id, "FAILED", 7),
        ]


class TestSignalsAndOnce:
    @pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
    async def test_a_signal_stops_the_command_and_releases_the_task(
        self, server: Server, tmp_path: Path, sig: int, code: int
    ) -> None:
        marker = tmp_path / "started"
        client = await sdk(server.url)
        project = await client.create_project(unique("signal"))
        task = await client.create_task(project.id, "long", "testing")
        worker = await start_worker(
            server.url, tmp_path, "--project", project.id, script=f"read -r t; echo $$ > {marker}; sleep 600"
        )
        try:
            await poll(lambda: True if marker.exists() and marker.read_text().strip() else None)
            child = int(marker.read_text())
            assert await worker.stop(sig) == code
            released = await client.task(task.id)
        finally:
            worker.kill()
            await client.close()
        assert released is not None
        assert (released.status, released.assignee) == ("PENDING", None)
        assert [e["task"] for e in worker.events("released")] == [task.id]
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)

    async def test_once_runs_one_task_with_its_json_on_stdin(self, server: Server, tmp_path: Path) -> None:
        seen, env_json, env_text = tmp_path / "stdin.json", tmp_path / "env.json", tmp_path / "env.txt"
        client = await sdk(server.url)
        project = await client.create_project(unique("once"))
        task = await client.create_task(
            project.id,
            "just one",
            "research",
            tags=["x"],
            requiresReview=False,
            description="Find 'three' sources;\nsummarise them",
        )
        await client.create_task(project.id, "left alone", "research")
        script = (
            f'cat > {seen}; printf %s "$TASK_JSON" > {env_json}; '
            f'printf "%s|%s" "$TASK_DESCRIPTION" "${{TASK_FEEDBACK-unset}}" > {env_text}; '
            'echo "SUMMARY looked at $TASK_TITLE"; echo "plain text result for $TASK_TYPE"'
        )
        try:
            worker = await start_worker(server.url, tmp_path, "--project", project.id, "--once", script=script)
            assert await worker.wait() == 0
            done = await client.task(task.id)
            empty = await client.create_project(unique("empty"))
            nothing = await start_worker(server.url, tmp_path, "--project", empty.id, "--once", script="true")
            assert await nothing.wait() == 3
        finally:
            await client.close()
        payload = json.loads(seen.read_text())
        assert (payload["id"], payload["title"], payload["tags"], payload["status"]) == (
            task.id,
            "just one",
            ["x"],
            "RUNNING",
        )
        assert json.loads(env_json.read_text()) == payload
        assert env_text.read_text() == "Find 'three' sources;\nsummarise them|unset"
        assert done is not None
        assert (done.status, done.summary, done.result) == (
            "COMPLETED",
            "looked at just one",
            "plain text result for research",
        )
        assert [line["event"] for line in worker.lines] == ["ready", "claimed", "submitted", "stopped"]

    async def test_once_with_a_tag_takes_only_a_matching_task(self, server: Server, tmp_path: Path) -> None:
        client = await sdk(server.url)
        project = await client.create_project(unique("tags"))
        untagged = await client.create_task(project.id, "first by priority", "testing", priority=10)
        tagged = await client.create_task(
            project.id, "the one", "testing", priority=1, tags=["gpu"], requiresReview=False
        )
        script = 'read -r t; echo "{\\"ran\\": \\"$TASK_ID\\"}"'
        try:
            worker = await start_worker(
                server.url, tmp_path, "--project", project.id, "--once", "--tag", "gpu", script=script
            )
            assert await worker.wait() == 0
            nothing = await start_worker(
                server.url, tmp_path, "--project", project.id, "--once", "--tag", "gpu", script=script
            )
            assert await nothing.wait() == 3
            done, left = await client.task(tagged.id), await client.task(untagged.id)
        finally:
            await client.close()
        assert done is not None
        assert left is not None
        assert (done.status, done.result) == ("COMPLETED", {"ran": tagged.id})
        assert (left.status, left.assignee) == ("PENDING", None)
        assert [e["task"] for e in worker.events("claimed")] == [tagged.id]

    async def test_a_rejected_task_brings_its_feedback_in_the_environment(self, server: Server, tmp_path: Path) -> None:
        seen = tmp_path / "feedback.txt"
        client = await sdk(server.url)
        project = await client.create_project(unique("feedback"))
        task = await client.create_task(project.id, "write it", "copywrite")
        script = f'read -r t; printf "%s\\n" "${{TASK_FEEDBACK-unset}}" >> {seen}; echo "\\"draft $TASK_ATTEMPT\\""'
        try:
            first = await start_worker(server.url, tmp_path, "--project", project.id, "--once", script=script)
            assert await first.wait() == 0
            await client.review(task.id, approved=False, feedback="Cite your sources")
            second = await start_worker(server.url, tmp_path, "--project", project.id, "--once", script=script)
            assert await second.wait() == 0
            again = await client.task(task.id)
        finally:
            await client.close()
        assert seen.read_text() == "unset\nCite your sources\n"
        assert again is not None
        assert again.status == "REVIEWING"
