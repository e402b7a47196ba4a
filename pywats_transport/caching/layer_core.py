"""What the sync and async cache layers share: lookups, the direct path, the fleet's and the near
cache's steps, stale fallbacks and statistics. The layers add only how they wait and send."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import hishel
import httpx

from ..config import CacheSettings
from ..errors import TransportError
from ..layer import layer_settings
from ..policies.retry import may_have_been_applied
from ..streams import OnClose
from .coalesce import Flight, Flights, SaveWhenRead
from .freshness import conditional_headers, forbids_stale, merge_not_modified, rfc_age, rfc_staleness
from .health import FAILURES
from .hishel_view import (
    MARKS,
    AsyncStorageView,
    Forgotten,
    StorageView,
    answers,
    fresh_until,
    latest_first,
    restamped,
)
from .memory import MAX_BODY, AsyncMemoryStorage, MemoryStorage, Record, hishel_headers
from .near_invalidation import NearInvalidation
from .policy import EXTENSION, CachePolicy, Plan
from .redis_clock import CLOCK
from .redis_connect import sync_client
from .redis_fetch import Lookup
from .redis_store import RedisStore
from .redis_store_async import AsyncRedisStore
from .storages import make_storage
from .url_parts import split_prefix

NOT_CACHED = {"from_cache": False, "revalidated": False, "stored": False}
#: failures of the layers below that a stale entry may answer for (stale-if-error): httpx's transport
#: errors (connection refused, timeouts, a throttle timeout) and ours (an open circuit breaker)
FALLBACK_ERRORS = (httpx.TransportError, TransportError)


def write_may_have_landed(exc: BaseException) -> bool:
    """Whether a write that raised ``exc`` may have been applied by the server, so that its entries must go
    as for a successful one: an error after it was sent, or an interruption at a point nobody knows (Ctrl-C,
    a signal's ``SystemExit``, a cancelled task). Dropping too much costs a fetch; too little, a stale read."""
    return may_have_been_applied(exc) or not isinstance(exc, Exception)


class FromInner(Exception):
    """Carries an exception raised below the cache through hishel, so it is not taken for a storage failure."""

    def __init__(self, original: BaseException) -> None:
        self.original = original


def decoded_headers(raw: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """Headers for a body stored after decoding: no ``Content-Encoding``, the decoded length."""
    if not any(k.lower() == b"content-encoding" for k, _ in raw):
        return raw  # nothing was decoded: the headers describe the body as it is
    kept = [(k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-length", str(length).encode())]


@contextmanager
def validating(request: httpx.Request, stale: Record | None) -> Iterator[None]:
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


def dated(response: httpx.Response) -> httpx.Response:
    """An answer on its way into hishel, with a Date: RFC 9110 §6.6.1 has a cache record the time it
    received an undated answer (or 304) as its Date. hishel ages a stored entry by its Date alone (rfc mode,
    on SQLite and Redis): an undated one was fresh until the storage dropped it, and a 304 without one left
    the entry stale for every later lookup."""
    if "date" not in response.headers:
        response.headers["date"] = formatdate(time.time(), usegmt=True)
    return response


def _failed(failure: BaseException | httpx.Response) -> bool:
    """An origin failure a stale entry may answer for: an error below the cache, or a 5xx after the retries."""
    return failure.status_code >= 500 if isinstance(failure, httpx.Response) else isinstance(failure, FALLBACK_ERRORS)


#: answers that say the origin itself is unavailable, as an error below the cache does
_ORIGIN_DOWN = frozenset({502, 503, 504})
#: failing origins remembered at once
MAX_FAILING = 1024


def _origin(request: httpx.Request) -> tuple[str, str, int | None]:
    url = request.url
    return url.scheme, url.host, url.port


class CacheCore:
    """What the sync and async cache layers share."""

    name = "cache"
    settings: CacheSettings
    _flights: Flights

    def _setup(self, settings: CacheSettings | None, clock: Callable[[], float], collector: Any, backend: Any,
               is_async: bool, overrides: dict[str, Any]) -> None:
        settings = layer_settings(CacheSettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.policy = CachePolicy(settings, clock)
        self.storage = backend if backend is not None else make_storage(settings, clock, is_async=is_async)
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
        #: hishel's own storage (SQLite): what hishel sees of it, for a lookup and for a refresh (see
        #: :mod:`.hishel_view`); entries are kept past their freshness for stale-if-error
        self._own = not (self._direct or self._shared)
        self._kept_for = max(settings.stale_if_error, settings.stale_while_revalidate) if self._own else 0.0
        view: Any = AsyncStorageView if is_async else StorageView
        started = clock()
        self._views: tuple[Any, Any] | None = (
            view(self.storage, self._kept_for, clock, timed=not self.policy.rfc, started=started),
            view(self.storage, self._kept_for, clock, finds=False, timed=not self.policy.rfc),
        ) if self._own else None
        self._forgotten = Forgotten(clock) if self._own else None
        #: the largest body the storage keeps: the followers of a fetch whose body outgrows it (a download)
        #: go on at once, not when it ends
        self._body_bound: int | None = MAX_BODY if self._shared else getattr(self.storage, "max_stream_size", None)
        if self._shared:  # what the store absorbs (a failed store as a body streams in) is this layer's to count
            self.storage.keep_stale = self._keep_stale
            self.storage.on_failure = self._storage_failed
            if collector is not None:
                self.storage.on_event = collector.add_cache_event
        # ttl mode on Redis: the layer reads the key itself (one round trip, the variant chosen by method,
        # Vary and freshness) and serves a hit without hishel; a miss goes through hishel's path, told
        # by a Lookup what to store.
        self._fleet_lookup = self._shared and not self.policy.rfc
        # rfc mode on Redis: hishel answers every lookup, and would revalidate an expired entry before it
        # answers; with stale_while_revalidate the layer reads the entry first (a round trip more), so that
        # an expired one answers at once while one refresh revalidates it behind.
        self._fleet_stale_first = self._shared and self.policy.rfc and settings.stale_while_revalidate > 0
        # On hishel's own storage (SQLite), which goes to the origin first for an expired entry, the layer
        # reads the entry first when a stale one may answer while it is refreshed.
        self._own_stale_first = self._own and settings.stale_while_revalidate > 0
        #: origins whose last fetch failed and was answered from a stale entry (stale-if-error). While one
        #: fails, a lookup with an entry in its stale-if-error window is answered from it at once and
        #: refreshed behind, as in a stale-while-revalidate window: a station does not wait out the
        #: timeouts (and the retries) of every lookup of an outage, and the refreshes find the origin back.
        self._failing: set[tuple[str, str, int | None]] = set()
        # The near cache: entries in process memory in front of Redis, dropped on any process's invalidation.
        self.near: Any = None
        self._near_sub: NearInvalidation | None = None
        self.near_invalidations = 0
        if self._shared and settings.near_cache:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            near_cls = AsyncMemoryStorage if is_async else MemoryStorage
            self.near = near_cls(max_entries=settings.max_size, max_bytes=settings.max_bytes,
                                 default_ttl=min(settings.ttl, settings.near_ttl), clock=clock)
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
            if now < record.fresh_until + self._stale_window(record, request) and self._may_serve_stale(record):
                self._refresh_later(plan, request, record)
                return self._served_stale(plan, request, record, now), None
        return None, record

    def _fetching(self, plan: Plan, request: httpx.Request) -> object | None:
        """Before a lookup goes on (to the network, or past the near cache to Redis): the in-process cache's
        token for its key. A write's invalidation of a path above the URL meanwhile withdraws the token, so
        the lookup's answer, which may predate the write, is not stored after it. hishel's storages have
        no tokens: the policy follows their fetches (:meth:`_tracked_fetch`); Redis has leases of its own."""
        cache = self.storage if self._direct else self.near
        if cache is not None:
            return cache.begin(plan.key, request.url)
        return None

    def _tracked_fetch(self, plan: Plan, request: httpx.Request) -> Callable[[], None]:
        """A lookup through hishel to a storage of its own (SQLite) begins: the policy follows it until the
        returned function ends it, once the answer is stored or will not be (``CachePolicy.begin_fetch``)."""
        fetch = self.policy.begin_fetch(plan, request)
        return lambda: self.policy.end_fetch(fetch)

    def _storable(self, request: httpx.Request, response: hishel.Response) -> bool:
        """Whether the policy stores hishel's ``response`` to ``request`` (ttl mode)."""
        raw = [(k, v) for k in response.headers for v in response.headers.get_list(k) or []]
        return self.policy.decide(request, httpx.Response(response.status_code, headers=raw)).store

    @staticmethod
    def _refused(request: httpx.Request) -> bool:
        """hishel said it stored the answer to ``request``, and the storage view kept it out (ttl mode)."""
        return bool(getattr(request.extensions.get("caching", {}).get("storage"), "refused", False))

    @staticmethod
    def _from_own_storage(response: httpx.Response, end: Callable[[], None]) -> httpx.Response:
        """An answer through hishel's own storage: without the storage's mark, and ``end`` once the body is
        read (hishel stores it as it is read) or closed, or dropped."""
        for mark in MARKS:
            if mark in response.headers:
                del response.headers[mark]
        if response.is_closed:
            end()
        else:
            response.stream = OnClose(response.stream, end)
        return response

    def _own_choice(self, entries: list[Any], request: httpx.Request, since: float = float("-inf")) -> Any:
        """The latest of ``entries`` (hishel's, of its own storage) stored at ``since`` or later answering
        ``request`` that nothing this layer dropped covers; None if none does."""
        forgotten = self._forgotten
        return next((entry for entry in latest_first(entries, since)
                     if answers(entry, request) and not (forgotten is not None and forgotten.covers(entry))), None)

    def _own_latest(self, entries: list[Any], request: httpx.Request) -> Any:
        """Of ``entries`` (read before hishel, for stale-while-revalidate), the one answering ``request`` among
        those this layer stored (an earlier process's answer no lookup as fresh, nor while refreshed)."""
        assert self._views is not None
        return self._own_choice(entries, request, self._views[0].started)

    def _own_revalidated(self, confirmed: tuple[uuid.UUID, hishel.Headers]) -> tuple[uuid.UUID, hishel.Headers]:
        """A 304's update of an entry of hishel's own storage, with its marks (it is this layer's again)."""
        return (confirmed[0], restamped(confirmed[1], self.policy.clock())) if self._own else confirmed

    def _own_record(self, entry: Any, body: bytes) -> Record:
        """An entry of hishel's own storage as a record timed for a stale answer: by its mark in ttl mode,
        by its headers in rfc mode."""
        headers = entry.response.headers
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k in headers if k not in MARKS
               for v in headers.get_list(k) or []]
        record = Record(entry.id, "", entry.request, entry.response.status_code, None, body, None, None, None,
                        raw_headers=raw, stored_at=self.policy.clock(), fresh_until=fresh_until(entry))
        if self.policy.rfc:
            self._timed_by_headers(record)  # in place
            record.age = rfc_age(record.hishel_headers())  # the Age a stale answer carries
        return record

    def _fleet_hit(self, plan: Plan, request: httpx.Request, record: Record | None,
                   near_token: object | None) -> httpx.Response | None:
        """A fresh variant read from Redis answers at once (and is kept near, with a near cache); a stale
        one may still answer if the origin fails (:meth:`_fleet_fallback`)."""
        if record is None or plan.revalidate:
            return None
        now = self._records_now()
        if now >= record.fresh_until:
            if now < record.fresh_until + self._stale_window(record, request) and self._may_serve_stale(record):
                self._refresh_later(plan, request, record)
                return self._served_stale(plan, request, record, now)
            return None
        if self.policy.rfc:
            return None  # fresh: hishel answers it, as it answers every rfc lookup on Redis
        response = self._served(plan, request, record, False, self.policy.clock())
        if self.near is not None:
            self._near_keep(plan, request, response, near_token, record.fresh_until - now)
        return response

    def _fleet_fallback(self, plan: Plan, request: httpx.Request, record: Record | None,
                        flight: Flight | None, failure: BaseException | httpx.Response) -> httpx.Response | None:
        """Stale-if-error from Redis: the origin raised, or answered 5xx after the retries below."""
        if not _failed(failure) or not self._may_fall_back(record):
            return None
        assert record is not None
        return self._fallback(plan, request, record, flight, failure)

    def _stale_wanted(self, record: Record | None, failure: BaseException | httpx.Response) -> bool:
        """hishel went to the origin, which failed; the layer has not read the entry (hishel did, or found
        none fresh) and must, for a stale-if-error answer: rfc mode on Redis, either mode on SQLite."""
        return (record is None and _failed(failure)
                and (self._shared and self.policy.rfc or self._own))

    def _timed(self, record: Record | None) -> Record | None:
        """An entry read from Redis, timed: by the ttl mode's lookup when stored, by its headers in rfc mode."""
        return self._timed_by_headers(record) if self.policy.rfc else record

    def _timed_by_headers(self, record: Record | None) -> Record | None:
        """An entry hishel's rules stored, timed as hishel times it (by its headers, on this station's
        clock), with the windows its own directives grant."""
        if record is not None:
            past, record.stale_if_error, record.stale_while_revalidate = rfc_staleness(record.hishel_headers())
            record.fresh_until = self._records_now() - past
        return record

    def _fleet_revalidated(self, response: httpx.Response, stale: Record | None) -> tuple[uuid.UUID, hishel.Headers] | None:
        """rfc mode on Redis: a background refresh's 304 for the stale entry, as the entry's id and the
        headers it now has (RFC 9111 §4.3.4), for the storage's ``update_headers``; None otherwise."""
        if not (self.policy.rfc and (self._shared or self._own) and stale is not None and response.status_code == 304):
            return None
        merged = merge_not_modified(stale.httpx_headers(), dated(response).headers)
        return uuid.UUID(str(stale.id)), hishel_headers(merged)

    def _fleet_put(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> dict[str, Any] | None:
        """What a background refresh stores in Redis: the arguments of the storage's ``put``, or None."""
        if response.status_code >= 500 or len(response.content) > MAX_BODY:
            return None
        dated(response)  # as every answer stored in Redis: hishel ages entries by their Date (rfc mode)
        decision = self.policy.decide(request, response)
        if not decision.store:
            return None
        self.policy.remember(plan, request)
        raw = decoded_headers(list(response.headers.raw), len(response.content))
        return {"key": plan.key, "method": request.method, "url": str(request.url), "status": response.status_code,
                "raw_headers": raw, "body": response.content, "ttl": plan.ttl, "vary": decision.vary,
                "keep_stale": self._keep_stale}

    def _own_put(self, plan: Plan, request: httpx.Request, response: httpx.Response, stream: Any) -> dict[str, Any] | None:
        """What a background refresh stores in hishel's own storage (SQLite): the arguments of the refresh
        view's ``create_entry`` (``stream`` the body, as the storage iterates it), or None."""
        if response.status_code >= 500 or not self.policy.decide(request, response).store:
            return None
        raw = decoded_headers(list(response.headers.raw), len(response.content))
        internal = hishel.Request(request.method, str(request.url), hishel_headers(request.headers.raw))
        answer = hishel.Response(response.status_code, hishel_headers(raw), stream=stream)
        ttl = None if plan.ttl is None else plan.ttl + self._kept_for
        return {"request": internal, "response": answer, "key": plan.key, "ttl": ttl}

    @property
    def _keep_stale(self) -> float:
        """Seconds a shared entry stays in Redis past its freshness: it may still answer meanwhile."""
        return max(self.settings.stale_if_error, self.settings.stale_while_revalidate)

    def _lookup(self, plan: Plan, request: httpx.Request, looked: bool) -> Lookup:
        method, headers = request.method, request.headers

        def usable(record: Record) -> bool:
            return record.matches(method, headers) and self._records_now() < record.fresh_until

        def decide(_: hishel.Request, response: hishel.Response) -> Any:
            raw = [(k, v) for k in response.headers for v in response.headers.get_list(k) or []]
            return self.policy.decide(request, httpx.Response(response.status_code, headers=raw))

        return Lookup(plan.key, usable, decide, looked=looked, keep_stale=self._keep_stale)

    def _response_from(self, record: Record, now: float, caching: dict[str, Any]) -> httpx.Response:
        headers: Any = record.response_headers()
        if self.policy.rfc:  # say how old the stored answer is (RFC 9111 §5.1)
            headers = [*record.httpx_headers(), (b"age", str(int(record.age + max(0.0, now - record.stored_at))).encode())]
        # The body as content, not a stream: the answer is read as it is made, which costs less than the
        # client's asynchronous read of a stream would, and the length is known.
        return httpx.Response(record.status_code, headers=headers, content=record.body, extensions={"caching": caching})

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
        if stale is None or not self._may_serve_stale(stale):
            return False
        window = max(stale.stale_if_error, self.settings.stale_if_error)
        return window > 0 and self._records_now() < stale.fresh_until + window

    def _stale_window(self, record: Record, request: httpx.Request) -> float:
        """How long past its freshness ``record`` answers at once while it is refreshed behind: its
        stale-while-revalidate window, or its stale-if-error window while the origin is failing."""
        window = max(record.stale_while_revalidate, self.settings.stale_while_revalidate)
        if self._origin_failing(request):
            window = max(window, record.stale_if_error, self.settings.stale_if_error)
        return window

    def _fleet_reads_first(self, request: httpx.Request) -> bool:
        """Whether a lookup on Redis reads the entry before hishel: in ttl mode always; in rfc mode when a
        stale one may answer at once (a stale-while-revalidate window, or the origin failing)."""
        return self._fleet_lookup or self._fleet_stale_first or (self._shared and self._origin_failing(request))

    def _own_reads_first(self, request: httpx.Request) -> bool:
        """Whether a lookup on hishel's own storage (SQLite) reads the entry before hishel, which would go to
        the origin first for an expired one: when a stale one may answer at once."""
        return self._own_stale_first or (self._own and self._origin_failing(request))

    def _origin_failing(self, request: httpx.Request) -> bool:
        """Whether ``request``'s origin failed last (nothing to look up while no origin does)."""
        return bool(self._failing) and _origin(request) in self._failing

    def _origin_answered(self, request: httpx.Request, response: httpx.Response) -> None:
        """The origin answered (not with a 5xx): it is failing no longer."""
        if self._failing and response.status_code < 500:
            self._failing.discard(_origin(request))

    def _may_serve_stale(self, record: Record) -> bool:
        """Whether an entry past its freshness may answer at all: in rfc mode, not one the server said to
        revalidate first (the ttl mode takes no orders from the server's headers)."""
        return not (self.policy.rfc and forbids_stale(record.httpx_headers()))

    def _records_now(self) -> float:
        """Now, on the clock the storage's entries are timed by: Redis's for the fleet's (:mod:`.redis_clock`)."""
        return CLOCK.now() if self._shared else self.policy.clock()

    def _origin_failed(self, plan: Plan, request: httpx.Request, stale: Record | None, flight: Flight | None,
                       exc: BaseException, token: object | None) -> httpx.Response:
        """The request below raised: answer from the stale entry when allowed (stale-if-error), else re-raise."""
        self._abandon(plan, token)
        if isinstance(exc, FALLBACK_ERRORS) and stale is not None and self._may_fall_back(stale):
            return self._fallback(plan, request, stale, flight, exc)
        self._failed(flight)
        raise exc

    def _fallback(self, plan: Plan, request: httpx.Request, stale: Record, flight: Flight | None,
                  failure: BaseException | httpx.Response) -> httpx.Response:
        if not isinstance(failure, httpx.Response) or failure.status_code in _ORIGIN_DOWN:
            if len(self._failing) >= MAX_FAILING:  # a client of ever new hosts: forgetting costs one wait each
                self._failing.clear()
            self._failing.add(_origin(request))  # (a 500 is one resource's fault, not the origin's)
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

    def _refresh_token(self, plan: Plan, request: httpx.Request) -> object | None:
        """A background refresh's :meth:`_fetching`: the in-process storage's token (none for Redis, whose
        store takes a lease of its own)."""
        return self.storage.begin(plan.key, request.url) if self._direct else None

    def _refreshed(self, plan: Plan, request: httpx.Request, response: httpx.Response, stale: Record | None,
                   token: object | None) -> None:
        """A background refresh answered (its body read): store it, or keep the stale entry if it failed."""
        self._origin_answered(request, response)
        if self._shared or self._own:
            pass  # stored by the caller, which awaits the storage where the layer is async (_fleet_put, _own_put)
        elif stale is not None and response.status_code == 304:
            self._abandon(plan, token)
            self._apply_not_modified(plan, request, response, stale)
        elif response.status_code < 500:
            self._direct_store(plan, request, response, token)
            if response.extensions["caching"]["stored"]:
                self.policy.remember(plan, request)
        else:
            self._abandon(plan, token)
        self.policy.stats.refreshes += 1
        if self.collector is not None:
            self.collector.add_cache_event("refresh")

    def _refresh_done(self, key: str) -> None:
        with self._refresh_lock:
            self._refreshing.discard(key)

    def _abandon(self, plan: Plan, token: object | None) -> None:
        if token is not None and self._direct:
            self.storage.abandon(plan.key, token)

    def _direct_store(self, plan: Plan, request: httpx.Request, response: httpx.Response, token: object | None) -> None:
        """Store a storable response once its body is complete, unless a write invalidated its key since
        ``token`` was taken (see :meth:`_fetching`); mark what happened on the response."""
        decision = self.policy.decide(request, response)
        stored = decision.store
        if not stored:
            self._abandon(plan, token)
        else:
            method, url, raw = request.method, str(request.url), list(response.headers.raw)
            storage, key, ttl, status = self.storage, plan.key, plan.ttl, response.status_code
            vary, fresh_for, age = decision.vary, decision.fresh_for, decision.age
            sie = max(decision.stale_if_error, self.settings.stale_if_error)
            swr = max(decision.stale_while_revalidate, self.settings.stale_while_revalidate)
            try:
                body = response.content  # read below this layer: what is left is the decoded body
            except httpx.ResponseNotRead:
                def save(body: bytes) -> None:
                    storage.store(key, method, url, status, raw, body, ttl, vary=vary, token=token,
                                  fresh_for=fresh_for, age=age, stale_if_error=sie, stale_while_revalidate=swr)

                response.stream = SaveWhenRead(response.stream, save, lambda: storage.abandon(key, token),
                                               storage.max_stream_size)
            else:
                stored = storage.store(key, method, url, status, decoded_headers(raw, len(body)), body, ttl,
                                       vary=vary, token=token, fresh_for=fresh_for, age=age, stale_if_error=sie,
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

    def _followed(self, plan: Plan, request: httpx.Request, deadline: float
                  ) -> tuple[httpx.Response | None, Record | None, Flight | None]:
        """A follower woken (or out of time): the entry the fetch it waited for stored, or, if it stored
        nothing (it failed, or its caller dropped the answer unread), its place in the next fetch: one of
        the followers leads it and the others wait for that one, not all going to the server at once.
        Past ``deadline`` it fetches alone."""
        hit, stale = self._direct_lookup(plan, request)
        if hit is not None or time.monotonic() >= deadline:
            return hit, stale, None
        return None, stale, self._join(plan)

    def _woken(self, plan: Plan, flight: Flight, deadline: float) -> tuple[bool, Flight]:
        """A follower on hishel's path (SQLite, Redis), woken or out of time: whether to go look up now, and
        the flight it is on. It goes when its fetch settled the key, past ``deadline`` (to fetch alone),
        and on Redis (which has a single flight of its own); else, as on the memory storage's path, one
        follower leads the next fetch (its own flight, to go with) and the others wait for that one."""
        if self._shared or time.monotonic() >= deadline or flight.settled:
            return True, flight
        following = self._flights.join(plan.key)  # coalescing is on, or there would be nothing to follow
        return following.leader, following

    def _answer_is_spent(self, response: httpx.Response, stale: Record | None) -> bool:
        """The origin's answer will not reach the caller (a 304 for the stored entry, or a 5xx the stale
        entry replaces): the caller closes it, sync or async."""
        if stale is None:
            return False
        return (response.status_code == 304 and self.policy.rfc) or (response.status_code >= 500
                                                                    and self._may_fall_back(stale))

    def _direct_end(self, plan: Plan, request: httpx.Request, response: httpx.Response,
                    flight: Flight | None, stale: Record | None, token: object | None) -> httpx.Response:
        self._origin_answered(request, response)
        if stale is not None and response.status_code == 304 and self.policy.rfc:
            self._abandon(plan, token)
            self._apply_not_modified(plan, request, response, stale)
            self._flights.land(flight)
            return self._served(plan, request, stale, True, self.policy.clock())
        if stale is not None and response.status_code >= 500 and self._may_fall_back(stale):
            self._abandon(plan, token)
            return self._fallback(plan, request, stale, flight, response)
        self._direct_store(plan, request, response, token)
        self._after_lookup(plan, request, response)
        return self._flights.land_when_read(flight, response, self._body_bound)

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
        if self._views is not None:
            caching["storage"] = (self._views[1] if plan.refresh else self._views[0]).bound(
                request, lambda response: self._storable(request, response))
            if plan.ttl is not None:
                caching["ttl"] = plan.ttl + self._kept_for
        request.extensions = {**request.extensions, "caching": caching}

    def _after_lookup(self, plan: Plan, request: httpx.Request, response: httpx.Response) -> None:
        status = response.extensions.get("caching")
        if self._failing and (not status or not status.get("from_cache") or status.get("revalidated")):
            self._origin_answered(request, response)  # hishel's answer came from the origin
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
        """A write went through: drop what it invalidates, and the stores of answers fetched meanwhile, and
        say so on the response."""
        self._origin_answered(request, response)
        n = self._drop_written(request, response)
        response.extensions["caching"] = {**NOT_CACHED, "lookup": "write", "invalidated": n}
        return response

    def _drop_written(self, request: httpx.Request, response: httpx.Response | None) -> int:
        if self._direct and self.storage.fetching():  # a fetch that begins from now on reads the written state
            self.storage.withdraw_under(self.policy.write_targets(request, response))
        if self._forgotten is not None:
            self._forgotten.drop(self.policy.write_targets(request, response))
        return self._invalidate_keys(self.policy.write_invalidates(request, response))

    def _missed_with_error(self) -> None:
        self.policy.stats.misses += 1
        if self.collector is not None:
            self.collector.add_cache_lookup("miss")

    def _bypassed(self, response: httpx.Response, request: httpx.Request) -> httpx.Response:
        self._origin_answered(request, response)
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
        self.policy.stats.storage_errors += 1
        if not self._shared:  # Redis's outages are logged by the storage's guard, once each
            FAILURES.log_once(exc)
        if self.collector is not None:
            self.collector.add_cache_event("storage_error")

    # -- public API ---------------------------------------------------------------------

    def invalidate(self, prefix: str) -> int:
        """Drop cached entries whose path is ``prefix`` or under it (``prefix`` may be a full URL); returns how many.

        With a shared storage (Redis) for every process, whoever stored them."""
        if self._shared:
            place = self._near_before_invalidate(prefix)
            try:
                return int(self.storage.invalidate_now(*place))
            except Exception as exc:
                self._storage_failed(exc)
                return 0
        return self._invalidate_here(prefix)

    def _near_before_invalidate(self, prefix: str) -> tuple[str | None, str]:
        place = split_prefix(prefix, None)
        if place[0] is not None:
            self._near_drop_now([place])
        elif self.near is not None:
            self.near.clear()  # a path under any origin: the near cache starts again
        return place

    def _invalidate_here(self, prefix: str) -> int:
        place = split_prefix(prefix, None)
        if self._direct:
            self.storage.withdraw_under([place])
        if self._forgotten is not None:
            self._forgotten.drop([place])
        return self._invalidate_keys(self.policy.keys_under(*place))

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
        return self._clear_here()

    def _clear_here(self) -> int:
        if self._forgotten is not None:
            self._forgotten.clear()
        keys = self.policy.keys_under(None, "/")
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
        self.near.withdraw_under([(origin or None, path or "/")])
        keys = self.policy.keys_under(origin or None, path or "/")
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

    def _near_keep(self, plan: Plan, request: httpx.Request, response: httpx.Response, token: object | None,
                   fresh_left: float | None = None) -> None:
        """Keep what Redis (or the network) answered in the near cache too, once its body is read, unless an
        invalidation came since ``token`` was taken (before the lookup went past the near cache). It is kept
        for as long as it is still fresh (``fresh_left`` for an entry read from Redis), ``near_ttl`` at most."""
        near, key, near_ttl = self.near, plan.key, self.settings.near_ttl
        caching = response.extensions.get("caching") or {}
        decision = self.policy.decide(request, response)
        # Not while the subscription is down: an invalidation could be missed meanwhile.
        if (not (caching.get("from_cache") or caching.get("stored")) or not decision.store
                or (self._near_sub is not None and not self._near_sub.heard())):
            near.abandon(key, token)
            return
        ttl = None if self.policy.rfc else (plan.ttl if plan.ttl is not None else self.settings.ttl)
        fresh = min(x for x in (decision.fresh_for, ttl, fresh_left, near_ttl) if x is not None)
        if fresh <= 0:
            near.abandon(key, token)
            return
        method, url, raw, status = request.method, str(request.url), list(response.headers.raw), response.status_code

        def save(body: bytes) -> None:
            near.store(key, method, url, status, raw, body, near_ttl, vary=decision.vary, token=token, fresh_for=fresh)

        if response.is_closed:  # an answer made from an entry read from Redis: its body is at hand
            save(response.content)
        else:
            response.stream = SaveWhenRead(response.stream, save, lambda: near.abandon(key, token),
                                           near.max_stream_size)
        self.policy.remember(plan, request)

    def _near_drop_now(self, targets: list[tuple[str | None, str]]) -> None:
        """This process's own writes: its near cache drops at once, not when the message comes back."""
        if self.near is not None:
            for origin, path in targets:
                self._near_message(f"{origin or ''}\n{path}")

    def stats(self) -> dict[str, Any]:
        in_memory = isinstance(self.storage, (MemoryStorage, AsyncMemoryStorage))
        out = self.policy.stats.as_dict(len(self.storage) if in_memory else None, getattr(self.storage, "evictions", 0))
        out["storage_errors"] += FAILURES.count - self._failures_at_start
        if in_memory:
            out["body_bytes"] = self.storage.body_bytes
        if self._shared:
            out.update(self.storage.stats())
        if self.near is not None:
            out.update(near_entries=len(self.near), near_body_bytes=self.near.body_bytes,
                       near_invalidations=self.near_invalidations)
        return out

