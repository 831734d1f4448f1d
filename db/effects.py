"""A transaction's effects: what it did that the rest of the service must hear of once it
commits (docs/ARCHITECTURE.md, "Commit to publish").

db/ functions note their effects on the session as they go (record_event, refresh_status);
the session's owner (services.Services.transaction) hands them to the publisher after the
commit, or drops them with a rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class PresenceChange:
    """An agent's status changed (previous None: it has just registered)."""

    agent_id: int
    name: str
    previous: str | None
    status: str
    at: datetime


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    """An event row the transaction added to the log."""

    task_id: int
    type: str


@dataclass
class Effects:
    """What one transaction did that others hear of after it commits."""

    # Event rows added to the log; stamped with their cursor at (SQLite) or after (PostgreSQL) commit.
    events: list[WrittenEvent] = field(default_factory=list)
    # Agent status changes, in the order they happened.
    presence: list[PresenceChange] = field(default_factory=list)
    # The log's stamped horizon when the transaction stamped its own events before commit
    # (SQLite, events/publish.py); None otherwise.
    horizon: int | None = None


class EffectSession(AsyncSession):
    """The service's session (db/session.py's sessionmaker makes these): an AsyncSession
    that carries the Effects of its transaction. One transaction per session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.effects = Effects()


def effects_of(session: AsyncSession) -> Effects:
    """The Effects record of `session`'s transaction; TypeError for a session that was not
    made by db/session.py's sessionmaker (its changes would never be published)."""
    if not isinstance(session, EffectSession):
        raise TypeError(f"{type(session).__name__} carries no Effects; use the sessionmaker of db/session.py")
    return session.effects
