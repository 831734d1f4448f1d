"""A blocking wrapper for scripts that do not use asyncio.

    with SyncTaskServiceClient.from_env() as client:
        task = client.claim_next()

Every coroutine method of TaskServiceClient is available with the same arguments and
returns its result; `subscribe_events` becomes a plain generator. One private event loop
runs the calls, so use one instance from one thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from typing import Any

from .client import TaskServiceClient
from .models import TaskEvent


class SyncTaskServiceClient:
    def __init__(self, *args: Any, **kwargs: Any):
        self._runner = asyncio.Runner()
        self.client = TaskServiceClient(*args, **kwargs)

    @classmethod
    def from_env(cls, **overrides: Any) -> SyncTaskServiceClient:
        self = cls.__new__(cls)
        self._runner = asyncio.Runner()
        self.client = TaskServiceClient.from_env(**overrides)
        return self

    def __enter__(self) -> SyncTaskServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self.client.close())
        self._runner.close()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attribute(*args, **kwargs))

        return call

    def subscribe_events(self, **kwargs: Any) -> Iterator[TaskEvent]:
        """Blocks for each next event; see TaskServiceClient.subscribe_events."""
        stream = self.client.subscribe_events(**kwargs)
        step: Callable[[], Any] = functools.partial(anext, stream)
        try:
            while True:
                yield self._runner.run(step())
        finally:
            self._runner.run(stream.aclose())
