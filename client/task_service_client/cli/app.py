"""taskctl: the Task Service from the shell, for agents and people.

Every command prints JSON on stdout (the contract's field names) unless --human is given,
and exits with a stable code (EXIT_CODES below); an error prints one line
`CODE: message` on stderr, CODE being the contract's error code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from ..attempts import FileAttempts, default_state_path
from ..client import TaskServiceClient
from ..config import Config
from ..errors import BadUserInputError, TaskServiceError
from ..plan import load_plan
from ..worker import Worker, WorkerOptions
from .output import emit

EXIT_OK, EXIT_ERROR, EXIT_NOTHING, EXIT_REFUSED = 0, 1, 3, 4
# Refusals an agent should react to by moving on (another agent has it, the state changed,
# the task is not ours any more, we may not), rather than by retrying the same call.
REFUSED = {
    "CONFLICT",
    "INVALID_TRANSITION",
    "STALE_ATTEMPT",
    "LIMIT_REACHED",
    "DEPENDENCIES_NOT_MET",
    "CYCLE_DETECTED",
    "FORBIDDEN",
    "UNAUTHENTICATED",
}

MAIN_HELP = """\
Coordinate work with a Task Service: claim tasks, report progress, submit results.

configuration (flags override the environment):
  TASK_SERVICE_URL    the service, e.g. http://127.0.0.1:8080 (the default)
  AGENT_NAME          who you are; optional with an agent token
  TASK_SERVICE_TOKEN  your agent token (from `taskctl register`), or
  API_KEY             the admin key

an agent's loop:
  taskctl register --skill python --skill review   # once; keep the printed token
  taskctl next --start                              # claim the best ready task and start it
  taskctl progress 7 50 "tests written"             # as you go
  taskctl submit 7 --result '{"pr": 12}' --summary "Added the endpoint"
  taskctl work -- ./do-task.sh                      # or let taskctl run a program per task

output: JSON on stdout (--human for tables). exit codes:
  0 ok
  1 error (bad usage too: BAD_USER_INPUT, after the usage text)
  3 nothing available (next, available, work --once)
  4 refused: CONFLICT, INVALID_TRANSITION, STALE_ATTEMPT, LIMIT_REACHED,
    DEPENDENCIES_NOT_MET, CYCLE_DETECTED, FORBIDDEN, UNAUTHENTICATED
  errors print one line on stderr: CODE: message (NETWORK_ERROR when unreachable)

`taskctl COMMAND --help` explains each command with an example.
"""


class _ArgumentParser(argparse.ArgumentParser):
    """Usage errors follow the exit-code contract: the usage text, then one line
    `BAD_USER_INPUT: message` on stderr, and exit 1 (argparse's own is exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        message = " ".join(message.split())
        self.exit(EXIT_ERROR, f"BAD_USER_INPUT: {self.prog}: {message}\n")


def _common() -> argparse.ArgumentParser:
    common = _ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (flags override the environment)")
    group.add_argument("--url", default=argparse.SUPPRESS, help="service URL (TASK_SERVICE_URL)")
    group.add_argument("--agent", default=argparse.SUPPRESS, help="agent name (AGENT_NAME)")
    group.add_argument("--token", default=argparse.SUPPRESS, help="agent token (TASK_SERVICE_TOKEN)")
    group.add_argument("--api-key", default=argparse.SUPPRESS, help="admin key (API_KEY)")
    group.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (30)")
    group.add_argument(
        "--state",
        default=argparse.SUPPRESS,
        help="file remembering the attempt of each task you claimed (TASK_SERVICE_STATE; "
        "default under ~/.local/state/taskctl)",
    )
    group.add_argument("--human", action="store_true", default=argparse.SUPPRESS, help="tables instead of JSON")
    return common


class _Parsers:
    def __init__(self) -> None:
        self.common = _common()
        # Subparsers are made of the root parser's class, so they report usage errors alike.
        self.root = _ArgumentParser(
            prog="taskctl",
            description=MAIN_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[self.common],
        )
        self.commands = self.root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        self, name: str, summary: str, example: str, handler: Callable[..., Any] | None, *, under: Any = None
    ) -> Any:
        parser = (under or self.commands).add_parser(
            name,
            help=summary,
            description=summary,
            epilog="example:\n  " + example.replace("\n", "\n  "),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[self.common],
        )
        parser.set_defaults(handler=handler)
        return parser


