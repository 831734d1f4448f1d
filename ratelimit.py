"""Per-caller rate limits on mutations, on the `limits` library.

RATE_LIMIT ("600/minute", or several separated by ";") is a moving window per caller: an
agent (by its token), the admin key, or a client address when authentication is off.
RATE_LIMIT_STORAGE_URL memory:// keeps the counters in this process; redis://host:port
shares them between replicas, so N processes enforce one budget. Counters are named by
`namespace` (the service derives it from its database), so two deployments sharing one
Redis never share budgets. When Redis cannot be
reached the limiter lets requests through and logs it (a limiter outage must not stop
the team's work); it tries Redis again on the next request.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "task-service-rate"


class RateLimiter:
    def __init__(self, limit: str, storage_url: str = "memory://", *, namespace: str = ""):
        self.items: list[RateLimitItem] = parse_many(limit)
        self.storage_url = storage_url
        self.namespace = namespace
        self.storage: Storage = (
            MemoryStorage()
            if storage_url.startswith("memory://")
            else RedisStorage("async+" + storage_url, implementation="redispy", key_prefix=f"{KEY_PREFIX}:{namespace}")
        )
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._storage_down = False

    @property
    def description(self) -> str:
        return "; ".join(str(item) for item in self.items)

    async def hit(self, identity: str, *, cost: int = 1) -> int | None:
        """Count `cost` requests for `identity`: None when allowed, else the seconds to wait."""
        try:
            for item in self.items:
                if not await self._limiter.hit(item, identity, cost=cost):
                    stats = await self._limiter.get_window_stats(item, identity)
                    return max(1, math.ceil(stats.reset_time - time.time()))
        except Exception as exc:  # the storage (Redis) is unreachable: fail open, say so once
            if not self._storage_down:
                log.warning("rate limit storage %s is unreachable (%s); not limiting", self.storage_url, exc)
                self._storage_down = True
            return None
        if self._storage_down:
            log.info("rate limit storage %s is reachable again", self.storage_url)
            self._storage_down = False
        return None
