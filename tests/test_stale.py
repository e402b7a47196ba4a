"""RFC 5861 in the cache layer: stale-if-error and stale-while-revalidate, sync and async, injected clock."""

from __future__ import annotations

import asyncio
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer
from pywats_transport.metrics import MetricsCollector

from .helpers import Caller, Clock


class Origin:
    """Answers with a version number; can be made to fail with an exception or a status."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        self.version = 1
        self.calls = 0
        self.failure: Exception | int | None = None
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        if isinstance(self.failure, Exception):
            raise self.failure
        if isinstance(self.failure, int):
            return httpx.Response(self.failure, json={"error": "down"})
        return httpx.Response(200, json={"version": self.version}, headers=self.headers)


def make(kind: str, origin: Origin, clock: Clock, **settings: Any) -> tuple[Caller, Any]:
    cls = CacheLayer if kind == "sync" else AsyncCacheLayer
    settings.setdefault("mode", "ttl")
    layer = cls(httpx.MockTransport(origin), clock=clock, **settings)
    return Caller(kind, layer), layer


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 503])
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_stale_if_error_answers_within_its_window(mode: str, failure: Any, storage: str, tmp_path: Path) -> None:
    """On SQLite hishel dropped an entry at its TTL, and a lookup found no expired one to fall back on."""
    clock, origin = Clock(), Origin()
    collector = MetricsCollector(isolated=True)
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(origin), clock=clock, mode="ttl", ttl=60, stale_if_error=600,
                metrics_collector=collector, storage=storage, sqlite_path=str(tmp_path / "cache.db"))
    caller = Caller(mode, layer)
    assert (await caller.get("/api/Product/P1")).json() == {"version": 1}
    origin.failure = failure
    clock.now += 61  # expired
    stale = await caller.get("/api/Product/P1")
    caching = stale.extensions["caching"]
    assert stale.json() == {"version": 1} and caching["stale"] is True and caching["from_cache"] is True
    assert layer.stats()["stale_served"] == 1 and origin.calls == 2
    assert 'result="stale"' in collector.render_prometheus()
    clock.now += 600  # past the window: the failure reaches the caller
    if isinstance(failure, Exception):
        with pytest.raises(type(failure)):
            await caller.get("/api/Product/P1")
    else:
        assert (await caller.get("/api/Product/P1")).status_code == failure
    await caller.close()


@pytest.mark.anyio
async def test_a_station_restarted_during_an_outage_answers_from_its_sqlite_cache(mode: str, tmp_path: Path) -> None:
    """The offline station's case: the cache file outlives the process. Expired entries were gone from it,
    so a station restarted while WATS was down had nothing to answer with. The storage's marks never
    reach a caller."""
    clock, origin = Clock(), Origin()
    settings: dict[str, Any] = dict(mode="ttl", ttl=60, stale_if_error=3600, storage="sqlite",
                                    sqlite_path=str(tmp_path / "cache.db"))
    before, _ = make(mode, origin, clock, **settings)
    answers = [await before.get("/api/Product/P1"), await before.get("/api/Product/P1")]
    assert [a.extensions["caching"]["from_cache"] for a in answers] == [False, True]
    await before.close()
    clock.now += 600  # restarted ten minutes later, WATS down
    origin.failure = httpx.ConnectError("refused")
    after, layer = make(mode, origin, clock, **settings)
    stale = await after.get("/api/Product/P1")
    answers.append(stale)
    assert stale.json() == {"version": 1} and stale.extensions["caching"]["stale"]
    with pytest.raises(httpx.ConnectError):
        await after.get("/api/Product/P2")  # nothing known of it
    origin.failure = None
    origin.version = 2
    fresh = await after.get("/api/Product/P1")  # WATS back: an expired entry is not served as fresh
    answers.append(fresh)
    assert fresh.json() == {"version": 2} and not fresh.extensions["caching"]["from_cache"]
    assert not any(mark in a.headers for a in answers for mark in ("x-pywats-fresh-until", "x-pywats-stored-at"))
    await after.close()


@pytest.mark.anyio
async def test_what_an_earlier_process_stored_in_sqlite_is_dropped_by_writes_and_clear(mode: str, tmp_path: Path) -> None:
    """The index of what a write drops lived in the process that stored the entries: after a restart a
    write, ``invalidate`` and ``clear`` reached none of them (``clear()`` returned 0), and a GET after the
    station's own PUT got the pre-write answer."""
    clock, origin = Clock(), Origin()
    settings: dict[str, Any] = dict(mode="ttl", ttl=60, stale_if_error=3600, storage="sqlite",
                                    sqlite_path=str(tmp_path / "cache.db"))
    before, _ = make(mode, origin, clock, **settings)
    for n in range(1, 5):
        await before.get(f"/api/Product/P{n}")
    await before.close()
    clock.now += 10  # still fresh
    after, layer = make(mode, origin, clock, **settings)
    try:
        origin.version = 2
        assert (await after.request("PUT", "/api/Product/P1")).status_code == 200
        assert (await after.get("/api/Product/P1")).json() == {"version": 2}
        # Its key unknown here, an earlier process's entry answers no lookup as fresh: fetched anew.
        again = await after.get("/api/Product/P2")
        assert again.json() == {"version": 2} and not again.extensions["caching"]["from_cache"]
        origin.failure = httpx.ConnectError("refused")
        for path in ("/api/Product/P3", "/api/Product/P4"):  # the earlier process's entries still answer an outage
            assert (await after.get(path)).extensions["caching"]["stale"]
        layer.invalidate("/api/Product/P3")
        with pytest.raises(httpx.ConnectError):
            await after.get("/api/Product/P3")
        layer.clear()
        with pytest.raises(httpx.ConnectError):
            await after.get("/api/Product/P4")
    finally:
        await after.close()


