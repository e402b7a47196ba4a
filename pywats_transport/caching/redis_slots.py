"""How many Redis calls one store has in flight at once, and so how many connections it opens.

redis-py opens a connection for every command in flight. A burst of requests in one process (an
asyncio ``gather`` over hundreds of lookups, a pool of threads) opened as many connections at once:
the later ones missed their connect timeout while the others were set up, Redis was taken for down,
and every station's burst added hundreds of connections toward Redis's ``maxclients``. With a bound,
a call beyond it waits for one in flight to end. On a dead Redis they end within its timeout, and the
guard then skips the rest at once. On a live one a burst drains in turn: the wait is this process's own
queue, and going to the network instead would cost the server and the event loop more. A call that
finds none free for :func:`queue_wait` skips Redis this once (:class:`Busy`): Redis answered, so it is
not an outage.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from ..config import REDIS_MAX_CONNECTIONS as DEFAULT
from .redis_guard import StorageUnavailable


def queue_wait(timeout: float) -> float:
    """The longest a call waits for one in flight to end: a second, or one call's timeout if longer."""
    return max(1.0, timeout)


class Busy(StorageUnavailable):
    """Every call this store may have in flight stayed busy for :func:`queue_wait`: this one skips Redis."""


def _busy(limit: int, wait: float) -> Busy:
    return Busy(f"{limit} Redis calls of this process were in flight for {wait:g} s (redis.max_connections); "
                "this request skips Redis")


class Slots:
    """Sync: ``with slots.taken(): ...`` around each call to Redis."""

    def __init__(self, limit: int = DEFAULT, wait: float = 1.0) -> None:
        self.limit, self.wait = limit, wait
        self._free = threading.Semaphore(limit)

    @contextmanager
    def taken(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait):
            raise _busy(self.limit, self.wait)
        try:
            yield
        finally:
            self._free.release()

    def after_fork(self) -> None:
        """A forked child's calls start from none in flight (the parent's threads are not in the child)."""
        self._free = threading.Semaphore(self.limit)


class AsyncSlots:
    """Async: ``async with slots.taken(): ...``; the semaphore is made in the first event loop that uses it."""

    def __init__(self, limit: int = DEFAULT, wait: float = 1.0) -> None:
        self.limit, self.wait = limit, wait
        self._free: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def taken(self) -> AsyncIterator[None]:
        if self._free is None:
            self._free = asyncio.Semaphore(self.limit)
        free = self._free
        if free.locked():  # none free: wait for one, up to queue_wait
            try:
                await asyncio.wait_for(free.acquire(), self.wait)
            except asyncio.TimeoutError:
                raise _busy(self.limit, self.wait) from None
        else:
            await free.acquire()  # returns at once
        try:
            yield
        finally:
            free.release()

    def after_fork(self) -> None:
        """Nothing to do: an asyncio stack belongs to its event loop, and a forked child builds its own."""
