from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pywats_transport import ConfigError, build_async_transport, build_transport
from pywats_transport._server import BackgroundServer
from pywats_transport.config import CacheSettings
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller, Clock, Counter

MODES = ["sync", "async"]


def make(kind: str, handler: Any, clock: Clock | None = None, **settings: Any) -> tuple[Caller, Any]:
    cls = CacheLayer if kind == "sync" else AsyncCacheLayer
    settings.setdefault("mode", "ttl")  # the server in most tests sends no freshness headers
    layer = cls(httpx.MockTransport(handler), clock=clock or Clock(), **settings)
    return Caller(kind, layer), layer


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_the_bodies_kept_are_bounded_in_bytes(mode: str, cache_mode: str) -> None:
    """Entries alone bound the memory storage: 1000 entries of up to 10 MiB each could hold 10 GB."""
    def handler(request: httpx.Request) -> httpx.Response:
        size = int(request.url.path.rsplit("/", 1)[1])
        return httpx.Response(200, content=b"x" * size, headers={"Cache-Control": "max-age=600"})

    caller, layer = make(mode, handler, mode=cache_mode, max_size=100, max_bytes=2500)
    for name in ("a", "b"):
        await caller.get(f"/{name}/1000")
    assert layer.stats()["body_bytes"] == 2000 and layer.stats()["entries"] == 2
    await caller.get("/a/1000")  # the most recent again: /b is the oldest
    await caller.get("/c/1000")  # 3000 bytes: /b goes
    stats = layer.stats()
    assert (stats["body_bytes"], stats["entries"], stats["evictions"]) == (2000, 2, 1)
    assert (await caller.get("/a/1000")).extensions["caching"]["from_cache"]
    assert not (await caller.get("/b/1000")).extensions["caching"]["from_cache"]  # stored again, /c goes
    big = await caller.get("/big/3000")  # over the bound alone: answered, not kept, nothing pushed out
    assert big.content == b"x" * 3000 and layer.stats()["body_bytes"] == 2000
    assert not (await caller.get("/big/3000")).extensions["caching"]["from_cache"]
    assert (await caller.get("/b/1000")).extensions["caching"]["from_cache"]
    layer.clear()
    assert layer.stats()["body_bytes"] == 0
    await caller.close()


def test_the_byte_bound_is_on_by_default_and_may_be_lifted() -> None:
    assert CacheSettings().max_bytes == 256 * 1024 * 1024
    assert CacheSettings(max_bytes=None).max_bytes is None
    with pytest.raises(Exception, match="max_bytes"):
        CacheSettings(max_bytes=0)


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_hit_miss_and_expiry(mode: str, cache_mode: str) -> None:
    clock, server = Clock(), Counter(headers={"Cache-Control": "max-age=600"})
    caller, layer = make(mode, server, clock, ttl=60, mode=cache_mode)
    first = await caller.get("/a")
    assert first.extensions["caching"]["from_cache"] is False
    second = await caller.get("/a")
    assert second.extensions["caching"]["from_cache"] is True and second.json() == first.json()
    assert server.count == 1
    clock.now += 61
    assert (await caller.get("/a")).json()["n"] == 2
    stats = layer.stats()
    assert (stats["hits"], stats["misses"], stats["stores"], stats["hit_rate"]) == (1, 2, 2, pytest.approx(1 / 3, abs=1e-3))
    await caller.close()


@pytest.mark.anyio
async def test_lru_bound_is_exact(mode: str) -> None:
    server = Counter()
    caller, layer = make(mode, server, max_size=3)
    for i in range(3):
        await caller.get(f"/p/{i}")
    await caller.get("/p/0")  # /p/0 becomes most recent; /p/1 is the oldest
    await caller.get("/p/3")  # evicts /p/1
    assert len(layer.storage) == 3 and layer.stats()["evictions"] == 1
    before = server.count
    await caller.get("/p/0")
    await caller.get("/p/2")
    await caller.get("/p/3")
    assert server.count == before
    await caller.get("/p/1")
    assert server.count == before + 1
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_successful_write_invalidates_url_and_prefix(mode: str, cache_mode: str, method: str) -> None:
    server = Counter(headers={"Cache-Control": "max-age=600"})
    caller, layer = make(mode, server, mode=cache_mode)
    for url in ("/api/Product/PN-1", "/api/Product/Query?x=1", "/api/Productivity", "/api/Asset/A1"):
        await caller.get(url)
    await caller.request(method, "/api/Product")
    n = server.count
    await caller.get("/api/Product/PN-1")
    await caller.get("/api/Product/Query?x=1")
    assert server.count == n + 2
    await caller.get("/api/Productivity")  # a sibling path, not under the prefix
    await caller.get("/api/Asset/A1")
    assert server.count == n + 2
    assert layer.stats()["invalidations"] == 2
    await caller.close()


