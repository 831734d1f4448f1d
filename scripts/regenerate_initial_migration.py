"""Recreate alembic/versions/0001_initial.py from the models, the way it was made.

While the service has not shipped, the schema lives in a single initial migration. After
changing db/models.py, run from the repository root:

    python scripts/regenerate_initial_migration.py [--admin-url postgresql://...]

It creates an empty PostgreSQL database (default admin URL
postgresql://postgres@127.0.0.1:5432/postgres, or $TASK_SERVICE_ADMIN_URL), runs
`alembic revision --autogenerate --rev-id 0001 -m initial` against it with the options of
env.py, appends the seed rows of task_type_defaults (TASK_TYPE_DEFAULTS from db/models.py,
written into the migration as literals), formats the file with ruff and drops the database.
The previous file is restored if anything fails. Review the diff, then run
`python -m pytest tests/db/test_migrations.py`, which checks that the migration runs on
PostgreSQL and SQLite and matches the models on both.

Once a release has shipped, stop using this: add a new revision for each change instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import renderers
from alembic.command import revision
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext

from task_service.db.migrate import alembic_config
from task_service.db.models import TASK_TYPE_DEFAULTS

REPO = Path(__file__).resolve().parent.parent
MIGRATION = REPO / "alembic" / "versions" / "0001_initial.py"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class SeedTaskTypeDefaultsOp(ops.MigrateOperation):
    """Renders the seed rows of task_type_defaults into the upgrade."""


@renderers.dispatch_for(SeedTaskTypeDefaultsOp)
def _render_seed(_context: AutogenContext, _op: SeedTaskTypeDefaultsOp) -> list[str]:
    rows = [
        {"task_type": name, "timeout_minutes": timeout, "max_attempts": attempts, "priority": prio}
        for name, (timeout, attempts, prio) in TASK_TYPE_DEFAULTS.items()
    ]
    return [
        "# Seed data: task-type defaults, editable afterwards.",
        "task_type_defaults = sa.table('task_type_defaults', "
        "sa.column('task_type', sa.String()), sa.column('timeout_minutes', sa.Integer()), "
        "sa.column('max_attempts', sa.Integer()), sa.column('priority', sa.Integer()))",
        f"op.bulk_insert(task_type_defaults, {rows!r})",
    ]


def _add_seed(_context: MigrationContext, _revision: Any, directives: list[Any]) -> None:
    script = directives[0]
    if script.upgrade_ops.is_empty():
        raise SystemExit("autogenerate found nothing to create: is the database empty?")
    script.upgrade_ops.ops.append(SeedTaskTypeDefaultsOp())


def _database_url(admin_url: str, name: str) -> str:
    base = admin_url.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name


async def _regenerate(admin_url: str) -> None:
    name = "tsregen_" + secrets.token_hex(4)
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        cfg = alembic_config(_database_url(admin_url, name))
        cfg.set_main_option("script_location", str(REPO / "alembic"))
        cfg.attributes["process_revision_directives"] = _add_seed
        await asyncio.to_thread(revision, cfg, message="initial", autogenerate=True, rev_id="0001")
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def _ruff(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ruff", *args, str(MIGRATION)], check=True, cwd=REPO)  # noqa: S603


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("TASK_SERVICE_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL allowed to CREATE DATABASE",
    )
    args = parser.parse_args()

    backup = Path(tempfile.mkdtemp()) / MIGRATION.name
    if MIGRATION.exists():
        shutil.move(MIGRATION, backup)
    try:
        asyncio.run(_regenerate(args.admin_url))
        _ruff("format", "--quiet")
        _ruff("check", "--fix", "--quiet")
        _ruff("format", "--quiet")
    except BaseException:
        MIGRATION.unlink(missing_ok=True)
        if backup.exists():
            shutil.move(backup, MIGRATION)
        raise
    backup.unlink(missing_ok=True)
    print(f"wrote {MIGRATION.relative_to(REPO)}")


if __name__ == "__main__":
    main()
