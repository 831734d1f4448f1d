"""Counting the SQL statements a block of code sends (a SQLAlchemy engine event listener)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

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

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not _in_background():
            self.statements.append(statement)

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
    event.listen(engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", counter)