@pytest.mark.anyio
async def test_failed_write_invalidates_nothing(mode: str) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if request.method == "PUT":
            return httpx.Response(500)
        if request.method == "DELETE":
            raise httpx.ConnectError("down", request=request)
        return httpx.Response(200, json={"n": calls["n"]})

    caller, layer = make(mode, handler)
    await caller.get("/api/Product/1")
    assert (await caller.request("PUT", "/api/Product")).status_code == 500
    with pytest.raises(httpx.ConnectError):
        await caller.request("DELETE", "/api/Product/1")
    assert (await caller.get("/api/Product/1")).extensions["caching"]["from_cache"] is True
    assert layer.stats()["invalidations"] == 0
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
async def test_a_write_left_unanswered_after_it_was_sent_invalidates(mode: str, error: type[Exception]) -> None:
    """The server may have applied a write whose answer never came (a read timeout, a dropped connection): its
    entries are dropped as for a successful one, so no read returns the pre-write state. They were kept."""
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if request.method == "PUT":
            raise error("no answer", request=request)
        return httpx.Response(200, json={"n": calls["n"]})

    caller, layer = make(mode, handler)
    await caller.get("/api/Product/1")
    with pytest.raises(error):
        await caller.request("PUT", "/api/Product/1")
    after = await caller.get("/api/Product/1")
    assert after.extensions["caching"]["from_cache"] is False and after.json() == {"n": 3}
    assert layer.stats()["invalidations"] == 1
    await caller.close()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_a_sync_write_interrupted_while_it_waits_invalidates(interruption: type[BaseException]) -> None:
    """Ctrl-C (or a signal handler's ``SystemExit``) while a PUT waits for its answer: the server may have
    applied it, so its entries go as for a successful one. They were kept, and read until they expired."""
    server = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        answer = server(request)
        if request.method == "PUT":
            raise interruption()  # applied; the caller stopped waiting
        return answer

    layer = CacheLayer(httpx.MockTransport(handler), mode="ttl", clock=Clock())
    with httpx.Client(transport=layer, base_url="http://test") as client:
        client.get("/api/Product/1")
        assert client.get("/api/Product/1").extensions["caching"]["from_cache"]
        with pytest.raises(interruption):
            client.put("/api/Product/1")
        after = client.get("/api/Product/1")
    assert after.extensions["caching"]["from_cache"] is False and after.json()["n"] == 3
    assert layer.stats()["invalidations"] == 1


@pytest.mark.anyio
async def test_a_relative_prefix_is_refused_rather_than_dropping_nothing(mode: str) -> None:
    """Stored paths all start at the root: ``invalidate("api/Product")`` matched nothing, returned 0 and
    left every entry to be served, with nothing to tell the caller why."""
    server = Counter()
    caller, layer = make(mode, server)
    await caller.get("/api/Product/1")
    with pytest.raises(ValueError, match="'api/Product' is a relative path; give it from the root"):
        layer.invalidate("api/Product")
    assert (await caller.get("/api/Product/1")).extensions["caching"]["from_cache"]
    assert layer.invalidate("/api/Product") == 1
    await caller.close()


@pytest.mark.anyio
async def test_explicit_invalidate_and_clear(mode: str) -> None:
    server = Counter()
    caller, layer = make(mode, server)
    for url in ("/api/Product/1", "/api/Product/2", "/api/Asset/1"):
        await caller.get(url)
    assert layer.invalidate("/api/Product") == 2
    assert len(layer.storage) == 1
    assert layer.invalidate("http://test/api/Asset") == 1
    await caller.get("/api/Asset/1")
    assert layer.clear() == 1 and len(layer.storage) == 0
    await caller.close()


