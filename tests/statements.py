"""Counting the SQL statements a block of code sends: SQLAlchemy's (an engine event listener)
and those sent on asyncpg's own connection (db/driver.py: a query logger on each pooled
connection while a counted task has it checked out)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

# What asyncpg sends by itself when a statement uses a type it has not seen on the
# connection: its introspection query, and switching JIT off and back on around it.
_ASYNCPG_OWN = re.compile(r"ORDER BY\s+depth DESC|set_config\('jit'")

# The service's own background work, which may send statements while a counted block runs
# (the sequencer polls every second): not the block's statements.
BACKGROUND_TASKS = frozenset({"event-sequencer", "reaper", "bus-watchdog", "bus-reader"})


def _in_background() -> bool:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop
        return False
    return task is not None and (task.get_name() in BACKGROUND_TASKS or task.get_name().startswith("stats-"))


class StatementCounter:
    """The statements sent while a block runs, except those of the service's background
    tasks (SQLAlchemy's asyncio greenlets run the hook in the awaiting task)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.driver_queries: list[tuple[str, tuple[Any, ...]]] = []  # db/driver.py's, with their arguments

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not _in_background():
            self.statements.append(statement)

    def on_checkout(self, _dbapi_connection: Any, _record: Any, proxy: Any) -> None:
        driver = getattr(proxy, "driver_connection", None)
        if hasattr(driver, "add_query_logger") and not _in_background():
            driver.add_query_logger(self.on_driver_query)

    def on_checkin(self, dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if hasattr(driver, "remove_query_logger"):
            driver.remove_query_logger(self.on_driver_query)

    def on_driver_query(self, logged: Any) -> None:
        if not _ASYNCPG_OWN.search(logged.query):  # asyncpg's type introspection, not the caller's
            self.statements.append(logged.query)
            self.driver_queries.append((logged.query, tuple(logged.args)))

    def __len__(self) -> int:
        return len(self.statements)

    @property
    def queries(self) -> int:
        """Statements other than transaction control (SQLite's BEGIN IMMEDIATE per session)."""
        return sum(1 for s in self.statements if not s.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")))

    def selects_from(self, table: str) -> list[str]:
        """The SELECT statements that read `table` (in a FROM clause)."""
        flat = (" ".join(s.split()) for s in self.statements)
        return [s for s in flat if s.upper().startswith("SELECT") and f"FROM {table}" in s]


@contextmanager
def count_statements(services: Any) -> Iterator[StatementCounter]:
    """Every statement `services`' engine sends while the block runs."""
    counter = StatementCounter()
    engine = services.engine.sync_engine
    hooks = [(engine, "before_cursor_execute", counter)]
    if engine.dialect.name == "postgresql":
        hooks += [(engine.pool, "checkout", counter.on_checkout), (engine.pool, "checkin", counter.on_checkin)]
    for target, name, hook in hooks:
        event.listen(target, name, hook)
    try:
        yield counter
    finally:
        for target, name, hook in hooks:
            event.remove(target, name, hook)
