"""Commit to publish: after a transaction commits, tell the service what it did.

A mutation's transaction notes its effects as it goes (db/effects.py: the events it wrote,
the agents whose status changed). services.Services.transaction calls `before_commit`
inside the transaction and `after_commit` once it has committed; a rolled-back transaction
publishes nothing. The one difference between the databases lives here, chosen once when
the service is built (`publisher_for`):

- SQLite has a single writer, so ids are already in commit order: the transaction stamps
  its own events just before it commits and announces the new horizon after.
- PostgreSQL writers commit concurrently: the sequencer (events/sequencer.py) stamps
  committed events in commit order and announces the horizon; a writer wakes it and waits
  for its next pass, so the client that made a change can read its events at once.

Presence changes are announced the same way on both (events/bus.py).
"""

from __future__ import annotations

from ..db.effects import Effects, EffectSession
from ..db.events import stamp_events
from .bus import EventBus
from .sequencer import Sequencer


class Publisher:
    """Announces a committed transaction's effects on the bus; subclasses say how events
    get their cursor."""

    def __init__(self, bus: EventBus):
        self.bus = bus

    async def start(self) -> None:
        """Start what the publisher runs in the background (nothing by default)."""

    async def stop(self) -> None:
        """Stop it again."""

    async def before_commit(self, session: EffectSession) -> None:
        """Called inside the transaction after the caller's work, just before commit."""

    async def after_commit(self, effects: Effects) -> None:
        """Called once the transaction has committed: make its events visible to
        subscribers, then announce its presence changes in order."""
        if effects.events:
            await self._announce_events(effects)
        for change in effects.presence:
            await self.bus.publish_presence(change)

    async def _announce_events(self, effects: Effects) -> None:
        raise NotImplementedError


class SqlitePublisher(Publisher):
    """The writing transaction stamps its own events (SQLite has one writer)."""

    async def before_commit(self, session: EffectSession) -> None:
        if session.effects.events:
            await session.flush()  # the stamp is raw SQL: pending event rows first
            session.effects.horizon = await stamp_events(session)

    async def _announce_events(self, effects: Effects) -> None:
        if effects.horizon:
            await self.bus.publish_horizon(effects.horizon)


class PostgresPublisher(Publisher):
    """The sequencer stamps committed events in commit order and announces the horizon."""

    def __init__(self, bus: EventBus, sequencer: Sequencer):
        super().__init__(bus)
        self.sequencer = sequencer

    async def start(self) -> None:
        self.sequencer.start()

    async def stop(self) -> None:
        await self.sequencer.stop()

    async def _announce_events(self, effects: Effects) -> None:
        # A pass that starts after our commit stamps our events and publishes the horizon;
        # when it is late, sync logs a warning and the next pass delivers them.
        await self.sequencer.sync()


def publisher_for(dialect: str, bus: EventBus, sequencer: Sequencer) -> Publisher:
    """The publisher for a database dialect ("sqlite" or "postgresql")."""
    return SqlitePublisher(bus) if dialect == "sqlite" else PostgresPublisher(bus, sequencer)
