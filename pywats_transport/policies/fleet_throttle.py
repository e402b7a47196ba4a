"""A request rate shared by every process of a fleet, through Redis, on pyrate-limiter's GCRA.

pyrate-limiter is well kept and its GCRA (a token bucket kept as one timestamp) runs as one atomic
Lua script on Redis for sync and asyncio clients alike, in one small hash per host. It honours both
settings a token bucket has: at most ``burst`` requests at once, ``rate`` per second sustained, so
no one-second window sees more than ``rate + burst``. A server's ``Retry-After`` seen by one station
holds the host for the whole fleet (a key with that expiry), and so does the adaptive slow-down: when
one station's policy slows a host (429s in a row, or a ``Retry-After``), the fleet's rate for that
host halves, and wins back one halving every ``fleet_slowdown_seconds`` without another. When Redis
fails, the caller falls back to its local bucket (its share of the fleet's rate and burst, or
``local_rate`` / ``local_burst``) for ``redis_retry_after`` seconds, then tries again. The share
divides by the stations the fleet counted taking turns at the host in the last ``PRESENCE_MS`` (each
turn says so), when more than ``expected_processes``: a fleet left at the default of 1 does not send
its whole rate once per station while Redis is down.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from pyrate_limiter import GCRA, Decision, Rate, RedisStateStore

from ..caching import forks
from ..caching.redis_connect import aclose_quietly
from ..caching.redis_guard import Guard
from ..caching.redis_keys import TAG
from ..caching.redis_slots import AsyncSlots, Slots, queue_wait
from .throttle import MAX_BUCKETS, SLOWDOWN

HOLD = f"pwt:{TAG}:hold:"  # + host -> set while the fleet must not send to the host
# + host -> its expiry tells how many halvings are in force: one per ``fleet_slowdown_seconds`` left,
# so the rate comes back one step at a time, on Redis's clock (the stations' clocks may disagree)
SLOW = f"pwt:{TAG}:slow:"
RATE = f"pwt:{TAG}:rate:"  # + host -> the GCRA state (pyrate-limiter's hash)
SEEN = f"pwt:{TAG}:seen:"  # + host -> sorted set {station id: Redis time (ms) of its last turn}
MAX_HALVINGS = 6
#: how long a station counts as one of the fleet after its last turn
PRESENCE_MS = 300_000

# KEYS[1]: the host's hold key, KEYS[2]: its slow key: the ms each still holds (negative: not set), and
# Redis's time in ms, which times the turn: the stations' clocks may disagree (a station without NTP),
# and a GCRA timed by each station's own would give every turn to the one ahead, or let it go over the
# rate. One command, not a pipeline: a cluster client sends a failed pipeline's commands again one by
# one, each waiting its own timeout on a hung node. PTTL is not a use to Redis's LRU: without the TOUCH,
# a Redis the cache fills (allkeys-lru) evicts a hold or a slow-down that every station reads.
# KEYS[3]: the host's stations; ARGV[1]: this station's id, ARGV[2]: PRESENCE_MS. The fourth answer is
# how many stations took a turn within it, this one included (0 where Redis refused the writes: a full
# Redis that evicts nothing; the GCRA's own write then fails the turn in any case).
STATE = """
redis.call('TOUCH', KEYS[1], KEYS[2])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seen = 0
if type(redis.pcall('ZADD', KEYS[3], ms, ARGV[1])) == 'number' then
  redis.pcall('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms - tonumber(ARGV[2]))
  redis.pcall('PEXPIRE', KEYS[3], ARGV[2])
  local n = redis.pcall('ZCARD', KEYS[3])
  if type(n) == 'number' then seen = n end
end
return {redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]), ms, seen}
"""

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


def fleet_rate(rate: float, burst: int) -> Rate:
    """``rate`` requests per second, ``burst`` at once, as pyrate-limiter's GCRA reads it: one request
    per ``1000 / rate`` ms (limit and interval scaled so that a rate below one a second is exact too)."""
    return Rate(max(1, round(rate * 1000)), 1_000_000, burst=max(1, burst))


def levels(settings: Any) -> list[list[Rate]]:
    """The fleet's rate with 0, 1, 2, ... halvings in force. A slowed host's burst shrinks with its rate,
    as the local bucket's does."""
    out = []
    for k in range(MAX_HALVINGS + 1):
        rate = max(min(settings.min_rate, settings.rate), settings.rate * SLOWDOWN ** k)  # never above the rate
        out.append([fleet_rate(rate, settings.burst if k == 0 else min(settings.burst, int(rate)))])
    return out


