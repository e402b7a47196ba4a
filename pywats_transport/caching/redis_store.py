"""A Redis storage of ours for hishel (sync and async): the fleet's shared cache.

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
  layer falls back to the network and counts it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from functools import partial
from typing import Any

from hishel import AsyncBaseStorage, BaseStorage, Entry, Headers, Request, Response

from .freshness import Vary
from .memory import Kept, Record
from .redis_fetch import FETCHES, current, lease_of, url_of
from .redis_frame import Unreadable, choose, frame, framed, record_of, reframed, unframe, variant_id
from .redis_guard import Guard, log
from .redis_keys import (
    CACHE_KEYS,
    CHANNEL,
    DROP_PREFIX,
    ENTRY,
    INDEX,
    LEASE,
    LOCK,
    LOOK,
    OWNER,
    RELEASE,
    SAVE,
    TAKE_LEASE,
    UPDATE,
    index_name,
    prefixes,
)

POLL = 0.01  # seconds between looks while another process fetches

#: a key's entries as Redis answers them: ``HGETALL``'s mapping, or the flat list of a script
Found = dict[bytes, bytes] | list[bytes]


def _fields(found: Found) -> dict[bytes, bytes]:
    return found if isinstance(found, dict) else dict(zip(found[::2], found[1::2], strict=True))


def _drop_args(origin: str, path: str) -> tuple[Any, ...]:
    return DROP_PREFIX, 1, index_name(origin, path), ENTRY, CHANNEL, f"{origin}\n{path}", LEASE


def _origin_of(index: bytes) -> str | None:
    rest = index.decode()[len(INDEX):]
    scheme, sep, tail = rest.partition("://")
    return f"{scheme}://{tail.partition('/')[0]}" if sep else None


def _save_args(key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None, lease: str | None) -> tuple[Any, ...]:
    return (SAVE, 1, ENTRY + key, LEASE + key if lease else "", lease or "", entry_id, data, OWNER + entry_id, key,
            "" if ttl_ms is None else ttl_ms, ENTRY, LEASE, *prefixes(url))


class _Base:
    def __init__(self, client: Any, *, default_ttl: float | None = None, retry_after: float = 5.0,
                 flight_timeout: float = 0.0, lock_ttl: float = 30.0, reader: Callable[[], Any] | None = None) -> None:
        self.client = client
        # Lookups may go through a client of their own (a single-connection client skips the pool on
        # every hit), made on first use: a sync one connects when made, which must not fail here.
        self._reader_factory = reader
        self._reader: Any = None
        self.default_ttl = default_ttl
        self.guard = Guard(retry_after)
        #: seconds a miss waits for another process's fetch (0: no single flight)
        self.flight_timeout = flight_timeout
        self.lock_ms = max(1, int(lock_ttl * 1000))
        self._held: dict[str, str] = {}  # cache key -> our lock token
        self.flights_led = 0
        self.flights_followed = 0
        #: told of the failures the store absorbs, so that they are counted where its user counts them
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
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

    def _confirmed(self, target: tuple[str | None, str]) -> None:
        if self.unconfirmed.pop(target, 0) is None:  # another thread may have sent it meanwhile
            self.replayed += 1
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
        return choose(key, _fields(found), method, headers, self._skip)

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
        return client.eval(LOOK, 1, ENTRY + key, key, *prefixes(url))

    def reader(self) -> Any:
        if self._reader is None:
            self._reader = self._reader_factory() if self._reader_factory is not None else self.client
        return self._reader

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
        if lookup is None:  # hishel's own rules decided (rfc mode): every entry its own field
            return str(uuid.uuid4()), {}, self._ttl_ms(ttl), lease
        decision = lookup.decide(request, response)
        if not decision.store:
            lookup.stored = False
            return None, {}, None, None
        ttl = ttl if ttl is not None else self.default_ttl
        extras = {"vary": decision.vary, "fresh_until": time.time() + ttl if ttl is not None else None}
        # Kept past its freshness for as long as it may still answer for a failed origin.
        return variant_id(key, request.method, decision.vary), extras, self._ttl_ms(
            ttl + lookup.keep_stale if ttl is not None else None), lease

    def _lease_args(self, key: str, url: str, token: str) -> tuple[Any, ...]:
        return TAKE_LEASE, 1, LEASE + key, token, self.lock_ms, key, ENTRY, LEASE, *prefixes(url)

    def _saved(self, result: Any) -> bool:
        stored = bool(int(result))
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
        now = time.time()
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw_headers]
        data = framed(method, url, status, headers, body, now, vary=vary,
                      fresh_until=now + ttl if ttl is not None else None)
        return _save_args(key, variant_id(key, method, vary), data, url,
                          self._ttl_ms(ttl + keep_stale if ttl is not None else None), lease)

    @staticmethod
    def _entry(entry_id: bytes, data: bytes, stream: Callable[[bytes], Any]) -> Entry:
        meta, body = unframe(data)
        try:
            grouped: dict[str, list[str]] = {}
            for k, v in meta["headers"]:
                grouped.setdefault(k, []).append(v)
            return Entry(uuid.UUID(entry_id.decode()), Request(meta["method"], meta["url"]),
                         Response(meta["status"], Headers(grouped), stream(body)))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unreadable(f"incomplete frame: {type(exc).__name__}: {exc}") from None

    def stats(self) -> dict[str, Any]:
        return {"redis_outages": self.guard.outages, "redis_failures": self.guard.failures,
                "redis_down_seconds": round(self.guard.down_for(), 3), "redis_unreadable_entries": self.unreadable,
                "redis_stores_overtaken_by_writes": self.overtaken,
                "redis_invalidations_unconfirmed": len(self.unconfirmed), "redis_invalidations_replayed": self.replayed,
                "fleet_fetches_led": self.flights_led, "fleet_fetches_awaited": self.flights_followed}


def _iter(body: bytes) -> Iterator[bytes]:
    yield body


async def _aiter(body: bytes) -> AsyncIterator[bytes]:
    yield body


class RedisStore(_Base, BaseStorage):
    """Sync: ``RedisStore(redis.Redis.from_url(url, socket_timeout=0.25))``."""

    def _call(self, fn: Callable[[], Any]) -> Any:
        with self.guard.calling():
            if self.unconfirmed:
                self._replay()
            return fn()

    def _replay(self) -> None:
        for origin, path in list(self.unconfirmed):
            self._drop(origin, path)
            self._confirmed((origin, path))

    def _drop(self, origin: str | None, path: str) -> int:
        if origin is None:
            return sum(self._drop(o, path) for o in self._origins())
        return int(self.client.eval(*_drop_args(origin, path)))

    def find(self, key: str, method: str, headers: Any, url: str | None = None) -> Record | None:
        """The layer's lookup (ttl mode) of the request for ``url``: one round trip, the variant chosen by
        method and ``Vary``."""
        return self._choose(key, self._call(lambda: self._look(self.reader(), key, url)), method, headers)

    def get_entries(self, key: str) -> list[Entry]:
        lookup = current(key)
        found = {} if lookup is not None and lookup.looked else self._call(
            lambda: self._look(self.client, key, url_of(key)))
        if not found and self.flight_timeout > 0:
            found = self._follow_or_lead(key)
        return self._entries(found, _iter)

    def _follow_or_lead(self, key: str) -> dict[bytes, bytes]:
        steps = self._flight(key)
        try:
            step = next(steps)
            while True:
                op, arg = step
                result: Any = None
                if op == "sleep":
                    time.sleep(arg)
                elif op == "release":
                    self.release(arg)
                else:
                    result = self._call(partial(self._flight_call, op, arg))
                step = steps.send(result)
        except StopIteration as done:
            return dict(done.value)

    def release(self, key: str) -> None:
        """The fetch this process led is over (stored, not storable, or failed): let the others go."""
        token = self._held.pop(key, None)
        if token is not None:
            try:
                self._call(lambda: self.client.eval(RELEASE, 1, LOCK + key, token))
            except Exception:  # noqa: S110 - the lock expires by itself
                pass

    def take_lease(self, key: str, url: str) -> str | None:
        """A lease on ``key`` for a fetch about to go to the origin; None if Redis failed (counted)."""
        token = uuid.uuid4().hex
        try:
            self._call(lambda: self.client.eval(*self._lease_args(key, url, token)))
        except Exception as exc:
            self.on_failure(exc)
            return None
        return token

    def lease(self, key: str, url: str) -> None:
        """Take the lease of the layer's fetch in progress (see :data:`.redis_fetch.FETCHES`)."""
        fetches = FETCHES.get()
        if fetches is not None:
            fetches.leases[key] = self.take_lease(key, url)

    def create_entry(self, request: Request, response: Response, key: str, *, ttl: float | None = None,
                     tti: float | None = None) -> Entry:
        field, extras, ttl_ms, lease = self._framing(request, response, key, ttl)
        source = response.stream if response.stream is not None else iter(())

        def saving() -> Iterator[bytes]:
            try:
                kept = Kept()
                for chunk in source:  # type: ignore[union-attr]
                    kept.add(chunk)
                    yield chunk
                if field is not None and kept.chunks is not None:
                    data = frame(request, response.status_code, response.headers, b"".join(kept.chunks), time.time(),
                                 **extras)
                    try:
                        self._call(lambda: self._save(key, field, data, request.url, ttl_ms, lease))
                    except Exception as exc:  # the caller is reading its answer: Redis failing now loses no more
                        self.on_failure(exc)  # than the entry; the guard has logged the outage
            finally:
                self.release(key)

        return Entry(uuid.UUID(field) if field else uuid.uuid4(), request,
                     Response(response.status_code, response.headers, saving()))

    def _save(self, key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None, lease: str | None) -> bool:
        return self._saved(self.client.eval(*_save_args(key, entry_id, data, url, ttl_ms, lease)))

    def put(self, key: str, method: str, url: str, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes,
            ttl: float | None, *, vary: Vary | None = None, keep_stale: float = 0.0, lease: str | None = None) -> bool:
        """Store a complete response (the layer's background refresh), replacing its variant; with a
        ``lease`` (:meth:`take_lease`), only if no write invalidated the key since it was taken."""
        args = self._put_args(key, method, url, status, raw_headers, body, ttl, vary, keep_stale, lease)
        return bool(self._call(lambda: self._saved(self.client.eval(*args))))

    def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002
        """A 304 refreshed the entry. If Redis fails now the answer is right all the same (the stored body,
        revalidated): the entry keeps its old headers and is revalidated again on its next lookup."""
        try:
            key = self._call(lambda: self.client.get(OWNER + str(id)))
            if key is None:
                return
            current = self._call(lambda: self.client.hget(ENTRY + key.decode(), str(id)))
            if current is not None:
                args = self._update_args(key.decode(), str(id), reframed(current, headers))
                self._call(lambda: self.client.eval(*args))
        except Exception as exc:
            self.on_failure(exc)

    def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002
        key = self._call(lambda: self.client.get(OWNER + str(id)))
        if key is not None:
            self._call(lambda: self.client.hdel(ENTRY + key.decode(), str(id)))

    def invalidate_prefix(self, origin: str | None, path: str) -> int:
        """Drop, for every process, the entries stored under ``path`` (and the path itself); ``origin``
        None: under every origin the fleet has stored from. One Redis has not confirmed is sent again
        before the next call (:attr:`unconfirmed`)."""
        try:
            return int(self._call(lambda: self._drop(origin, path)))
        except Exception:
            self._missed(origin, path)
            raise

    invalidate_now = invalidate_prefix

    def _origins(self) -> set[str]:
        names = self.client.scan_iter(match=INDEX + "*", count=500)
        return {origin for name in names if (origin := _origin_of(name)) is not None}

    def clear(self) -> int:
        def run() -> int:
            n = 0
            for name in self.client.scan_iter(match=CACHE_KEYS, count=500):
                n += int(self.client.unlink(name))
            self.client.publish(CHANNEL, "*")
            return n
        return int(self._call(run))

    clear_now = clear

    def close(self) -> None:
        try:
            self._replay()
        except Exception:  # noqa: S110 - named in the log below
            pass
        self._lost()
        self.unconfirmed.clear()  # said once, here: not again by the sync store beside an async one
        if self._reader is not None and self._reader is not self.client:
            self._reader.close()
        self.client.close()


