"""The cache layer: hishel's CacheTransport with our storage choice, keys, invalidation and statistics."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import hishel
import httpx
from hishel.httpx import AsyncCacheTransport, CacheTransport

from ..caching.coalesce import Flight, Flights, SaveWhenRead
from ..caching.freshness import conditional_headers, merge_not_modified
from ..caching.health import FAILURES
from ..caching.memory import AsyncMemoryStorage, MemoryStorage, Record
from ..caching.near_invalidation import NearInvalidation
from ..caching.policy import EXTENSION, CachePolicy, Plan, split_prefix
from ..caching.redis_connect import async_client, one_server, sync_client
from ..caching.redis_store import LOOKUP, AsyncRedisStore, Lookup, RedisStore
from ..config import CacheSettings
from ..errors import TransportError
from ..hookspecs import LayerSpec, hookimpl
from ..layer import CLOSED_MESSAGE, AsyncLayer, Layer, layer_settings

NOT_CACHED = {"from_cache": False, "revalidated": False, "stored": False}
#: failures of the layers below that a stale entry may answer for (stale-if-error): httpx's transport
#: errors (connection refused, timeouts, a throttle timeout) and ours (an open circuit breaker)
FALLBACK_ERRORS = (httpx.TransportError, TransportError)


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
        import redis  # noqa: F401 - the one check that it is installed
    except ImportError:
        raise ImportError("cache storage 'redis' needs the redis package: pip install 'pywats-transport[redis]'") from None
    url, timeout = settings.redis_url, settings.redis_timeout
    # Fleet-wide single flight follows the coalescing switch: a miss waits for another process's fetch.
    flight = settings.coalesce_timeout if settings.coalesce else 0.0
    # Lookups have a connection of their own: taking one from the pool and giving it back cost about
    # as much as the round trip itself. A cluster or sentinel client routes every command itself.
    own = one_server(url)
    if is_async:
        return AsyncRedisStore(async_client(url, timeout), sync_client=sync_client(url, timeout),
                               reader=(lambda: async_client(url, timeout, single_connection=True)) if own else None,
                               default_ttl=settings.ttl, retry_after=settings.redis_retry_after, flight_timeout=flight)
    return RedisStore(sync_client(url, timeout), default_ttl=settings.ttl,
                      reader=(lambda: sync_client(url, timeout, single_connection=True)) if own else None,
                      retry_after=settings.redis_retry_after, flight_timeout=flight)


def decoded_headers(raw: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """Headers for a body stored after decoding: no ``Content-Encoding``, the decoded length."""
    if not any(k.lower() == b"content-encoding" for k, _ in raw):
        return raw  # nothing was decoded: the headers describe the body as it is
    kept = [(k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-length", str(length).encode())]


@contextmanager
def _validating(request: httpx.Request, stale: Record | None) -> Iterator[None]:
    """For one send, add the validators of the stale entry to the request; the caller's request is unchanged after."""
    if stale is None:
        yield
        return
    original = request.headers
    request.headers = httpx.Headers([*original.raw, *conditional_headers(stale.httpx_headers())])
    try:
        yield
    finally:
        request.headers = original


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
        # With our in-process storage the layer answers itself, in both modes: what to store and for how
        # long it is fresh is decided once per response (caching.freshness, hishel's RFC rules in rfc mode),
        # so a hit needs no per-request entry and stream conversions, which would double its cost.
        # hishel's CacheTransport serves the SQLite and Redis storages.
        self._refreshing: set[str] = set()
        self._refresh_lock = threading.Lock()
        self._direct = isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage))
        #: a storage shared by processes (Redis): invalidation goes to it, for every process
        self._shared = isinstance(self.storage, (RedisStore, AsyncRedisStore))
        # ttl mode on Redis: the layer reads the key itself (one round trip, the variant chosen by method,
        # Vary and freshness) and serves a hit without hishel; a miss goes through hishel's path, told
        # by a Lookup what to store.
        self._fleet_lookup = self._shared and not self.policy.rfc
        # The near cache: entries in process memory in front of Redis, dropped on any process's invalidation.
        self.near: Any = None
        self._near_sub: NearInvalidation | None = None
        self.near_invalidations = 0
        if self._shared and settings.near_cache:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            near_cls = AsyncMemoryStorage if is_async else MemoryStorage
            self.near = near_cls(max_entries=settings.max_size, default_ttl=min(settings.ttl, settings.near_ttl),
                                 clock=clock)
            self.near._core.on_forget = self.policy.forget
            # The subscriber waits for messages by design: no read timeout on its connection (a dead one is
            # found by the health check, and the near cache is dropped then). It tries again on its own
            # schedule, not after redis-py's backoff: nothing is kept near until it listens again.
            client = sync_client(settings.redis_url, settings.redis_timeout, socket_timeout=None,
                                 health_check_interval=10, retry=Retry(NoBackoff(), 0))
            self._near_sub = NearInvalidation(client, self._near_message, self.near.clear)
        if self._direct:
            self.storage._core.on_forget = self.policy.forget

    def _direct_lookup(self, plan: Plan, request: httpx.Request) -> tuple[httpx.Response | None, Record | None]:
        """A stored answer to return now (fresh, or stale while it is refreshed in the background), or the
        stale entry to revalidate and to fall back on, or neither."""
        record = self.storage.find(plan.key, request.method, request.headers)
        if record is None:
            return None, None
        now = self.policy.clock()
        if not plan.revalidate:
            if now < record.fresh_until:
                return self._served(plan, request, record, False, now), None
            if now < record.fresh_until + max(record.stale_while_revalidate, self.settings.stale_while_revalidate):
                self._refresh_later(plan, request, record)
                return self._served_stale(plan, request, record, now), None
        return None, record

    def _fleet_hit(self, plan: Plan, request: httpx.Request, record: Record | None) -> httpx.Response | None:
        """A fresh variant read from Redis answers at once (and is kept near, with a near cache); a stale
        one may still answer if the origin fails (:meth:`_fleet_fallback`)."""
        if record is None or plan.revalidate:
            return None
        now = time.time()
        if now >= record.fresh_until:
            if now < record.fresh_until + self.settings.stale_while_revalidate:
                self._refresh_later(plan, request, record)
                return self._served_stale(plan, request, record, now)
            return None
        response = self._served(plan, request, record, False, self.policy.clock())
        if self.near is not None:
            self._near_keep(plan, request, response)
        return response

    def _fleet_fallback(self, plan: Plan, request: httpx.Request, record: Record | None,
                        flight: Flight | None, failure: BaseException | httpx.Response) -> httpx.Response | None:
        """Stale-if-error from Redis: the origin raised, or answered 5xx after the retries below."""
        failed = failure.status_code >= 500 if isinstance(failure, httpx.Response) else isinstance(failure, FALLBACK_ERRORS)
        if not failed or not self._may_fall_back(record):
            return None
        assert record is not None
        return self._fallback(plan, request, record, flight)

    def _fleet_put(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> dict[str, Any] | None:
        """What a background refresh stores in Redis: the arguments of the storage's ``put``, or None."""
        if response.status_code >= 500:
            return None
        decision = self.policy.decide(request, response)
        if not decision.store:
            return None
        self.policy.remember(plan, request)
        raw = decoded_headers(list(response.headers.raw), len(response.content))
        return {"key": plan.key, "method": request.method, "url": str(request.url), "status": response.status_code,
                "raw_headers": raw, "body": response.content, "ttl": plan.ttl, "vary": decision.vary,
                "keep_stale": self._keep_stale}

    @property
    def _keep_stale(self) -> float:
        """Seconds a shared entry stays in Redis past its freshness: it may still answer meanwhile."""
        return max(self.settings.stale_if_error, self.settings.stale_while_revalidate)

    def _lookup(self, plan: Plan, request: httpx.Request, looked: bool) -> Lookup:
        method, headers = request.method, request.headers

        def usable(record: Record) -> bool:
            return record.matches(method, headers) and time.time() < record.fresh_until

        def decide(_: hishel.Request, response: hishel.Response) -> Any:
            raw = [(k, v) for k in response.headers for v in response.headers.get_list(k) or []]
            return self.policy.decide(request, httpx.Response(response.status_code, headers=raw))

        return Lookup(plan.key, usable, decide, looked=looked, keep_stale=self._keep_stale)

    def _response_from(self, record: Record, now: float, caching: dict[str, Any]) -> httpx.Response:
        headers = record.httpx_headers()
        if self.policy.rfc:  # say how old the stored answer is (RFC 9111 §5.1)
            headers = [*headers, (b"age", str(int(record.age + max(0.0, now - record.stored_at))).encode())]
        return httpx.Response(record.status_code, headers=headers, stream=httpx.ByteStream(record.body),
                              extensions={"caching": caching})

    def _served(self, plan: Plan, request: httpx.Request, record: Record, revalidated: bool,
                now: float) -> httpx.Response:
        response = self._response_from(record, now, {"from_cache": True, "revalidated": revalidated, "stored": False})
        self._after_lookup(plan, request, response)
        return response

    def _served_stale(self, plan: Plan, request: httpx.Request, record: Record, now: float) -> httpx.Response:
        """An entry past its freshness answers: the origin failed (stale-if-error) or it is being refreshed."""
        self.policy.stats.stale_served += 1
        if self.collector is not None:
            self.collector.add_cache_lookup("stale")
        return self._response_from(record, now, {"from_cache": True, "revalidated": False, "stored": False,
                                                 "stale": True, "lookup": "stale"})

    def _may_fall_back(self, stale: Record | None) -> bool:
        """Whether a failed origin may be answered from ``stale`` (RFC 5861 stale-if-error)."""
        if stale is None:
            return False
        window = max(stale.stale_if_error, self.settings.stale_if_error)
        return window > 0 and self.policy.clock() < stale.fresh_until + window

    def _origin_failed(self, plan: Plan, request: httpx.Request, stale: Record | None, flight: Flight | None,
                       exc: BaseException) -> httpx.Response:
        """The request below raised: answer from the stale entry when allowed (stale-if-error), else re-raise."""
        if isinstance(exc, FALLBACK_ERRORS) and stale is not None and self._may_fall_back(stale):
            return self._fallback(plan, request, stale, flight)
        self._failed(flight)
        raise exc

    def _fallback(self, plan: Plan, request: httpx.Request, stale: Record, flight: Flight | None) -> httpx.Response:
        self._flights.land(flight)
        return self._served_stale(plan, request, stale, self.policy.clock())

    def _refresh_later(self, plan: Plan, request: httpx.Request, stale: Record) -> None:
        """Stale-while-revalidate: one background refresh per key at a time."""
        with self._refresh_lock:
            if plan.key in self._refreshing:
                return
            self._refreshing.add(plan.key)
        self._spawn_refresh(plan, request, stale)

    @staticmethod
    def _refresh_request(request: httpx.Request) -> httpx.Request:
        """The request a background refresh sends: the caller's, without its cache controls (built in the
        background, so that the caller's answer does not wait for it)."""
        extensions = {k: v for k, v in request.extensions.items() if k not in ("caching", EXTENSION)}
        return httpx.Request(request.method, request.url, headers=request.headers, extensions=extensions)

    def _spawn_refresh(self, plan: Plan, request: httpx.Request, stale: Record) -> None:
        raise NotImplementedError

    def _refreshed(self, plan: Plan, request: httpx.Request, response: httpx.Response, stale: Record | None) -> None:
        """A background refresh answered (its body read): store it, or keep the stale entry if it failed."""
        if self._shared:
            pass  # stored by the caller, which awaits Redis where the layer is async (_fleet_put)
        elif stale is not None and response.status_code == 304:
            self._apply_not_modified(plan, request, response, stale)
        elif response.status_code < 500:
            self._direct_store(plan, request, response)
            if response.extensions["caching"]["stored"]:
                self.policy.remember(plan, request)
        self.policy.stats.refreshes += 1
        if self.collector is not None:
            self.collector.add_cache_event("refresh")

    def _refresh_done(self, key: str) -> None:
        with self._refresh_lock:
            self._refreshing.discard(key)

    def _direct_store(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> None:
        """Store a storable response once its body is complete; mark what happened on the response."""
        decision = self.policy.decide(request, response)
        stored = decision.store
        if stored:
            method, url, raw = request.method, str(request.url), list(response.headers.raw)
            storage, key, ttl, status = self.storage, plan.key, plan.ttl, response.status_code
            vary, fresh_for, age = decision.vary, decision.fresh_for, decision.age
            sie = max(decision.stale_if_error, self.settings.stale_if_error)
            swr = max(decision.stale_while_revalidate, self.settings.stale_while_revalidate)
            try:
                body = response.content  # read below this layer: what is left is the decoded body
            except httpx.ResponseNotRead:
                token = storage.begin(key)  # dropping the key while the body streams withdraws the save

                def save(body: bytes) -> None:
                    storage.store(key, method, url, status, raw, body, ttl, vary=vary, token=token,
                                  fresh_for=fresh_for, age=age, stale_if_error=sie, stale_while_revalidate=swr)

                response.stream = SaveWhenRead(response.stream, save, lambda: storage.abandon(key, token))
            else:
                stored = storage.store(key, method, url, status, decoded_headers(raw, len(body)), body, ttl,
                                       vary=vary, fresh_for=fresh_for, age=age, stale_if_error=sie,
                                       stale_while_revalidate=swr)
        response.extensions["caching"] = {"from_cache": False, "revalidated": False, "stored": stored}

    def _join(self, plan: Plan) -> Flight | None:
        """Coalescing: the first lookup of a key leads; identical ones arriving meanwhile follow."""
        return self._flights.join(plan.key) if self.settings.coalesce and not plan.refresh else None

    def _direct_begin(self, plan: Plan, request: httpx.Request) -> tuple[httpx.Response | None, Record | None, Flight | None]:
        """Before the network: a hit to return at once, or the stale entry and the flight this request is on."""
        if plan.refresh:
            self.storage.drop_keys([plan.key])
            return None, None, None
        hit, stale = self._direct_lookup(plan, request)
        if hit is not None:
            return hit, None, None
        return None, stale, self._join(plan)

    def _answer_is_spent(self, response: httpx.Response, stale: Record | None) -> bool:
        """The origin's answer will not reach the caller (a 304 for the stored entry, or a 5xx the stale
        entry replaces): the caller closes it, sync or async."""
        if stale is None:
            return False
        return (response.status_code == 304 and self.policy.rfc) or (response.status_code >= 500
                                                                    and self._may_fall_back(stale))

    def _direct_end(self, plan: Plan, request: httpx.Request, response: httpx.Response,
                    flight: Flight | None, stale: Record | None) -> httpx.Response:
        if stale is not None and response.status_code == 304 and self.policy.rfc:
            self._apply_not_modified(plan, request, response, stale)
            self._flights.land(flight)
            return self._served(plan, request, stale, True, self.policy.clock())
        if stale is not None and response.status_code >= 500 and self._may_fall_back(stale):
            return self._fallback(plan, request, stale, flight)
        self._direct_store(plan, request, response)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    def _apply_not_modified(self, plan: Plan, request: httpx.Request, response: httpx.Response, stale: Record) -> None:
        """The server confirmed the stored entry (RFC 9111 §4.3.4): it is fresh again, with updated headers."""
        headers = merge_not_modified(stale.httpx_headers(), response.headers)
        decision = self.policy.decide(request, httpx.Response(stale.status_code, headers=headers))
        if decision.store:
            self.storage.refresh(stale, headers, decision.fresh_for or 0.0, decision.age)
        else:
            self.storage.drop_keys([plan.key])

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
        FAILURES.note(exc, logged=self._shared)  # Redis's outages are logged by the storage, once each
        if self.collector is not None:
            self.collector.add_cache_event("storage_error")

    # -- public API ---------------------------------------------------------------------

    def invalidate(self, prefix: str) -> int:
        """Drop cached entries whose path is ``prefix`` or under it (``prefix`` may be a full URL); returns how many.

        With a shared storage (Redis) for every process, whoever stored them."""
        if self._shared:
            if "://" in prefix:
                self._near_drop_now([split_prefix(prefix, None)])
            elif self.near is not None:
                self.near.clear()  # a path under any origin: the near cache starts again
            try:
                return int(self.storage.invalidate_now(*split_prefix(prefix, None)))
            except Exception as exc:
                self._storage_failed(exc)
                return 0
        return self._invalidate_keys(self.policy.keys_under(prefix))

    def clear(self) -> int:
        """Drop every cached entry (with a shared storage: the whole fleet's); returns how many."""
        if self._shared:
            if self.near is not None:
                self.near.clear()
            try:
                return int(self.storage.clear_now())
            except Exception as exc:
                self._storage_failed(exc)
                return 0
        keys = self.policy.keys_under("")
        n = self._invalidate_keys(keys)
        if isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage)):
            self.storage.clear()
        return n

    def _fleet_failed(self, exc: BaseException) -> None:
        self._storage_failed(exc)

    # -- the near cache --------------------------------------------------------------------

    def _near_message(self, message: str) -> None:
        """An invalidation from any process (or this one): drop what it names from the near cache."""
        self.near_invalidations += 1
        if message == "*":
            self.near.clear()
            return
        origin, _, path = message.partition("\n")
        keys = self.policy.keys_under(path or "/", origin or None)
        self.near.drop_keys(keys)
        self.policy.forget(keys)

    def _near_hit(self, plan: Plan, request: httpx.Request) -> httpx.Response | None:
        if plan.refresh:
            self.near.drop_keys([plan.key])
            return None
        if plan.revalidate:
            return None
        record = self.near.find(plan.key, request.method, request.headers)
        if record is None:
            return None
        now = self.policy.clock()
        if now >= record.fresh_until:
            return None
        return self._served(plan, request, record, False, now)

    def _near_keep(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> None:
        """Keep what Redis (or the network) answered in the near cache too, once its body is read."""
        caching = response.extensions.get("caching") or {}
        if not (caching.get("from_cache") or caching.get("stored")):
            return
        if self._near_sub is not None and not self._near_sub.listening:
            return  # an invalidation could be missed meanwhile
        decision = self.policy.decide(request, response)
        if not decision.store:
            return
        near, key, near_ttl = self.near, plan.key, self.settings.near_ttl
        fresh = min(decision.fresh_for if decision.fresh_for is not None else near_ttl, near_ttl)
        method, url, raw, status = request.method, str(request.url), list(response.headers.raw), response.status_code
        token = near.begin(key)

        def save(body: bytes) -> None:
            near.store(key, method, url, status, raw, body, near_ttl, vary=decision.vary, token=token, fresh_for=fresh)

        response.stream = SaveWhenRead(response.stream, save, lambda: near.abandon(key, token))
        self.policy.remember(plan, request)

    def _near_drop_now(self, targets: list[tuple[str | None, str]]) -> None:
        """This process's own writes: its near cache drops at once, not when the message comes back."""
        if self.near is not None:
            for origin, path in targets:
                self._near_message(f"{origin or ''}\n{path}")

    def stats(self) -> dict[str, Any]:
        entries = len(self.storage) if isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage)) else None
        out = self.policy.stats.as_dict(entries, getattr(self.storage, "evictions", 0))
        out["storage_errors"] += FAILURES.count - self._failures_at_start
        if self._shared:
            out.update(self.storage.stats())
        if self.near is not None:
            out.update(near_entries=len(self.near), near_invalidations=self.near_invalidations)
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
            response = self.inner.handle_request(request)
            if self._shared:  # before the write's answer returns: no process reads the pre-write entry after
                targets = self.policy.fleet_targets(request, response)
                for origin, path in targets:
                    try:
                        self.storage.invalidate_prefix(origin, path)
                    except Exception as exc:
                        self._fleet_failed(exc)
                self._near_drop_now(targets)
            return self._written(request, response)
        if self._direct:
            return self._handle_direct(plan, request)
        if self.near is not None and (hit := self._near_hit(plan, request)) is not None:
            return hit
        record: Record | None = None
        if plan.refresh:
            self._remove_now(plan.key)
        elif self._fleet_lookup:
            try:
                record = self.storage.find(plan.key, request.method, request.headers)
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(self.inner.handle_request(request))
            if (hit := self._fleet_hit(plan, request, record)) is not None:
                return hit
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            flight.event.wait(self.settings.coalesce_timeout)  # then look up what the leader stored
        lookup = self._lookup(plan, request, not plan.refresh and (flight is None or flight.leader)) \
            if self._fleet_lookup else None
        context = LOOKUP.set(lookup)
        try:
            response = self._hishel.handle_request(request)
        except _FromInner as wrapped:
            if self._shared:
                self.storage.release(plan.key)
            if (stale := self._fleet_fallback(plan, request, record, flight, wrapped.original)) is not None:
                return stale
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:  # the storage failed: the request still gets its answer
            self._flights.land(flight)
            self._storage_failed(exc)
            return self._bypassed(self.inner.handle_request(request))
        finally:
            LOOKUP.reset(context)
        if lookup is not None and not lookup.stored:
            response.extensions["caching"] = {**response.extensions["caching"], "stored": False}
        if self._shared and not response.extensions["caching"].get("stored"):
            self.storage.release(plan.key)  # nothing will be stored: the fleet need not wait
            if (stale := self._fleet_fallback(plan, request, record, flight, response)) is not None:
                response.close()
                return stale
        if self.near is not None:
            self._near_keep(plan, request, response)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, stale, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            flight.event.wait(self.settings.coalesce_timeout)
            hit, stale = self._direct_lookup(plan, request)
            if hit is not None:
                return hit
        try:
            with _validating(request, stale if self.policy.rfc else None):
                response = self.inner.handle_request(request)
        except BaseException as exc:
            return self._origin_failed(plan, request, stale, flight, exc)
        if self._answer_is_spent(response, stale):
            response.close()
        return self._direct_end(plan, request, response, flight, stale)

    def _remove_now(self, key: str) -> None:
        try:
            for entry in self.storage.get_entries(key):
                self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    def _spawn_refresh(self, plan: Plan, original: httpx.Request, stale: Record) -> None:
        def run() -> None:
            try:
                request = self._refresh_request(original)
                with _validating(request, stale if self.policy.rfc else None):
                    response = self.inner.handle_request(request)
                try:
                    response.read()
                    if self._shared and (put := self._fleet_put(plan, request, response)) is not None:
                        self.storage.put(**put)
                    self._refreshed(plan, request, response, stale)
                finally:
                    response.close()
            except Exception:  # the stale entry stays; the next lookup in the window tries again
                self.policy.stats.refresh_failures += 1
            finally:
                self._refresh_done(plan.key)

        threading.Thread(target=run, name="pywats-cache-refresh", daemon=True).start()

    def close_layer(self) -> None:
        if self._near_sub is not None:
            self._near_sub.close()
        self.storage.close()


