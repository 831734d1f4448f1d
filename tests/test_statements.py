"""The statement counter leaves out the service's background tasks (the sequencer polls every
second), so a count of a block's statements does not depend on when the poll lands."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from tests.statements import count_statements


async def test_background_statements_are_not_counted(services):
    with count_statements(services) as counter:

        async def background():
            async with services.read() as session:
                await session.execute(text("SELECT 1"))

        await asyncio.create_task(background(), name="event-sequencer")
        async with services.read() as session:
            await session.execute(text("SELECT 2"))
    assert [s for s in counter.statements if "SELECT" in s] == ["SELECT 2"]
