"""The `task-service` console script: serve, migrate, seed, export-schema.

Heavy imports (the app, the schema, Alembic) happen inside the commands, so `--help` is
instant and a broken environment is reported as one line before anything else loads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .settings import LogFormat, Settings, SettingsError, load_settings

log = logging.getLogger("task_service.cli")


class CommandError(Exception):
    """A command cannot go on; main() prints the message as one line and exits with 1."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except SettingsError as exc:
        print(f"task-service: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"task-service: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-service",
        description="Task Service: the coordination hub for teams of AI agents (GraphQL API). "
        "Configured by environment variables (DATABASE_URL, API_KEY, ...; see the README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP/WebSocket server (migrates a SQLite database first)",
        description="Run the API server with uvicorn. With AUTO_MIGRATE (the SQLite default) "
        "the database is upgraded to the latest schema before the server starts.",
    )
    serve.add_argument("--host", help="interface to bind (overrides HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides PORT; default 8080)")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes (default 1); more than one needs a shared BROADCAST_URL (postgres:// or redis://)",
    )
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    serve.set_defaults(command=serve_command)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade the database at DATABASE_URL to the latest schema",
        description="Run the Alembic migrations on DATABASE_URL, up to REVISION.",
    )
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.set_defaults(command=migrate_command)

    seed = commands.add_parser(
        "seed",
        help="create a demo project with tasks and agents",
        description="Create the demo project 'Launch campaign' (8 tasks with dependencies) and "
        "register three agents (researcher, writer, designer) through the GraphQL API. "
        "Prints the agents' tokens once. Safe to run again: agents are re-registered "
        "(new tokens) and another project is created.",
    )
    seed.set_defaults(command=seed_command)

    export = commands.add_parser(
        "export-schema",
        help="print the GraphQL schema (SDL); needs no database",
        description="Print the GraphQL schema in SDL to stdout, or write it to a file.",
    )
    export.add_argument("--output", "-o", type=Path, help="write the SDL to this file")
    export.set_defaults(command=export_schema_command)
    return parser


def _settings() -> Settings:
    """The settings, with logging configured from them (LOG_LEVEL, LOG_FORMAT)."""
    from .observability.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format.value)
    return settings


def _say(settings: Settings, message: str) -> None:
    """What a command reports to the operator (serve's banner, migrate's result): a line on
    stdout for people; with LOG_FORMAT=json an INFO record of `task_service.cli`, so that a
    log collector reads one JSON object per line from the process. (seed's agent tokens are
    printed, never logged.)"""
    if settings.log_format is LogFormat.JSON:
        log.info(message)
    else:
        print(message, flush=True)


def serve_command(args: argparse.Namespace) -> int:
    # Worker processes (and the reloader) build their own Settings from the environment
    # through create_app_from_env, so the flags go into the environment, not just into ours.
    if args.host is not None:
        os.environ["HOST"] = args.host
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    settings = _settings()
    workers: int = args.workers
    if workers > 1 and settings.effective_broadcast_url.startswith("memory://"):
        raise CommandError(
            f"--workers {workers} needs a bus shared between processes: set BROADCAST_URL "
            "to postgres://... or redis://... (memory:// reaches one process only)"
        )

    import uvicorn

    from .api.http_protocol import CoalescingHttpToolsProtocol

    _prepare_database(settings)
    # The app's lifespan migrates too when AUTO_MIGRATE is on. It has just been done once,
    # here; N workers need not each take the migration lock at startup.
    os.environ["AUTO_MIGRATE"] = "false"

    graphiql = f"{_url(_browsable(settings.host), settings.port)}/graphql"
    auth = "API key required" if settings.auth_enabled else "open: API_KEY not set"
    _say(
        settings,
        f"task-service {__version__} listening on {_url(settings.host, settings.port)} "
        f"(database {_masked(settings.database_url)}; "
        f"GraphiQL {graphiql if settings.graphiql else 'off'}; authentication {auth})",
    )
    uvicorn.run(
        "task_service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        reload=args.reload,
        log_config=None,  # logging is ours (LOG_LEVEL, LOG_FORMAT), set up in every worker
        log_level=settings.log_level.lower(),
        # The app reads X-Forwarded-For itself, only from TRUSTED_PROXIES (app.py); uvicorn's
        # own handling would trust 127.0.0.1 by default.
        proxy_headers=False,
        ws_max_size=settings.max_body_bytes,
        ws_per_message_deflate=settings.ws_compression,
        # httptools, with each response's header and body writes sent as one (api/http_protocol.py).
        http=CoalescingHttpToolsProtocol,
    )
    return 0


