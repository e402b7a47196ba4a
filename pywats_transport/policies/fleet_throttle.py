"""A request rate shared by every process of a fleet, through Redis, on the ``limits`` library.

``limits`` is well kept, has a Redis backend with atomic scripts for both sync and asyncio clients,
and its moving window bounds what any one-second window sees (what a server's own limiter counts),
where a token bucket per process cannot. A server's ``Retry-After`` seen by one station holds the
host for the whole fleet (a key with that expiry), and so does the adaptive slow-down: when one
station's policy slows a host (429s in a row, or a ``Retry-After``), the fleet's rate for that host
halves, and wins back one halving every ``fleet_slowdown_seconds`` without another. When Redis fails, the
caller falls back to its local bucket (at ``rate / expected_processes``) for ``redis_retry_after``
seconds, then tries again.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond

from ..caching.redis_connect import Deferred, limits_client, limits_storage
from ..caching.redis_store import TAG, _Guard
from .throttle import SLOWDOWN

HOLD = f"pwt:{TAG}:hold:"  # + host -> set while the fleet must not send to the host
# + host -> its expiry tells how many halvings are in force: one per ``fleet_slowdown_seconds`` left,
# so the rate comes back one step at a time, on Redis's clock (the stations' clocks may disagree)
SLOW = f"pwt:{TAG}:slow:"
NAMESPACE = f"pwt:{TAG}:rate"
MAX_HALVINGS = 6

# KEYS[1]: the host's hold key, KEYS[2]: its slow key; ARGV[1]: ms to hold it (0: none; a longer hold
# already there stays), ARGV[2]: 1 for one more halving, ARGV[3]: ms per halving, ARGV[4]: the most
# halvings. One script, so a station's signal is one round trip, atomic, and runs on a cluster too.
SIGNAL = """
local hold = tonumber(ARGV[1])
if hold > 0 and redis.call('PTTL', KEYS[1]) < hold then
  redis.call('SET', KEYS[1], '1', 'PX', hold)
end
if ARGV[2] == '1' then
  local left = redis.call('PTTL', KEYS[2])
  local level = 0
  if left > 0 then level = math.ceil(left / tonumber(ARGV[3])) end
  level = math.min(level + 1, tonumber(ARGV[4]))
  redis.call('SET', KEYS[2], '1', 'PX', level * tonumber(ARGV[3]))