@pytest.mark.anyio
async def test_credentials_never_share_a_response(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"who": request.headers.get("authorization") or request.headers.get("x-api-key")})

    caplog.set_level(logging.DEBUG)
    caller, layer = make(mode, handler)
    alice = (await caller.get("/me", headers={"Authorization": "Basic alice-secret"})).json()
    bob = (await caller.get("/me", headers={"Authorization": "Basic bob-secret"})).json()
    anon = (await caller.get("/me")).json()
    key = (await caller.get("/me", headers={"X-Api-Key": "k-secret"})).json()
    again = await caller.get("/me", headers={"Authorization": "Basic alice-secret"})
    assert (alice["who"], bob["who"], anon["who"], key["who"]) == ("Basic alice-secret", "Basic bob-secret", None, "k-secret")
    assert again.extensions["caching"]["from_cache"] and again.json() == alice
    secrets = ("alice-secret", "bob-secret", "k-secret")
    keys = list(layer.storage._core._by_key)
    assert len(keys) == 4 and not any(s in k for s in secrets for k in keys)
    assert not any(s in str(layer.stats()) or s in caplog.text for s in secrets)
    await caller.close()


@pytest.mark.anyio
async def test_request_controls(mode: str) -> None:
    clock, server = Clock(), Counter()
    caller, layer = make(mode, server, clock, ttl=100)
    await caller.get("/a")
    assert (await caller.get("/a", extensions={"cache": {"bypass": True}})).json()["n"] == 2
    assert (await caller.get("/a", headers={"Cache-Control": "no-store"})).json()["n"] == 3
    assert (await caller.get("/a")).json()["n"] == 1  # bypasses neither read nor wrote
    assert (await caller.get("/a", extensions={"cache": {"refresh": True}})).json()["n"] == 4
    assert (await caller.get("/a")).json()["n"] == 4
    assert (await caller.get("/a", headers={"Cache-Control": "no-cache"})).json()["n"] == 5
    # max-age=0 (a browser's reload) asks for an answer no older than now, as no-cache does: it was served
    # from the cache; a max-age the entry is within still is
    assert (await caller.get("/a", headers={"Cache-Control": "max-age=0"})).json()["n"] == 6
    assert (await caller.get("/a", headers={"Cache-Control": "max-age=600"})).json()["n"] == 6
    await caller.get("/short", extensions={"cache": {"ttl": 5}})
    clock.now += 6
    assert (await caller.get("/short")).extensions["caching"]["from_cache"] is False
    assert (await caller.get("/a")).json()["n"] == 6
    assert layer.stats()["bypasses"] == 2
    with pytest.raises(ValueError, match="cache.ttl must be a number >= 0"):
        await caller.get("/a", extensions={"cache": {"ttl": -1}})
    await caller.close()


@pytest.mark.anyio
async def test_only_2xx_get_head_cached(mode: str) -> None:
    server = Counter(status=404)
    caller, layer = make(mode, server)
    await caller.get("/missing")
    await caller.get("/missing")
    assert server.count == 2 and layer.stats()["stores"] == 0
    await caller.close()


@pytest.mark.anyio
async def test_concurrent_identical_requests_coalesce_into_one() -> None:
    server = Counter()

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return server(request)

    layer = AsyncCacheLayer(httpx.MockTransport(slow), mode="ttl")
    async with httpx.AsyncClient(transport=layer, base_url="http://t") as client:
        responses = await asyncio.gather(*(client.get("/same") for _ in range(20)))
    assert all(r.status_code == 200 and r.json() == {"n": 1, "path": "/same"} for r in responses)
    assert server.count == 1
    stats = layer.stats()
    assert (stats["hits"], stats["misses"]) == (19, 1)


@pytest.mark.anyio
async def test_without_coalescing_concurrent_requests_all_miss() -> None:
    server = Counter()

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return server(request)

    layer = AsyncCacheLayer(httpx.MockTransport(slow), coalesce=False, mode="ttl")
    async with httpx.AsyncClient(transport=layer, base_url="http://t") as client:
        await asyncio.gather(*(client.get("/same") for _ in range(5)))
    assert server.count == 5


