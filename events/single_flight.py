"""A bounded map from keys to values computed once, shared by every concurrent caller.

Used where many subscribers need the same thing for the same event (the task after a
change, the rendered result of a selection): the first caller computes it, callers that
arrive meanwhile await the same future, and later ones find it in the LRU.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
MISSING: object = object()  # what `ready` returns for a key without a value yet


class SingleFlight(Generic[V]):
    def __init__(self, capacity: int):
        self._capacity = capacity
        self._futures: OrderedDict[Hashable, asyncio.Future[V]] = OrderedDict()
        self.computed = 0
        self.shared = 0

    def __len__(self) -> int:
        return len(self._futures)

    def ready(self, key: Hashable) -> V | object:
        """The value for `key` when it is already computed and cached, else MISSING: callers
        that find it need no coroutine and no await (fan-out asks once per subscriber)."""
        future = self._futures.get(key)
        if future is None or not future.done() or future.cancelled():
            return MISSING
        self.shared += 1
        return future.result()

    async def get(
        self, key: Hashable, compute: Callable[[], Awaitable[V]], *, keep: Callable[[V], bool] | None = None
    ) -> V:
        """The value for `key`, computing it at most once while it stays cached. A value that
        `keep` rejects is handed to the callers already waiting but not cached."""
        future = self._futures.get(key)
        if future is not None:
            if not future.done():  # asyncio.wait would cost a suspension even when it is
                await asyncio.wait({future})
            if not future.cancelled():
                self.shared += 1
                return future.result()
            # Its computation failed or was cancelled: compute it ourselves.
        future = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        self._futures.move_to_end(key)
        while len(self._futures) > self._capacity:
            self._futures.popitem(last=False)
        self.computed += 1
        try:
            value = await compute()
        except BaseException:
            # Waiters retry on their own rather than share this caller's failure.
            self._forget(key, future)
            future.cancel()
            raise
        future.set_result(value)
        if keep is not None and not keep(value):
            self._forget(key, future)
        return value

    def _forget(self, key: Hashable, future: asyncio.Future[V]) -> None:
        if self._futures.get(key) is future:
            del self._futures[key]
