"""A Redis storage of ours for hishel: the fleet's shared cache. This module holds what the sync store
(:mod:`.redis_store`) and the async one (:mod:`.redis_store_async`) share.

- One round trip per lookup: a cache key's entries (its variants) are one Redis hash, read by a script
  that also checks the index still names the key (:data:`.redis_keys.LOOK`); an entry is one value
  (status, headers and body framed together); the expiry is on the key.
- Fleet-wide single flight: a process that misses takes a lock on the key (``SET NX PX``) and fetches;
  one that misses while the lock is held waits for the entry (or the lock's end, or ``flight_timeout``)
  instead of fetching too, so the server sees one request per URL per TTL across the fleet. A
  holder that fails releases its lock; one that dies lets it expire.
- Fleet-wide invalidation: each stored key is also indexed under every prefix of its path, per
  origin; dropping a prefix runs one Lua script that deletes the entries indexed there and the index,
  atomically, whichever process stored them and whenever.
- Every key carries the hash tag ``{pwt}``, so the scripts and transactions also run on Redis Cluster
  (all of the cache lives in one slot); clients come from :mod:`.redis_connect`.
- Bounded by Redis itself: ``maxmemory`` with ``maxmemory-policy allkeys-lru`` (the docs say so);
  ``max_size`` applies to the in-process storage only.
- Redis down or slow: every call has a short timeout, and after a failure the storage answers
  "unavailable" at once for ``retry_after`` seconds, so no request waits on a dead Redis twice; the
  layer falls back to the network and counts it. An invalidation Redis did not confirm is sent again
  before the store's next call to Redis.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Generator
from typing import Any

from hishel import Entry, Headers, Request, Response

from . import forks
from .freshness import Vary, own_windows
from .memory import NOT_KEPT, Record
from .redis_clock import CLOCK
from .redis_fetch import current, headers_in_progress, lease_of, url_in_progress, url_of
from .redis_frame import (
    Decoded,
    Unreadable,
    choose,
    framed,
    record_of,
    request_for_hishel,
    unframe,
    variant_id,
)
from .redis_guard import Guard, log
from .redis_keys import (
    CHANNEL,
    DROP_PREFIX,
    ENTRY,
    INDEX,
    LEASE,
    LOCK,
    LOOK,
    OWNER,
    SAVE,
    TAKE_LEASE,
    UPDATE,
    index_name,
    look_args,
    prefixes,
)
from .redis_slots import DEFAULT as DEFAULT_CALLS
from .redis_slots import AsyncSlots, Slots

POLL = 0.01  # seconds between looks while another process fetches

#: a key's entries as Redis answers them: ``HGETALL``'s mapping, or the flat list of a script
Found = dict[bytes, bytes] | list[bytes]


def _fields(found: Found) -> dict[bytes, bytes]:
    return found if isinstance(found, dict) else dict(zip(found[::2], found[1::2], strict=True))


CLEAR_BATCH = 1000  # keys per UNLINK while clearing: one round trip a batch, not one a key
_ENTRY = ENTRY.encode()


def cached_keys(names: list[bytes]) -> int:
    """How many of the keys a clear unlinks are cached entries (the rest: their index, owners, leases)."""
    return sum(name.startswith(_ENTRY) for name in names)


def rfc_vary(request: Request, response: Response) -> Vary | None:
    """The request header values the response's ``Vary`` names, as hishel's rules will compare them."""
    names = sorted({n.strip().lower() for n in (response.headers.get("vary") or "").split(",") if n.strip()})
    return tuple((name, request.headers.get(name)) for name in names) if names else None


def drop_args(origin: str, path: str) -> tuple[Any, ...]:
    return DROP_PREFIX, 1, index_name(origin, path), ENTRY, CHANNEL, f"{origin}\n{path}", LEASE


def origin_of_index(index: bytes) -> str | None:
    rest = index.decode()[len(INDEX):]
    scheme, sep, tail = rest.partition("://")
    return f"{scheme}://{tail.partition('/')[0]}" if sep else None


def save_args(key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None, lease: str | None) -> tuple[Any, ...]:
    return (SAVE, 1, ENTRY + key, LEASE + key if lease else "", lease or "", entry_id, data, OWNER + entry_id, key,
            "" if ttl_ms is None else ttl_ms, ENTRY, LEASE, *prefixes(url))

class StoreCore:
    """What the sync and async stores share: the framing, the flight (sans I/O), the bookkeeping."""

    #: how the store bounds its calls in flight (:mod:`.redis_slots`): threads or the event loop
    slots_type: type[Slots] | type[AsyncSlots] = Slots

    def __init__(self, client: Any, *, default_ttl: float | None = None, retry_after: float = 5.0,
                 flight_timeout: float = 0.0, lock_ttl: float = 30.0, reader: Callable[[], Any] | None = None,
                 max_calls: int = DEFAULT_CALLS, call_wait: float = 1.0) -> None:
        self.client = client
        self.slots: Any = self.slots_type(max_calls, call_wait)  # Slots, or AsyncSlots in the async store
        # Lookups may go through a connection of their own (redis_lookup), made on first use.
        self._reader_factory = reader
        self._reader: Any = None
        self._reader_free = threading.Lock()  # only ever tried, never waited on (free_reader)
        forks.follow(self)
        self.default_ttl = default_ttl
        #: seconds an entry hishel's rules stored (rfc mode) stays past ``ttl``: the layer's stale windows
        self.keep_stale = 0.0
        self.guard = Guard(retry_after, full_is_down=False)
        self.decoded = Decoded()
        #: seconds a miss waits for another process's fetch (0: no single flight)
        self.flight_timeout = flight_timeout
        self.lock_ms = max(1, int(lock_ttl * 1000))
        self._held: dict[str, str] = {}  # cache key -> our lock token
        self.flights_led = 0
        self.flights_followed = 0
        #: told of the failures the store absorbs, so that they are counted where its user counts them
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        #: told of the store's own events (``invalidation_unconfirmed``, ``invalidation_resent``) for metrics
        self.on_event: Callable[[str], None] = lambda event: None
        self.unreadable = 0  # stored values skipped as not this version's frames
        #: answers not stored because a write invalidated their key while they were fetched
        self.overtaken = 0
        #: invalidations Redis did not confirm, (origin or None for every origin, path): each is sent again
        #: before this store's next call to Redis, which fails while any still does
        self.unconfirmed: dict[tuple[str | None, str], None] = {}
        self.replayed = 0

    def _missed(self, origin: str | None, path: str) -> None:
        if not self.unconfirmed:
            log.warning("an invalidation did not reach Redis: other stations may serve the entries under %s "
                        "until it does; it is sent again before this station's next use of Redis", path)
        self.unconfirmed[(origin, path)] = None
        self.on_event("invalidation_unconfirmed")

    def _confirmed(self, target: tuple[str | None, str]) -> None:
        if self.unconfirmed.pop(target, 0) is None:  # another thread may have sent it meanwhile
            self.replayed += 1
            self.on_event("invalidation_resent")
            if not self.unconfirmed:
                log.warning("Redis has every invalidation it missed")

    def _lost(self) -> None:
        if self.unconfirmed:
            log.error("invalidations Redis never confirmed: other stations may serve the entries under %s until "
                      "they expire", ", ".join(sorted(path for _, path in self.unconfirmed)))

    def _skip(self, exc: Unreadable) -> None:
        self.unreadable += 1
        if self.unreadable == 1:
            log.warning("Redis holds cache entries this version cannot read (%s): corrupt, or written by another "
                        "version of the format; each is taken for a miss and replaced by the next fetch", exc)

    def _filtered(self, key: str, found: Found) -> dict[bytes, bytes]:
        """What a wait for another process's fetch found, as far as the lookup in progress can use it."""
        found = _fields(found)
        lookup = current(key)
        if lookup is None or not found:
            return found
        usable = {}
        for entry_id, data in found.items():
            try:
                if lookup.usable(record_of(key, entry_id, data)):
                    usable[entry_id] = data
            except Unreadable as exc:
                self._skip(exc)
        return usable

    def _choose(self, key: str, found: Found, method: str, headers: Any) -> Record | None:
        return choose(key, _fields(found), method, headers, self._skip, self.decoded.record)

    def _entries(self, found: Found, stream: Callable[[bytes], Any]) -> list[Entry]:
        entries = []
        for entry_id, data in _fields(found).items():
            try:
                entries.append(self._entry(entry_id, data, stream))
            except Unreadable as exc:
                self._skip(exc)
        return entries

    def _flight(self, key: str) -> Generator[tuple[str, Any], Any, dict[bytes, bytes]]:
        """A miss, sans I/O: lead the fetch (take the lock, end with nothing) or wait for the process that
        leads it. Yields ``(operation, argument)`` for the sync or async driver to carry out: ``lock`` and
        ``look`` (Redis, the result sent back), ``sleep`` and ``release``."""
        if key in self._held:
            return {}  # this process leads it already
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.flight_timeout
        followed = False
        while True:
            if (yield "lock", (key, token)):
                self._held[key] = token
                # The previous holder may have stored and let go between our first look and the lock.
                found = self._filtered(key, (yield "look", key))
                if found:
                    yield "release", key
                    return found
                self.flights_led += 1
                return {}
            if not followed:
                self.flights_followed += 1
                followed = True
            if time.monotonic() >= deadline:
                return {}  # waited long enough: fetch without the lock
            yield "sleep", POLL
            found = self._filtered(key, (yield "look", key))
            if found:
                return found

    def _flight_call(self, op: str, arg: Any) -> Any:
        """The Redis call behind a ``lock`` or ``look`` step (a coroutine with an asyncio client)."""
        if op == "lock":
            key, token = arg
            return self.client.set(LOCK + key, token, nx=True, px=self.lock_ms)
        return self._look(self.client, arg, url_of(arg))

    @staticmethod
    def _look(client: Any, key: str, url: str | None) -> Any:
        """A key's entries, as far as the index still names the key (without the URL, the layer's request,
        as they are)."""
        if url is None:
            return client.hgetall(ENTRY + key)
        return client.eval(LOOK, *look_args(key, url))

    def reader(self) -> Any:
        """The lookups' own connection (:mod:`.redis_lookup`), or None where the store was given none (a
        cluster or sentinel client routes every command itself)."""
        if self._reader is None and self._reader_factory is not None:
            self._reader = self._reader_factory()
        return self._reader

    def _held_token(self, key: str, mine: str | None) -> str | None:
        """Let go of this process's lock on ``key`` (``mine``: only if it is still that one); its token."""
        if mine is not None and self._held.get(key) != mine:
            return None
        return self._held.pop(key, None)

    def after_fork(self) -> None:
        """In a forked child: the lookup connection is the parent's (see :mod:`.forks`); make one of its own."""
        self._reader = None
        self._reader_free = threading.Lock()
        self.slots.after_fork()

    def free_reader(self) -> Any:
        """The lookups' own connection if it is free, taken (give it back with :meth:`reader_done`); else
        None, and the lookup goes through the pool. A lookup never queues behind another's: on a hung Redis,
        lookups in flight together each wait their one timeout side by side, not one after the other, and
        one that starts after the first failure skips Redis at once."""
        if self._reader_factory is None or not self._reader_free.acquire(blocking=False):
            return None
        try:
            return self.reader()
        except BaseException:
            self._reader_free.release()
            raise

    def reader_done(self) -> None:
        self._reader_free.release()

    def _ttl_ms(self, ttl: float | None) -> int | None:
        ttl = ttl if ttl is not None else self.default_ttl
        return max(1, int(ttl * 1000)) if ttl is not None else None

    def _framing(self, request: Request, response: Response, key: str, ttl: float | None,
                 ) -> tuple[str | None, dict[str, Any], int | None, str | None]:
        """The field a new entry goes to, its frame's extras, how long Redis keeps it and the fetch's lease;
        no field: the response is not stored."""
        lookup = current(key)
        leased, lease = lease_of(key)
        if leased and lease is None:  # Redis gave no lease: a write meanwhile could not withdraw the store
            if lookup is not None:
                lookup.stored = False
            return None, {}, None, None
        if lookup is None:  # hishel's own rules decided (rfc mode): one field per variant, as in ttl mode
            vary = rfc_vary(request, response)
            ttl = ttl if ttl is not None else self.default_ttl
            keep = max(self.keep_stale, own_windows(response.headers.get_list("cache-control")))
            return variant_id(key, request.method, vary), {"vary": vary}, self._ttl_ms(
                ttl + keep if ttl is not None else None), lease
        decision = lookup.decide(request, response)
        if not decision.store:
            lookup.stored = False
            return None, {}, None, None
        ttl = ttl if ttl is not None else self.default_ttl
        extras = {"vary": decision.vary, "fresh_until": CLOCK.now() + ttl if ttl is not None else None}
        # Kept past its freshness for as long as it may still answer for a failed origin.
        return variant_id(key, request.method, decision.vary), extras, self._ttl_ms(
            ttl + lookup.keep_stale if ttl is not None else None), lease

    def _lease_args(self, key: str, url: str, token: str) -> tuple[Any, ...]:
        return TAKE_LEASE, 1, LEASE + key, token, self.lock_ms, key, ENTRY, LEASE, *prefixes(url)

    @staticmethod
    def _leased(answer: Any) -> None:
        """A lease's answer carries Redis's time (µs): a clock that jumped since the connection was made
        (a late time sync) is set again at the next miss, not the next connection."""
        if int(answer) > 1:
            CLOCK.learn(int(answer))

    def _saved(self, result: Any) -> bool:
        stored = bool(int(result))
        self.guard.room()
        if not stored:
            self.overtaken += 1
        return stored

    def _update_args(self, key: str, entry_id: str, data: bytes) -> tuple[Any, ...]:
        _, lease = lease_of(key)
        return UPDATE, 1, ENTRY + key, LEASE + key if lease else "", lease or "", entry_id, data

    def _put_args(self, key: str, method: str, url: str, status: int, raw_headers: list[tuple[bytes, bytes]],
                  body: bytes, ttl: float | None, vary: Vary | None, keep_stale: float,
                  lease: str | None) -> tuple[Any, ...]:
        ttl = ttl if ttl is not None else self.default_ttl
        now = CLOCK.now()
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw_headers if k.lower() not in NOT_KEPT]
        data = framed(method, url, status, headers, body, now, vary=vary,
                      fresh_until=now + ttl if ttl is not None else None)
        return save_args(key, variant_id(key, method, vary), data, url,
                          self._ttl_ms(ttl + keep_stale if ttl is not None else None), lease)

    @staticmethod
    def _entry(entry_id: bytes, data: bytes, stream: Callable[[bytes], Any]) -> Entry:
        meta, body = unframe(data)
        try:
            grouped: dict[str, list[str]] = {}
            for k, v in meta["headers"]:
                grouped.setdefault(k, []).append(v)
            request = request_for_hishel(meta["method"], meta["url"], meta.get("vary"), headers_in_progress(),
                                         url_in_progress())
            return Entry(uuid.UUID(entry_id.decode()), request, Response(meta["status"], Headers(grouped), stream(body)))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unreadable(f"incomplete frame: {type(exc).__name__}: {exc}") from None

    def stats(self) -> dict[str, Any]:
        return {"redis_outages": self.guard.outages, "redis_failures": self.guard.failures,
                "redis_writes_refused_full": self.guard.refused_full,
                "redis_down_seconds": round(self.guard.down_for(), 3), "redis_unreadable_entries": self.unreadable,
                "redis_stores_overtaken_by_writes": self.overtaken,
                "redis_invalidations_unconfirmed": len(self.unconfirmed), "redis_invalidations_replayed": self.replayed,
                "fleet_fetches_led": self.flights_led, "fleet_fetches_awaited": self.flights_followed}
