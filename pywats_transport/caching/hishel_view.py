"""hishel's own storage (SQLite) as the cache layer lets hishel see it, request by request.

- Entries are kept past their freshness for the stale windows (``cache.stale_if_error``,
  ``stale_while_revalidate``), so that one may answer when the origin fails or while it is refreshed; each is stored marked with when it was stored and when it stops being fresh
  (:data:`MARKS`, headers the layer takes off every answer). In ttl mode a lookup finds only fresh entries of the variant ``Vary``
  names for the request (hishel serves the first entry of the key there); in rfc mode hishel times them
  by their headers and checks ``Vary``, as always.
- Entries stored before the layer started (by an earlier process on the same file) answer no lookup as
  fresh: the layer's index does not know their keys, so a write could not drop them. They may still
  answer a failed origin, unless something this layer dropped covers them (:class:`Forgotten`).
- A refresh (``Cache-Control: no-cache`` in ttl mode, the ``refresh`` extension, a key a write made stale)
  finds none. Removing the key's entries before it goes through hishel is not enough: an answer a fetch
  began to store before a write becomes readable when its body ends, which may be between that removal
  and hishel's read.

hishel takes a storage per request (the ``caching`` extension's ``storage``); the layer's own storage is
given to hishel's transport, which closes it with the layer.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import hishel

from .index import is_under
from .url_parts import place_of

#: when a stored answer stops being fresh (seconds since the epoch, on the layer's clock)
FRESH_UNTIL = "x-pywats-fresh-until"
#: when it was stored
STORED_AT = "x-pywats-stored-at"
#: the storage's marks, taken off every answer
MARKS = (FRESH_UNTIL, STORED_AT)


def _mark(entry: Any, name: str, missing: float) -> float:
    value = entry.response.headers.get_list(name)
    try:
        return float(value[0]) if value else missing
    except ValueError:
        return float("-inf")


def answers(entry: Any, request: Any) -> bool:
    """Whether a stored entry answers ``request`` (an httpx request): its method, and the request headers
    its ``Vary`` names (``Vary: *``: none). hishel checks ``Vary`` in rfc mode only."""
    if entry.request.method != request.method:
        return False
    vary = [name.strip() for value in entry.response.headers.get_list("vary") or [] for name in value.split(",")]
    if "*" in vary:  # RFC 9111 §4.1
        return False
    return all(", ".join(entry.request.headers.get_list(name) or []) == ", ".join(request.headers.get_list(name))
               for name in vary if name)


def latest_first(entries: list[Any], since: float = float("-inf")) -> list[Any]:
    """The entries stored at ``since`` or later, the latest first: a refresh adds an entry beside the one it
    replaces, and hishel's ttl path serves the first it is given."""
    return sorted((entry for entry in entries if stored_at(entry) >= since), key=stored_at, reverse=True)


def fresh_until(entry: Any) -> float:
    """When ``entry`` stops being fresh (ttl mode); an entry stored without the mark never does."""
    return _mark(entry, FRESH_UNTIL, float("inf"))


def stored_at(entry: Any) -> float:
    """When ``entry`` was stored; one stored without the mark, before anything this process knows of."""
    return _mark(entry, STORED_AT, float("-inf"))


def restamped(headers: Any, now: float) -> Any:
    """A 304's merged headers for an entry of the storage: stored (validated) now."""
    headers[STORED_AT] = repr(now)
    return headers


class Forgotten:
    """What this layer dropped (writes, ``invalidate``, ``clear``), for the entries its index does not know:
    those stored before it started, by an earlier process on the same file. Such an entry answers no
    lookup as fresh, and a failed origin only if nothing covering its place was dropped since it was stored.
    Bounded: past ``LIMIT`` places, everything stored until then counts as dropped."""

    LIMIT = 1024

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._places: list[tuple[str | None, str, float]] = []
        self._before = float("-inf")
        self._lock = threading.Lock()

    def drop(self, places: list[tuple[str | None, str]]) -> None:
        now = self._clock()
        with self._lock:
            if len(self._places) + len(places) > self.LIMIT:
                self._before, self._places = now, []
            else:
                self._places.extend((origin, path, now) for origin, path in places)

    def clear(self) -> None:
        with self._lock:
            self._before, self._places = self._clock(), []

    def covers(self, entry: Any) -> bool:
        """Whether a drop since ``entry`` was stored covers its place."""
        stored = stored_at(entry)
        with self._lock:
            if stored < self._before:
                return True
            if not self._places:
                return False
            places = list(self._places)
        origin, path = place_of(str(entry.request.url))
        return any(when > stored and (at is None or at == origin) and is_under(path, under)
                   for at, under, when in places)