class _FleetBase:
    client: Any  # a redis-py client, sync or asyncio, of one server or a cluster

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.levels = levels(settings)
        self.algorithm = GCRA()
        self._stores: dict[str, RedisStateStore] = {}
        self.guard = Guard(settings.redis_retry_after, use="fleet rate",
                            fallback="each process uses its share of the rate",
                            logger=logging.getLogger("pywats_transport.throttle"))
        self.fallbacks = 0
        self.slowdowns = 0
        self.slow_ms = max(1, int(settings.fleet_slowdown_seconds * 1000))
        self.station = uuid.uuid4().hex
        self.stations: dict[str, int] = {}  # host key -> stations seen taking turns, at this one's last turn

    def _key(self, host: str) -> str:
        return host if self.settings.per_host else "*"

    def share(self, host: str) -> int:
        """How many stations share the host's rate, as far as this one knows: ``expected_processes``, or
        the stations seen taking turns when more."""
        return max(self.settings.expected_processes, self.stations.get(self._key(host), 0))

    def _state_args(self, key: str) -> tuple[Any, ...]:
        """The reads of a turn: how long the host is held, how many halvings are in force, and Redis's
        time; the turn also counts this station as one of the host's."""
        return STATE, 3, HOLD + key, SLOW + key, SEEN + key, self.station, PRESENCE_MS

    def _state(self, key: str, answer: Any) -> tuple[int, Any, int]:
        hold, slow, now_ms, seen = answer
        if seen:
            stations = self.stations
            # Most recent last, and as many hosts as the local buckets keep: a client of ever new hosts
            # forgets the counts of those it has not met for longest (a turn there counts them again).
            if stations.pop(key, None) is None and len(stations) >= MAX_BUCKETS:
                for old in list(stations)[: len(stations) // 2]:
                    stations.pop(old, None)  # another thread's turn may have dropped it first
            stations[key] = int(seen)
        return int(hold or 0), slow, now_ms

    def _signal_args(self, host: str, hold: float, slow_down: bool) -> tuple[Any, ...]:
        key = self._key(host)
        return (SIGNAL, 2, HOLD + key, SLOW + key, max(1, int(hold * 1000)) if hold else 0, int(slow_down),
                self.slow_ms, MAX_HALVINGS)

    def _rates(self, slow_ms: int | None) -> list[Rate]:
        """The rate in force for a host whose slow key has ``slow_ms`` left."""
        halvings = math.ceil(slow_ms / self.slow_ms) if slow_ms and slow_ms > 0 else 0
        return self.levels[min(halvings, MAX_HALVINGS)]

    def _check(self, key: str, slow_ms: int | None, now_ms: int) -> Any:
        """One turn of the host's GCRA in Redis at Redis's ``now_ms``: a Decision (awaitable with an asyncio
        client)."""
        store = self._stores.get(key)
        if store is None:
            if len(self._stores) >= MAX_BUCKETS:
                self._stores.clear()  # a store is a key name and a script handle: rebuilt at no cost
            store = self._stores[key] = RedisStateStore(self.client, RATE + key)
        return store.check(self.algorithm, self._rates(slow_ms), int(now_ms), 1)

    def _wait_from(self, hold_ms: int, decision: Decision | None, slow_ms: int | None) -> float:
        if hold_ms > 0:
            return hold_ms / 1000
        if decision is None or decision.allowed:
            return 0.0
        if decision.retry_after_ms is None:  # not computed: one request's interval
            return 1000 / self._rates(slow_ms)[0].limit
        return max(0.001, decision.retry_after_ms / 1000)

    def stats(self) -> dict[str, Any]:
        return {"backend": "redis", "redis_outages": self.guard.outages, "redis_failures": self.guard.failures,
                "redis_down_seconds": round(self.guard.down_for(), 3), "local_fallbacks": self.fallbacks,
                "fleet_slowdowns": self.slowdowns, "stations_seen": dict(self.stations)}


class FleetRate(_FleetBase):
    """Sync: ``acquire(host)`` -> 0.0 (go now) or the seconds to wait before asking again."""

    def __init__(self, settings: Any, client: Any) -> None:
        super().__init__(settings)
        self.client = client
        self.slots = Slots(settings.redis_max_connections, queue_wait(settings.redis_timeout))
        forks.follow(self)

    def after_fork(self) -> None:
        """In a forked child: the calls in flight were the parent's threads' (see :mod:`..caching.forks`),
        and the child is a station of its own."""
        self.slots.after_fork()
        self.station = uuid.uuid4().hex

    def close(self) -> None:
        self.client.close()

    def acquire(self, host: str) -> float:
        key = self._key(host)
        with self.slots.taken(), self.guard.calling():
            hold, slow, now_ms = self._state(key, self.client.eval(*self._state_args(key)))
            decision = self._check(key, slow, now_ms) if hold <= 0 else None
        return self._wait_from(hold, decision, slow)

    def signal(self, host: str, hold: float = 0.0, slow_down: bool = False) -> None:
        """What this station learnt from the server, for the whole fleet: hold the host ``hold`` seconds
        (its ``Retry-After``), halve its rate (the adaptive policy slowed it); one round trip."""
        with self.slots.taken(), self.guard.calling():
            self.client.eval(*self._signal_args(host, hold, slow_down))
        self.slowdowns += slow_down

    def slow_down(self, host: str) -> None:
        self.signal(host, slow_down=True)


class AsyncFleetRate(_FleetBase):
    """Async twin of :class:`FleetRate` on ``redis.asyncio``."""

    def __init__(self, settings: Any, client: Any) -> None:
        super().__init__(settings)
        self.client = client
        self.slots = AsyncSlots(settings.redis_max_connections, queue_wait(settings.redis_timeout))

    async def aclose(self) -> None:
        await aclose_quietly(self.client)

    async def acquire(self, host: str) -> float:
        key = self._key(host)
        async with self.slots.taken():
            with self.guard.calling():
                hold, slow, now_ms = self._state(key, await self.client.eval(*self._state_args(key)))
                decision = await self._check(key, slow, now_ms) if hold <= 0 else None
        return self._wait_from(hold, decision, slow)

    async def signal(self, host: str, hold: float = 0.0, slow_down: bool = False) -> None:
        async with self.slots.taken():
            with self.guard.calling():
                await self.client.eval(*self._signal_args(host, hold, slow_down))
        self.slowdowns += slow_down

    async def slow_down(self, host: str) -> None:
        await self.signal(host, slow_down=True)