def test_concurrent_threads_coalesce_into_one() -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = Counter()

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)
        return server(request)

    layer = CacheLayer(httpx.MockTransport(slow), mode="ttl")
    with httpx.Client(transport=layer, base_url="http://t") as client, ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: client.get("/same").json(), range(8)))
    assert bodies == [{"n": 1, "path": "/same"}] * 8 and server.count == 1


class Streamed(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives as a stream, with no length announced (MockTransport's ``json=`` bodies arrive
    read already)."""

    def __iter__(self) -> Any:
        yield b'{"ok": 1}'

    async def __aiter__(self) -> Any:
        yield b'{"ok": 1}'


def streamed(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, stream=Streamed(), headers={"cache-control": "max-age=60"})


async def send_streamed(caller: Caller, path: str) -> httpx.Response:
    request = caller.client.build_request("GET", path)
    if caller.mode == "sync":
        return caller.client.send(request, stream=True)  # type: ignore[no-any-return]
    return await caller.client.send(request, stream=True)  # type: ignore[no-any-return]


async def timed_get(caller: Caller, path: str) -> float:
    started = time.monotonic()
    assert (await caller.get(path)).json() == {"ok": 1}
    return time.monotonic() - started


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_an_answer_dropped_unread_holds_up_no_later_lookup(mode: str, cache_mode: str) -> None:
    """A caller that dropped a streamed answer unread and unclosed (an exception between ``send(stream=True)``
    and the read) left its fetch in flight for the layer's lifetime: each later miss of the URL, one per
    expiry, waited the whole ``coalesce_timeout`` for it (3.0 s of 3), then fetched after all."""
    clock = Clock()
    caller, _ = make(mode, streamed, clock, mode=cache_mode, ttl=60, coalesce_timeout=3)
    await send_streamed(caller, "/x")  # and dropped
    gc.collect()
    assert await timed_get(caller, "/x") < 1
    clock.now += 61  # expired: a miss again
    assert await timed_get(caller, "/x") < 1
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_an_answer_held_unread_holds_up_its_url_once_at_most(mode: str, cache_mode: str) -> None:
    """A caller still holding a streamed answer unread kept its fetch in flight: the next miss waited
    ``coalesce_timeout`` for it, and so did every miss after each expiry, for as long as it held it. A
    fetch in flight for longer than that is no longer waited for."""
    clock = Clock()
    caller, _ = make(mode, streamed, clock, mode=cache_mode, ttl=60, coalesce_timeout=1.5)
    held = await send_streamed(caller, "/x")
    await timed_get(caller, "/x")  # waits for it, up to the timeout
    clock.now += 61
    assert await timed_get(caller, "/x") < 0.75  # not another 1.5 s
    assert held.read() == b'{"ok": 1}' if mode == "sync" else await held.aread() == b'{"ok": 1}'
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_when_the_first_fetch_stores_nothing_one_follower_fetches_for_the_others(mode: str, storage: str,
                                                                                       tmp_path: Path) -> None:
    """The answer the waiting lookups were promised never came (its caller dropped it unread): each of
    them went to the server, ten requests where one does (with SQLite, until this session, still ten)."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) > 1:
            time.sleep(0.05)  # a server takes its time
        return streamed(request)

    async def async_handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) > 1:
            await asyncio.sleep(0.05)
        return streamed(request)

    caller, _ = make(mode, handler if mode == "sync" else async_handler, mode="rfc", coalesce_timeout=5,
                     storage=storage, sqlite_path=str(tmp_path / "c.db"))
    first = await send_streamed(caller, "/x")
    if mode == "sync":
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(10) as pool:
            waiting = [pool.submit(caller.client.get, "/x") for _ in range(10)]
            time.sleep(0.2)  # all ten wait for the first
            del first
            gc.collect()
            answers = [w.result(timeout=5) for w in waiting]
    else:
        waiting = [asyncio.ensure_future(caller.get("/x")) for _ in range(10)]
        await asyncio.sleep(0.2)
        del first
        gc.collect()
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert all(a.json() == {"ok": 1} for a in answers)
    assert len(calls) == 2  # the dropped one, and one for the ten
    await caller.close()


