"""The cache layer: hishel's CacheTransport with our storage choice, keys, invalidation and statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import hishel
import httpx
from hishel.httpx import AsyncCacheTransport, CacheTransport

from ..caching.coalesce import Flight, Flights, SaveWhenRead
from ..caching.health import FAILURES
from ..caching.memory import AsyncMemoryStorage, MemoryStorage
from ..caching.policy import CachePolicy, Plan
from ..config import CacheSettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import CLOSED_MESSAGE, AsyncLayer, Layer, layer_settings

NOT_CACHED = {"from_cache": False, "revalidated": False, "stored": False}


class _FromInner(Exception):
    """Carries an exception raised below the cache through hishel, so it is not taken for a storage failure."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


def _make_storage(settings: CacheSettings, clock: Callable[[], float], *, is_async: bool) -> Any:
    if settings.storage == "memory":
        cls = AsyncMemoryStorage if is_async else MemoryStorage
        return cls(max_entries=settings.max_size, default_ttl=settings.ttl, clock=clock)
    if settings.storage == "sqlite":
        if is_async:
            try:
                import anysqlite  # noqa: F401
            except ImportError:
                raise ImportError("cache storage 'sqlite' on an async client needs anysqlite: "
                                  "pip install 'pywats-transport[sqlite]'") from None
            return hishel.AsyncSqliteStorage(database_path=settings.sqlite_path, default_ttl=settings.ttl)
        return hishel.SqliteStorage(database_path=settings.sqlite_path, default_ttl=settings.ttl)
    try:
        import redis
        import redis.asyncio
    except ImportError:
        raise ImportError("cache storage 'redis' needs the redis package: pip install 'pywats-transport[redis]'") from None
    if is_async:
        return hishel.AsyncRedisStorage(client=redis.asyncio.Redis.from_url(settings.redis_url), default_ttl=settings.ttl)
    return hishel.RedisStorage(client=redis.Redis.from_url(settings.redis_url), default_ttl=settings.ttl)