end
return 1
"""


def rate_item(rate: float) -> RateLimitItem:
    """``rate`` requests per second as a ``limits`` item: per second, or per N seconds below one a second."""
    if rate >= 1:
        return RateLimitItemPerSecond(max(1, int(rate)), 1, namespace=NAMESPACE)
    seconds = math.ceil(1 / rate)
    return RateLimitItemPerSecond(max(1, round(rate * seconds)), seconds, namespace=NAMESPACE)


class _FleetBase:
    def __init__(self, settings: Any, *, clock: Any = time.time) -> None:
        self.settings = settings
        #: the fleet's rate with 0, 1, 2, ... halvings in force (each its own window in ``limits``)
        self.items = [rate_item(max(settings.min_rate, settings.rate * SLOWDOWN ** k)) for k in range(MAX_HALVINGS + 1)]
        self.guard = _Guard(settings.redis_retry_after, use="fleet rate",
                            fallback="each process uses its share of the rate")
        self.clock = clock
        self.fallbacks = 0
        self.slowdowns = 0
        self.slow_ms = max(1, int(settings.fleet_slowdown_seconds * 1000))

    def _key(self, host: str) -> str:
        return host if self.settings.per_host else "*"

    @staticmethod
    def _state(pipe: Any, key: str) -> Any:
        """Queue the reads of a turn: how long the host is held, and how many halvings are in force."""
        pipe.pttl(HOLD + key)
        pipe.pttl(SLOW + key)
        return pipe

    def _signal_args(self, host: str, hold: float, slow_down: bool) -> tuple[Any, ...]:
        key = self._key(host)
        return (SIGNAL, 2, HOLD + key, SLOW + key, max(1, int(hold * 1000)) if hold else 0, int(slow_down),
                self.slow_ms, MAX_HALVINGS)

    def _item(self, slow_ms: int | None) -> RateLimitItem:
        halvings = math.ceil(slow_ms / self.slow_ms) if slow_ms and slow_ms > 0 else 0
        return self.items[min(halvings, MAX_HALVINGS)]

    def _wait_from(self, hold_ms: int, allowed: bool, reset_at: float) -> float:
        if hold_ms > 0:
            return hold_ms / 1000
        if allowed:
            return 0.0
        return max(0.001, reset_at - self.clock())

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "redis_outages": self.guard.outages, "redis_failures": self.guard.failures,
                "local_fallbacks": self.fallbacks, "fleet_slowdowns": self.slowdowns}


class FleetRate(_FleetBase):
    """Sync: ``acquire(host)`` -> 0.0 (go now) or the seconds to wait before asking again."""

    def __init__(self, settings: Any, client: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        from limits.strategies import MovingWindowRateLimiter

        self.client = client
        # Made on first use, inside the guard: a cluster storage connects when made.
        self.limiter: Any = Deferred(lambda: MovingWindowRateLimiter(
            limits_storage(settings.redis_url, settings.redis_timeout, is_async=False, client=client)))

    def close(self) -> None:
        if self.limiter.made_already:
            inner = limits_client(self.limiter.storage)
            if inner is not None:
                inner.close()
        self.client.close()

    def acquire(self, host: str) -> float:
        key = self._key(host)
        with self.guard.calling():
            hold, slow = self._state(self.client.pipeline(transaction=False), key).execute()
            hold, item = int(hold or 0), self._item(slow)
            allowed = hold <= 0 and self.limiter.hit(item, key)
            reset = self.limiter.get_window_stats(item, key).reset_time if hold <= 0 and not allowed else 0.0
        return self._wait_from(hold, allowed, reset)

    def signal(self, host: str, hold: float = 0.0, slow_down: bool = False) -> None:
        """What this station learnt from the server, for the whole fleet: hold the host ``hold`` seconds
        (its ``Retry-After``), halve its rate (the adaptive policy slowed it); one round trip."""
        with self.guard.calling():
            self.client.eval(*self._signal_args(host, hold, slow_down))
        self.slowdowns += slow_down

    def slow_down(self, host: str) -> None:
        self.signal(host, slow_down=True)


class AsyncFleetRate(_FleetBase):
    """Async twin of :class:`FleetRate` on ``limits.aio`` and ``redis.asyncio``."""

    def __init__(self, settings: Any, client: Any, **kw: Any) -> None:
        super().__init__(settings, **kw)
        from limits.aio.strategies import MovingWindowRateLimiter

        self.client = client
        self.limiter = MovingWindowRateLimiter(limits_storage(settings.redis_url, settings.redis_timeout, is_async=True,
                                                              client=client))

    async def aclose(self) -> None:
        inner = limits_client(self.limiter.storage)
        if inner is not None:
            await inner.aclose()
        await self.client.aclose()

    async def acquire(self, host: str) -> float:
        key = self._key(host)
        with self.guard.calling():
            hold, slow = await self._state(self.client.pipeline(transaction=False), key).execute()
            hold, item = int(hold or 0), self._item(slow)
            allowed = hold <= 0 and await self.limiter.hit(item, key)
            reset = (await self.limiter.get_window_stats(item, key)).reset_time if hold <= 0 and not allowed else 0.0
        return self._wait_from(hold, allowed, reset)

    async def signal(self, host: str, hold: float = 0.0, slow_down: bool = False) -> None:
        with self.guard.calling():
            await self.client.eval(*self._signal_args(host, hold, slow_down))
        self.slowdowns += slow_down

    async def slow_down(self, host: str) -> None:
        await self.signal(host, slow_down=True)