def test_a_fetchs_followers_learn_whether_it_left_them_anything() -> None:
    """Followers on hishel's path (SQLite) fetch again, one for all, only when the fetch they waited for
    left nothing: an answer stored and read to its end, a hit, or a download no storage keeps settle it;
    a failure, an answer not stored, or one closed before its end do not."""
    import threading

    from pywats_transport.caching.coalesce import Flights

    def fetch(flights: Flights, response: httpx.Response | None, read: bool | None) -> bool:
        leader, follower = flights.join("k"), flights.join("k")
        assert leader.leader and not follower.leader
        if response is None:
            flights.land(leader)  # the fetch failed
        else:
            answer = flights.land_when_read(leader, response)
            if read is not None:
                answer.read() if read else answer.close()
        assert follower.event.is_set()
        return follower.settled

    def answer(stored: bool, from_cache: bool = False, size: int = 10) -> httpx.Response:
        response = httpx.Response(200, stream=httpx.ByteStream(b"x" * size), headers={"content-length": str(size)})
        response.extensions["caching"] = {"stored": stored, "from_cache": from_cache}
        return response

    flights = Flights(threading.Event)
    assert fetch(flights, answer(stored=True), read=True) is True
    assert fetch(flights, answer(stored=True), read=False) is False  # closed before its end: nothing kept
    assert fetch(flights, answer(stored=False), read=None) is False
    assert fetch(flights, answer(stored=False, from_cache=True), read=None) is True
    assert fetch(flights, answer(stored=True, size=11 * 1024 * 1024), read=None) is True  # a download
    assert fetch(flights, None, read=None) is False


@pytest.mark.anyio
async def test_leader_failure_releases_followers(mode: str) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"n": calls["n"]})

    caller, layer = make(mode, handler)
    with pytest.raises(httpx.ConnectError):
        await caller.get("/x")
    started = time.monotonic()
    assert (await caller.get("/x")).json() == {"n": 2}
    assert time.monotonic() - started < 1.0  # no flight was left behind to wait for
    await caller.close()


def test_threads_share_one_memory_storage_safely() -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = Counter()
    layer = CacheLayer(httpx.MockTransport(server), max_size=50, mode="ttl")
    with httpx.Client(transport=layer, base_url="http://t") as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: client.get(f"/t/{i % 80}").json()["path"], range(800)))
    assert results == [f"/t/{i % 80}" for i in range(800)]
    assert len(layer.storage) == 50


# -- RFC revalidation against a real loopback server --------------------------------------------

def _etag_app() -> tuple[Starlette, dict[str, int]]:
    seen = {"200": 0, "304": 0}

    async def item(request: Request) -> Response:
        if request.headers.get("if-none-match") == '"v1"':
            seen["304"] += 1
            return Response(status_code=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=0"})
        seen["200"] += 1
        return JSONResponse({"v": 1}, headers={"ETag": '"v1"', "Cache-Control": "max-age=0"})

    return Starlette(routes=[Route("/item", item)]), seen


@pytest.mark.anyio
async def test_rfc_revalidation_with_304_from_loopback(mode: str) -> None:
    app, seen = _etag_app()
    with BackgroundServer(app) as srv:
        cls = CacheLayer if mode == "sync" else AsyncCacheLayer
        inner = httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport()
        caller = Caller(mode, cls(inner, mode="rfc"), base_url=srv.url)
        assert (await caller.get("/item")).json() == {"v": 1}
        second = await caller.get("/item")
        assert second.json() == {"v": 1}
        assert second.extensions["caching"]["revalidated"] is True
        assert seen == {"200": 1, "304": 1}
        await caller.close()


# -- other storages -----------------------------------------------------------------------------

@pytest.mark.anyio
async def test_sqlite_storage_hits_and_invalidates(mode: str, tmp_path: Path) -> None:
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="sqlite", sqlite_path=str(tmp_path / "c.db"))
    caller = Caller(mode, layer)
    await caller.get("/api/Product/1")
    assert (await caller.get("/api/Product/1")).extensions["caching"]["from_cache"]
    await caller.request("PUT", "/api/Product")
    assert (await caller.get("/api/Product/1")).extensions["caching"]["from_cache"] is False
    assert server.count == 3
    await caller.close()