@pytest.mark.anyio
@pytest.mark.parametrize("directives", ["max-age=10, stale-if-error=600", "max-age=10, must-revalidate"])
async def test_rfc_mode_on_sqlite_answers_a_failed_origin_from_the_stale_entry(
        mode: str, directives: str, tmp_path: Path) -> None:
    """As on the other storages: within the response's own window, a variant by ``Vary`` answering only its
    own requests, never what the server said to revalidate."""
    dated = {"cache-control": directives, "vary": "Accept-Language", "date": formatdate(time.time() - 100, usegmt=True)}
    clock, origin = Clock(), Origin(dated)
    caller, layer = make(mode, origin, clock, mode="rfc", storage="sqlite", sqlite_path=str(tmp_path / "cache.db"))
    try:
        await caller.get("/r", headers={"Accept-Language": "de"})
        origin.failure = httpx.ConnectError("refused")
        if "must-revalidate" in directives:
            with pytest.raises(httpx.ConnectError):
                await caller.get("/r", headers={"Accept-Language": "de"})
            return
        stale = await caller.get("/r", headers={"Accept-Language": "de"})
        assert stale.json() == {"version": 1} and stale.extensions["caching"]["stale"]
        assert 100 <= int(stale.headers["age"]) < 110  # as old as its Date says (RFC 9111 §5.1)
        with pytest.raises(httpx.ConnectError):
            await caller.get("/r", headers={"Accept-Language": "en"})
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_stale_while_revalidate_on_sqlite(mode: str, cache_mode: str, tmp_path: Path) -> None:
    """hishel's SQLite path went to the origin first for an expired entry: the window did nothing, and every
    caller waited for the server. The layer reads the entry first there now, answers from it at once and
    refreshes it behind, through the storage."""
    clock = Clock()
    # rfc mode times entries by their headers, on the real clock: this one is 15 s old, fresh for 10
    origin = Origin({"cache-control": "max-age=10", "etag": '"v"', "date": formatdate(time.time() - 15, usegmt=True)}
                    if cache_mode == "rfc" else {})
    caller, layer = make(mode, origin, clock, mode=cache_mode, ttl=60, stale_while_revalidate=600, storage="sqlite",
                         sqlite_path=str(tmp_path / "cache.db"))
    try:
        assert (await caller.get("/a")).json() == {"version": 1}
        clock.now += 61  # past the ttl mode's freshness
        origin.version = 2
        quick = await caller.get("/a")
        assert quick.json() == {"version": 1} and quick.extensions["caching"]["stale"]
        assert "x-pywats-stored-at" not in quick.headers
        await wait_for(lambda: layer.stats()["refreshes"] == 1)
        refreshed = await caller.get("/a")
        assert refreshed.json() == {"version": 2} and refreshed.extensions["caching"]["from_cache"]
        assert layer.stats()["refresh_failures"] == 0
        if cache_mode == "ttl":  # (in rfc mode the refreshed answer is as old as its Date: refreshed again)
            assert origin.calls == 2
            clock.now += 61 + 600  # past the window: the caller waits for the server again
            origin.version = 3
            late = await caller.get("/a")
            assert late.json() == {"version": 3} and not late.extensions["caching"]["from_cache"]
    finally:
        await caller.close()


