"""The long-lived parts of a running service, built once in the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .db.events import stamp_events
from .db.session import create_engine, create_sessionmaker
from .events.sequencer import Sequencer
from .settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    sequencer: Sequencer
    is_sqlite: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        sessionmaker = create_sessionmaker(engine)
        return cls(settings, engine, sessionmaker, Sequencer(sessionmaker))

    async def start(self) -> None:
        if not self.is_sqlite:
            self.sequencer.start()

    async def close(self) -> None:
        await self.sequencer.stop()
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction for one mutation: commit on success, roll back on error.

        Events written in it are stamped before the caller returns, so the client that
        made a change can read its events at once.
        """
        async with self.sessionmaker() as session:
            async with session.begin():
                yield session
                if self.is_sqlite and session.info.get("events_written"):
                    await stamp_events(session)
            if not self.is_sqlite and session.info.get("events_written"):
                await self.sequencer.sync()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; closed (connection returned) when the block ends."""
        async with self.sessionmaker() as session:
            yield session