class AsyncCacheLayer(_CacheCore, AsyncLayer):
    """Async cache layer; the memory storage never leaves the event loop's thread."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: CacheSettings | None = None,
                 backend: hishel.AsyncBaseStorage | None = None, clock: Callable[[], float] = time.time,
                 metrics_collector: Any = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, clock, metrics_collector, backend, True, overrides)
        self._flights = Flights(anyio.Event)
        self._background: set[asyncio.Task[None]] = set()
        self._hishel = AsyncCacheTransport(_AsyncToInner(self), storage=self.storage, rfc=self._rfc)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError(CLOSED_MESSAGE)
        plan = self.policy.plan(request)
        if plan.action == "bypass":
            return self._bypassed(await self.inner.handle_async_request(request))
        if plan.action == "write":
            response = await self.inner.handle_async_request(request)
            if self._shared:  # before the write's answer returns: no process reads the pre-write entry after
                targets = self.policy.fleet_targets(request, response)
                for origin, path in targets:
                    try:
                        await self.storage.invalidate_prefix(origin, path)
                    except Exception as exc:
                        self._fleet_failed(exc)
                self._near_drop_now(targets)
            return self._written(request, response)
        if self._direct:
            return await self._handle_direct(plan, request)
        if self.near is not None and (hit := self._near_hit(plan, request)) is not None:
            return hit
        record: Record | None = None
        if plan.refresh:
            await self._remove_now(plan.key)
        elif self._fleet_lookup:
            try:
                record = await self.storage.find(plan.key, request.method, request.headers)
            except Exception as exc:
                self._storage_failed(exc)
                return self._bypassed(await self.inner.handle_async_request(request))
            if (hit := self._fleet_hit(plan, request, record)) is not None:
                return hit
        self._prepare(request, plan)
        flight = self._join(plan)
        if flight is not None and not flight.leader:
            with anyio.move_on_after(self.settings.coalesce_timeout):
                await flight.event.wait()  # then look up what the leader stored
        lookup = self._lookup(plan, request, not plan.refresh and (flight is None or flight.leader)) \
            if self._fleet_lookup else None
        context = LOOKUP.set(lookup)
        try:
            response = await self._hishel.handle_async_request(request)
        except _FromInner as wrapped:
            if self._shared:
                await self.storage.release(plan.key)
            if (stale := self._fleet_fallback(plan, request, record, flight, wrapped.original)) is not None:
                return stale
            self._failed(flight)
            raise wrapped.original from None
        except Exception as exc:
            self._flights.land(flight)
            self._storage_failed(exc)
            return self._bypassed(await self.inner.handle_async_request(request))
        finally:
            LOOKUP.reset(context)
        if lookup is not None and not lookup.stored:
            response.extensions["caching"] = {**response.extensions["caching"], "stored": False}
        if self._shared and not response.extensions["caching"].get("stored"):
            await self.storage.release(plan.key)
            if (stale := self._fleet_fallback(plan, request, record, flight, response)) is not None:
                await response.aclose()
                return stale
        if self.near is not None:
            self._near_keep(plan, request, response)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response)

    async def _handle_direct(self, plan: Plan, request: httpx.Request) -> httpx.Response:
        hit, stale, flight = self._direct_begin(plan, request)
        if hit is not None:
            return hit
        if flight is not None and not flight.leader:
            with anyio.move_on_after(self.settings.coalesce_timeout):
                await flight.event.wait()
            hit, stale = self._direct_lookup(plan, request)
            if hit is not None:
                return hit
        try:
            with _validating(request, stale if self.policy.rfc else None):
                response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            return self._origin_failed(plan, request, stale, flight, exc)
        if self._answer_is_spent(response, stale):
            await response.aclose()
        return self._direct_end(plan, request, response, flight, stale)

    async def _remove_now(self, key: str) -> None:
        try:
            for entry in await self.storage.get_entries(key):
                await self.storage.remove_entry(entry.id)
        except Exception as exc:
            self._storage_failed(exc)

    def _spawn_refresh(self, plan: Plan, original: httpx.Request, stale: Record) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh(plan, original, stale), name="pywats-cache-refresh")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, plan: Plan, original: httpx.Request, stale: Record | None) -> None:
        try:
            request = self._refresh_request(original)
            with _validating(request, stale if self.policy.rfc else None):
                response = await self.inner.handle_async_request(request)
            try:
                await response.aread()
                if self._shared and (put := self._fleet_put(plan, request, response)) is not None:
                    await self.storage.put(**put)
                self._refreshed(plan, request, response, stale)
            finally:
                await response.aclose()
        except Exception:  # the stale entry stays; the next lookup in the window tries again
            self.policy.stats.refresh_failures += 1
        finally:
            self._refresh_done(plan.key)

    async def aclose_layer(self) -> None:
        # Background refreshes belong to the layer: they end with it.
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._near_sub is not None:
            self._near_sub.close()
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
            sync_factory=lambda inner, settings, ctx: CacheLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.clock_kwargs()
            ),
            async_factory=lambda inner, settings, ctx: AsyncCacheLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.clock_kwargs()
            ),
            description="HTTP cache on hishel: memory (LRU), SQLite or Redis storage",
        )
    ]
