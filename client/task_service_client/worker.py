"""`taskctl work -- COMMAND ...`: turn any program into an agent.

The worker registers (or, with an agent token, just identifies itself), heartbeats in the
background, and runs up to `concurrency` slots. Each slot claims the best ready task, starts
it and runs COMMAND with the task as JSON on stdin and in TASK_* environment variables
(TASK_JSON is the same JSON; TASK_FEEDBACK is set when a reviewer sent the task back):

- a line `PROGRESS <0-100> [message]` on the command's stdout reports progress;
- a line `SUMMARY <text>` sets the submission's summary;
- every other stdout line is the result: parsed as JSON when the whole of it is JSON, else
  submitted as a string; exit status 0 submits it, any other fails the task with the tail of
  stderr (the server retries it after a backoff while attempts remain).

When nothing is claimable a slot waits for the taskEvents subscription to announce work (a
task became PENDING, UNBLOCKED, ...), with a slow safety re-check for tasks that become due
by time alone (`availableAt`, retry backoff), which no event announces. SIGINT and SIGTERM
stop the commands and release their tasks so other agents take them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .client import TaskServiceClient
from .errors import ConfigurationError, StaleAttemptError, TaskServiceError, TransportFailure
from .models import Task, TaskEvent, to_json

log = logging.getLogger("task_service_client.worker")

# Event types after which a claim may find something new.
_WAKING_TYPES = {"UNBLOCKED", "UPDATED", "RESTORED", "DEPENDENCY_REMOVED"}
# Claim errors worth waiting out; any other ends the worker.
_PASSING = {"RATE_LIMITED", "INTERNAL", "LIMIT_REACHED"}
STDERR_TAIL = 4000
STOP_GRACE_SECONDS = 10.0
# Linux refuses to exec with one environment string over 128 KiB: a task this large (a big
# result or description) reaches the command on stdin only.
TASK_JSON_ENV_LIMIT = 100_000


@dataclass
class WorkerOptions:
    command: list[str]
    project_id: str | None = None
    tags: list[str] | None = None
    concurrency: int = 1
    max_tasks: int | None = None
    once: bool = False
    heartbeat_every: float = 15.0
    idle_recheck: float = 30.0
    register: bool = True
    role: str | None = None
    skills: list[str] | None = None


@dataclass
class _Running:
    task: Task
    process: asyncio.subprocess.Process | None = None
    lost: bool = False


@dataclass
class WorkerReport:
    submitted: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    stopped_by: str | None = None
    tasks: list[str] = field(default_factory=list)


def parse_output(stdout: str) -> tuple[Any, str | None, list[tuple[int, str | None]]]:
    """The command's stdout split into (result, summary, progress reports)."""
    lines, summary, progress = [], None, []
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "PROGRESS":
            value, _, message = rest.strip().partition(" ")
            with contextlib.suppress(ValueError):
                progress.append((max(0, min(100, int(float(value)))), message.strip() or None))
                continue
        if word == "SUMMARY":
            summary = rest.strip() or None
            continue
        lines.append(line)
    text = "\n".join(lines).strip()
    if not text:
        return None, summary, progress
    try:
        return json.loads(text), summary, progress
    except ValueError:
        return text, summary, progress