@pytest.mark.anyio
async def test_without_a_window_a_failure_is_the_callers(mode: str) -> None:
    clock, origin = Clock(), Origin()
    caller, _ = make(mode, origin, clock, ttl=60)
    await caller.get("/a")
    origin.failure = httpx.ConnectError("refused")
    clock.now += 61
    with pytest.raises(httpx.ConnectError):
        await caller.get("/a")
    await caller.close()


@pytest.mark.anyio
async def test_rfc_mode_honours_the_response_directives(mode: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "max-age=10, stale-if-error=100, stale-while-revalidate=20"})
    caller, layer = make(mode, origin, clock, mode="rfc")
    await caller.get("/r")
    clock.now += 15  # inside stale-while-revalidate: served at once, refreshed behind
    origin.version = 2
    quick = await caller.get("/r")
    assert quick.json() == {"version": 1} and quick.extensions["caching"]["stale"]
    await wait_for(lambda: layer.stats()["refreshes"] == 1)
    assert (await caller.get("/r")).json() == {"version": 2}
    clock.now += 50  # past max-age and swr, within stale-if-error
    origin.failure = httpx.ConnectError("refused")
    fallback = await caller.get("/r")
    assert fallback.json() == {"version": 2} and fallback.extensions["caching"]["stale"]
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("directives", ["must-revalidate", "no-cache",
                                        "must-revalidate, stale-if-error=600, stale-while-revalidate=60"])
@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_rfc_mode_never_serves_stale_what_the_server_said_to_revalidate(
        mode: str, directives: str, storage: str, request: pytest.FixtureRequest) -> None:
    """RFC 9111 §4.2.4: a response marked ``must-revalidate`` or ``no-cache`` is never served stale, whatever
    the configured windows (or the response's own) allow. Both were served stale: while refreshed behind
    the caller's back, and in place of the origin's error."""
    # The fleet's entries are timed by Redis's clock: a second passes for real there.
    max_age = 10 if storage == "memory" else 1
    clock, origin = Clock(), Origin({"cache-control": f"max-age={max_age}, {directives}", "etag": '"v1"'})
    shared = {"storage": "redis", "redis_url": request.getfixturevalue("redis_url")} if storage == "redis" else {}
    caller, layer = make(mode, origin, clock, mode="rfc", stale_if_error=600, stale_while_revalidate=60, **shared)
    path = f"/r/{mode}/{storage}/{len(directives)}/{time.monotonic_ns()}"

    async def past_max_age() -> None:  # and within every window
        clock.now += max_age * 1.5
        if storage == "redis":
            await asyncio.sleep(max_age * 1.5)

    try:
        await caller.get(path)
        await past_max_age()
        origin.version = 2
        answer = await caller.get(path)  # validated before it is used, not served while refreshed
        assert answer.json() == {"version": 2} and not answer.extensions["caching"].get("stale")
        await past_max_age()
        origin.failure = httpx.ConnectError("refused")
        with pytest.raises(httpx.ConnectError):
            await caller.get(path)
        origin.failure = 503
        assert (await caller.get(path)).status_code == 503
        assert layer.stats()["stale_served"] == 0
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.redis
async def test_rfc_mode_on_redis_answers_a_failed_origin_from_the_stale_entry(mode: str, redis_url: str) -> None:
    """In rfc mode on Redis neither window did anything: Redis dropped the entry at ``ttl`` (here before the
    window), and a failed revalidation reached the caller even within the window, the configured one or
    the response's own ``stale-if-error``."""
    configured, own = Origin({"cache-control": "max-age=1"}), Origin({"cache-control": "max-age=1, stale-if-error=600"})
    callers = [make(mode, origin, Clock(), mode="rfc", ttl=1, storage="redis", redis_url=redis_url, **window)[0]
               for origin, window in ((configured, {"stale_if_error": 600}), (own, {}))]
    paths = [f"/r/{mode}/{name}/{time.monotonic_ns()}" for name in ("configured", "own")]
    try:
        for caller, path in zip(callers, paths, strict=True):
            await caller.get(path)
        await asyncio.sleep(1.5)  # past max-age and ttl, on Redis's clock as on this one
        for origin in (configured, own):
            origin.version, origin.failure = 2, httpx.ConnectError("refused")
        for caller, path in zip(callers, paths, strict=True):
            stale = await caller.get(path)
            assert stale.json() == {"version": 1} and stale.extensions["caching"]["stale"] is True
        for origin in (configured, own):
            origin.failure = 503
        for caller, path in zip(callers, paths, strict=True):
            # known to be failing: answered at once, and refreshed behind (the refresh meets the 503 too)
            assert (await caller.get(path)).json() == {"version": 1}
            assert caller.transport.stats()["stale_served"] == 2
            await wait_for(lambda c=caller: c.transport.stats()["refreshes"] == 1)  # type: ignore[misc]
        for origin in (configured, own):
            origin.failure = None
        for caller, path in zip(callers, paths, strict=True):
            # The origin is back, and not known to be yet: answered at once, while a refresh hears it is back
            behind = await caller.get(path)
            assert behind.json() == {"version": 1} and behind.extensions["caching"]["stale"] is True
            await wait_for(lambda c=caller: c.transport.stats()["refreshes"] == 2)  # type: ignore[misc]
            fresh = await caller.get(path)
            assert fresh.json() == {"version": 2} and not fresh.extensions["caching"].get("stale")
    finally:
        for caller in callers:
            await caller.close()


