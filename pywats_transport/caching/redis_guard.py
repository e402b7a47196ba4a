"""Every Redis call of ours goes through a guard: after a failure Redis is skipped for a while, so that
a dead or hung Redis costs one timeout, not one per request; each outage is logged twice (when it
begins and when Redis answers again) and counted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from ..config import redacted

log = logging.getLogger("pywats_transport.cache")


class StorageUnavailable(ConnectionError):
    """Redis did not answer lately: the storage is skipped until ``retry_after`` has passed."""


FULL = "Redis is full and evicts nothing; give it maxmemory-policy allkeys-lru"


def refused_as_full(exc: BaseException) -> bool:
    """Redis refused a write for want of memory (``maxmemory`` reached under ``noeviction``, Redis's
    default policy): it still runs reads and deletes. Told by name, as redis-py is an optional extra."""
    return type(exc).__name__ == "OutOfMemoryError"


class Guard:
    """Skip Redis for a while after it failed, so that a dead Redis costs one timeout, not one per request.

    Logs once when an outage begins (the first failure after Redis answered) and once when Redis answers
    again: a dead Redis writes two lines, however many requests meet it.

    ``full_is_down=False`` (the cache): a write refused by a full Redis is no outage. Skipping Redis then
    would skip this station's invalidations too, while the other stations go on reading the entries
    they should drop. The refusals are counted, and logged once until a write goes through again
    (:meth:`room`).
    """

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic, *,
                 use: str = "cache", fallback: str = "requests go to the network",
                 logger: logging.Logger = log, full_is_down: bool = True) -> None:
        self.retry_after, self.clock = retry_after, clock
        self.use, self.fallback, self.log = use, fallback, logger
        self.full_is_down = full_is_down
        self.down_until = 0.0
        self.down_since = 0.0
        self.outages = 0
        self.failures = 0
        self.full_since = 0.0
        self.refused_full = 0
        self._lock = threading.Lock()
        self._calling = _Calling(self)

    def down_for(self) -> float:
        """Seconds since the outage in course began (0.0: Redis answered last)."""
        since = self.down_since
        return self.clock() - since if since else 0.0

    def check(self) -> None:
        if self.down_until and self.clock() < self.down_until:
            raise StorageUnavailable(f"Redis unavailable; trying again in {self.down_until - self.clock():.2f}s")

    def failed(self, exc: BaseException | None = None) -> None:
        with self._lock:
            self.failures += 1
            began = not self.down_since
            if began:
                self.outages += 1
                self.down_since = self.clock()
            self.down_until = self.clock() + self.retry_after
        if began:
            kind = type(exc).__name__ if exc is not None else "no answer"
            if kind in ("MovedError", "AskError"):  # the URL names one node of a cluster
                kind += ": a Redis Cluster node; give the cluster as redis+cluster://host:port,host:port"
            elif kind == "OutOfMemoryError":  # Redis's default policy when it is given a maxmemory
                kind += f": {FULL}"
            elif exc is not None and str(exc):  # what went wrong (a refused certificate, a wrong password)
                kind += f": {redacted(str(exc))[:300]}"
                if "Cluster mode is not enabled" in str(exc):  # redis-py's words for a refused CLUSTER SLOTS too
                    kind += " (or the Redis user may not run CLUSTER SLOTS: see the fleet page's ACL)"
                elif "can't run this command" in str(exc):  # Redis names the script, not the command
                    kind += " (the Redis user may not run a command the script runs: see the fleet page's ACL)"
            self.log.warning("Redis unavailable for the %s (%s); %s, and Redis is tried again every %g s", self.use,
                        kind, self.fallback, self.retry_after)

    def calling(self) -> _Calling:
        """One Redis call (or a few in one round trip): skipped while Redis is down, and its outcome noted.
        ``with guard.calling(): ...``"""
        return self._calling

    def noted(self, exc: Exception) -> None:
        """A call failed with ``exc``."""
        if self.full_is_down or not refused_as_full(exc):
            self.failed(exc)
        else:
            self.refused()

    def refused(self) -> None:
        """Redis answered, refusing a write for want of memory."""
        with self._lock:
            self.refused_full += 1
            began = not self.full_since
            if began:
                self.full_since = self.clock()
        if began:
            self.log.warning("%s: the %s stores nothing new until Redis has room; what it holds is still served, "
                             "and writes still drop it for every station", FULL, self.use)

    def room(self) -> None:
        """A write went through: a full Redis has room again."""
        if self.full_since:
            with self._lock:
                since, self.full_since = self.full_since, 0.0
            if since:
                self.log.warning("Redis has room for the %s again, after %.1f s", self.use, self.clock() - since)

    def ok(self) -> None:
        if self.down_since:
            with self._lock:
                since, self.down_since = self.down_since, 0.0
            if since:
                self.log.warning("Redis answers the %s again, after %.1f s", self.use, self.clock() - since)
        self.down_until = 0.0


class _Calling:
    """:meth:`Guard.calling`'s context: a class rather than a generator, as every lookup enters one, and
    without state of its own, so one serves every thread and task."""

    __slots__ = ("_guard",)

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def __enter__(self) -> None:
        self._guard.check()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self._guard.ok()
        elif isinstance(exc, Exception):
            self._guard.noted(exc)