class Worker:
    def __init__(self, client: TaskServiceClient, options: WorkerOptions, *, out: TextIO = sys.stdout):
        self.client = client
        self.options = options
        self.out = out
        self.report = WorkerReport()
        self._running: dict[str, _Running] = {}
        self._stop = asyncio.Event()
        self._changed = asyncio.Condition()
        self._generation = 0
        self._reserved = 0
        self._nothing = False
        self._fatal: TaskServiceError | None = None
        self._backlog: list[Task] = []

    # -- output ---------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line per step on stdout, for logs and supervisors."""
        self.out.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.out.flush()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> int:
        """Work until stopped or done; returns the process exit code (see taskctl work --help)."""
        await self._identify()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
        background = [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._watch(), name="watch"),
        ]
        try:
            await asyncio.gather(*(self._slot() for _ in range(self.options.concurrency)))
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        self.emit("stopped", **to_json(self.report))
        if self._fatal is not None:
            raise self._fatal
        return self._exit_code()

    def _exit_code(self) -> int:
        if self.report.stopped_by == "SIGINT":
            return 130
        if self.report.stopped_by == "SIGTERM":
            return 143
        if self.options.once:
            if self._nothing:
                return 3
            return 0 if self.report.submitted else 1
        return 0

    def stop(self, reason: str = "SIGTERM") -> None:
        """Stop claiming and stop the running commands (SIGTERM, SIGKILL after a grace
        period); each slot then releases its task so other agents can take it at once."""
        if self._stop.is_set():
            return
        self.report.stopped_by = reason
        self.emit("stopping", reason=reason)
        self._stop.set()
        self._bump_soon()
        for running in self._running.values():
            self._terminate(running)
        asyncio.get_running_loop().call_later(STOP_GRACE_SECONDS, self._kill_remaining)

    def _kill_remaining(self) -> None:
        for running in self._running.values():
            self._terminate(running, signal.SIGKILL)

    async def _identify(self) -> None:
        options = self.options
        if options.register and not self.client.config.token:
            if not self.client.agent:
                raise ConfigurationError("taskctl work needs AGENT_NAME (or --agent), or an agent token")
            registration = await self.client.register(
                role=options.role, skills=options.skills, max_concurrent_tasks=options.concurrency
            )
            agent = registration.agent
        else:
            agent = await self.client.whoami()
        # Tasks this agent holds already: pre-assigned to it, or left by a previous run of
        # this worker that died (our heartbeats would keep their leases alive for ever).
        self._backlog = [t for t in await self.client.my_tasks() if t.status in {"ASSIGNED", "RUNNING"}]
        for task in self._backlog:
            self.client.attempts.keep(task.id, task.attempt)
        self.emit("ready", agent=agent.name, concurrency=options.concurrency, held=[t.id for t in self._backlog])

    # -- waiting for work -----------------------------------------------------------------

    async def _bump(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _bump_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._bump())

    def _wakes(self, event: TaskEvent) -> bool:
        if self.options.project_id is not None and event.project_id != str(self.options.project_id):
            return False
        return event.to_status == "PENDING" or event.type in _WAKING_TYPES

    async def _watch(self) -> None:
        """Wake idle slots when the event log says work may have appeared."""
        failures = 0
        while True:
            try:
                # A reconnect resumes exactly, but slots that went to sleep while the stream
                # was down deserve a look.
                async for event in self.client.subscribe_events(
                    project_id=self.options.project_id, on_reconnect=self._bump_soon
                ):
                    failures = 0
                    if self._wakes(event):
                        await self._bump()
            except TaskServiceError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None  # a swallowed cancel: we are stopping
                # Slots still find work by --idle-recheck meanwhile.
                failures += 1
                log.warning("event stream failed (%s: %s); waking on timer only for now", exc.code, exc.message)
                await self._bump()
                await asyncio.sleep(min(60.0, 2.0**failures))

    async def _wait_for_work(self, seen: int) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._generation != seen or self._stop.is_set()),
                    self.options.idle_recheck,
                )

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_every)
            try:
                await self.client.heartbeat()
            except TaskServiceError as exc:
                log.warning("heartbeat failed: %s: %s", exc.code, exc.message)

    # -- the slots ------------------------------------------------------------------------

    def _reserve(self) -> bool:
        limit = 1 if self.options.once else self.options.max_tasks
        if limit is not None and self._reserved >= limit:
            return False
        self._reserved += 1
        return True

    async def _slot(self) -> None:
        failures = 0
        while not self._stop.is_set() and self._reserve():
            seen = self._generation
            if self._backlog:
                await self._work_on(self._backlog.pop(0))
                continue
            try:
                task = await self.client.claim_next(project_id=self.options.project_id, tags=self.options.tags)
            except TaskServiceError as exc:
                self._reserved -= 1
                if not isinstance(exc, TransportFailure) and exc.code not in _PASSING:
                    # A refusal that will not change by waiting (bad --project, no such agent...).
                    self._fatal = self._fatal or exc
                    self.stop("error")
                    return
                failures += 1
                self.emit("error", code=exc.code, message=exc.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            if task is None:
                self._reserved -= 1
                if self.options.once:
                    self._nothing = True
                    self.emit("idle", reason="nothing available")
                    return
                await self._wait_for_work(seen)
                continue
            await self._work_on(task)

    async def _work_on(self, task: Task) -> None:
        running = self._running[task.id] = _Running(task)
        self.report.tasks.append(task.id)
        self.emit("claimed", task=task.id, attempt=task.attempt, title=task.title)
        try:
            if not self._stop.is_set() and task.status == "ASSIGNED":
                try:
                    task = running.task = await self.client.start(task.id)
                except TaskServiceError as exc:
                    self._lose(running, exc)
                    return
            if self._stop.is_set():
                await self._release(running)
                return
            code, stdout, stderr = await self._run_command(running)
            if running.lost:
                return
            if self._stop.is_set():
                await self._release(running)
                return
            await self._finish(running, code, stdout, stderr)
        finally:
            self._running.pop(task.id, None)

    async def _finish(self, running: _Running, code: int, stdout: str, stderr: str) -> None:
        task = running.task
        result, summary, _ = parse_output(stdout)
        try:
            if code == 0:
                done = await self.client.submit(task.id, result, summary)
                self.report.submitted += 1
                self.emit("submitted", task=task.id, status=done.status)
            else:
                error = f"exit status {code}: {stderr[-STDERR_TAIL:]}".strip()
                done = await self.client.fail(task.id, error)
                self.report.failed += 1
                self.emit("failed", task=task.id, status=done.status, exit_status=code)
        except TaskServiceError as exc:
            self._lose(running, exc)

    async def _release(self, running: _Running) -> None:
        try:
            await self.client.release(running.task.id, f"worker stopped ({self.report.stopped_by})")
        except TaskServiceError as exc:
            self._lose(running, exc)
            return
        self.report.released += 1
        self.emit("released", task=running.task.id)

    def _lose(self, running: _Running, exc: TaskServiceError) -> None:
        """The task is no longer ours (re-claimed after a lost lease, cancelled...)."""
        running.lost = True
        self.report.lost += 1
        self.emit("lost", task=running.task.id, code=exc.code, message=exc.message)
        self.client.attempts.forget(running.task.id)

    def _environment(self, task: Task, task_json: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"TASK_FEEDBACK", "TASK_JSON"}}
        env.update(
            {
                "TASK_ID": task.id,
                "TASK_PROJECT_ID": task.project_id,
                "TASK_TITLE": task.title,
                "TASK_TYPE": task.task_type,
                "TASK_ATTEMPT": str(task.attempt),
                "TASK_DESCRIPTION": task.description or "",
                "TASK_SERVICE_URL": self.client.config.url,
            }
        )
        if task.feedback:
            env["TASK_FEEDBACK"] = task.feedback
        if len(task_json.encode()) <= TASK_JSON_ENV_LIMIT:
            env["TASK_JSON"] = task_json
        else:
            log.warning("task %s: its JSON is too large for TASK_JSON; read it from stdin", task.id)
        if self.client.agent:
            env["AGENT_NAME"] = self.client.agent
        return env

    async def _run_command(self, running: _Running) -> tuple[int, str, str]:
        task = running.task
        task_json = json.dumps(to_json(task))
        # Its own session: a Ctrl-C in the terminal reaches only the worker, which then
        # stops the command and releases the task itself.
        process = running.process = await asyncio.create_subprocess_exec(
            *self.options.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._environment(task, task_json),
            start_new_session=True,
        )
        if self._stop.is_set():
            self._terminate(running)
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(task_json.encode())
            await process.stdin.drain()
        process.stdin.close()
        out_lines: list[str] = []
        reports: asyncio.Queue[tuple[int, str | None] | None] = asyncio.Queue()
        reporter = asyncio.create_task(self._report_progress(running, reports))

        async def read_stdout() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                out_lines.append(line)
                _, _, progress = parse_output(line)
                for item in progress:
                    reports.put_nowait(item)

        async def read_stderr() -> str:
            assert process.stderr is not None
            tail = b""
            async for raw in process.stderr:
                sys.stderr.buffer.write(raw)
                sys.stderr.flush()
                tail = (tail + raw)[-STDERR_TAIL * 4 :]
            return tail.decode(errors="replace")

        stderr_text, _ = await asyncio.gather(read_stderr(), read_stdout())
        code = await process.wait()
        reports.put_nowait(None)
        await reporter
        return code, "\n".join(out_lines), stderr_text

    async def _report_progress(self, running: _Running, reports: asyncio.Queue[tuple[int, str | None] | None]) -> None:
        while (item := await reports.get()) is not None:
            if running.lost:
                continue
            try:
                await self.client.progress(running.task.id, item[0], item[1])
            except StaleAttemptError as exc:
                self._lose(running, exc)
                self._terminate(running)
            except TaskServiceError as exc:
                log.warning("progress of task %s not reported: %s: %s", running.task.id, exc.code, exc.message)

    # -- stopping -------------------------------------------------------------------------

    @staticmethod
    def _terminate(running: _Running, sig: int = signal.SIGTERM) -> None:
        process = running.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