def _json_arg(text: str) -> Any:
    """A JSON value given inline or as @file (`@-` reads stdin)."""
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise BadUserInputError(f"cannot read {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadUserInputError(f"not valid JSON: {exc}") from None


def _list(values: list[str] | None) -> list[str] | None:
    """Repeated or comma-separated values (`--skill a --skill b,c`)."""
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


# -- command handlers: (client, args) -> what to print, or (what, exit code) -------------


async def cmd_register(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.register(
        a.name,
        role=a.role,
        skills=_list(a.skill),
        capabilities=_json_arg(a.capabilities) if a.capabilities else None,
        max_concurrent_tasks=a.max_concurrent,
    )


async def cmd_heartbeat(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    if a.every is None:
        return await c.heartbeat()
    while True:
        emit(await c.heartbeat(), human_output=a.human, lines=True)
        await asyncio.sleep(a.every)


async def cmd_available(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    tasks = await c.available_tasks(project_id=a.project, first=a.first)
    return tasks, EXIT_OK if tasks else EXIT_NOTHING


async def cmd_next(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    task = await c.claim_next(project_id=a.project, tags=_list(a.tag))
    if task is None:
        return None, EXIT_NOTHING
    return await c.start(task.id) if a.start else task


async def cmd_claim(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    task = await c.claim(a.id)
    return await c.start(task.id) if a.start else task


async def cmd_start(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.start(a.id, attempt=a.attempt)


async def cmd_progress(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.progress(a.id, a.percent, " ".join(a.message) or None, attempt=a.attempt)


async def cmd_submit(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    result = _json_arg(a.result) if a.result is not None else None
    return await c.submit(a.id, result, a.summary, attempt=a.attempt)


async def cmd_release(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.release(a.id, a.reason, attempt=a.attempt)


async def cmd_fail(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.fail(a.id, " ".join(a.error), retryable=not a.no_retry, attempt=a.attempt)


async def cmd_review(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.review(a.id, approved=a.approve, feedback=a.feedback)


async def cmd_retry(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.retry_task(a.id)


async def cmd_cancel(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.cancel(a.id, a.reason)


async def cmd_mine(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.my_tasks()


async def cmd_tasks(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    page = await c.tasks(
        first=a.first,
        after=a.after,
        projectId=a.project,
        status=_list(a.status),
        assignee=a.assignee,
        taskType=a.type,
        tags=_list(a.tag),
        search=a.search,
        readyOnly=a.ready or None,
    )
    return page.tasks


async def cmd_show(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    task = await c.task(a.id)
    if task is None:
        raise TaskServiceError(f"task {a.id} does not exist", code="NOT_FOUND")
    if a.events:
        return {"task": task, "events": await c.events(task_id=a.id, after="0", first=500)}
    return task


async def cmd_watch(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    if a.count is not None and a.count < 1:
        raise BadUserInputError(f"--count must be at least 1; got {a.count}")
    seen = 0
    events = c.subscribe_events(after=a.after, project_id=a.project, task_id=a.task, agent=a.of_agent)
    async with contextlib.aclosing(events):
        async for event in events:
            emit(event, human_output=a.human, lines=True)
            seen += 1
            if a.count is not None and seen >= a.count:
                return None, EXIT_OK


async def cmd_projects(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.projects(status=a.status)


async def cmd_project_create(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.create_project(a.name, description=a.description)


async def cmd_project_show(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    project = await c.project(a.id)
    if project is None:
        raise TaskServiceError(f"project {a.id} does not exist", code="NOT_FOUND")
    return project


async def cmd_task_create(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    fields = {
        "description": a.description,
        "priority": a.priority,
        "tags": _list(a.tag),
        "requiredSkills": _list(a.skill),
        "dependsOn": _list(a.depends_on),
        "requiresReview": False if a.no_review else None,
        "maxAttempts": a.max_attempts,
        "acceptanceCriteria": a.acceptance,
        "assignee": a.assignee,
        "reviewer": a.reviewer,
        "timeoutMinutes": a.timeout_minutes,
        "createdBy": c.agent,
    }
    return await c.create_task(a.project, a.title, a.type, **fields)


async def cmd_breakdown(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    plan = load_plan(a.file)
    project_id = a.project or plan.project_id
    if project_id is None:
        if plan.project is None:
            raise BadUserInputError("no project: give --project ID, or `project: {name: ...}` in the plan")
        project = await c.create_project(plan.project["name"], description=plan.project.get("description"))
        project_id = project.id
    tasks = await c.create_tasks(project_id, [{"createdBy": c.agent, **t} for t in plan.tasks])
    refs = {item["ref"]: task.id for item, task in zip(plan.tasks, tasks, strict=True) if item.get("ref")}
    return {"project": await c.project(project_id), "refs": refs, "tasks": tasks}


async def cmd_stats(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    return await c.stats(project_id=a.project, recent=a.recent)


async def cmd_work(c: TaskServiceClient, a: argparse.Namespace) -> Any:
    command = a.work_command[1:] if a.work_command[:1] == ["--"] else a.work_command
    if not command:
        raise BadUserInputError("give the command to run after --, e.g. taskctl work -- ./do-task.sh")
    options = WorkerOptions(
        command=command,
        project_id=a.project,
        tags=_list(a.tag),
        concurrency=a.concurrency,
        max_tasks=a.max_tasks,
        once=a.once,
        heartbeat_every=a.heartbeat_every,
        idle_recheck=a.idle_recheck,
        register=not a.no_register,
        role=a.role,
        skills=_list(a.skill),
    )
    code = await Worker(c, options).run()
    return None, code


def build_parser() -> argparse.ArgumentParser:
    p = _Parsers()
    r = p.add(
        "register",
        "Join the team (create or update your agent) and print your token once.",
        "taskctl register --agent writer --role copywriter --skill copywrite --skill review\n"
        "export TASK_SERVICE_TOKEN=...   # the printed token (re-registering rotates it)",
        cmd_register,
    )
    r.add_argument("name", nargs="?", help="agent name (default: --agent / AGENT_NAME)")
    r.add_argument("--role")
    r.add_argument("--skill", action="append", help="a skill (repeat, or comma-separate)")
    r.add_argument("--max-concurrent", type=int, help="how many tasks you may hold at once")
    r.add_argument("--capabilities", help="JSON (or @file) describing what you can do")

    r = p.add(
        "heartbeat",
        "Tell the service you are alive; renews the leases of your tasks.",
        "taskctl heartbeat --every 20 &   # keep beating in the background",
        cmd_heartbeat,
    )
    r.add_argument("--every", type=float, metavar="SECONDS", help="keep beating, printing one JSON line each time")

    r = p.add(
        "available",
        "List the ready tasks you may claim, best first (exit 3 when there are none).",
        "taskctl available --project 1 --human",
        cmd_available,
    )
    r.add_argument("--project")
    r.add_argument("--first", type=int, help="at most this many (50)")

    r = p.add(
        "next",
        "Claim the best ready task you may take (exit 3 when there is none).",
        "taskctl next --start --project 1 --tag backend",
        cmd_next,
    )
    r.add_argument("--project", help="only tasks of this project")
    r.add_argument("--tag", action="append", help="only tasks having one of these tags")
    r.add_argument("--start", action="store_true", help="also start it (RUNNING)")

    r = p.add("claim", "Claim a given task (exit 4 if someone else has it).", "taskctl claim 7 --start", cmd_claim)
    r.add_argument("id")
    r.add_argument("--start", action="store_true", help="also start it (RUNNING)")

    attempt_help = "fencing token (default: the attempt remembered from your claim)"
    r = p.add("start", "Start working on a task you claimed (ASSIGNED -> RUNNING).", "taskctl start 7", cmd_start)
    r.add_argument("id")
    r.add_argument("--attempt", type=int, help=attempt_help)

    r = p.add(
        "progress",
        "Report progress 0-100 with an optional message (also renews the lease).",
        'taskctl progress 7 60 "draft done"',
        cmd_progress,
    )
    r.add_argument("id")
    r.add_argument("percent", type=int)
    r.add_argument("message", nargs="*")
    r.add_argument("--attempt", type=int, help=attempt_help)

    r = p.add(
        "submit",
        "Hand in your result: the task goes to review (or COMPLETED if it needs none).",
        'taskctl submit 7 --result \'{"words": 420}\' --summary "Brief written"\n'
        "taskctl submit 7 --result @result.json",
        cmd_submit,
    )
    r.add_argument("id")
    r.add_argument("--result", help="JSON, or @file (@- for stdin)")
    r.add_argument("--summary", help="one or two sentences for the reviewer")
    r.add_argument("--attempt", type=int, help=attempt_help)

    r = p.add(
        "release",
        "Give a task back (PENDING) without counting a failure.",
        'taskctl release 7 --reason "needs a database I cannot reach"',
        cmd_release,
    )
    r.add_argument("id")
    r.add_argument("--reason")
    r.add_argument("--attempt", type=int, help=attempt_help)

    r = p.add(
        "fail",
        "Report that a task failed; it is retried after a backoff while attempts remain.",
        'taskctl fail 7 "the API returned 500 three times"\ntaskctl fail 7 "spec is contradictory" --no-retry',
        cmd_fail,
    )
    r.add_argument("id")
    r.add_argument("error", nargs="+")
    r.add_argument("--no-retry", action="store_true", help="fail for good (FAILED), no further attempt")
    r.add_argument("--attempt", type=int, help=attempt_help)

    r = p.add(
        "review",
        "Approve or reject someone else's submitted task (rejection sends it back with your feedback).",
        'taskctl review 7 --approve --feedback "Clear"\ntaskctl review 7 --reject --feedback "Cite sources"',
        cmd_review,
    )
    r.add_argument("id")
    verdict = r.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true")
    verdict.add_argument("--reject", action="store_false", dest="approve")
    r.add_argument("--feedback")

    r = p.add("retry", "Put a FAILED or CANCELLED task back in the queue.", "taskctl retry 7", cmd_retry)
    r.add_argument("id")

    r = p.add("cancel", "Cancel a task that is not finished.", 'taskctl cancel 7 --reason "duplicate of 5"', cmd_cancel)
    r.add_argument("id")
    r.add_argument("--reason")

    p.add("mine", "Your ASSIGNED, RUNNING and REVIEWING tasks.", "taskctl mine --human", cmd_mine)

    r = p.add(
        "tasks",
        "List tasks by status, project, assignee, type, tag or text (e.g. work waiting for review).",
        "taskctl tasks --status REVIEWING --project 1 --human",
        cmd_tasks,
    )
    r.add_argument("--status", action="append", help="PENDING, ASSIGNED, RUNNING, REVIEWING, COMPLETED, FAILED...")
    r.add_argument("--project")
    r.add_argument("--assignee")
    r.add_argument("--type")
    r.add_argument("--tag", action="append")
    r.add_argument("--search", help="text in the title or description")
    r.add_argument("--ready", action="store_true", help="only tasks that can be claimed now")
    r.add_argument("--first", type=int, help="at most this many (50)")
    r.add_argument("--after", help="the cursor to continue from")

    r = p.add("show", "One task in full (with --events, its history).", "taskctl show 7 --events", cmd_show)
    r.add_argument("id")
    r.add_argument("--events", action="store_true")

    r = p.add(
        "watch",
        "Stream task events as JSON lines (forever, or until --count events); resume where you stopped with --after.",
        "taskctl watch --project 1\n"
        "taskctl watch --after 1520   # replays from event 1521, then live\n"
        "taskctl watch --count 1      # wait for the next event, print it and exit",
        cmd_watch,
    )
    r.add_argument("--count", type=int, metavar="N", help="exit after printing N events")
    r.add_argument("--after", help='last event id seen ("0": all history; default: from now on)')
    r.add_argument("--project")
    r.add_argument("--task")
    r.add_argument("--of-agent", help="only events of this agent's tasks")

    r = p.add("projects", "List projects with their progress.", "taskctl projects --human", cmd_projects)
    r.add_argument("--status", choices=["ACTIVE", "PAUSED", "COMPLETED", "CANCELLED"])

    project = p.add("project", "Create or show a project.", 'taskctl project create "Launch"', cmd_projects)
    project_commands = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    r = p.add(
        "create",
        "Create a project.",
        'taskctl project create "Launch" --description "Ship it"',
        cmd_project_create,
        under=project_commands,
    )
    r.add_argument("name")
    r.add_argument("--description")
    r = p.add(
        "show",
        "A project with its progress counts.",
        "taskctl project show 1",
        cmd_project_show,
        under=project_commands,
    )
    r.add_argument("id")

    task = p.add(
        "task", "Create a task.", 'taskctl task create --project 1 --title "Write tests" --type testing', cmd_projects
    )
    task_commands = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    r = p.add(
        "create",
        "Create one task (for many with dependencies, use breakdown).",
        'taskctl task create --project 1 --title "Write the brief" --type copywrite --skill copywrite --priority 8',
        cmd_task_create,
        under=task_commands,
    )
    r.add_argument("--project", required=True)
    r.add_argument("--title", required=True)
    r.add_argument("--type", required=True, help="task type, e.g. research, development, testing")
    r.add_argument("--description")
    r.add_argument("--priority", type=int, help="1-10, higher is claimed first")
    r.add_argument("--tag", action="append")
    r.add_argument("--skill", action="append", help="required skill")
    r.add_argument("--depends-on", action="append", metavar="ID", help="an existing task it waits for")
    r.add_argument("--no-review", action="store_true", help="submitting completes it directly")
    r.add_argument("--max-attempts", type=int)
    r.add_argument("--acceptance", help="acceptance criteria")
    r.add_argument("--assignee", help="pre-assign to this agent")
    r.add_argument("--reviewer")
    r.add_argument("--timeout-minutes", type=int)

    r = p.add(
        "breakdown",
        "Create a whole plan (JSON or YAML: tasks with refs and dependencies) in one all-or-nothing call.",
        "taskctl breakdown plan.yaml\n\n"
        "plan.yaml:\n"
        '  project: {name: Launch}          # or project_id: "3", or --project 3\n'
        "  defaults: {requiresReview: false}\n"
        "  tasks:\n"
        "    - {ref: brief, title: Write the brief, type: copywrite, skills: [copywrite]}\n"
        "    - {title: Publish it, type: publish, depends_on: [brief]}",
        cmd_breakdown,
    )
    r.add_argument("file", help="the plan (- reads stdin)")
    r.add_argument("--project", help="add the tasks to this existing project")

    r = p.add("stats", "Counts of projects, tasks and agents, and recent events.", "taskctl stats --human", cmd_stats)
    r.add_argument("--project")
    r.add_argument("--recent", type=int, help="how many recent events (10)")

    r = p.add(
        "work",
        "Run COMMAND for each task you claim: the task arrives as JSON on stdin and in TASK_JSON "
        "(the same JSON; left out above 100 KB), TASK_ID, TASK_TITLE, TASK_DESCRIPTION, TASK_TYPE, "
        "TASK_ATTEMPT, TASK_PROJECT_ID, and TASK_FEEDBACK when a reviewer sent it back. Stdout lines "
        "`PROGRESS 40 message` report progress and `SUMMARY text` sets the summary; the rest of stdout is the result "
        "(JSON if it parses). Exit 0 submits, anything else fails the task with stderr's tail. "
        "Waits for new work on the event stream; Ctrl-C / SIGTERM stop the command and release "
        "its task. Prints one JSON line per step. Exits 0 when done, 3 with --once and nothing "
        "to do, 1 when the --once task failed, 130/143 after SIGINT/SIGTERM.",
        "taskctl work --agent coder --skill python --concurrency 2 -- python solve.py\n"
        'taskctl work --once -- sh -c \'echo PROGRESS 50 halfway; echo "{\\"ok\\": true}"\'',
        cmd_work,
    )
    r.add_argument("--project", help="only tasks of this project")
    r.add_argument("--tag", action="append", help="only tasks having one of these tags")
    r.add_argument("--once", action="store_true", help="do at most one task, then exit")
    r.add_argument("--max-tasks", type=int, help="exit after this many tasks")
    r.add_argument("--concurrency", type=int, default=1, help="tasks run at the same time (1)")
    r.add_argument("--heartbeat-every", type=float, default=15.0, metavar="SECONDS", help="(15)")
    r.add_argument(
        "--idle-recheck",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="while idle, also look for work this often: tasks that become due by time alone send no event (30)",
    )
    r.add_argument("--role", help="registered with the agent")
    r.add_argument("--skill", action="append", help="registered with the agent")
    r.add_argument("--no-register", action="store_true", help="the agent exists already; do not register it")
    r.add_argument("work_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    r = p.add(
        "mcp",
        "Serve the agent operations as MCP tools over stdio (for MCP-speaking coding assistants).",
        '{"mcpServers": {"tasks": {"command": "taskctl", "args": ["mcp"],\n'
        '  "env": {"TASK_SERVICE_URL": "http://127.0.0.1:8080", "AGENT_NAME": "claude"}}}}',
        None,
    )
    r.add_argument("--skill", action="append", help="registered with the agent (without a token)")
    r.add_argument("--role", help="registered with the agent (without a token)")
    r.add_argument("--heartbeat-every", type=float, default=15.0, metavar="SECONDS", help="(15)")
    return p.root


def make_client(args: argparse.Namespace) -> TaskServiceClient:
    config = Config.from_env(
        url=getattr(args, "url", None),
        agent=getattr(args, "agent", None),
        token=getattr(args, "token", None),
        api_key=getattr(args, "api_key", None),
        timeout=getattr(args, "timeout", None),
    )
    state = getattr(args, "state", None) or os.environ.get("TASK_SERVICE_STATE")
    if state:
        path = Path(state)
    else:
        who = config.agent or hashlib.sha256((config.token or "").encode()).hexdigest()[:12]
        path = default_state_path(config.url, who)
    return TaskServiceClient(config=config, attempts=FileAttempts(path))


async def _run(handler: Callable[..., Awaitable[Any]], args: argparse.Namespace) -> int:
    async with make_client(args) as client:
        outcome = await handler(client, args)
    value, code = outcome if isinstance(outcome, tuple) else (outcome, EXIT_OK)
    if args.command not in {"work", "watch"}:  # these print their own JSON lines
        emit(value, human_output=args.human)
    return code


def exit_code(error: TaskServiceError) -> int:
    return EXIT_REFUSED if error.code in REFUSED else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.human = getattr(args, "human", False)
    try:
        if args.command == "mcp":
            # Imported here: the MCP SDK takes longer to load than every other command runs.
            from ..mcp_server import serve

            serve(make_client(args), skills=_list(args.skill), role=args.role, heartbeat_every=args.heartbeat_every)
            return EXIT_OK
        return asyncio.run(_run(args.handler, args))
    except TaskServiceError as error:
        message = " ".join(str(error.message).split())
        print(f"{error.code}: {message}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`taskctl watch | head`): not an error; keep the interpreter
        # from complaining again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