class AsyncRedisStore(_Base, AsyncBaseStorage):
    """Async: ``AsyncRedisStore(redis.asyncio.Redis.from_url(url, socket_timeout=0.25), sync_client=...)``.

    ``sync_client`` serves the calls made outside the event loop (``layer.invalidate(prefix)``, ``clear()``).
    """

    def __init__(self, client: Any, *, sync_client: Any = None, default_ttl: float | None = None,
                 retry_after: float = 5.0, flight_timeout: float = 0.0, lock_ttl: float = 30.0,
                 reader: Callable[[], Any] | None = None) -> None:
        super().__init__(client, default_ttl=default_ttl, retry_after=retry_after, flight_timeout=flight_timeout,
                         lock_ttl=lock_ttl, reader=reader)
        self._sync = RedisStore(sync_client, default_ttl=default_ttl, retry_after=retry_after) if sync_client else None
        if self._sync is not None:  # one store to Redis, whichever side calls
            self._sync.guard = self.guard
            self._sync.unconfirmed = self.unconfirmed

    def invalidate_now(self, origin: str | None, path: str) -> int:
        if self._sync is None:
            raise RuntimeError("this AsyncRedisStore has no sync_client for invalidation outside the event loop")
        return self._sync.invalidate_now(origin, path)

    def clear_now(self) -> int:
        if self._sync is None:
            raise RuntimeError("this AsyncRedisStore has no sync_client for clearing outside the event loop")
        return self._sync.clear()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        with self.guard.calling():
            if self.unconfirmed:
                await self._replay()
            return await fn()

    async def _replay(self) -> None:
        for origin, path in list(self.unconfirmed):
            await self._drop(origin, path)
            self._confirmed((origin, path))

    async def _drop(self, origin: str | None, path: str) -> int:
        if origin is None:
            origins = {o async for name in self.client.scan_iter(match=INDEX + "*", count=500)
                       if (o := _origin_of(name)) is not None}
            return sum([await self._drop(o, path) for o in origins])
        return int(await self.client.eval(*_drop_args(origin, path)))

    async def find(self, key: str, method: str, headers: Any, url: str | None = None) -> Record | None:
        """As the sync store's."""
        return self._choose(key, await self._call(lambda: self._look(self.reader(), key, url)), method, headers)

    async def get_entries(self, key: str) -> list[Entry]:
        lookup = current(key)
        found = {} if lookup is not None and lookup.looked else await self._call(
            lambda: self._look(self.client, key, url_of(key)))
        if not found and self.flight_timeout > 0:
            found = await self._follow_or_lead(key)
        return self._entries(found, _aiter)

    async def _follow_or_lead(self, key: str) -> dict[bytes, bytes]:
        steps = self._flight(key)
        try:
            step = next(steps)
            while True:
                op, arg = step
                result: Any = None
                if op == "sleep":
                    await asyncio.sleep(arg)
                elif op == "release":
                    await self.release(arg)
                else:
                    result = await self._call(partial(self._flight_call, op, arg))
                step = steps.send(result)
        except StopIteration as done:
            return dict(done.value)

    async def release(self, key: str) -> None:
        token = self._held.pop(key, None)
        if token is not None:
            try:
                await self._call(lambda: self.client.eval(RELEASE, 1, LOCK + key, token))
            except Exception:  # noqa: S110 - the lock expires by itself
                pass

    async def take_lease(self, key: str, url: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            await self._call(lambda: self.client.eval(*self._lease_args(key, url, token)))
        except Exception as exc:
            self.on_failure(exc)
            return None
        return token

    async def lease(self, key: str, url: str) -> None:
        fetches = FETCHES.get()
        if fetches is not None:
            fetches.leases[key] = await self.take_lease(key, url)

    async def create_entry(self, request: Request, response: Response, key: str, *, ttl: float | None = None,
                           tti: float | None = None) -> Entry:
        field, extras, ttl_ms, lease = self._framing(request, response, key, ttl)
        source = response.stream

        async def saving() -> AsyncIterator[bytes]:
            try:
                kept = Kept()
                if source is not None:
                    async for chunk in source:  # type: ignore[union-attr]
                        kept.add(chunk)
                        yield chunk
                if field is not None and kept.chunks is not None:
                    data = frame(request, response.status_code, response.headers, b"".join(kept.chunks), time.time(),
                                 **extras)
                    try:
                        await self._call(lambda: self._save(key, field, data, request.url, ttl_ms, lease))
                    except Exception as exc:  # as in the sync store: the answer is the caller's all the same
                        self.on_failure(exc)
            finally:
                await self.release(key)

        return Entry(uuid.UUID(field) if field else uuid.uuid4(), request,
                     Response(response.status_code, response.headers, saving()))

    async def _save(self, key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None,
                    lease: str | None) -> bool:
        return self._saved(await self.client.eval(*_save_args(key, entry_id, data, url, ttl_ms, lease)))

    async def put(self, key: str, method: str, url: str, status: int, raw_headers: list[tuple[bytes, bytes]],
                  body: bytes, ttl: float | None, *, vary: Vary | None = None, keep_stale: float = 0.0,
                  lease: str | None = None) -> bool:
        """As the sync store's."""
        args = self._put_args(key, method, url, status, raw_headers, body, ttl, vary, keep_stale, lease)

        async def save() -> bool:
            return self._saved(await self.client.eval(*args))
        return bool(await self._call(save))

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002
        """As the sync store's: a failure here leaves the entry to be revalidated again, the answer right."""
        try:
            key = await self._call(lambda: self.client.get(OWNER + str(id)))
            if key is None:
                return
            current = await self._call(lambda: self.client.hget(ENTRY + key.decode(), str(id)))
            if current is not None:
                args = self._update_args(key.decode(), str(id), reframed(current, headers))
                await self._call(lambda: self.client.eval(*args))
        except Exception as exc:
            self.on_failure(exc)

    async def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002
        key = await self._call(lambda: self.client.get(OWNER + str(id)))
        if key is not None:
            await self._call(lambda: self.client.hdel(ENTRY + key.decode(), str(id)))

    async def invalidate_prefix(self, origin: str | None, path: str) -> int:
        """As the sync store's."""
        try:
            return int(await self._call(lambda: self._drop(origin, path)))
        except Exception:
            self._missed(origin, path)
            raise

    async def clear(self) -> int:
        async def run() -> int:
            n = 0
            async for name in self.client.scan_iter(match=CACHE_KEYS, count=500):
                n += int(await self.client.unlink(name))
            await self.client.publish(CHANNEL, "*")
            return n
        return int(await self._call(run))

    async def close(self) -> None:  # type: ignore[override]
        try:
            await self._replay()
        except Exception:  # noqa: S110 - named in the log below
            pass
        self._lost()
        self.unconfirmed.clear()  # said once, here: not again by the sync store beside an async one
        if self._reader is not None and self._reader is not self.client:
            await self._reader.aclose()
        await self.client.aclose()
        if self._sync is not None:
            self._sync.close()