def migrate_command(args: argparse.Namespace) -> int:
    settings = _settings()
    for line in _migrate(settings, revision=args.revision, convert_v1=True):
        _say(settings, line)
    _say(settings, f"migrated {_masked(settings.database_url)} to {args.revision}")
    return 0


def export_schema_command(args: argparse.Namespace) -> int:
    from .api.schema import build_schema

    sdl = build_schema(_settings()).as_str() + "\n"
    if args.output is None:
        sys.stdout.write(sdl)
    else:
        args.output.write_text(sdl, encoding="utf-8")
    return 0


def seed_command(args: argparse.Namespace) -> int:
    settings = _settings()
    _prepare_database(settings)
    with _database_errors(settings.database_url):
        project, tasks, registrations = asyncio.run(_seed(settings))
    print(f"created project {project['name']!r} (id {project['id']}) with {len(tasks)} tasks")
    for task in tasks:
        print(f"  task {task['id']}: [{task['taskType']}] {task['title']}")
    print("registered agents (tokens are shown only now; use them as 'Authorization: Bearer'):")
    for registration in registrations:
        agent = registration["agent"]
        skills = ", ".join(agent["skills"])
        print(f"  {agent['name']} ({skills}) token: {registration['token']}")
    return 0


SEED_PROJECT = {
    "name": "Launch campaign",
    "description": "Demo: research, write, design, review and publish a product launch.",
}

SEED_TASKS: list[dict[str, Any]] = [
    {
        "ref": "audience",
        "title": "Research the target audience",
        "taskType": "research",
        "priority": 8,
        "requiredSkills": ["research"],
        "dependsOnRefs": [],
    },
    {
        "ref": "competitors",
        "title": "Analyse competitors' launches",
        "taskType": "analysis",
        "requiredSkills": ["research"],
        "dependsOnRefs": [],
    },
    {
        "ref": "blog",
        "title": "Write the launch blog post",
        "taskType": "copywrite",
        "requiredSkills": ["copywrite"],
        "dependsOnRefs": ["audience", "competitors"],
    },
    {
        "ref": "social",
        "title": "Write the social media posts",
        "taskType": "copywrite",
        "priority": 4,
        "requiredSkills": ["copywrite"],
        "dependsOnRefs": ["audience"],
    },
    {
        "ref": "visuals",
        "title": "Design the launch visuals",
        "taskType": "design",
        "requiredSkills": ["design"],
        "dependsOnRefs": ["audience"],
    },
    {
        "ref": "review",
        "title": "Review copy and visuals together",
        "taskType": "review",
        "dependsOnRefs": ["blog", "social", "visuals"],
    },
    {
        "ref": "publish",
        "title": "Publish the blog post and social posts",
        "taskType": "publish",
        "dependsOnRefs": ["review"],
    },
    {
        "ref": "results",
        "title": "Measure the first week's results",
        "taskType": "analysis",
        "priority": 3,
        "requiredSkills": ["research"],
        "dependsOnRefs": ["publish"],
    },
]

SEED_AGENTS = [
    {"name": "researcher", "role": "Researcher", "skills": ["research"]},
    {"name": "writer", "role": "Copywriter", "skills": ["copywrite"]},
    {"name": "designer", "role": "Designer", "skills": ["design"]},
]

