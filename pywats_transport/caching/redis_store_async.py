"""The fleet's shared cache in Redis, for hishel's async interface (see :mod:`.redis_store_core`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from hishel import AsyncBaseStorage, Entry, Headers, Request, Response

from .freshness import Vary
from .memory import MAX_BODY, Kept, Record, announced_over
from .redis_clock import CLOCK
from .redis_connect import aclose_quietly
from .redis_fetch import FETCHES, current, url_of
from .redis_frame import frame, reframed
from .redis_keys import CACHE_KEYS, CHANNEL, ENTRY, INDEX, LOCK, OWNER, RELEASE
from .redis_slots import DEFAULT as DEFAULT_CALLS
from .redis_slots import AsyncSlots
from .redis_store import RedisStore
from .redis_store_core import CLEAR_BATCH, StoreCore, cached_keys, drop_args, origin_of_index, save_args


async def _body(body: bytes) -> AsyncIterator[bytes]:
    yield body


class AsyncRedisStore(StoreCore, AsyncBaseStorage):
    """Async: ``AsyncRedisStore(redis.asyncio.Redis.from_url(url, socket_timeout=0.25), sync_client=...)``.

    ``sync_client`` serves the calls made outside the event loop (``layer.invalidate(prefix)``, ``clear()``).
    """

    slots_type = AsyncSlots

    def __init__(self, client: Any, *, sync_client: Any = None, default_ttl: float | None = None,
                 retry_after: float = 5.0, flight_timeout: float = 0.0, lock_ttl: float = 30.0,
                 reader: Callable[[], Any] | None = None, max_calls: int = DEFAULT_CALLS, call_wait: float = 1.0) -> None:
        super().__init__(client, default_ttl=default_ttl, retry_after=retry_after, flight_timeout=flight_timeout,
                         lock_ttl=lock_ttl, reader=reader, max_calls=max_calls, call_wait=call_wait)
        self._sync = RedisStore(sync_client, default_ttl=default_ttl, retry_after=retry_after, max_calls=max_calls,
                                call_wait=call_wait) if sync_client else None
        if self._sync is not None:  # one store to Redis, whichever side calls
            self._sync.guard = self.guard
            self._sync.unconfirmed = self.unconfirmed
            self._sync.on_failure = lambda exc: self.on_failure(exc)  # as the layer sets them on this one
            self._sync.on_event = lambda event: self.on_event(event)

    def invalidate_now(self, origin: str | None, path: str) -> int:
        if self._sync is None:
            raise RuntimeError("this AsyncRedisStore has no sync_client for invalidation outside the event loop")
        return self._sync.invalidate_now(origin, path)

    def clear_now(self) -> int:
        if self._sync is None:
            raise RuntimeError("this AsyncRedisStore has no sync_client for clearing outside the event loop")
        return self._sync.clear()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        async with self.slots.taken():
            return await self._guarded(fn)

    async def _guarded(self, fn: Callable[[], Any]) -> Any:
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
                       if (o := origin_of_index(name)) is not None}
            return sum([await self._drop(o, path) for o in origins])
        return int(await self.client.eval(*drop_args(origin, path)))

    async def find(self, key: str, method: str, headers: Any, url: str | None = None) -> Record | None:
        """As the sync store's."""
        reader = self.free_reader() if url is not None else None
        if reader is None:
            found = await self._call(lambda: self._look(self.client, key, url))
        else:
            try:  # no slot: the slots bound the pool's connections, and this one is not the pool's
                found = await self._guarded(lambda: reader.look(key, url))
            finally:
                self.reader_done()
        return self._choose(key, found, method, headers)

    async def get_entries(self, key: str) -> list[Entry]:
        lookup = current(key)
        found = {} if lookup is not None and lookup.looked else await self._call(
            lambda: self._look(self.client, key, url_of(key)))
        if not found and self.flight_timeout > 0:
            found = await self._follow_or_lead(key)
        return self._entries(found, _body)

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

    async def release(self, key: str, mine: str | None = None) -> None:
        token = self._held_token(key, mine)
        if token is not None:
            try:
                await self._call(lambda: self.client.eval(RELEASE, 1, LOCK + key, token))
            except Exception:  # noqa: S110 - the lock expires by itself
                pass

    async def take_lease(self, key: str, url: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            self._leased(await self._call(lambda: self.client.eval(*self._lease_args(key, url, token))))
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
        mine = self._held.get(key)
        if announced_over(response.headers, MAX_BODY):
            await self.release(key, mine)

        async def saving() -> AsyncIterator[bytes]:
            try:
                kept = Kept()
                if source is not None:
                    async for chunk in source:  # type: ignore[union-attr]
                        if kept.add(chunk):  # as in the sync store
                            await self.release(key, mine)
                        yield chunk
                if field is not None and kept.chunks is not None:
                    data = frame(request, response.status_code, response.headers, b"".join(kept.chunks), CLOCK.now(),
                                 **extras)
                    try:
                        await self._call(lambda: self._save(key, field, data, request.url, ttl_ms, lease))
                    except Exception as exc:  # as in the sync store: the answer is the caller's all the same
                        self.on_failure(exc)
            finally:
                await self.release(key, mine)

        return Entry(uuid.UUID(field) if field else uuid.uuid4(), request,
                     Response(response.status_code, response.headers, saving()))

    async def _save(self, key: str, entry_id: str, data: bytes, url: str, ttl_ms: int | None,
                    lease: str | None) -> bool:
        return self._saved(await self.client.eval(*save_args(key, entry_id, data, url, ttl_ms, lease)))

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
        except BaseException:  # a cancelled or interrupted call too: Redis may not have had it
            self._missed(origin, path)
            raise

    async def clear(self) -> int:
        async def run() -> int:
            n, batch = 0, []
            async for name in self.client.scan_iter(match=CACHE_KEYS, count=CLEAR_BATCH):
                batch.append(name)
                if len(batch) == CLEAR_BATCH:
                    await self.client.unlink(*batch)
                    n, batch = n + cached_keys(batch), []
            if batch:
                await self.client.unlink(*batch)
                n += cached_keys(batch)
            await self.client.publish(CHANNEL, "*")
            return n
        try:
            return int(await self._call(run))
        except BaseException:
            self._missed(None, "/")  # sent again as the drop of every origin's root: the same entries
            raise

    async def close(self) -> None:  # type: ignore[override]
        try:
            await self._replay()
        except Exception:  # noqa: S110 - named in the log below
            pass
        self._lost()
        self.unconfirmed.clear()  # said once, here: not again by the sync store beside an async one
        if self._reader is not None:
            await aclose_quietly(self._reader)
        await aclose_quietly(self.client)
        if self._sync is not None:
            self._sync.close()