def decoded_headers(raw: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """Headers for a body stored after decoding: no ``Content-Encoding``, the decoded length."""
    kept = [(k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-length", str(length).encode())]


class _CacheCore:
    """What the sync and async cache layers share."""

    name = "cache"
    settings: CacheSettings
    _flights: Flights

    def _setup(self, settings: CacheSettings | None, clock: Callable[[], float], collector: Any, backend: Any,
               is_async: bool, overrides: dict[str, Any]) -> None:
        settings = layer_settings(CacheSettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.policy = CachePolicy(settings, clock)
        self.storage = backend if backend is not None else _make_storage(settings, clock, is_async=is_async)
        self.collector = collector
        self._rfc: bool | hishel.CacheOptions = hishel.CacheOptions(shared=False) if settings.mode == "rfc" else False
        self._failures_at_start = FAILURES.count
        self._evictions_seen = 0
        # ttl mode with our in-process storage is answered by the layer itself: the same rule as
        # hishel's non-RFC path (2xx GET/HEAD by key and method, until the TTL), without the
        # per-request entry and stream conversions, which would triple the cost of a miss.
        self._direct = settings.mode == "ttl" and isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage))

    def _direct_hit(self, plan: Plan, request: httpx.Request) -> httpx.Response | None:
        record = self.storage.find(plan.key, request.method, request.headers)
        if record is None:
            return None
        response = httpx.Response(
            record.status_code, headers=record.httpx_headers(), stream=httpx.ByteStream(record.body),
            extensions={"caching": {"from_cache": True, "revalidated": False, "stored": False}},
        )
        self._after_lookup(plan, request, response)
        return response

    def _direct_store(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> None:
        """Store a storable response once its body is complete; mark what happened on the response."""
        stored, vary = self.policy.storable(request, response)
        if stored:
            method, url, raw = request.method, str(request.url), list(response.headers.raw)
            storage, key, ttl, status = self.storage, plan.key, plan.ttl, response.status_code
            try:
                body = response.content  # read below this layer: what is left is the decoded body
            except httpx.ResponseNotRead:
                token = storage.begin(key)  # dropping the key while the body streams withdraws the save

                def save(body: bytes) -> None:
                    storage.store(key, method, url, status, raw, body, ttl, vary=vary, token=token)

                response.stream = SaveWhenRead(response.stream, save, lambda: storage.abandon(key, token))
            else:
                stored = storage.store(key, method, url, status, decoded_headers(raw, len(body)), body, ttl, vary=vary)
        response.extensions["caching"] = {"from_cache": False, "revalidated": False, "stored": stored}

    def _join(self, plan: Plan) -> Flight | None:
        """Coalescing: the first lookup of a key leads; identical ones arriving meanwhile follow."""
        return self._flights.join(plan.key) if self.settings.coalesce and not plan.refresh else None

    def _direct_begin(self, plan: Plan, request: httpx.Request) -> tuple[httpx.Response | None, Flight | None]:
        """Before the network, direct path: a hit to return at once, or the flight this request is on."""
        if plan.refresh:
            self.storage.drop_keys([plan.key])
        elif (hit := self._direct_hit(plan, request)) is not None:
            return hit, None
        return None, self._join(plan)

    def _direct_end(self, plan: Plan, request: httpx.Request, response: httpx.Response,
                    flight: Flight | None) -> httpx.Response:
        self._direct_store(plan, request, response)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    def _failed(self, flight: Flight | None) -> None:
        """The request below failed: release followers and count the miss."""
        self._flights.land(flight)
        self._missed_with_error()

    def _prepare(self, request: httpx.Request, plan: Plan) -> None:
        caching = dict(request.extensions.get("caching") or {})
        caching.update(key=plan.key, ttl=plan.ttl)
        request.extensions = {**request.extensions, "caching": caching}

    def _after_lookup(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> None:
        status = response.extensions.get("caching")
        result = self.policy.record_lookup(plan, request, status)
        response.extensions["caching"] = {**(status or NOT_CACHED), "lookup": result}
        if self.collector is not None:
            self.collector.add_cache_lookup(result)
            if status and status.get("stored"):
                self.collector.add_cache_event("store")
            evictions = getattr(self.storage, "evictions", 0)
            if evictions != self._evictions_seen:
                self.collector.add_cache_event("eviction", evictions - self._evictions_seen)
                self._evictions_seen = evictions

    def _written(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        """A write went through: drop what it invalidates and say so on the response."""
        n = self._invalidate_keys(self.policy.write_invalidates(request, response))
        response.extensions["caching"] = {**NOT_CACHED, "lookup": "write", "invalidated": n}
        return response

    def _missed_with_error(self) -> None:
        self.policy.stats.misses += 1
        if self.collector is not None:
            self.collector.add_cache_lookup("miss")

    def _bypassed(self, response: httpx.Response) -> httpx.Response:
        self.policy.stats.bypasses += 1
        response.extensions["caching"] = {**NOT_CACHED, "lookup": "bypass"}
        if self.collector is not None:
            self.collector.add_cache_lookup("bypass")
        return response

    def _invalidate_keys(self, keys: list[str]) -> int:
        """Drop keys: at once from the memory storage; in other storages on the key's next lookup."""
        if not keys:
            return 0
        self.policy.mark_stale(keys)
        if isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage)):
            self.storage.drop_keys(keys)
        self.policy.stats.invalidations += len(keys)
        if self.collector is not None:
            self.collector.add_cache_event("invalidation", len(keys))
        return len(keys)

    def _storage_failed(self, exc: BaseException) -> None:
        FAILURES.note(exc)
        if self.collector is not None:
            self.collector.add_cache_event("storage_error")

    # -- public API ---------------------------------------------------------------------

    def invalidate(self, prefix: str) -> int:
        """Drop cached entries whose path is ``prefix`` or under it (``prefix`` may be a full URL); returns how many."""
        return self._invalidate_keys(self.policy.keys_under(prefix))

    def clear(self) -> int:
        """Drop every cached entry this layer stored; returns how many."""
        keys = self.policy.keys_under("")
        n = self._invalidate_keys(keys)
        if isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage)):
            self.storage.clear()
        return n

    def stats(self) -> dict[str, Any]:
        entries = len(self.storage) if isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage)) else None
        out = self.policy.stats.as_dict(entries, getattr(self.storage, "evictions", 0))
        out["storage_errors"] += FAILURES.count - self._failures_at_start
        return out