CREATE_PROJECT = """
mutation Seed($input: CreateProjectInput!) {
  createProject(input: $input) { id name }
}
"""

CREATE_TASKS = """
mutation Seed($projectId: ID!, $tasks: [CreateTaskInput!]!) {
  createTasks(projectId: $projectId, tasks: $tasks) { id title taskType }
}
"""

REGISTER_AGENT = """
mutation Seed($input: RegisterAgentInput!) {
  registerAgent(input: $input) { agent { name skills } token }
}
"""


async def _seed(
    settings: Settings,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Create the demo data through the public API, so it obeys every rule a client meets."""
    from .api.schema import build_schema
    from .resolvers.context import Context
    from .services import Services

    schema = build_schema(settings)
    services = Services.build(settings)
    await services.start()
    try:
        context = Context(services=services, request=None)

        async def execute(query: str, variables: dict[str, Any]) -> dict[str, Any]:
            result = await schema.execute(query, variable_values=variables, context_value=context)
            if result.errors or result.data is None:
                errors = "; ".join(e.message for e in result.errors or [])
                raise CommandError(f"seed failed: {errors or 'no data returned'}")
            return result.data

        project = (await execute(CREATE_PROJECT, {"input": SEED_PROJECT}))["createProject"]
        variables = {"projectId": project["id"], "tasks": SEED_TASKS}
        tasks = (await execute(CREATE_TASKS, variables))["createTasks"]
        registrations = [(await execute(REGISTER_AGENT, {"input": agent}))["registerAgent"] for agent in SEED_AGENTS]
    finally:
        await services.close()
    return project, tasks, registrations


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


@contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """Report an unreachable, refusing or unmigratable database as one line, not a traceback."""
    from alembic.util.exc import CommandError as AlembicError
    from sqlalchemy.exc import DBAPIError

    from .db.migrate import V1DatabaseError
    from .db.v1 import V1ConversionError

    try:
        yield
    except OSError as exc:
        raise CommandError(f"cannot reach the database {_masked(url)}: {_first_line(exc)}") from exc
    except DBAPIError as exc:
        raise CommandError(f"database {_masked(url)}: {_first_line(exc.orig)}") from exc
    except (V1DatabaseError, V1ConversionError, AlembicError) as exc:
        raise CommandError(f"database {_masked(url)}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _prepare_database(settings: Settings) -> None:
    """Make sure the database is at the latest revision before serving: migrate it with
    AUTO_MIGRATE (never converting a v1 database), else refuse, naming the command to run."""
    from .db.migrate import inspect_schema

    if settings.auto_migrate:
        _migrate(settings, convert_v1=False)
        return
    with _database_errors(settings.database_url):
        status = asyncio.run(inspect_schema(settings.database_url))
    problem = status.problem()
    if problem is not None:
        raise CommandError(f"database {_masked(settings.database_url)}: {problem}")


def _migrate(settings: Settings, *, revision: str = "head", convert_v1: bool) -> list[str]:
    from .db.migrate import migrate
    from .db.v1 import V1Defaults

    defaults = V1Defaults(
        lease_seconds=settings.lease,
        max_concurrent_tasks=settings.max_concurrent_tasks_per_agent,
        default_max_attempts=settings.default_max_attempts,
        default_timeout_minutes=settings.default_task_timeout_minutes,
        soft_delete_retention_days=settings.soft_delete_retention_days,
    )
    with _database_errors(settings.database_url):
        return asyncio.run(
            migrate(settings.database_url, revision=revision, convert_v1=convert_v1, v1_defaults=defaults)
        )


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _browsable(host: str) -> str:
    """A host a browser on this machine can open: not the wildcard 0.0.0.0 or ::."""
    return "localhost" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104 - not binding


if __name__ == "__main__":
    sys.exit(main())