@pytest.mark.anyio
async def test_max_bytes_bounds_the_sqlite_file_too(mode: str, tmp_path: Path) -> None:
    """``max_bytes`` bounded the memory storage alone: the SQLite file grew to hishel's own default of
    1 GiB whatever it said (6.3 MB for 300 answers of 20 kB against a bound of 1 MB)."""
    import os
    import sqlite3

    body = os.urandom(20_000)
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    path = tmp_path / "bounded.db"
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200, content=body)), mode="ttl", storage="sqlite",
                sqlite_path=str(path), max_bytes=1_000_000)
    caller = Caller(mode, layer)
    for i in range(300):
        assert len((await caller.get(f"/file/{i}")).content) == 20_000  # each answered, whether kept or not
    assert (await caller.get("/file/0")).extensions["caching"]["from_cache"]  # the first ones are kept
    await caller.close()
    with sqlite3.connect(path) as db:
        used = db.execute("SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), "
                          "pragma_freelist_count(), pragma_page_size()").fetchone()[0]
    assert used <= 1_100_000


@pytest.mark.anyio
@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
async def test_the_sqlite_file_is_readable_by_its_owner_only(mode: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The file holds the answers and the requests' headers (a token among them): it was left readable by
    every user of the machine (0644 under the usual umask)."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    left_open = tmp_path / "old.db"
    left_open.touch(mode=0o644)
    left_open.chmod(0o644)  # as an earlier run left it
    monkeypatch.chdir(tmp_path)
    for sqlite_path, made in ((str(tmp_path / "new.db"), tmp_path / "new.db"), (str(left_open), left_open),
                              ("bare.db", tmp_path / ".cache" / "hishel" / "bare.db")):
        caller = Caller(mode, cls(httpx.MockTransport(Counter()), mode="ttl", storage="sqlite", sqlite_path=sqlite_path))
        await caller.get("/x", headers={"Authorization": "Bearer tok-1"})
        assert (await caller.get("/x", headers={"Authorization": "Bearer tok-1"})).extensions["caching"]["from_cache"]
        await caller.close()
        assert made.stat().st_mode & 0o777 == 0o600, sqlite_path


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_a_sqlite_path_that_cannot_be_used_is_refused_when_the_stack_is_built(mode: str, tmp_path: Path,
                                                                              where: str) -> None:
    """Before, the stack was built and every request answered uncached, each with two tracebacks logged by
    hishel ("could not read entries", "could not store entry"), and said ``stored: True``."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder.db").mkdir()
    path = tmp_path / "a-file" / "c.db" if where == "under a file" else tmp_path / "a-folder.db"
    build = build_transport if mode == "sync" else build_async_transport
    with pytest.raises(ConfigError, match=rf"cache\.sqlite_path '{re.escape(str(path))}' cannot be used: "):
        build(inner=httpx.MockTransport(Counter()), cache={"storage": "sqlite", "sqlite_path": str(path)})


@pytest.mark.anyio
async def test_storage_failure_falls_back_to_network(mode: str, tmp_path: Path) -> None:
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    db = tmp_path / "c.db"
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="sqlite", sqlite_path=str(db))
    caller = Caller(mode, layer)
    await caller.get("/x")
    # Break the database under the storage: every further storage call fails.
    if mode == "sync":
        layer.storage.close()
    else:
        await layer.storage.close()
    r1 = await caller.get("/x")
    r2 = await caller.get("/y")
    assert r1.status_code == r2.status_code == 200 and server.count == 3
    assert layer.stats()["storage_errors"] >= 2
    await caller.close()


def test_a_storage_failure_is_logged_without_the_password_its_message_carries(caplog: pytest.LogCaptureFixture) -> None:
    """The first failure of each kind is logged with its message, which a storage may fill with the URL
    it connects to, password and all."""
    from hishel import BaseStorage

    from pywats_transport.caching.health import FAILURES

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("cannot reach https://cache:pw-s3cret@store.example:7000/db")

    class Unreachable(BaseStorage):
        create_entry = get_entries = remove_entry = update_headers = unreachable

    FAILURES._seen.discard(("escaped", "ConnectionRefusedError"))
    server = Counter()
    with caplog.at_level(logging.ERROR, logger="pywats_transport.cache"), \
            httpx.Client(transport=CacheLayer(httpx.MockTransport(server), mode="rfc", backend=Unreachable()),
                         base_url="http://t") as client:
        assert client.get("/x").status_code == 200 and server.count == 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "ConnectionRefusedError" in logged and "store.example" in logged and "pw-s3cret" not in logged


# -- redis: a real redis-server on loopback -----------------------------------------------------

@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_storage_hits_invalidates_and_isolates(mode: str, redis_url: str) -> None:
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url)
    caller = Caller(mode, layer)
    path = f"/api/Product/{mode}"
    await caller.get(path)
    assert (await caller.get(path)).extensions["caching"]["from_cache"]
    assert not (await caller.get(path, headers={"Authorization": "Basic other"})).extensions["caching"]["from_cache"]
    await caller.request("POST", "/api/Product")
    assert not (await caller.get(path)).extensions["caching"]["from_cache"]
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(("control", "said"), [({"ttl_seconds": 5}, "unknown key 'ttl_seconds'; allowed keys: "
                                                "bypass, invalidates, refresh, ttl"),
                                               ("bypass", "must be a dict with keys among bypass, invalidates")])
async def test_a_misspelt_cache_extension_is_refused_by_name(mode: str, method: str, control: Any, said: str) -> None:
    """It did nothing (a GET cached for the default TTL, not the one asked), or failed inside the layer
    with an AttributeError."""
    server = Counter()
    caller, _ = make(mode, server)
    with pytest.raises(ValueError, match=f"request extension cache.*{said}"):
        await caller.request(method, "/api/Product/1", extensions={"cache": control})
    assert server.count == 0
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("invalidates", ["/api/Report", ["http://"], [5], ["api/Report"]])
async def test_a_write_naming_prefixes_wrongly_is_refused_before_it_is_sent(mode: str, invalidates: Any) -> None:
    """A bare string was read a character at a time: its "/" dropped every entry of the origin, after the
    write had gone through."""
    server = Counter()
    caller, layer = make(mode, server)
    await caller.get("/api/Product/1")
    with pytest.raises(ValueError, match="cache.invalidates"):
        await caller.request("POST", "/api/Report", extensions={"cache": {"invalidates": invalidates}})
    assert server.count == 1  # the write was not sent
    assert (await caller.get("/api/Product/1")).extensions["caching"]["from_cache"]
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+cluster://127.0.0.1:{port}"])
async def test_redis_down_falls_back_to_network(mode: str, url: str) -> None:
    """Down from the start, a server or a cluster: the layer is built, and the network answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=url.format(port=port),
                near_cache=True)
    caller = Caller(mode, layer)
    assert (await caller.get("/x")).status_code == 200
    assert (await caller.get("/x")).status_code == 200
    assert server.count == 2 and layer.stats()["storage_errors"] >= 1
    await caller.close()


