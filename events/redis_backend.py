"""A Redis backend for broadcaster that fails visibly instead of going quiet.

broadcaster 0.3's RedisBackend marks itself ready before SUBSCRIBE has completed; its
listener can then find no subscription, stop listening and wait forever, so the process
receives nothing (our self-ping caught it). It also leans on redis-py's silent reconnects,
which resubscribe but say nothing of the messages missed meanwhile. This one starts
listening only after SUBSCRIBE is acknowledged, turns off redis-py's retries so a lost
connection stops the stream, and leaves reconnecting to the bus's watchdog
(events/bus.py), which then tells every subscriber to catch up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from broadcaster import Event
from broadcaster._backends.base import BroadcastBackend
from redis import asyncio as redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


class RedisBackend(BroadcastBackend):
    def __init__(self, url: str):
        self._url = url
        self._conn: Any = None
        self._pubsub: Any = None
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._listener: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._conn = redis.Redis.from_url(self._url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=3)
        self._pubsub = self._conn.pubsub()
        await self._conn.ping()  # fail now, not at the first publish, when Redis is down

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        for closable in (self._pubsub, self._conn):
            if closable is not None:
                with contextlib.suppress(Exception):
                    await closable.aclose()

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="redis-bus-listener")

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._conn.publish(channel, message)

    async def next_published(self) -> Event:
        return await self._queue.get()

    async def _listen(self) -> None:
        try:
            while True:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None and message["type"] == "message":
                    self._queue.put_nowait(Event(channel=message["channel"].decode(), message=message["data"].decode()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Stop: the bus's pings go unanswered and its watchdog reconnects.
            log.warning("redis bus: the subscription connection failed (%s)", type(exc).__name__)