class Validating(Origin):
    """Answers a conditional request for the version it holds with a 304."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("if-none-match") == f'"v{self.version}"' and self.failure is None:
            with self.lock:
                self.calls += 1
            return httpx.Response(304, headers={"etag": f'"v{self.version}"', **self.headers})
        response = super().__call__(request)
        response.headers["etag"] = f'"v{self.version}"'
        return response


@pytest.mark.anyio
@pytest.mark.redis
@pytest.mark.parametrize("changed", [True, False])
async def test_rfc_mode_on_redis_serves_stale_while_it_revalidates(mode: str, changed: bool, redis_url: str) -> None:
    """``stale_while_revalidate`` did nothing in rfc mode on Redis: each lookup past max-age waited for
    hishel's revalidation. Now the expired entry answers at once and one refresh behind it brings the new
    answer (``changed``) or the server's 304, after which the entry is fresh again for every station.

    The first answer is dated 50 s back, fresh for its last second: the refreshed entry is fresh for 51 s
    only if the undated 304 was dated on arrival, and however slow the machine, it stays so till the end."""
    origin = Validating({"cache-control": "max-age=51", "date": formatdate(time.time() - 50, usegmt=True)})
    caller, layer = make(mode, origin, Clock(), mode="rfc", storage="redis", redis_url=redis_url,
                         stale_while_revalidate=60)
    other, _ = make(mode, origin, Clock(), mode="rfc", storage="redis", redis_url=redis_url)
    path = f"/swr/{mode}/{changed}/{time.monotonic_ns()}"
    try:
        assert (await caller.get(path)).json() == {"version": 1}
        await asyncio.sleep(1.5)  # past max-age
        if changed:
            origin.version = 2
        origin.headers = {"cache-control": "max-age=51"}
        origin.gate = threading.Event()  # the refresh waits until the stale answer was given
        quick = await caller.get(path)
        assert quick.json() == {"version": 1} and quick.extensions["caching"]["stale"] is True
        origin.gate.set()
        await wait_for(lambda: layer.stats()["refreshes"] == 1)
        calls = origin.calls
        for station in (caller, other):  # the refreshed entry, fresh, for every station
            answer = await station.get(path)
            assert answer.json() == {"version": 2 if changed else 1}
            assert answer.extensions["caching"]["from_cache"] and not answer.extensions["caching"].get("stale")
        assert origin.calls == calls
    finally:
        await caller.close()
        await other.close()


@pytest.mark.anyio
async def test_stale_while_revalidate_refreshes_once_per_key(mode: str) -> None:
    clock, origin = Clock(), Origin()
    caller, layer = make(mode, origin, clock, ttl=10, stale_while_revalidate=30)
    await caller.get("/a")
    clock.now += 12
    origin.version = 2
    origin.gate = threading.Event()  # hold the refresh until every lookup was answered
    answers = [await caller.get("/a") for _ in range(5)]
    assert all(a.json() == {"version": 1} and a.extensions["caching"]["stale"] for a in answers)
    origin.gate.set()
    await wait_for(lambda: layer.stats()["refreshes"] == 1)
    assert origin.calls == 2  # one fetch, one refresh: not one per lookup
    fresh = await caller.get("/a")
    assert fresh.json() == {"version": 2} and not fresh.extensions["caching"].get("stale")
    clock.now += 41  # past the window: an ordinary miss again
    origin.version = 3
    assert (await caller.get("/a")).json() == {"version": 3}
    await caller.close()


@pytest.mark.anyio
async def test_a_burst_of_expired_keys_is_refreshed_a_few_at_a_time(mode: str) -> None:
    """Each background refresh ran at once on a thread (sync) or task (async) of its own: a burst of 40
    expired keys sent 40 refreshes to the origin together (and held 40 threads). They are served stale
    at once as before, and refreshed at most REFRESH_WORKERS at a time."""
    from pywats_transport.caching.refresher import REFRESH_WORKERS

    clock = Clock()
    seen = {"now": 0, "peak": 0, "calls": 0}
    lock = threading.Lock()

    def enter() -> None:
        with lock:
            seen["now"] += 1
            seen["calls"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])

    def leave() -> None:
        with lock:
            seen["now"] -= 1

    def sync_origin(request: httpx.Request) -> httpx.Response:
        enter()
        time.sleep(0.02)
        leave()
        return httpx.Response(200, json={"path": request.url.path})

    async def async_origin(request: httpx.Request) -> httpx.Response:
        enter()
        await asyncio.sleep(0.02)
        leave()
        return httpx.Response(200, json={"path": request.url.path})

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    origin = sync_origin if mode == "sync" else async_origin
    layer = cls(httpx.MockTransport(origin), clock=clock, mode="ttl", ttl=10, stale_while_revalidate=60)
    caller = Caller(mode, layer)
    try:
        for i in range(40):
            await caller.get(f"/k/{i}")
        clock.now += 12
        seen["peak"] = 0
        answers = [await caller.get(f"/k/{i}") for i in range(40)]
        assert all(a.extensions["caching"].get("stale") for a in answers)
        await wait_for(lambda: layer.stats()["refreshes"] == 40)
        assert seen["calls"] == 80 and seen["peak"] <= REFRESH_WORKERS
    finally:
        await caller.close()


@pytest.mark.anyio
async def test_a_failed_refresh_keeps_the_stale_entry() -> None:
    clock, origin = Clock(), Origin()
    caller, layer = make("async", origin, clock, ttl=10, stale_while_revalidate=30)
    await caller.get("/a")
    clock.now += 12
    origin.failure = httpx.ConnectError("refused")
    assert (await caller.get("/a")).json() == {"version": 1}
    await wait_for(lambda: layer.stats()["refresh_failures"] == 1)
    assert (await caller.get("/a")).extensions["caching"]["stale"]
    await caller.close()


@pytest.mark.anyio
async def test_closing_the_async_layer_cancels_its_refreshes() -> None:
    clock = Clock()
    started = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        if started.is_set() or clock.now > 1_000_000.0:
            started.set()
            await asyncio.sleep(60)
        return httpx.Response(200, json={})

    layer = AsyncCacheLayer(httpx.MockTransport(slow), clock=clock, mode="ttl", ttl=10, stale_while_revalidate=30)
    async with httpx.AsyncClient(transport=layer, base_url="http://t") as client:
        await client.get("/a")
        clock.now += 12
        await client.get("/a")
        await asyncio.wait_for(started.wait(), 5)
        assert len(layer._background) == 1
    assert not layer._background  # cancelled and awaited by aclose


class Blocking(Origin):
    """While its gate is closed, a call waits at it (an async client's, without holding its event loop);
    ``blocked`` counts the calls waiting there now."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None and not self.gate.is_set():
            with self.lock:
                self.blocked += 1
            try:
                return super().__call__(request)
            finally:
                with self.lock:
                    self.blocked -= 1
        return super().__call__(request)

    async def answer(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None and not self.gate.is_set():
            self.blocked += 1
            try:
                deadline = time.monotonic() + 5  # as long as a sync call waits at the gate
                while not self.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            finally:
                self.blocked -= 1
        return super().__call__(request)


@pytest.mark.anyio
@pytest.mark.parametrize("storage", ["memory", "sqlite", "redis"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_while_the_origin_fails_a_lookup_is_answered_at_once_and_refreshed_behind(
        mode: str, storage: str, cache_mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every lookup of an outage waited for the origin to fail again before its stale answer: a timeout
    and the retries' backoff each time (90 s a lookup when the server's host stopped answering, with the WATS
    client's 30 s timeout and 3 attempts). Once a fetch of an origin failed and was answered stale, a lookup
    with an entry in its stale-if-error window is answered from it at once, and refreshed behind; the first
    answer from the origin ends that."""
    settings: dict[str, Any] = {"mode": cache_mode, "storage": storage, "stale_if_error": 600}
    origin = Blocking()
    if cache_mode == "rfc":
        origin.headers = {"cache-control": "max-age=1", "date": formatdate(time.time(), usegmt=True)}
    if storage == "redis":
        settings.update(redis_url=request.getfixturevalue("redis_url"), ttl=1)
    else:
        settings.update(sqlite_path=str(tmp_path / "cache.db"), ttl=1)
    clock = Clock()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(origin if mode == "sync" else origin.answer), clock=clock, **settings)
    caller = Caller(mode, layer)
    base = f"/outage/{mode}/{storage}/{cache_mode}/{time.monotonic_ns()}"
    try:
        for path in ("/a", "/b"):
            assert (await caller.get(base + path)).json() == {"version": 1}
        clock.now += 2
        await asyncio.sleep(1.2)  # past max-age, and on Redis's clock past the ttl
        origin.failure = httpx.ConnectError("refused")
        first = await caller.get(base + "/a")  # finds the origin failing: waited for it, as before
        assert first.json() == {"version": 1} and first.extensions["caching"]["stale"]
        origin.gate = threading.Event()  # the origin stops answering at all: a call waits here
        quick = await caller.get(base + "/b")
        assert quick.json() == {"version": 1} and quick.extensions["caching"]["stale"]
        await wait_for(lambda: origin.blocked == 1)  # the refresh; before: 0, the caller itself had waited there
        origin.failure, origin.version = None, 2
        origin.gate.set()  # back: the refresh behind the stale answer is the first to hear it
        await wait_for(lambda: layer.stats()["refreshes"] >= 1)
        again = await caller.get(base + "/b")
        assert again.json() == {"version": 2} and not again.extensions["caching"].get("stale")
        back = await caller.get(base + "/a")  # the origin answers again: a lookup waits for it, as it did
        assert back.json() == {"version": 2} and not back.extensions["caching"].get("stale")
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("heard", ["bypass", "write"])
async def test_any_answer_from_the_origin_ends_its_failing(mode: str, heard: str) -> None:
    """A request past the cache (the client service's ping) or a write that the origin answered tells
    that it is back, as a lookup's answer does: the next expired lookup waits for the origin again."""
    clock, origin = Clock(), Origin()
    caller, layer = make(mode, origin, clock, ttl=60, stale_if_error=600)
    try:
        for path in ("/a", "/b"):
            await caller.get(path)
        clock.now += 61
        origin.failure = httpx.ConnectError("refused")
        assert (await caller.get("/a")).extensions["caching"]["stale"]
        origin.failure, origin.version = None, 2
        if heard == "bypass":
            await caller.get("/ping", extensions={"cache": {"bypass": True}})
        else:
            await caller.request("POST", "/reports", json={})
        answer = await caller.get("/b")  # before: answered stale, the origin taken for failing still
        assert answer.json() == {"version": 2} and not answer.extensions["caching"].get("stale")
    finally:
        await caller.close()