def test_settings_validation_names_field() -> None:
    with pytest.raises(Exception, match="max_size"):
        CacheSettings(max_size=0)


@pytest.mark.anyio
async def test_write_may_name_related_prefixes_to_invalidate(mode: str) -> None:
    server = Counter()
    caller, layer = make(mode, server)
    await caller.get("/api/Report/Query/Header?top=5")
    await caller.get("/api/Asset/1")
    await caller.request("POST", "/api/Report/WSJF", extensions={"cache": {"invalidates": ["/api/Report"]}})
    n = server.count
    await caller.get("/api/Report/Query/Header?top=5")
    await caller.get("/api/Asset/1")
    assert server.count == n + 1
    await caller.close()


@pytest.mark.anyio
async def test_the_invalidation_index_is_bounded_by_max_size(mode: str) -> None:
    clock = Clock()
    caller, layer = make(mode, Counter(), clock, max_size=100, ttl=3600)
    for i in range(2000):
        await caller.get(f"/api/Product/P{i}")
    assert len(layer.storage) == 100 and len(layer.policy._index) <= 100
    assert layer.invalidate("/api/Product") == 100  # what is left is still found by prefix
    clock.now += 3601
    await caller.get("/api/Product/P1")
    await caller.get("/api/Product/P1")
    assert len(layer.policy._index) == 1
    await caller.close()


