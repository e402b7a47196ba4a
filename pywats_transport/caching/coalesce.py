"""Request coalescing: concurrent identical lookups wait for the first (the leader) instead of all missing.

The leader's flight lands when its response body has been read and closed,
which is when hishel makes the entry visible; followers then look it up.
The event type is the only difference between sync (threading) and async (anyio).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from ..streams import OnClose
from .memory import MAX_BODY, Kept, announced_over


class Flight:
    """A lookup's place in a fetch: the leader's own flight is the fetch in flight (when it began, and the
    event its followers wait on, made when one first asks); a follower's points at its leader's."""

    __slots__ = ("key", "leader", "_flights", "_fetch", "started", "waiting", "_settled")

    def __init__(self, key: str, flights: Flights, fetch: Flight | None = None, started: float = 0.0,
                 waiting: Any = None) -> None:
        self.key, self.leader, self._flights = key, fetch is None, flights
        self._fetch = fetch if fetch is not None else self
        self.started, self.waiting = started, waiting
        self._settled = False

    @property
    def event(self) -> Any:
        """The event a follower waits on; created only when a follower shows up."""
        return self._flights._event_for(self)

    @property
    def settled(self) -> bool:
        """Whether the fetch, once landed, left its followers nothing to fetch again: its answer was stored
        (or was a hit, or a download no storage keeps). False: it failed, or stored nothing, and one
        follower may fetch for the others."""
        return self._fetch._settled


class Flights:
    """``stale_after``: how long a follower waits (``coalesce_timeout``). A fetch in flight for longer is
    no longer waited for: its caller holds the answer unread, or dropped it, and may never read it. The
    next lookup leads a fetch of its own, and the followers still waiting wait for that one instead."""

    def __init__(self, event_factory: Callable[[], Any], stale_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._event_factory = event_factory
        self._stale_after = stale_after
        self._clock = clock
        self._flying: dict[str, Flight] = {}  # key -> the leader's flight
        self._lock = threading.Lock()

    def join(self, key: str) -> Flight:
        now = self._clock()
        with self._lock:
            fetch = self._flying.get(key)
            if fetch is None:
                fetch = self._flying[key] = Flight(key, self, None, now)
                return fetch
            if self._stale_after is None or now - fetch.started < self._stale_after:
                return Flight(key, self, fetch)
            if fetch.waiting is None:  # so that whoever follows the old fetch follows the new one
                fetch.waiting = self._event_factory()
            taken = self._flying[key] = Flight(key, self, None, now, fetch.waiting)
            return taken

    def _event_for(self, flight: Flight) -> Any:
        with self._lock:
            fetch = flight._fetch
            if fetch.waiting is None:
                fetch.waiting = self._event_factory()
                if self._flying.get(flight.key) is not fetch:  # landed already: nothing to wait for
                    fetch.waiting.set()
            return fetch.waiting

    def land(self, flight: Flight | None, settled: bool = False) -> None:
        if flight is None or not flight.leader:
            return
        flight._settled = settled
        with self._lock:
            if self._flying.get(flight.key) is not flight:
                return  # landed already, or a later fetch took over: its followers wait for that one
            del self._flying[flight.key]
            event = flight.waiting
        if event is not None:
            event.set()

    def land_when_read(self, flight: Flight | None, response: httpx.Response,
                       limit: int | None = MAX_BODY) -> httpx.Response:
        """Land once the body is read (and stored), or as soon as it outgrows ``limit``, the storage's
        bound: a download is not stored, and the followers need not wait for it to end."""
        if flight is None or not flight.leader:
            return response
        caching = response.extensions.get("caching", {})
        stored = caching.get("stored")
        if not stored or response.is_closed:
            # Nothing to wait for: nothing gets stored (a hit's entry is there already), or the body is
            # already complete.
            self.land(flight, settled=bool(stored or caching.get("from_cache")))
            return response
        if announced_over(response.headers, limit):
            self.land(flight, settled=True)  # a download nobody waits for, nor fetches again for the others
            return response
        stream = OnClose(response.stream, lambda: self.land(flight, settled=stream.completed or stream.outgrew),
                         limit)
        response.stream = stream
        return response


class SaveWhenRead(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a body through unchanged and hands the whole of it to ``on_complete`` once fully read; a body
    over ``limit`` bytes is a download: it is let go as soon as it outgrows the bound (``on_abandon``), not
    held in memory to the end only to be dropped."""

    def __init__(self, stream: Any, on_complete: Callable[[bytes], None],
                 on_abandon: Callable[[], None] | None = None, limit: int | None = MAX_BODY) -> None:
        self._stream = stream
        self._on_complete = on_complete
        self._on_abandon = on_abandon
        self._kept = Kept(limit)
        self._done = False

    def _add(self, chunk: bytes) -> None:
        if self._kept.add(chunk):
            self._closing()

    def _complete(self) -> None:
        if not self._done and self._kept.chunks is not None:
            self._done = True
            self._on_complete(b"".join(self._kept.chunks))

    def __iter__(self) -> Any:
        for chunk in self._stream:
            self._add(chunk)
            yield chunk
        self._complete()

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            self._add(chunk)
            yield chunk
        self._complete()

    def _closing(self) -> None:
        if not self._done and self._on_abandon is not None:
            self._done = True
            self._on_abandon()

    def close(self) -> None:
        self._closing()
        self._stream.close()

    async def aclose(self) -> None:
        self._closing()
        await self._stream.aclose()
