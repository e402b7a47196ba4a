"""A request rate shared by every process of a fleet, through Redis, on the ``limits`` library.

``limits`` is well kept, has a Redis backend with atomic scripts for both sync and asyncio clients,
and its moving window bounds what any one-second window sees (what a server's own limiter counts),
where a token bucket per process cannot. A server's ``Retry-After`` seen by one station holds the
host for the whole fleet (a key with that expiry). When Redis fails, the caller falls back to its
local bucket (at ``rate / expected_processes``) for ``redis_retry_after`` seconds, then tries again.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond

from ..caching.redis_store import TAG, _Guard

HOLD = f"pwt:{TAG}:hold:"  # + host -> set while the fleet must not send to the host
NAMESPACE = f"pwt:{TAG}:rate"


def rate_item(rate: float) -> RateLimitItem:
    """``rate`` requests per second as a ``limits`` item: per second, or per N seconds below one a second."""
    if rate >= 1:
        return RateLimitItemPerSecond(max(1, int(rate)), 1, namespace=NAMESPACE)
    seconds = math.ceil(1 / rate)
    return RateLimitItemPerSecond(max(1, round(rate * seconds)), seconds, namespace=NAMESPACE)


class _FleetBase:
    def __init__(self, settings: Any, *, clock: Any = time.time) -> None:
        self.settings = settings
        self.item = rate_item(settings.rate)
        self.guard = _Guard(settings.redis_retry_after)
        self.clock = clock
        self.fallbacks = 0

    def _key(self, host: str) -> str:
        return host if self.settings.per_host else "*"

    def _wait_from(self, hold_ms: int, allowed: bool, reset_at: float) -> float:
        if hold_ms > 0:
            return hold_ms / 1000
        if allowed:
            return 0.0
        return max(0.001, reset_at - self.clock())

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "redis_outages": self.guard.outages, "redis_failures": self.guard.failures,
                "local_fallbacks": self.fallbacks}


class FleetRate(_FleetBase):
    """Sync: ``acquire(host)`` -> 0.0 (go now) or the seconds to wait before asking again."""

    def __init__(self, settings: Any, client: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        self.client = client
        self.storage = RedisStorage(settings.redis_url, connection_pool=client.connection_pool)
        self.limiter = MovingWindowRateLimiter(self.storage)

    def acquire(self, host: str) -> float:
        self.guard.check()
        key = self._key(host)
        try:
            hold = int(self.client.pttl(HOLD + key) or 0)
            allowed = hold <= 0 and self.limiter.hit(self.item, key)
            reset = self.limiter.get_window_stats(self.item, key).reset_time if hold <= 0 and not allowed else 0.0
        except Exception:
            self.guard.failed()
            raise
        self.guard.ok()
        return self._wait_from(hold, allowed, reset)

    def hold(self, host: str, seconds: float) -> None:
        """The server asked for a pause: every process holds the host that long."""
        self.guard.check()
        try:
            self.client.set(HOLD + self._key(host), b"1", px=max(1, int(seconds * 1000)))
        except Exception:
            self.guard.failed()
            raise


class AsyncFleetRate(_FleetBase):
    """Async twin of :class:`FleetRate` on ``limits.aio`` and ``redis.asyncio``."""

    def __init__(self, settings: Any, client: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.client = client
        self.storage = RedisStorage(settings.redis_url, implementation="redispy",
                                    socket_timeout=settings.redis_timeout, socket_connect_timeout=settings.redis_timeout)
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def acquire(self, host: str) -> float:
        self.guard.check()
        key = self._key(host)
        try:
            hold = int(await self.client.pttl(HOLD + key) or 0)
            allowed = hold <= 0 and await self.limiter.hit(self.item, key)
            reset = (await self.limiter.get_window_stats(self.item, key)).reset_time if hold <= 0 and not allowed else 0.0
        except Exception:
            self.guard.failed()
            raise
        self.guard.ok()
        return self._wait_from(hold, allowed, reset)

    async def hold(self, host: str, seconds: float) -> None:
        self.guard.check()
        try:
            await self.client.set(HOLD + self._key(host), b"1", px=max(1, int(seconds * 1000)))
        except Exception:
            self.guard.failed()
            raise
