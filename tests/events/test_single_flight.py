"""SingleFlight.ready: a value is handed out without an await only once it is computed and kept."""

from __future__ import annotations

import asyncio

import pytest

from task_service.events.single_flight import MISSING, SingleFlight


class TestReady:
    async def test_missing_until_computed_then_the_value(self) -> None:
        flight: SingleFlight[str] = SingleFlight(capacity=8)
        release = asyncio.Event()

        async def compute() -> str:
            await release.wait()
            return "value"

        assert flight.ready("k") is MISSING
        first = asyncio.create_task(flight.get("k", compute))
        await asyncio.sleep(0)
        assert flight.ready("k") is MISSING  # in flight: callers must await `get`
        release.set()
        assert await first == "value"
        assert flight.ready("k") == "value"

    async def test_a_value_not_kept_or_a_failure_is_missing(self) -> None:
        flight: SingleFlight[str] = SingleFlight(capacity=8)

        async def rejected() -> str:
            return "with errors"

        async def failing() -> str:
            raise RuntimeError("boom")

        assert await flight.get("k", rejected, keep=lambda value: False) == "with errors"
        assert flight.ready("k") is MISSING
        with pytest.raises(RuntimeError):
            await flight.get("j", failing)
        assert flight.ready("j") is MISSING
