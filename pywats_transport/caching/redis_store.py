"""The fleet's shared cache in Redis, for hishel's sync interface (see :mod:`.redis_store_core`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from hishel import BaseStorage, Entry, Headers, Request, Response

from .freshness import Vary
from .memory import MAX_BODY, Kept, Record, announced_over
from .redis_clock import CLOCK
from .redis_fetch import FETCHES, current, url_of
from .redis_frame import frame, reframed
from .redis_keys import CACHE_KEYS, CHANNEL, ENTRY, INDEX, LOCK, OWNER, RELEASE
from .redis_store_core import CLEAR_BATCH, StoreCore, cached_keys, drop_args, origin_of_index, save_args


def _body(body: bytes) -> Iterator[bytes]:
    yield body

class RedisStore(StoreCore, BaseStorage):
    """Sync: ``RedisStore(redis.Redis.from_url(url, socket_timeout=0.25))``."""

    def _call(self, fn: Callable[[], Any]) -> Any:
        with self.slots.taken():
            return self._guarded(fn)

    def _guarded(self, fn: Callable[[], Any]) -> Any:
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
        return int(self.client.eval(*drop_args(origin, path)))

    def find(self, key: str, method: str, headers: Any, url: str | None = None) -> Record | None:
        """The layer's lookup (ttl mode) of the request for ``url``: one round trip, the variant chosen by
        method and ``Vary``."""
        reader = self.free_reader() if url is not None else None
        if reader is None:
            found = self._call(lambda: self._look(self.client, key, url))
        else:
            try:  # no slot: the slots bound the pool's connections, and this one is not the pool's
                found = self._guarded(lambda: reader.look(key, url))
            finally:
                self.reader_done()
        return self._choose(key, found, method, headers)

    def get_entries(self, key: str) -> list[Entry]:
        lookup = current(key)
        found = {} if lookup is not None and lookup.looked else self._call(
            lambda: self._look(self.client, key, url_of(key)))
        if not found and self.flight_timeout > 0:
            found = self._follow_or_lead(key)
        return self._entries(found, _body)

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

    def release(self, key: str, mine: str | None = None) -> None:
        """The fetch this process led is over (stored, not storable, or failed): let the others go. With
        ``mine`` (the lock's token when the fetch began), only if this process has not taken it again since."""
        token = self._held_token(key, mine)
        if token is not None:
            try:
                self._call(lambda: self.client.eval(RELEASE, 1, LOCK + key, token))
            except Exception:  # noqa: S110 - the lock expires by itself
                pass

    def take_lease(self, key: str, url: str) -> str | None:
        """A lease on ``key`` for a fetch about to go to the origin; None if Redis failed (counted)."""
        token = uuid.uuid4().hex
        try:
            self._leased(self._call(lambda: self.client.eval(*self._lease_args(key, url, token))))
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
        mine = self._held.get(key)
        if announced_over(response.headers, MAX_BODY):  # a download: see below
            self.release(key, mine)

        def saving() -> Iterator[bytes]:
            try:
                kept = Kept()
                for chunk in source:  # type: ignore[union-attr]
                    if kept.add(chunk):  # a download, not stored: the fleet need not wait for its end
                        self.release(key, mine)
                    yield chunk
                if field is not None and kept.chunks is not None:
                    data = frame(request, response.status_code, response.headers, b"".join(kept.chunks), CLOCK.now(),
                                 **extras)
                    try:
                        self._call(lambda: self._save(key, field, data, request.url, ttl_ms, lease))
                    except Exception as exc:  # the caller is reading its answer: Redis failing now loses no more
                        self.on_failure(exc)  # than the entry; the guard has logged the outage
            finally:
                self.release(key, mine)

        return Entry(uuid.UUID(field) if field else uuid.uuid4(), request,
                     Response(response.status_code, response.headers, saving()))

    def _save(self, key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None, lease: str | None) -> bool:
        return self._saved(self.client.eval(*save_args(key, entry_id, data, url, ttl_ms, lease)))

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
        except BaseException:  # a cancelled or interrupted call too: Redis may not have had it
            self._missed(origin, path)
            raise

    invalidate_now = invalidate_prefix

    def _origins(self) -> set[str]:
        names = self.client.scan_iter(match=INDEX + "*", count=500)
        return {origin for name in names if (origin := origin_of_index(name)) is not None}

    def clear(self) -> int:
        def run() -> int:
            n, batch = 0, []
            for name in self.client.scan_iter(match=CACHE_KEYS, count=CLEAR_BATCH):
                batch.append(name)
                if len(batch) == CLEAR_BATCH:
                    self.client.unlink(*batch)
                    n, batch = n + cached_keys(batch), []
            if batch:
                self.client.unlink(*batch)
                n += cached_keys(batch)
            self.client.publish(CHANNEL, "*")
            return n
        try:
            return int(self._call(run))
        except BaseException:
            self._missed(None, "/")  # sent again as the drop of every origin's root: the same entries
            raise

    clear_now = clear

    def close(self) -> None:
        try:
            self._replay()
        except Exception:  # noqa: S110 - named in the log below
            pass
        self._lost()
        self.unconfirmed.clear()  # said once, here: not again by the sync store beside an async one
        if self._reader is not None:
            self._reader.close()
        self.client.close()
