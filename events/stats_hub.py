"""dashboardStats for live subscribers: computed once per change for all of them, throttled.

One producer per distinct projectId filter runs while it has subscribers. It wakes on the
bus (a new horizon or a presence change), recomputes at most once per `min_interval`, and
publishes the value; each subscriber keeps only a version number, so a slow one skips
intermediate values instead of queueing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from .bus import EventBus

log = logging.getLogger(__name__)
T = TypeVar("T")

IDLE_POLL_SECONDS = 30.0


@dataclass
class _Feed(Generic[T]):
    value: T | None = None
    version: int = 0
    subscribers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    producer: asyncio.Task[None] | None = None


def _moved(feed: _Feed[Any], seen: int) -> bool:
    return feed.version != seen


class StatsHub(Generic[T]):
    def __init__(self, bus: EventBus, compute: Callable[[Any], Awaitable[T]], *, min_interval: float = 0.5):
        self._bus = bus
        self._compute = compute
        self._min_interval = min_interval
        self._feeds: dict[Any, _Feed[T]] = {}
        self.computations = 0

    @property
    def producers(self) -> int:
        return sum(1 for feed in self._feeds.values() if feed.producer is not None)

    async def subscribe(self, key: Any) -> AsyncIterator[T]:
        """The current value first, then each new value (the newest when several piled up)."""
        feed = self._feeds.setdefault(key, _Feed())
        feed.subscribers += 1
        try:
            # Subscribers arriving together wait for one first computation and share one
            # producer (without the lock each would start its own, and all but the last
            # would run forever: a leaked task and listener per concurrent subscriber).
            async with feed.starting:
                if feed.producer is None:
                    feed.value = await self._compute(key)
                    self.computations += 1
                    feed.version += 1
                    feed.producer = asyncio.create_task(self._produce(key, feed), name=f"stats-{key}")
            seen = feed.version
            assert feed.value is not None
            yield feed.value
            while True:
                async with feed.changed:
                    await feed.changed.wait_for(partial(_moved, feed, seen))
                seen = feed.version
                assert feed.value is not None
                yield feed.value
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                if feed.producer is not None:
                    feed.producer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await feed.producer

    async def _produce(self, key: Any, feed: _Feed[T]) -> None:
        loop = asyncio.get_running_loop()
        with self._bus.listen(presence=True) as listener:
            while True:
                if not await listener.wait(IDLE_POLL_SECONDS):
                    continue
                listener.take_presence()  # a wake-up is all the producer needs of it
                started = loop.time()
                try:
                    value = await self._compute(key)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("dashboardStats: computing the stats failed; retrying")
                    await asyncio.sleep(self._min_interval)
                    continue
                self.computations += 1
                async with feed.changed:
                    feed.value = value
                    feed.version += 1
                    feed.changed.notify_all()
                # Throttle: at most one value per min_interval, whatever the change rate.
                await asyncio.sleep(max(0.0, self._min_interval - (loop.time() - started)))
