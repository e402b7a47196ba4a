"""Throttle decisions: given now, may this request go, or how long must it wait.

Each request reserves its slot in a token bucket at arrival, so waiters are
served in arrival order (no starvation) and a reservation that would wait past
``max_wait`` is refused without taking a token. A waiter that leaves before its
turn (cancelled, interrupted) gives the turn back, and the next arrival takes it:
the turns given stay those of one schedule the bucket allows, and callers who give
up do not push everyone else's turns further out.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ThrottleSettings
from .retry import parse_retry_after

# How much of the gap to the configured rate a successful response wins back (adaptive mode).
RECOVERY_STEP = 0.1
# A throttled host's rate is multiplied by this.
SLOWDOWN = 0.5
# 429s in a row (no success between) mean "too fast", where one may be a passing spike.
REPEATED_429 = 2
#: buckets kept before those at rest are dropped. A bucket at rest (full, at the configured rate, not
#: held, counting no 429s) is what a new one would be, so dropping it changes nothing but the memory a
#: client of ever new hosts would otherwise keep, one bucket per host, for its life.
MAX_BUCKETS = 1024


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.top_rate, self.top_burst = rate, burst  # what the adaptive mode wins back to
        self.tokens = float(burst)
        self.stamp = now
        self.not_before = 0.0  # set from Retry-After: nothing goes before this
        self.throttled_in_a_row = 0
        #: turns still ahead that their waiters gave back (a heap). Only these exact instants can be handed
        #: on: any other would put two requests closer together than the schedule they were part of.
        self.given_back: list[float] = []

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def reserve(self, now: float, max_wait: float | None) -> float | None:
        """Take a token; return seconds to wait before using it, or None (refused, nothing taken)."""
        given_back = self.given_back
        while given_back and (given_back[0] < now or given_back[0] < self.not_before):
            heapq.heappop(given_back)  # passed unused, or inside a hold the server asked for since
        if given_back:
            wait = given_back[0] - now
            if max_wait is not None and wait > max_wait:
                return None  # a fresh turn would come later still
            heapq.heappop(given_back)
            return wait
        self._refill(now)
        wait = 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
        wait = max(wait, self.not_before - now)
        if max_wait is not None and wait > max_wait:
            return None
        self.tokens -= 1.0
        return wait


@dataclass
class ThrottleStats:
    requests: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0
    rejections: int = 0
    slowdowns: int = 0


class ThrottlePolicy:
    def __init__(self, settings: ThrottleSettings, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock, self.wall_clock = clock, wall_clock
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = MAX_BUCKETS
        self._lock = threading.Lock()
        self.stats = ThrottleStats()
        self.slowed = 0  # buckets below the configured rate
        self.attentive = False  # a bucket is slowed or counting 429s: successes must be reported

    def _key(self, host: str) -> str:
        return host if self.settings.per_host else "*"

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._drop_rested(now)
            bucket = self._buckets[key] = TokenBucket(self.settings.rate, self.settings.burst, now)
        return bucket

    def _drop_rested(self, now: float) -> None:
        rate, burst = self.settings.rate, float(self.settings.burst)
        for key, b in list(self._buckets.items()):
            b._refill(now)
            if (b.tokens >= burst and b.rate == b.top_rate == rate and b.burst == burst
                    and b.not_before <= now and not b.throttled_in_a_row):
                del self._buckets[key]
        # Those that remember something stay; the next sweep waits until as many again are new.
        self._sweep_at = max(MAX_BUCKETS, 2 * len(self._buckets))

    def resize(self, host: str, rate: float, burst: int) -> None:
        """Set the host's bucket to ``rate`` and ``burst`` (a fleet station's share, when the count of
        stations changed); a host the adaptive mode slowed stays slowed by as much."""
        with self._lock:
            now = self.clock()
            bucket = self._bucket(self._key(host), now)
            if bucket.top_rate == rate and bucket.top_burst == burst:
                return
            bucket._refill(now)
            was_slowed = bucket.rate < bucket.top_rate
            scaled = max(self.settings.min_rate, bucket.rate * rate / bucket.top_rate)
            bucket.rate = min(rate, scaled) if was_slowed else rate
            bucket.top_rate, bucket.top_burst = rate, burst
            if bucket.rate < rate:
                bucket.burst = max(1.0, min(float(burst), bucket.rate))
            else:
                bucket.burst = float(burst)
                if was_slowed:
                    self.slowed -= 1
            bucket.tokens = min(bucket.tokens, bucket.burst)

    def take_now(self, host: str) -> bool:
        """Take a token if one is there now (the common case, which needs no wait limits); False: none is."""
        key = self._key(host)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key) or self._bucket(key, now)
            bucket._refill(now)
            if bucket.tokens < 1.0 or bucket.not_before > now:
                return False
            bucket.tokens -= 1.0
            self.stats.requests += 1
            return True

    def acquire(self, host: str, max_wait: float | None = None) -> float | None:
        """Seconds this request must wait before going, or None when it would wait over ``max_wait``
        (default: the setting of that name)."""
        turn = self.turn(host, max_wait)
        return None if turn is None else turn[0]

    def turn(self, host: str, max_wait: float | None = None) -> tuple[float, float] | None:
        """:meth:`acquire`, and the instant (on the policy's clock) of the turn, for :meth:`give_back`."""
        key = self._key(host)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key) or self._bucket(key, now)
            wait = bucket.reserve(now, self.settings.max_wait if max_wait is None else max_wait)
            self._count(wait)
            return None if wait is None else (wait, now + wait)

    def give_back(self, host: str, at: float) -> None:
        """The waiter for the turn at ``at`` left before it (cancelled, interrupted): the next arrival takes it."""
        with self._lock:
            bucket = self._buckets.get(self._key(host))
            if bucket is not None and at > self.clock():
                heapq.heappush(bucket.given_back, at)

    def count_fleet_turn(self, waited: float | None) -> None:
        """A turn the fleet's rate gave after ``waited`` seconds (None: refused), counted as the bucket's are."""
        with self._lock:
            self._count(waited)

    def count_refusal(self) -> None:
        """A request refused after its turn: no room under the concurrency cap within its limit."""
        with self._lock:
            self.stats.rejections += 1

    def _count(self, wait: float | None) -> None:
        self.stats.requests += 1
        if wait is None:
            self.stats.rejections += 1
        elif wait > 0:
            self.stats.waited += 1
            self.stats.wait_seconds += wait
            self.stats.max_wait_seconds = max(self.stats.max_wait_seconds, wait)

    def would_wait(self, host: str) -> float:
        """How long a request arriving now would wait (for error messages)."""
        with self._lock:
            now = self.clock()
            bucket = self._bucket(self._key(host), now)
            bucket._refill(now)
            wait = 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / bucket.rate
            return max(wait, bucket.not_before - now)

    def on_response(self, host: str, status: int, retry_after: str | None) -> None:
        """Adaptive mode: slow a host down when the server says so; win the rate back on success.

        The server says so with a positive ``Retry-After`` (on 429 or 503), or with 429s in a row
        (no success between). A 503, or a single 429, asking for no wait is a busy moment, not a request to slow
        down: slowing on those would cut a queue's throughput many times over under a flaky server.
        """
        if not self.settings.adaptive:
            return
        with self._lock:
            now = self.clock()
            bucket = self._bucket(self._key(host), now)
            if status == 429 or status == 503:
                delay = parse_retry_after(retry_after, self.wall_clock())
                if status == 429:
                    bucket.throttled_in_a_row += 1
                    self.attentive = True
                if not (delay or bucket.throttled_in_a_row >= REPEATED_429):
                    return
                bucket.throttled_in_a_row = 0
                # min_rate is a floor for slowing down, never a rate to speed up to: a host configured
                # below it stays at its own rate.
                slower = max(min(self.settings.min_rate, bucket.top_rate), bucket.rate * SLOWDOWN)
                if bucket.rate >= bucket.top_rate > slower:
                    self.slowed += 1
                # Successes need reporting only while a host is slowed or counting 429s.
                self.attentive = self.slowed > 0 or any(b.throttled_in_a_row for b in self._buckets.values())
                bucket._refill(now)
                bucket.rate = slower
                bucket.burst = max(1.0, min(bucket.burst, bucket.rate))
                bucket.tokens = min(bucket.tokens, bucket.burst)
                if delay:
                    # Capped: one answer must not hold every later request to the host for as long as it asks.
                    delay = min(delay, self.settings.retry_after_max)
                    bucket.not_before = max(bucket.not_before, now + delay)
                self.stats.slowdowns += 1
            elif status < 400 and (bucket.throttled_in_a_row or bucket.rate < bucket.top_rate):
                bucket.throttled_in_a_row = 0
                if bucket.rate < bucket.top_rate:
                    bucket._refill(now)
                    bucket.rate = min(bucket.top_rate,
                                      bucket.rate + (bucket.top_rate - bucket.rate) * RECOVERY_STEP + 1e-9)
                    bucket.burst = min(float(bucket.top_burst), max(bucket.burst, bucket.rate))
                    if bucket.rate >= bucket.top_rate:
                        self.slowed -= 1
                # While nothing is slowed or counting 429s, successes need no bookkeeping at all.
                self.attentive = self.slowed > 0 or any(b.throttled_in_a_row for b in self._buckets.values())

    def rates(self) -> dict[str, float]:
        with self._lock:
            return {key: round(b.rate, 4) for key, b in self._buckets.items()}

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "requests": s.requests,
            "waited": s.waited,
            "wait_seconds_total": round(s.wait_seconds, 6),
            "wait_seconds_max": round(s.max_wait_seconds, 6),
            "rejections": s.rejections,
            "slowdowns": s.slowdowns,
            "rate_per_host": self.rates(),
        }
