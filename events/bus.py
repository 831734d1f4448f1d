"""The event bus: small "something changed" signals between processes, over broadcaster.

Signals carry no data a subscriber could lose: "the log is sequenced up to N" and "agent X
changed status". Subscribers read the log itself (events/replay.py), so a missed signal
only delays them. broadcaster neither reconnects nor bounds its queues, so this wrapper:
- keeps ONE broadcaster subscription per process and fans out to local listeners, each of
  which keeps only the newest horizon (constant memory per listener);
- publishes a ping every PING_INTERVAL and, when its own ping does not come back within
  PING_TIMEOUT (a PostgreSQL restart, a killed listener backend, a Redis restart), tears
  the backend down and reconnects with backoff, then tells every listener to catch up
  from the log;
- serialises publishes (one asyncpg connection cannot run two statements at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from broadcaster import Broadcast

from ..db.effects import PresenceChange

log = logging.getLogger(__name__)

CHANNEL = "task_service"
PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0


@dataclass(frozen=True)
class PresenceSignal:
    """A presence change as this process heard it. `n` numbers the changes the process
    heard, so every local listener (and events/snapshots.py) names the same change alike."""

    n: int
    change: PresenceChange


class PresenceBatch(NamedTuple):
    """The presence changes a listener heard since it last asked."""

    changes: list[PresenceSignal]
    overflowed: bool  # more arrived than the listener keeps: some were dropped
    resync: bool  # the bus reconnected: changes sent meanwhile were lost

    @property
    def complete(self) -> bool:
        return not (self.overflowed or self.resync)


class Listener:
    """A local subscriber's mailbox: the newest horizon seen, the presence changes heard,
    whether the bus reconnected since, and a wake-up flag. The bus delivers (advance, hear,
    request_resync); the subscriber waits and takes.

    With `defer`, a new horizon does not wake the subscriber while it waits: the listener is
    handed to `defer` once, which calls `wake()` when the subscriber can read that far
    (events/tail.py's LogTail.wake_when_read), so a subscriber of the log is woken once per
    horizon, not once by the bus and again by the tail's refresh.
    """

    def __init__(
        self,
        *,
        horizon: int = 0,
        wants_presence: bool = False,
        max_presence: int = 1000,
        defer: Callable[[Listener], None] | None = None,
    ):
        self._horizon = horizon
        self._resync = False
        self._presence: list[PresenceSignal] = []
        self._overflowed = False
        self.wants_presence = wants_presence
        self._max_presence = max_presence
        self._wake = asyncio.Event()
        self._defer = defer
        self.deferred = False  # handed to `defer`, which has yet to wake it
        self._waiting = False
        self._timed_out = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- the bus's side --------------------------------------------------------------

    def advance(self, horizon: int) -> None:
        if horizon > self._horizon:
            self._horizon = horizon
        if self._defer is not None and self._waiting and not self._wake.is_set():
            if not self.deferred:
                self.deferred = True
                self._defer(self)
            return
        self._wake.set()

    def wake(self) -> None:
        """`defer`'s call: the subscriber may read up to the horizon now."""
        self.deferred = False
        self._wake.set()

    def hear(self, signal: PresenceSignal) -> None:
        if not self.wants_presence:
            return
        if len(self._presence) >= self._max_presence:
            self._overflowed = True
        else:
            self._presence.append(signal)
        self._wake.set()

    def request_resync(self) -> None:
        self._resync = True
        self._wake.set()

    # -- the subscriber's side -------------------------------------------------------

    @property
    def horizon(self) -> int:
        """The highest sequenced cursor this listener has been told of."""
        return self._horizon

    @property
    def resync_pending(self) -> bool:
        return self._resync

    def take_resync(self) -> bool:
        """Whether the bus reconnected since the last call (signals may have been lost)."""
        resync, self._resync = self._resync, False
        return resync

    def take_presence(self) -> PresenceBatch:
        """The presence changes heard since the last call, oldest first; clears them (and
        the overflow and resync marks)."""
        batch = PresenceBatch(self._presence, self._overflowed, self._resync)
        self._presence, self._overflowed, self._resync = [], False, False
        return batch

    async def wait(self, timeout: float) -> bool:
        """Sleep until signalled (True) or until `timeout` passes (False).

        The timeout is one timer per listener, kept across waits and moved only when it
        fires early: a subscriber woken 10 times a second would otherwise make and cancel
        a timer each time (2 to 3 % of the server's CPU during fan-out)."""
        if not self._wake.is_set():
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + timeout
            if self._timer is not None and self._timer.when() > self._deadline:
                self._timer.cancel()
                self._timer = None
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._on_timer)
            self._waiting = True
            try:
                await self._wake.wait()
            finally:
                self._waiting = False
        self._wake.clear()
        if self._timed_out:
            self._timed_out = False
            return False
        return True

    def _on_timer(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # the next wait sets its own
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._timed_out = True
            self._wake.set()
        else:  # a later wait than the one this timer was set for
            self._timer = loop.call_at(self._deadline, self._on_timer)

    def close(self) -> None:
        """The subscriber is gone: drop its timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _presence_message(change: PresenceChange) -> dict[str, Any]:
    return {
        "agentId": change.agent_id,
        "name": change.name,
        "previous": change.previous,
        "status": change.status,
        "at": change.at.isoformat(),
    }


def _presence_from(message: dict[str, Any]) -> PresenceChange:
    return PresenceChange(
        agent_id=int(message["agentId"]),
        name=str(message["name"]),
        previous=message.get("previous"),
        status=str(message["status"]),
        at=datetime.fromisoformat(message["at"]),
    )


class EventBus:
    def __init__(self, url: str, *, ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT):
        self.url = url
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.horizon = 0
        # The highest horizon known to be on the bus: heard in a message, or sent (by this
        # process, or by the stamp's own NOTIFY). A pass that reaches no further announces
        # nothing: every process listening already heard as much.
        self.announced = 0
        self.connected = False
        self.reconnects = 0
        self.resynced_at = float("-inf")  # time.monotonic() of the last reconnect
        self._listeners: set[Listener] = set()
        self._broadcast: Broadcast | None = None
        self._publish_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pong = asyncio.Event()
        self._ping_id = ""
        self._origin = uuid.uuid4().hex
        self._presence_heard = 0

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()
        self.start_watchdog()

    def start_watchdog(self) -> None:
        self._tasks = [asyncio.create_task(self._watchdog(), name="bus-watchdog")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._disconnect()

    async def _connect(self) -> None:
        if self.url.startswith(("redis://", "rediss://")):
            from .redis_backend import RedisBackend

            broadcast = Broadcast(backend=RedisBackend(self.url))
        else:
            broadcast = Broadcast(self.url)
        await broadcast.connect()
        self._broadcast = broadcast
        subscribed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(broadcast, subscribed), name="bus-reader")
        # Return only once we listen: a publish (our ping) before LISTEN has run would race it
        # on the backend's single connection ("another operation is in progress") and kill
        # the reader, so every reconnect would fail its ping.
        waiter = asyncio.ensure_future(subscribed.wait())
        try:
            await asyncio.wait({waiter, self._reader}, timeout=self.ping_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not subscribed.is_set():
            raise ConnectionError("the event bus could not subscribe to its channel")
        self.connected = True

    async def _disconnect(self) -> None:
        self.connected = False
        broadcast, self._broadcast = self._broadcast, None
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if broadcast is not None:
            with contextlib.suppress(Exception):
                await broadcast.disconnect()

    async def _read(self, broadcast: Broadcast, subscribed: asyncio.Event) -> None:
        async with broadcast.subscribe(CHANNEL) as subscriber:
            subscribed.set()
            # broadcaster declares Subscriber.__aiter__ as returning an optional generator.
            async for event in subscriber:  # type: ignore[union-attr]
                if event is None:
                    return
                self._dispatch(event.message)

    async def _watchdog(self) -> None:
        """Ping ourselves through the backend; reconnect (with backoff) when pings stop."""
        delay = 0.5
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.connected and await self._ping():
                delay = 0.5
                continue
            log.warning("event bus: lost the listener connection; reconnecting")
            await self._disconnect()
            while True:
                try:
                    await self._connect()
                    if not await self._ping():
                        raise ConnectionError("no ping after reconnect")
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("event bus: reconnect failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                    await self._disconnect()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            self.reconnects += 1
            log.info("event bus: reconnected; listeners catch up from the log")
            self._resync_all()

    async def _ping(self) -> bool:
        self._ping_id = uuid.uuid4().hex
        self._pong.clear()
        try:
            await self._publish({"k": "ping", "id": self._ping_id})
            async with asyncio.timeout(self.ping_timeout):
                await self._pong.wait()
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    # -- publishing and dispatch ---------------------------------------------------

    async def _publish(self, message: dict[str, Any]) -> None:
        if self._broadcast is None:
            raise ConnectionError("event bus is not connected")
        async with self._publish_lock, asyncio.timeout(self.ping_timeout):
            await self._broadcast.publish(CHANNEL, json.dumps(message, separators=(",", ":")))

    async def publish_horizon(self, horizon: int) -> None:
        """Tell every process the log is sequenced up to `horizon`, unless the bus already
        carried as much. Local listeners are woken directly, so a bus outage never delays
        this process's own subscribers."""
        self._advance(horizon)
        if horizon > self.announced and await self._safe_publish({"k": "seq", "n": horizon}):
            self.announced = max(self.announced, horizon)

    async def horizon_announced(self, horizon: int) -> None:
        """The log is sequenced up to `horizon`, and the pass that found it sent the message
        itself (a NOTIFY in its own transaction, db/driver.py) or found it already sent: wake
        local listeners only."""
        self.announced = max(self.announced, horizon)
        self._advance(horizon)

    async def publish_presence(self, change: PresenceChange) -> None:
        """Tell every process's presence listeners that an agent's status changed (local
        listeners directly)."""
        self._deliver_presence(change)
        await self._safe_publish({"k": "presence", "origin": self._origin, **_presence_message(change)})

    async def _safe_publish(self, message: dict[str, Any]) -> bool:
        try:
            await self._publish(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The watchdog reconnects; subscribers elsewhere catch up from the log then.
            log.warning("event bus: publish failed (%s)", type(exc).__name__)
            return False
        return True

    def _dispatch(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            return
        kind = message.get("k")
        if kind == "ping":
            if message.get("id") == self._ping_id:
                self._pong.set()
        elif kind == "seq":
            horizon = int(message.get("n", 0))
            self.announced = max(self.announced, horizon)
            self._advance(horizon)
        elif kind == "presence" and message.get("origin") != self._origin:
            try:
                change = _presence_from(message)
            except (KeyError, TypeError, ValueError):
                log.warning("event bus: ignored a malformed presence message")
                return
            self._deliver_presence(change)

    def note_horizon(self, horizon: int) -> None:
        """A horizon read from the database (a subscriber's poll): wake local listeners."""
        self._advance(horizon)

    def _advance(self, horizon: int) -> None:
        if horizon <= self.horizon:
            return
        self.horizon = horizon
        for listener in self._listeners:
            listener.advance(horizon)

    def _deliver_presence(self, change: PresenceChange) -> None:
        self._presence_heard += 1
        signal = PresenceSignal(self._presence_heard, change)
        for listener in self._listeners:
            listener.hear(signal)

    def _resync_all(self) -> None:
        self.resynced_at = time.monotonic()
        for listener in self._listeners:
            listener.request_resync()

    # -- local listeners -----------------------------------------------------------

    @contextlib.contextmanager
    def listen(self, *, presence: bool = False, defer: Callable[[Listener], None] | None = None):  # type: ignore[no-untyped-def]
        """A listener for the block (Listener says what `defer` does)."""
        listener = Listener(horizon=self.horizon, wants_presence=presence, defer=defer)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
            listener.close()