class CacheLayer(_CacheCore, Layer):
    """Sync cache layer. ``CacheLayer(inner, ttl=60)`` or ``CacheLayer(settings=CacheSettings(...))``.

    ``backend`` takes a ready hishel storage instead of the one ``settings.storage`` names.
    """

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: CacheSettings | None = None,
                 backend: hishel.BaseStorage | None = None, clock: Callable[[], float] = time.time,
                 metrics_collector: Any = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, backend, False, overrides)
        self._flights = Flights(threading.Event)
        self._hishel = CacheTransport(_SyncToInner(self), storage=self.storage, rfc=self._rfc)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        plan = self.policy.plan(request)
        if plan.action == "bypass":
            return self._bypassed(self.inner.handle_request(request))
        if plan.action == "write":
            return self._written(request, self.inner.handle_request(request))
        if self._direct:
            return self._handle_direct(plan, request)
        if plan.refresh:
            self._remove_now(plan.key)
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            flight.event.wait(self.settings.coalesce_timeout)  # then look up what the leader stored
        try:
            response = self._hishel.handle_request(request)
        except _FromInner as wrapped:
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:  # the storage failed: the request still gets its answer
            self._flights.land(flight)
            self._storage_failed(exc)
            return self._bypassed(self.inner.handle_request(request))
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            flight.event.wait(self.settings.coalesce_timeout)
            if (hit := self._direct_hit(plan, request)) is not None:
                return hit
        try:
            response = self.inner.handle_request(request)
        except BaseException:
            self._failed(flight)
            raise
        return self._direct_end(plan, request, response, flight)

    def _remove_now(self, key: str) -> None:
        try:
            for entry in self.storage.get_entries(key):
                self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    def close_layer(self) -> None:
        self.storage.close()


class AsyncCacheLayer(_CacheCore, AsyncLayer):
    """Async cache layer; the memory storage never leaves the event loop's thread."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: CacheSettings | None = None,
                 backend: hishel.AsyncBaseStorage | None = None, clock: Callable[[], float] = time.time,
                 metrics_collector: Any = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, backend, True, overrides)
        self._flights = Flights(anyio.Event)
        self._hishel = AsyncCacheTransport(_AsyncToInner(self), storage=self.storage, rfc=self._rfc)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        plan = self.policy.plan(request)
        if plan.action == "bypass":
            return self._bypassed(await self.inner.handle_async_request(request))
        if plan.action == "write":
            return self._written(request, await self.inner.handle_async_request(request))
        if self._direct:
            return await self._handle_direct(plan, request)
        if plan.refresh:
            await self._remove_now(plan.key)
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            with anyio.move_on_after(self.settings.coalesce_timeout):
                await flight.event.wait()  # then look up what the leader stored
        try:
            response = await self._hishel.handle_async_request(request)
        except _FromInner as wrapped:
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:
            self._flights.land(flight)
            self._storage_failed(exc)
            return self._bypassed(await self.inner.handle_async_request(request))
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    async def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            with anyio.move_on_after(self.settings.coalesce_timeout):
                await flight.event.wait()
            if (hit := self._direct_hit(plan, request)) is not None:
                return hit
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self._failed(flight)
            raise
        return self._direct_end(plan, request, response, flight)

    async def _remove_now(self, key: str) -> None:
        try:
            for entry in await self.storage.get_entries(key):
                await self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    async def aclose_layer(self) -> None:
        await self.storage.close()


class _SyncToInner(httpx.BaseTransport):
    def __init__(self, layer: CacheLayer) -> None:
        self.layer = layer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self.layer.inner.handle_request(request)
        except Exception as exc:
            raise _FromInner(exc) from exc


class _AsyncToInner(httpx.AsyncBaseTransport):
    def __init__(self, layer: AsyncCacheLayer) -> None:
        self.layer = layer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.layer.inner.handle_async_request(request)
        except Exception as exc:
            raise _FromInner(exc) from exc


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="cache",
            position=200,
            config_model=CacheSettings,
            sync_factory=lambda inner, settings, ctx: CacheLayer(inner, settings=settings, metrics_collector=ctx.metrics_collector),
            async_factory=lambda inner, settings, ctx: AsyncCacheLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector
            ),
            description="HTTP cache on hishel: memory (LRU), SQLite or Redis storage",
        )
    ]