class _View:
    def __init__(self, storage: Any, keep: float, clock: Callable[[], float], *, finds: bool, timed: bool,
                 started: float) -> None:
        self._storage = storage
        self._keep, self._clock, self.started = keep, clock, started
        #: whether a lookup finds entries at all (a refresh's view finds none), and only fresh ones answering
        #: the request (ttl mode, where hishel serves the first entry of the key it finds)
        self._finds, self._timed = finds, timed
        self._request: Any = None
        self._storable: Callable[[Any], bool] | None = None
        #: a bound view's answer its ``storable`` kept out of the storage
        self.refused = False

    def bound(self, request: Any, storable: Callable[[Any], bool]) -> Any:
        """This view for one request (ttl mode): it finds only the entries answering it, and stores only
        what ``storable`` (hishel's response) allows: hishel's ttl path stores every 2xx, ``no-store``,
        ``Vary: *`` and event streams included."""
        if not self._timed:
            return self
        view = copy.copy(self)
        view._request, view._storable = request, storable
        return view

    def _keeps(self, response: Any) -> bool:
        if self._storable is None or self._storable(response):
            return True
        self.refused = True
        return False

    def _marked(self, response: Any, ttl: float | None) -> Any:
        now = self._clock()
        headers = hishel.Headers({k: list(response.headers.get_list(k) or []) for k in response.headers})
        headers[STORED_AT] = repr(now)
        if ttl is not None:
            headers[FRESH_UNTIL] = repr(now + max(0.0, ttl - self._keep))
        return replace(response, headers=headers)

    def _found(self, entries: list[Any]) -> list[Any]:
        """The entries a lookup may answer with: stored since the layer started (it knows their keys, and so
        what a write drops), and in ttl mode fresh and of the request's variant."""
        found = latest_first(entries, self.started)
        if not self._timed:
            return found
        now, request = self._clock(), self._request
        return [entry for entry in found if fresh_until(entry) > now and (request is None or answers(entry, request))]


class StorageView(_View, hishel.BaseStorage):
    def __init__(self, storage: hishel.BaseStorage, keep: float, clock: Callable[[], float], *, finds: bool = True,
                 timed: bool = False, started: float = float("-inf")) -> None:
        hishel.BaseStorage.__init__(self, default_ttl=storage.default_ttl, default_tti=storage.default_tti,
                                    max_stream_size=storage.max_stream_size)
        _View.__init__(self, storage, keep, clock, finds=finds, timed=timed, started=started)

    def create_entry(self, request: Any, response: Any, key: str, *, ttl: float | None = None,
                     tti: float | None = None) -> Any:
        if not self._keeps(response):
            return hishel.Entry(id=uuid.uuid4(), request=request, response=response)
        return self._storage.create_entry(request, self._marked(response, ttl), key, ttl=ttl, tti=tti)

    def get_entries(self, key: str) -> list[Any]:
        return self._found(self._storage.get_entries(key)) if self._finds else []

    def update_headers(self, id: uuid.UUID, headers: Any) -> None:
        self._storage.update_headers(id, headers)

    def remove_entry(self, id: uuid.UUID) -> None:
        self._storage.remove_entry(id)

    def close(self) -> None:
        """The layer's storage is closed with the layer, not with a request."""


class AsyncStorageView(_View, hishel.AsyncBaseStorage):
    def __init__(self, storage: hishel.AsyncBaseStorage, keep: float, clock: Callable[[], float], *,
                 finds: bool = True, timed: bool = False, started: float = float("-inf")) -> None:
        hishel.AsyncBaseStorage.__init__(self, default_ttl=storage.default_ttl, default_tti=storage.default_tti,
                                         max_stream_size=storage.max_stream_size)
        _View.__init__(self, storage, keep, clock, finds=finds, timed=timed, started=started)

    async def create_entry(self, request: Any, response: Any, key: str, *, ttl: float | None = None,
                           tti: float | None = None) -> Any:
        if not self._keeps(response):
            return hishel.Entry(id=uuid.uuid4(), request=request, response=response)
        return await self._storage.create_entry(request, self._marked(response, ttl), key, ttl=ttl, tti=tti)

    async def get_entries(self, key: str) -> list[Any]:
        return self._found(await self._storage.get_entries(key)) if self._finds else []

    async def update_headers(self, id: uuid.UUID, headers: Any) -> None:
        await self._storage.update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:
        await self._storage.remove_entry(id)

    async def close(self) -> None:
        """The layer's storage is closed with the layer, not with a request."""