def test_a_hits_headers_follow_an_entrys_new_headers() -> None:
    """A hit's headers are built once per entry; a 304 that replaces them is seen by the next hit."""
    from hishel import Request as HishelRequest

    from pywats_transport.caching.memory import MemoryStorage, Record

    storage = MemoryStorage(max_entries=10, default_ttl=60)
    record = Record(1, "k", HishelRequest("GET", "http://t/r"), 200, None, b"{}", None, None, None,
                    [(b"etag", b'"v1"'), (b"x-version", b"1")])
    first = record.response_headers()
    assert first["x-version"] == "1" and record.response_headers() is first  # built once
    storage.refresh(record, [(b"etag", b'"v1"'), (b"x-version", b"2")], fresh_for=60, age=0)
    assert record.response_headers()["x-version"] == "2"
    response = httpx.Response(200, headers=record.response_headers())
    response.headers["x-added"] = "by the caller"
    assert "x-added" not in record.response_headers()  # a response holds a copy


def test_the_byte_count_follows_every_way_an_entry_goes() -> None:
    """Stores, variant replacements, expiry, eviction by count and by bytes, drops and clears, in a random
    order: the count the byte bound reads is always the bodies' sum."""
    import random

    from pywats_transport.caching.memory import MemoryStorage

    clock, rng = Clock(), random.Random(7)
    storage = MemoryStorage(max_entries=20, max_bytes=5000, default_ttl=10, clock=clock)
    for _ in range(3000):
        key, op = f"k{rng.randrange(30)}", rng.random()
        if op < 0.5:
            storage.store(key, "GET", f"http://test/{key}", 200, [], b"x" * rng.randrange(800), rng.choice((1, 10, None)),
                          vary=rng.choice((None, (("accept", "a"),), (("accept", "b"),))))
        elif op < 0.65:
            storage._core.lookup(key)
        elif op < 0.75:
            storage.drop_keys([key])
        elif op < 0.8:
            found = storage._core.lookup(key)
            if found:
                storage._core.remove(found[0].id)
        elif op < 0.81:
            storage.clear()
        else:
            clock.now += rng.random() * 3
        kept = storage._core._records.values()
        assert storage.body_bytes == sum(len(r.body) for r in kept) <= 5000 and len(kept) <= 20


class _Events(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A server-sent event every 50 ms, for 0.6 s."""

    def __iter__(self) -> Any:
        for i in range(12):
            yield f"data: {i}\n\n".encode()
            time.sleep(0.05)

    async def __aiter__(self) -> Any:
        for i in range(12):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_server_sent_events_are_neither_kept_nor_awaited_in_ttl_mode(mode: str, storage: str,
                                                                            request: pytest.FixtureRequest) -> None:
    """``ttl`` mode kept any 2xx GET: a second subscriber to an event stream waited behind the first for
    ``coalesce_timeout``, and once the first stream ended, later ones were replayed what it had said."""
    server = Counter()

    def events(request: httpx.Request) -> httpx.Response:
        server(request)
        return httpx.Response(200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, stream=_Events())

    shared = {"storage": "redis", "redis_url": request.getfixturevalue("redis_url")} if storage == "redis" else {}
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(events), mode="ttl", coalesce_timeout=3, **shared)
    path = f"/events/{mode}/{storage}/{time.monotonic_ns()}"
    if mode == "sync":
        with httpx.Client(transport=layer, base_url="http://test") as client:
            with client.stream("GET", path) as first:
                next(first.iter_bytes())
                started = time.monotonic()
                with client.stream("GET", path) as second:
                    waited = time.monotonic() - started
                    caching = second.extensions["caching"]
            again = client.get(path)
    else:
        async with httpx.AsyncClient(transport=layer, base_url="http://test") as client:
            async with client.stream("GET", path) as first:
                await first.aiter_bytes().__anext__()
                started = time.monotonic()
                async with client.stream("GET", path) as second:
                    waited = time.monotonic() - started
                    caching = second.extensions["caching"]
            again = await client.get(path)
    assert waited < 1.0, f"the second subscriber waited {waited:.1f} s for the first"
    assert not caching["stored"] and not again.extensions["caching"]["from_cache"] and server.count == 3
