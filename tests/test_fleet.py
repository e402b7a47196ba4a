"""The fleet tier on a real redis-server: one cache and one invalidation shared by station processes."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport import build_async_transport, build_transport
from pywats_transport.caching.redis_connect import sync_client
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer
from pywats_transport.layers.throttle import AsyncThrottleLayer, ThrottleLayer

from .conftest import RedisServer, free_port
from .helpers import Caller, Counter

pytestmark = pytest.mark.redis

STATION = textwrap.dedent("""
    import asyncio, json, sys
    from pywats_transport import WATS, AsyncWATS

    mode, url, token, redis_url = sys.argv[1:5]
    actions = sys.argv[5:]
    flags = dict(config={"cache": {"storage": "redis", "redis_url": redis_url}}, enable_throttling=False)

    def run_sync():
        out = []
        with WATS(url, token, **flags) as api:
            for action in actions:
                verb, pn = action.split(":")
                if verb == "get":
                    response = api._http.get(f"/api/Product/{pn}", extensions={"route": "/api/Product/{partNumber}"})
                    out.append(bool(response.extensions["caching"]["from_cache"]))
                else:
                    product = api.product.get(pn)
                    api.product.save(product)
                    out.append("saved")
        return out

    async def run_async():
        out = []
        async with AsyncWATS(url, token, **flags) as api:
            for action in actions:
                verb, pn = action.split(":")
                if verb == "get":
                    response = await api._http.get(f"/api/Product/{pn}")
                    out.append(bool(response.extensions["caching"]["from_cache"]))
                else:
                    product = await api.product.get(pn)
                    await api.product.save(product)
                    out.append("saved")
        return out

    print(json.dumps(run_sync() if mode == "sync" else asyncio.run(run_async())))
""")


def station(script: Path, mode: str, url: str, token: str, redis_url: str, *actions: str) -> list[Any]:
    run = subprocess.run([sys.executable, str(script), mode, url, token, redis_url, *actions],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_write_by_one_process_is_seen_by_every_other(tmp_path: Path, mode: str, wats_emulator: Any,
                                                       fleet_url: str) -> None:
    script = tmp_path / "station.py"
    script.write_text(STATION)
    args = (script, mode, wats_emulator.url, wats_emulator.token, fleet_url)
    pn = f"PN-100{1 if mode == 'sync' else 2}"
    assert station(*args, f"get:{pn}") == [False]  # process A fetches and stores
    before = wats_emulator.state.requests["GET /api/Product/{partNumber}"]
    assert station(*args, f"get:{pn}") == [True]  # process B: a hit from Redis, no server request
    assert wats_emulator.state.requests["GET /api/Product/{partNumber}"] == before
    assert station(*args, f"put:{pn}") == ["saved"]  # process C writes (its own GET first is a hit)
    assert station(*args, f"get:{pn}", f"get:{pn}") == [False, True]  # process D: the pre-write entry is gone


def _all_values(url: str) -> bytes:
    from redis import Redis

    with Redis.from_url(url) as admin:
        out = []
        for name in admin.scan_iter(match="pwt:*"):
            kind = admin.type(name)
            if kind == b"hash":
                out += [b"%s=%s" % pair for pair in admin.hgetall(name).items()]
            elif kind == b"set":
                out += list(admin.smembers(name))
            elif kind == b"string":
                out.append(admin.get(name) or b"")
            out.append(name)
        return b"\n".join(out)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_a_credential_a_response_varies_on_never_reaches_redis(mode: str, cache_mode: str,
                                                                     own_redis: Any) -> None:
    """``Vary: Authorization, X-Api-Key``: the entry answers its own credential again, and Redis holds no
    credential. The frame kept the values as sent: every station's token, readable in the fleet's Redis."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter(headers={"vary": "Authorization, X-Api-Key", "cache-control": "max-age=60"})
    caller = Caller(mode, cls(httpx.MockTransport(server), mode=cache_mode, storage="redis", redis_url=own_redis.url))
    sent = {"Authorization": "Bearer tok-9f3a7c-station-1", "X-Api-Key": "key-51be02-station-1"}
    try:
        assert not (await caller.get("/vary/creds", headers=sent)).extensions["caching"]["from_cache"]
        assert (await caller.get("/vary/creds", headers=sent)).extensions["caching"]["from_cache"]
        stored = _all_values(own_redis.url)
        assert b"/vary/creds" in stored  # the entry is there...
        assert b"9f3a7c" not in stored and b"51be02" not in stored  # ...and no credential
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_a_stored_answer_does_not_replay_set_cookie(mode: str, storage: str, redis_url: str) -> None:
    """ttl mode: the answer that was fetched sets its cookie; a hit (on Redis, at any station) does not hand
    that cookie on. It did: a session another client was given, or an old one over the client's newer."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter(headers={"set-cookie": "session=S-7f2c; Path=/", "x-served-by": "wats-1"})
    stations = [Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage=storage, redis_url=redis_url))
                for _ in range(2 if storage == "redis" else 1)]
    path = f"/cookie/{uuid.uuid4().hex}"
    token = {"Authorization": "Bearer station-token"}  # the identity (a cookie counts only without one)
    try:
        fetched = await stations[0].get(path, headers=token)
        assert fetched.headers["set-cookie"] == "session=S-7f2c; Path=/"
        for station in stations:
            hit = await station.get(path, headers=token)
            assert hit.extensions["caching"]["from_cache"] and hit.json() == fetched.json()
            assert "set-cookie" not in hit.headers and hit.headers["x-served-by"] == "wats-1"
    finally:
        for station in stations:
            await station.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_rfc_mode_on_redis_ages_an_undated_answer_as_the_memory_storage_does(mode: str, redis_url: str,
                                                                                   tmp_path: Path) -> None:
    """An origin that sends no Date, ``max-age=1`` and an ETag: the entry goes stale after a second, is
    revalidated once (304), and is fresh again. On Redis and SQLite, hishel aged entries by their Date alone:
    an undated one was fresh until the storage dropped it, and a 304 without a Date left it stale for every
    later lookup."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    seen = {}
    for storage in ("memory", "redis", "sqlite"):
        validations: list[str | None] = []

        def undated(request: httpx.Request, validations: list[str | None] = validations) -> httpx.Response:
            validations.append(request.headers.get("if-none-match"))
            fresh = {"etag": '"v1"', "cache-control": "max-age=1"}
            if request.headers.get("if-none-match") == '"v1"':
                return httpx.Response(304, headers=fresh)
            return httpx.Response(200, json={"v": 1}, headers=fresh)

        caller = Caller(mode, cls(httpx.MockTransport(undated), mode="rfc", storage=storage, redis_url=redis_url,
                                  sqlite_path=str(tmp_path / f"{mode}.db")))
        path = f"/undated/{uuid.uuid4().hex}"
        # A Date has whole seconds: an answer dated on arrival late in a second would be fresh for less
        # than max-age, and the second lookup could find it stale already.
        while time.time() % 1 > 0.3:
            time.sleep(0.01)
        try:
            flags = [(await caller.get(path)).extensions["caching"] for _ in range(2)]
            time.sleep(1.1)
            flags += [(await caller.get(path)).extensions["caching"] for _ in range(2)]
        finally:
            await caller.close()
        seen[storage] = ([(f["from_cache"], f["revalidated"]) for f in flags], validations)
    assert seen["redis"] == seen["sqlite"] == seen["memory"] == (
        [(False, False), (True, False), (True, True), (True, False)], [None, '"v1"'])


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_rfc_mode_on_redis_serves_each_variant_as_the_memory_storage_does(mode: str, redis_url: str) -> None:
    """``Vary: Accept-Language`` in rfc mode: each language's answer is served again from Redis. Redis gave
    hishel's check no request headers to compare, so nothing that varied was ever a hit."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    seen = {}
    for storage in ("memory", "redis"):
        server = Counter(headers={"vary": "Accept-Language", "cache-control": "max-age=60"})
        caller = Caller(mode, cls(httpx.MockTransport(server), mode="rfc", storage=storage, redis_url=redis_url))
        path = f"/vary/{uuid.uuid4().hex}"
        try:
            seen[storage] = [(await caller.get(path, headers={"accept-language": lang})).json()["n"]
                             for lang in ("de", "de", "en", "de", "en")]
        finally:
            await caller.close()
    assert seen["redis"] == seen["memory"] == [1, 1, 2, 1, 2]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_write_left_unanswered_is_invalidated_for_the_fleet(mode: str, fleet_url: str) -> None:
    """Station A's write times out after it was sent (the server may have applied it): station B's next lookup
    misses. B went on reading the pre-write entry until it expired."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter()

    def origin(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            server(request)  # applied, and the answer lost
            raise httpx.ReadTimeout("no answer", request=request)
        return server(request)

    a = Caller(mode, cls(httpx.MockTransport(origin), mode="ttl", storage="redis", redis_url=fleet_url))
    b = Caller(mode, cls(httpx.MockTransport(origin), mode="ttl", storage="redis", redis_url=fleet_url))
    path = f"/fleet/unanswered/{mode}/{uuid.uuid4().hex}"
    try:
        assert (await b.get(path)).json()["n"] == 1
        assert (await b.get(path)).extensions["caching"]["from_cache"]
        with pytest.raises(httpx.ReadTimeout):
            await a.request("PUT", path)
        after = await b.get(path)
        assert not after.extensions["caching"]["from_cache"] and after.json()["n"] == 3
    finally:
        await a.close()
        await b.close()


def test_a_sync_write_interrupted_by_ctrl_c_is_invalidated_for_the_fleet(fleet_url: str) -> None:
    """Ctrl-C reaches station A while its PUT waits for the answer (the server applied it): station B's next
    lookup misses. B read the pre-write entry until it expired."""
    server = Counter()

    def origin(request: httpx.Request) -> httpx.Response:
        answer = server(request)
        if request.method == "PUT":
            raise KeyboardInterrupt
        return answer

    a = CacheLayer(httpx.MockTransport(origin), mode="ttl", storage="redis", redis_url=fleet_url)
    b = CacheLayer(httpx.MockTransport(origin), mode="ttl", storage="redis", redis_url=fleet_url)
    path = f"/fleet/interrupted/{uuid.uuid4().hex}"
    with httpx.Client(transport=a, base_url="http://test") as one, httpx.Client(transport=b, base_url="http://test") as two:
        assert two.get(path).json()["n"] == 1
        assert two.get(path).extensions["caching"]["from_cache"]
        with pytest.raises(KeyboardInterrupt):
            one.put(path)
        after = two.get(path)
    assert not after.extensions["caching"]["from_cache"] and after.json()["n"] == 3


@pytest.mark.anyio
async def test_a_write_its_caller_gave_up_on_is_invalidated_for_the_fleet(fleet_url: str) -> None:
    """An asyncio station's write is cancelled while it waits for the answer (``asyncio.wait_for`` around the
    call): the server may have applied it, and the other station's next lookup misses."""
    server = Counter()
    answered = asyncio.Event()

    async def slow_origin(request: httpx.Request) -> httpx.Response:
        server(request)
        if request.method == "PUT":
            await answered.wait()  # applied; the answer never comes in time
        return httpx.Response(200, json={"n": server.count})

    a = Caller("async", AsyncCacheLayer(httpx.MockTransport(slow_origin), mode="ttl", storage="redis",
                                        redis_url=fleet_url))
    b = Caller("async", AsyncCacheLayer(httpx.MockTransport(slow_origin), mode="ttl", storage="redis",
                                        redis_url=fleet_url))
    path = f"/fleet/cancelled/{uuid.uuid4().hex}"
    try:
        assert (await b.get(path)).json()["n"] == 1
        assert (await b.get(path)).extensions["caching"]["from_cache"]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a.request("PUT", path), 0.2)
        after = await b.get(path)
        assert not after.extensions["caching"]["from_cache"] and after.json()["n"] == 3
    finally:
        answered.set()
        await a.close()
        await b.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("prefix", ["url", "path"])
async def test_invalidate_and_clear_reach_entries_other_layers_stored(mode: str, prefix: str, fleet_url: str) -> None:
    """``prefix``: a full URL, or a path, under every origin (the async layer dropped nothing for a path)."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter()
    one = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=fleet_url))
    other = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=fleet_url)
    base = f"/fleet/{mode}/{uuid.uuid4().hex}"
    for i in range(3):
        await one.get(f"{base}/items/{i}")
    await one.get(f"{base}/other")
    # a layer that stored nothing itself
    assert other.invalidate(f"http://test{base}/items" if prefix == "url" else f"{base}/items") == 3
    assert not (await one.get(f"{base}/items/1")).extensions["caching"]["from_cache"]
    assert (await one.get(f"{base}/other")).extensions["caching"]["from_cache"]
    assert other.clear() > 0
    assert not (await one.get(f"{base}/other")).extensions["caching"]["from_cache"]
    await one.close()
    if mode == "sync":
        other.close()
    else:
        await other.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_shared_storage_keeps_variants_apart_and_honours_no_store(mode: str, fleet_url: str) -> None:
    """ttl mode on Redis, as on memory: one entry per ``Vary`` variant, ``Vary: *`` and ``no-store`` not stored."""
    calls = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        path = request.url.path
        if path.endswith("/no-store"):
            return httpx.Response(200, text="n", headers={"cache-control": "no-store"})
        if path.endswith("/star"):
            return httpx.Response(200, text="s", headers={"vary": "*"})
        return httpx.Response(200, text=request.headers.get("accept", ""), headers={"vary": "Accept"})

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    one = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=fleet_url))
    other = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=fleet_url))
    base = f"/variants/{mode}/{time.time_ns()}"
    assert (await one.get(f"{base}/v", headers={"accept": "application/json"})).text == "application/json"
    second = await other.get(f"{base}/v", headers={"accept": "text/plain"})
    assert second.text == "text/plain" and not second.extensions["caching"]["from_cache"]
    for caller, accept in ((one, "text/plain"), (other, "application/json")):  # both variants now shared
        hit = await caller.get(f"{base}/v", headers={"accept": accept})
        assert hit.text == accept and hit.extensions["caching"]["from_cache"]
    for path in ("no-store", "star"):
        first = await one.get(f"{base}/{path}")
        assert first.extensions["caching"]["stored"] is False
        assert not (await other.get(f"{base}/{path}")).extensions["caching"]["from_cache"]
    assert calls.count(f"{base}/v") == 2 and calls.count(f"{base}/no-store") == 2 and calls.count(f"{base}/star") == 2
    await one.close()
    await other.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_one_credentials_entry_never_answers_another_across_the_fleet(mode: str, fleet_url: str) -> None:
    """Two stations with other tokens share Redis: each is served only what its own token fetched, and a
    write by either drops the path's entries for both."""
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer

    def station(token: str) -> Caller:
        caller = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=fleet_url))
        caller.client.headers["Authorization"] = f"Bearer {token}"
        return caller

    alice, bob, alice_again = station("token-a"), station("token-b"), station("token-a")
    path = f"/creds/{mode}/{time.time_ns()}"
    try:
        assert (await alice.get(path)).json()["n"] == 1
        assert (await bob.get(path)).json()["n"] == 2  # not alice's entry
        hit = await alice_again.get(path)  # another process with alice's token
        assert hit.json()["n"] == 1 and hit.extensions["caching"]["from_cache"]
        assert (await bob.get(path)).json()["n"] == 2
        await bob.request("PUT", path, json={})  # n == 3
        assert (await alice_again.get(path)).json()["n"] == 4
        assert (await bob.get(path)).json()["n"] == 5
    finally:
        for caller in (alice, bob, alice_again):
            await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_shared_entry_answers_for_a_failed_origin_in_any_process(mode: str, redis_url: str) -> None:
    """stale-if-error on Redis: kept past its TTL for the window, served by whichever process finds the origin down."""
    state = {"down": ""}

    def server(request: httpx.Request) -> httpx.Response:
        if state["down"] == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if state["down"] == "503":
            return httpx.Response(503, text="maintenance")
        return httpx.Response(200, json={"v": 1})

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    flags: dict[str, Any] = {"mode": "ttl", "storage": "redis", "redis_url": redis_url, "ttl": 0.2, "stale_if_error": 60}
    one = Caller(mode, cls(httpx.MockTransport(server), **flags))
    other_layer = cls(httpx.MockTransport(server), **flags)
    other = Caller(mode, other_layer)
    path = f"/stale/{mode}/{time.time_ns()}"
    assert (await one.get(path)).extensions["caching"]["stored"]
    time.sleep(0.3)  # past the TTL, within the stale-if-error window
    for down, caller in (("refused", other), ("503", one)):
        state["down"] = down
        answer = await caller.get(path)
        assert answer.status_code == 200 and answer.json() == {"v": 1}
        assert answer.extensions["caching"]["stale"] is True
    assert other_layer.stats()["stale_served"] == 1
    state["down"] = ""
    # The origin is back, and not known to be yet: answered at once, while a refresh hears it is back ...
    assert (await other.get(path)).extensions["caching"]["stale"] is True
    deadline = time.monotonic() + 10
    while other_layer.stats()["refreshes"] < 1:
        assert time.monotonic() < deadline, "no refresh"
        await asyncio.sleep(0.01)
    # ... and a lookup of an expired entry waits for the origin again, as a station's does when it is up.
    time.sleep(0.3)
    fresh = await other.get(path)
    assert fresh.extensions["caching"]["from_cache"] is False and "stale" not in fresh.extensions["caching"]
    await one.close()
    await other.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_shared_entry_is_served_while_it_is_refreshed_for_every_process(mode: str, redis_url: str) -> None:
    """stale-while-revalidate on Redis: the stale entry answers at once; the refresh is stored for the fleet."""
    import anyio

    version = {"v": 1}
    calls = []

    def server(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json=dict(version))

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    flags: dict[str, Any] = {"mode": "ttl", "storage": "redis", "redis_url": redis_url, "ttl": 1.0,
                             "stale_while_revalidate": 60}
    one_layer = cls(httpx.MockTransport(server), **flags)
    one, other = Caller(mode, one_layer), Caller(mode, cls(httpx.MockTransport(server), **flags))
    path = f"/swr/{mode}/{time.time_ns()}"
    await one.get(path)
    await anyio.sleep(1.1)  # past the TTL, within the window
    version["v"] = 2
    stale = await one.get(path)
    assert stale.json() == {"v": 1} and stale.extensions["caching"]["stale"] is True
    deadline = time.monotonic() + 5
    while one_layer.stats()["refreshes"] < 1:  # the refresh runs in the background
        assert time.monotonic() < deadline
        await anyio.sleep(0.02)
    answer = await other.get(path)  # stored in Redis, where the other process finds it fresh
    assert answer.json() == {"v": 2}
    assert answer.extensions["caching"]["from_cache"] and "stale" not in answer.extensions["caching"]
    assert len(calls) == 2 and one_layer.stats()["refreshes"] == 1
    await one.close()
    await other.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_refreshing_one_shared_entry_leaves_the_others(mode: str, redis_url: str) -> None:
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url))
    base = f"/refresh/{mode}/{time.time_ns()}"
    await caller.get(f"{base}/a")
    await caller.get(f"{base}/b")
    refreshed = await caller.get(f"{base}/a", extensions={"cache": {"refresh": True}})  # stored first
    assert refreshed.extensions["caching"]["from_cache"] is False
    assert (await caller.get(f"{base}/b")).extensions["caching"]["from_cache"]
    assert (await caller.get(f"{base}/a")).extensions["caching"]["from_cache"]
    assert server.count == 3
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hit_is_one_redis_command(mode: str, own_redis: Any) -> None:
    import redis

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=own_redis.url))
    await caller.get("/one/trip")
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_resetstat()
    for _ in range(10):
        assert (await caller.get("/one/trip")).extensions["caching"]["from_cache"]
    calls = {name: stat["calls"] for name, stat in admin.info("commandstats").items()
             if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    # One script per hit, sent by its SHA1; in it, the read of the entry, the check of its three index sets
    # ("/", "/one", "/one/trip") and the touch of the epoch, which redis-server counts too.
    assert calls == {"cmdstat_evalsha": 10, "cmdstat_hgetall": 10, "cmdstat_sismember": 30, "cmdstat_touch": 10}
    admin.close()
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hit_after_redis_forgot_its_script_loads_it_again(mode: str, own_redis: Any) -> None:
    """Redis forgets its scripts on a restart and on ``SCRIPT FLUSH``: a hit sent by the script's SHA1 is
    answered NOSCRIPT, and is sent once more in full (which loads it), still a hit and no outage."""
    import redis

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=own_redis.url))
    await caller.get("/forgot")
    assert (await caller.get("/forgot")).extensions["caching"]["from_cache"]
    admin = redis.Redis.from_url(own_redis.url)
    admin.script_flush()
    admin.config_resetstat()
    for _ in range(3):
        assert (await caller.get("/forgot")).extensions["caching"]["from_cache"]
    calls = admin.info("commandstats")
    assert (calls["cmdstat_evalsha"]["calls"], calls["cmdstat_eval"]["calls"]) == (3, 1)
    assert calls["cmdstat_evalsha"]["failed_calls"] == 1  # the NOSCRIPT
    stats = caller.transport.stats()
    assert (stats["redis_outages"], stats["storage_errors"]) == (0, 0)
    admin.close()
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("stored", [b"not a frame", b'{"v":99,"method":"GET"}\nbody', b'{"v":1}\nbody', b"\xff\xfe\n"])
async def test_an_entry_this_version_cannot_read_is_a_miss_and_replaced(
        mode: str, cache_mode: str, stored: bytes, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt value, or one another version of the format wrote (a fleet upgraded station by station),
    sent every request to the network until the key expired, and was never replaced."""
    server = Counter(headers={"cache-control": "max-age=60"})  # for rfc mode; ttl mode stores regardless
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode=cache_mode, storage="redis", redis_url=redis_url, ttl=60)
    caller = Caller(mode, layer)
    admin = sync_client(redis_url, 2.0)
    path = f"/unreadable/{uuid.uuid4().hex}"  # the server is the module's
    try:
        await caller.get(path)
        (entry,) = [k for k in admin.keys("pwt:{pwt}:e:*") if path.encode() in b"".join(admin.hvals(k))]
        for field in admin.hkeys(entry):
            admin.hset(entry, field, stored)
        first = await caller.get(path)
        assert first.status_code == 200 and not first.extensions["caching"]["from_cache"]
        assert server.count == 2
        again = await caller.get(path)
        assert again.extensions["caching"]["from_cache"] and again.json()["n"] == 2 and server.count == 2
        stats = layer.stats()
        assert stats["redis_unreadable_entries"] >= 1 and stats["storage_errors"] == 0
        assert "cannot read" in caplog.text
    finally:
        admin.close()
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_a_body_over_the_bound_is_answered_but_not_stored(mode: str, cache_mode: str, redis_url: str) -> None:
    """The memory storage keeps no body over 10 MiB; the Redis store kept any, buffered whole in the
    station's memory first, then sent to Redis, and to every station on each hit."""
    big = b"x" * (10 * 1024 * 1024 + 1)
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(request.url.path)
        body = big if request.url.path.endswith("/big") else b"small"
        return httpx.Response(200, content=body, headers={"cache-control": "max-age=60"})

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(handler), mode=cache_mode, storage="redis", redis_url=redis_url, ttl=60)
    caller = Caller(mode, layer)
    base = f"/bound/{uuid.uuid4().hex}"
    try:
        for _ in range(2):
            answer = await caller.get(base + "/big")
            assert answer.status_code == 200 and answer.content == big
            assert (await caller.get(base + "/small")).content == b"small"
        assert fetched.count(base + "/big") == 2 and fetched.count(base + "/small") == 1
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_path_index_keeps_no_more_than_the_live_keys(mode: str, own_redis: Any) -> None:
    """Each stored key is indexed under every prefix of its path. The index sets outlived their members'
    entries for as long as new stores kept them alive, so a fleet looking up ever new URLs (a serial
    number each) filled Redis with index members that would never be dropped by anything."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    brief, lasting = (Caller(mode, cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis",
                                       redis_url=own_redis.url, ttl=ttl)) for ttl in (0.2, 60.0))
    admin = sync_client(own_redis.url, 2.0)
    try:
        for n in range(300):
            await brief.get(f"/api/Unit/SN-{n}")
        time.sleep(0.4)  # every entry has expired
        for n in range(300, 600):
            await lasting.get(f"/api/Unit/SN-{n}")
        root = "pwt:{pwt}:p:http://test/api/Unit"
        live = sum(1 for _ in admin.scan_iter(match="pwt:{pwt}:e:*"))
        assert live == 300
        assert admin.scard(root) < live + 100, admin.scard(root)  # was every key ever stored: 600
    finally:
        admin.close()
        await brief.close()
        await lasting.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_redis_killed_and_restarted(mode: str, own_redis: Any) -> None:
    redis = own_redis
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis.url, redis_retry_after=0.3)
    caller = Caller(mode, layer)
    try:
        await caller.get("/k")
        assert (await caller.get("/k")).extensions["caching"]["from_cache"]
        redis.kill()  # SIGKILL
        started = time.monotonic()
        answers = [await caller.get("/k") for _ in range(20)]
        assert all(a.status_code == 200 for a in answers) and time.monotonic() - started < 2.0
        stats = layer.stats()
        assert stats["redis_outages"] == 1 and stats["storage_errors"] >= 1
        redis.start()
        time.sleep(0.35)  # past redis_retry_after: the next request tries Redis again
        await caller.get("/k")  # stored anew
        assert (await caller.get("/k")).extensions["caching"]["from_cache"]
    finally:
        await caller.close()
        redis.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_connection_the_server_closed_is_replaced_at_once(mode: str, redis_binary: str,
                                                                 tmp_path: Path) -> None:
    """Redis (or a proxy before it) closes idle connections, and a restarted Redis has closed them all:
    the next call opens a new one and goes on, instead of counting an outage."""

    server = RedisServer(redis_binary, tmp_path, "--timeout", "1")  # idle clients closed after 1 s
    server.start()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    settings = {"enabled": True, "backend": "redis", "redis_url": server.url, "rate": 100}

    rate_cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    origin = Counter()
    cache = cls(rate_cls(httpx.MockTransport(origin), **settings), mode="ttl", storage="redis", redis_url=server.url)
    caller = Caller(mode, cache)
    try:
        await caller.get("/idle/1")
        await caller.get("/idle/2")
        time.sleep(2.5)  # every connection of ours is idle past the server's timeout, and closed
        assert (await caller.get("/idle/1")).extensions["caching"]["from_cache"]
        assert not (await caller.get("/idle/3")).extensions["caching"]["from_cache"]  # stored, through the rate
        assert (await caller.get("/idle/3")).extensions["caching"]["from_cache"]
        assert cache.stats()["storage_errors"] == 0 and cache.stats()["redis_failures"] == 0
        assert cache.inner.stats()["fleet"]["redis_failures"] == 0
    finally:
        await caller.close()
        server.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_cluster_connection_the_node_closed_is_replaced_at_once(mode: str, redis_cluster: Any,
                                                                        redis_cluster_url: str) -> None:
    """As above, on a Redis Cluster: every node closes its clients' connections (as a restart does, or an idle
    timeout). The cluster client made no new connection: each station counted an outage and skipped Redis."""
    from redis import Redis

    build = build_transport if mode == "sync" else build_async_transport
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  cache={"mode": "ttl", "storage": "redis", "redis_url": redis_cluster_url},
                  throttle={"enabled": True, "backend": "redis", "redis_url": redis_cluster_url, "rate": 100})
    caller = Caller(mode, stack)
    path = f"/closed/{mode}/{uuid.uuid4().hex}"
    try:
        await caller.get(path)
        assert (await caller.get(path)).extensions["caching"]["from_cache"]
        for node in redis_cluster.nodes:
            with Redis(port=node.port) as admin:
                admin.client_kill_filter(_type="normal")  # every client's connection but this one
        assert (await caller.get(path)).extensions["caching"]["from_cache"]
        stats = stack.stats()
        assert (stats["cache"]["redis_failures"], stats["throttle"]["fleet"]["redis_failures"]) == (0, 0)
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["server", "cluster"])
async def test_a_hung_redis_costs_one_timeout(mode: str, kind: str, request: pytest.FixtureRequest) -> None:
    """Redis stops answering (SIGSTOP: connections open, no replies): the cache and the fleet rate each
    wait their configured timeout once, then skip Redis, and every request is answered."""
    import os
    import signal

    if kind == "server":
        hung, url = request.getfixturevalue("own_redis"), request.getfixturevalue("own_redis").url
    else:  # the node holding our slot; stopped for well under the cluster's node timeout (2 s)
        hung, url = request.getfixturevalue("redis_cluster").owner(b"{pwt}"), request.getfixturevalue("redis_cluster_url")
    build = build_transport if mode == "sync" else build_async_transport
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  cache={"mode": "ttl", "storage": "redis", "redis_url": url, "redis_timeout": 0.2},
                  throttle={"enabled": True, "backend": "redis", "redis_url": url, "redis_timeout": 0.2, "rate": 100})
    caller = Caller(mode, stack)
    assert hung.proc is not None
    try:
        await caller.get(f"/hung/{kind}/{mode}/0")  # connections made while Redis answers
        os.kill(hung.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert (await caller.get(f"/hung/{kind}/{mode}/1")).status_code == 200
            first = time.monotonic() - started
            started = time.monotonic()
            for i in range(5):
                assert (await caller.get(f"/hung/{kind}/{mode}/{2 + i}")).status_code == 200
            after = time.monotonic() - started
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)
        assert first < 0.2 + 0.2 + 0.3, f"the first request waited {first:.2f} s"  # two timeouts at most
        assert after < 0.3, f"five more requests took {after:.2f} s"  # Redis skipped meanwhile
        stats = stack.stats()
        assert stats["cache"]["redis_outages"] == 1 and stats["throttle"]["fleet"]["redis_outages"] == 1
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["server", "cluster"])
@pytest.mark.parametrize("connections", [None, 2])
async def test_lookups_in_flight_together_on_a_hung_redis_each_wait_one_timeout(
        mode: str, kind: str, connections: int | None, request: pytest.FixtureRequest) -> None:
    """Eight lookups at once (threads, or tasks) when Redis stops answering: each waits one timeout at most,
    side by side. They used to queue behind one another for the lookup connection, the last for 8 timeouts.
    With fewer connections than lookups (``redis_max_connections: 2``) the others wait for those two,
    and skip Redis as soon as they fail."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    if kind == "server":
        hung, url = request.getfixturevalue("own_redis"), request.getfixturevalue("own_redis").url
    else:
        hung, url = request.getfixturevalue("redis_cluster").owner(b"{pwt}"), request.getfixturevalue("redis_cluster_url")
    build = build_transport if mode == "sync" else build_async_transport
    bound = {"redis_max_connections": connections} if connections else {}
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  cache={"mode": "ttl", "storage": "redis", "redis_url": url, "redis_timeout": 0.2, **bound})
    caller = Caller(mode, stack)
    pool = ThreadPoolExecutor(8)

    async def timed(path: str) -> float:
        started = time.monotonic()
        if mode == "sync":
            response = await asyncio.wrap_future(pool.submit(caller.client.get, path))
        else:
            response = await caller.get(path)
        assert response.status_code == 200
        return time.monotonic() - started

    assert hung.proc is not None
    try:
        await asyncio.gather(*[timed(f"/together/{kind}/{mode}/warm/{i}") for i in range(8)])  # connections made
        os.kill(hung.proc.pid, signal.SIGSTOP)
        try:
            waits = await asyncio.gather(*[timed(f"/together/{kind}/{mode}/{i}") for i in range(8)])
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)
        assert max(waits) < 0.2 + 0.3, f"waits: {sorted(round(w, 2) for w in waits)}"
        assert stack.stats()["cache"]["redis_outages"] == 1
    finally:
        pool.shutdown()
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("connections", [None, 4])
async def test_a_burst_of_requests_keeps_a_stations_redis_connections_bounded(mode: str, connections: int | None,
                                                                             own_redis: Any) -> None:
    """Hundreds of requests at once from one station (tasks, or threads) through the cache and the fleet
    rate: the station opens about ``redis.max_connections`` (32 unless set) connections to Redis for
    each, not one per request in flight, and no request finds Redis unavailable. An asyncio station
    opened hundreds, and opening them took longer than Redis's timeout: the burst was taken for an
    outage and went to the network."""
    from concurrent.futures import ThreadPoolExecutor

    build = build_transport if mode == "sync" else build_async_transport
    bound = connections or 32
    # A timeout of 1 s, not 0.25: on two loaded cores (the suite beside other tests' station processes) a
    # connect in a loop running 600 tasks may overrun 0.25 s; the count of connections is what is tested.
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  redis={"url": own_redis.url, "timeout": 1.0,
                         **({"max_connections": connections} if connections else {})},
                  cache={"mode": "ttl", "storage": "redis"},
                  throttle={"enabled": True, "backend": "redis", "rate": 1e6, "burst": 10**6})
    caller = Caller(mode, stack)
    burst = 150 if mode == "sync" else 600
    pool = ThreadPoolExecutor(burst)

    async def get(path: str) -> int:
        if mode == "sync":
            return int((await asyncio.wrap_future(pool.submit(caller.client.get, path))).status_code)
        return int((await caller.get(path)).status_code)

    admin = sync_client(own_redis.url, 5.0)
    try:
        await asyncio.gather(*[get(f"/burst/{i}") for i in range(20)])  # stored
        statuses = await asyncio.gather(*[get(f"/burst/{i % 20}") for i in range(burst)])
        connected = int(admin.info("clients")["connected_clients"]) - 1
        stats = stack.stats()
        assert statuses == [200] * burst
        assert connected <= 2 * bound + 2, f"{connected} connections to Redis"  # the cache's lookups have one more
        assert (stats["cache"]["redis_outages"], stats["cache"]["storage_errors"]) == (0, 0)
        assert (stats["throttle"]["fleet"]["redis_outages"], stats["throttle"]["fleet"]["local_fallbacks"]) == (0, 0)
        assert stats["cache"]["hits"] == burst
    finally:
        admin.close()
        pool.shutdown()
        await caller.close()


@pytest.mark.anyio
async def test_an_async_station_closes_every_redis_client_whatever_one_raises(redis_url: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py may time out closing a connection (it did with an event loop busy with hundreds): closing the
    station closes its other Redis clients all the same, and does not raise. The error came out of the
    app's ``async with`` and left the rest open."""
    from redis.exceptions import TimeoutError as RedisTimeout

    layer = AsyncCacheLayer(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=redis_url)
    closed: list[str] = []
    async with httpx.AsyncClient(transport=layer, base_url="http://test") as client:
        path = f"/closing/{uuid.uuid4().hex}"
        await client.get(path)
        assert (await client.get(path)).extensions["caching"]["from_cache"]  # through the lookup connection
        store = layer.storage
        reader, pool = store.reader(), store.client
        assert reader is not pool
        close_reader, close_pool = reader.aclose, pool.aclose

        async def times_out() -> None:
            closed.append("reader")
            raise RedisTimeout("Timed out closing connection after 0.25")

        async def closes() -> None:
            closed.append("pool")
            await close_pool()

        monkeypatch.setattr(reader, "aclose", times_out)
        monkeypatch.setattr(pool, "aclose", closes)
    await close_reader()
    assert closed == ["reader", "pool"]


@pytest.mark.anyio
async def test_a_new_async_stations_first_requests_at_once_use_the_cluster(redis_cluster_url: str) -> None:
    """Eight requests at once as an asyncio station starts on a Redis Cluster: no outage, for the cache or the
    fleet rate. redis-py routed the commands sent before its cluster client knew the slots to any primary;
    the MOVED answers made it learn the cluster again and close the other commands' connections."""
    for attempt in range(3):  # a fresh station each time: the race was lost about two times in three
        stack = build_async_transport(
            inner=httpx.MockTransport(Counter()), enable_retry=False,
            cache={"mode": "ttl", "storage": "redis", "redis_url": redis_cluster_url},
            throttle={"enabled": True, "backend": "redis", "redis_url": redis_cluster_url, "rate": 1000, "burst": 100})
        async with httpx.AsyncClient(transport=stack, base_url="http://test") as client:
            answers = await asyncio.gather(*[client.get(f"/first/{uuid.uuid4().hex}/{i}") for i in range(8)])
        assert [a.status_code for a in answers] == [200] * 8
        stats = stack.stats()
        assert (stats["cache"]["redis_failures"], stats["throttle"]["fleet"]["redis_failures"]) == (0, 0), attempt


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_clear_counts_entries_as_the_memory_storage_does_and_unlinks_in_batches(mode: str, own_redis: Any) -> None:
    """``clear()`` returns how many entries it dropped (it counted their index sets and owners too: 3 entries
    made 9), and unlinks a thousand keys a round trip (it took one round trip a key)."""
    from redis import Redis

    build = build_transport if mode == "sync" else build_async_transport
    counts = {}
    for storage in ("memory", "redis"):
        stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                      cache={"mode": "ttl", "storage": storage, "redis_url": own_redis.url})
        caller = Caller(mode, stack)
        for i in range(3):
            await caller.get(f"/clear/{i}")
        counts[storage] = stack.clear_cache() if mode == "sync" else await stack.aclear_cache()
        await caller.close()
    assert counts == {"memory": 3, "redis": 3}
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  cache={"mode": "ttl", "storage": "redis", "redis_url": own_redis.url})
    with Redis.from_url(own_redis.url) as admin:
        with admin.pipeline(transaction=False) as pipe:
            for i in range(2500):  # entries as many stations leave them: an entry, its owner, an index member
                pipe.hset(f"pwt:{{pwt}}:e:k{i}", "v", "x").set(f"pwt:{{pwt}}:o:v{i}", f"k{i}").sadd("pwt:{pwt}:p:x", f"k{i}")
            pipe.execute()
        before = admin.info("commandstats").get("cmdstat_unlink", {}).get("calls", 0)
        assert (stack.clear_cache() if mode == "sync" else await stack.aclear_cache()) == 2500
        assert admin.info("commandstats")["cmdstat_unlink"]["calls"] - before <= 6  # 5001 keys
        assert admin.dbsize() == 1  # the epoch alone
    if mode == "sync":
        stack.close()
    else:
        await stack.aclose()


@pytest.mark.anyio
async def test_async_invalidation_and_clear_reach_the_fleet_without_holding_the_loop(own_redis: Any) -> None:
    """``await stack.ainvalidate_cache()`` / ``aclear_cache()`` drop what every station stored, and on a hung
    Redis the event loop goes on meanwhile (``invalidate_cache()`` held it for the whole timeout)."""
    import os
    import signal

    counter = Counter()
    settings = {"mode": "ttl", "storage": "redis", "redis_url": own_redis.url, "redis_timeout": 0.5}
    a, b = [build_async_transport(inner=httpx.MockTransport(counter), enable_retry=False, cache=settings)
            for _ in range(2)]
    station_a, station_b = Caller("async", a), Caller("async", b)
    try:
        await station_a.get("/fleet/x/1")
        assert (await station_b.get("/fleet/x/1")).extensions["caching"]["from_cache"]
        assert await a.ainvalidate_cache("/fleet/x") == 1
        assert not (await station_b.get("/fleet/x/1")).extensions["caching"]["from_cache"]
        assert await b.aclear_cache() >= 1
        assert not (await station_a.get("/fleet/x/1")).extensions["caching"]["from_cache"]
        gaps: list[float] = []

        async def ticking() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        assert own_redis.proc is not None
        ticker = asyncio.create_task(ticking())
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert await a.ainvalidate_cache("/fleet/x") == 0  # Redis did not answer: counted, kept, sent again
            assert time.monotonic() - started >= 0.4
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
            ticker.cancel()
        assert max(gaps) < 0.25, f"the event loop was held for {max(gaps):.2f} s"
        assert a.stats()["cache"]["redis_invalidations_unconfirmed"] == 1
    finally:
        await station_a.close()
        await station_b.close()


@pytest.mark.anyio
async def test_async_wats_forwards_the_awaitable_cache_controls() -> None:
    from pywats_transport import AsyncWATS

    fetched: list[str] = []

    def wats(request: httpx.Request) -> httpx.Response:
        fetched.append(request.url.path)
        return httpx.Response(200, json={"partNumber": "PN-1", "name": f"fetch {len(fetched)}"})

    async with AsyncWATS("http://wats.test", "t", transport=httpx.MockTransport(wats)) as api:
        assert (await api.product.get("PN-1")).name == (await api.product.get("PN-1")).name == "fetch 1"
        assert await api.ainvalidate_cache("/api/Product") == 1
        assert (await api.product.get("PN-1")).name == "fetch 2"
        assert await api.aclear_cache() == 1
        assert (await api.product.get("PN-1")).name == "fetch 3"


def _documented_acl() -> list[str]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text(encoding="utf-8")
    (line,) = [line for line in page.splitlines() if line.startswith("ACL SETUSER station ")]
    return line.split()[2:]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_documented_acl_is_all_the_fleet_tier_needs(mode: str, fleet_url: str, request: pytest.FixtureRequest,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet page's Redis user (keys and channel under ``pwt:``, no dangerous commands): the cache with its
    near cache, invalidation and ``clear()``, and the fleet rate with a server's hold, with no refusal."""
    from redis import Redis

    cluster = fleet_url.startswith("redis+cluster")
    ports = ([n.port for n in request.getfixturevalue("redis_cluster").nodes] if cluster
             else [request.getfixturevalue("redis_server").port])
    for port in ports:
        with Redis(port=port) as admin:
            admin.execute_command("ACL", "SETUSER", *_documented_acl())
    monkeypatch.setenv("REDIS_PASSWORD", "station-password")
    url = fleet_url.replace("://", "://station@", 1)
    build = build_transport if mode == "sync" else build_async_transport
    counter = Counter()

    def origin(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "1"}) if request.url.path == "/busy" else counter(request)

    stack = build(inner=httpx.MockTransport(origin), enable_retry=False,
                  cache={"mode": "ttl", "storage": "redis", "redis_url": url, "near_cache": True},
                  throttle={"enabled": True, "backend": "redis", "redis_url": url, "rate": 100})
    caller = Caller(mode, stack)
    path = f"/acl/{uuid.uuid4().hex}"
    try:
        assert [(await caller.get(path)).json()["n"] for _ in range(2)] == [1, 1]
        await caller.request("PUT", path)
        assert (await caller.get(path)).json()["n"] == 3
        assert (await caller.get("/busy")).status_code == 429
        cache = stack.layer("cache")
        assert cache.invalidate(path) >= 1 and cache.clear() >= 0
        stats = stack.stats()
        assert (stats["cache"]["redis_failures"], stats["throttle"]["fleet"]["redis_failures"]) == (0, 0)
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_cluster_user_without_the_cluster_commands_is_told_why(mode: str, redis_cluster: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The documented ACL without ``+cluster|slots``: redis-py says "Cluster mode is not enabled", and the log
    line says what else that means."""
    from redis import Redis

    acl = [rule for rule in _documented_acl() if not rule.startswith("+cluster|")]
    acl[0] = "nocluster"
    for node in redis_cluster.nodes:
        with Redis(port=node.port) as admin:
            admin.execute_command("ACL", "SETUSER", *acl)
    url = "redis+cluster://nocluster:station-password@" + ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    build = build_transport if mode == "sync" else build_async_transport
    caller = Caller(mode, build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                                cache={"mode": "ttl", "storage": "redis", "redis_url": url}))
    try:
        with caplog.at_level(logging.WARNING, logger="pywats_transport.cache"):
            assert (await caller.get("/acl/cluster")).status_code == 200  # from the network
        assert "or the Redis user may not run CLUSTER SLOTS: see the fleet page's ACL" in caplog.text
        assert "station-password" not in caplog.text
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_user_whose_acl_lacks_a_command_a_script_runs_is_told_why(
        mode: str, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The documented ACL without ``+time`` (a user made for an earlier version): the fleet rate falls back to
    the local share, and the log line says the user lacks a command, not only Redis's "can't run this
    command ... script: <sha>, on @user_script:3"."""
    from redis import Redis

    acl = [rule for rule in _documented_acl() if rule != "+time"]
    acl[0] = "notime"
    with Redis.from_url(redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", *acl)
    url = redis_url.replace("redis://", "redis://notime:station-password@")
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis", redis_url=url,
                rate=100, burst=5)
    caller = Caller(mode, layer)
    try:
        with caplog.at_level(logging.WARNING, logger="pywats_transport.throttle"):
            assert (await caller.get("/acl/time")).status_code == 200
        assert layer.stats()["fleet"]["local_fallbacks"] == 1
        assert "the Redis user may not run a command the script runs: see the fleet page's ACL" in caplog.text
        assert "station-password" not in caplog.text
        cache_cls = CacheLayer if mode == "sync" else AsyncCacheLayer  # the cache does without TIME
        cached = Caller(mode, cache_cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=url))
        path = f"/acl/time/{uuid.uuid4().hex}"
        assert (await cached.get(path)).extensions["caching"]["stored"]
        assert (await cached.get(path)).extensions["caching"]["from_cache"]
        await cached.close()
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_one_redis_section_serves_the_cache_and_the_rate(mode: str, redis_url: str, tmp_path: Path) -> None:
    """``redis`` names the fleet's Redis once; each layer's own ``redis_*`` setting still wins."""
    from pywats_transport import TransportConfig, build_async_transport, build_transport

    config = tmp_path / "fleet.json"
    config.write_text(json.dumps({"cache": {"mode": "ttl", "storage": "redis"},
                                  "throttle": {"enabled": True, "backend": "redis", "rate": 100},
                                  "redis": {"url": redis_url, "timeout": 0.3, "retry_after": 2}}))
    build = build_transport if mode == "sync" else build_async_transport
    stack = build(config, inner=httpx.MockTransport(Counter()), enable_retry=False)
    caller = Caller(mode, stack)
    try:
        await caller.get(f"/shared/{mode}")
        assert (await caller.get(f"/shared/{mode}")).extensions["caching"]["from_cache"]  # through Redis
        cache, throttle = stack.layer("cache"), stack.layer("throttle")
        assert cache.settings.redis_url == throttle.settings.redis_url == redis_url
        assert cache.settings.redis_timeout == 0.3 and throttle.settings.redis_retry_after == 2
        assert stack.stats()["throttle"]["fleet"]["redis_failures"] == 0
        described = {item["name"]: item for item in stack.describe()}
        assert described["cache"]["sources"]["redis_url"] == f"redis.url, file {config}"
    finally:
        await caller.close()
    own = TransportConfig.load(config, cache_redis_url="redis://10.0.0.9:6379/0", redis_timeout=0.5)
    assert own.effective("cache").redis_url == "redis://10.0.0.9:6379/0"  # the layer's own wins
    assert own.effective("throttle").redis_url == redis_url and own.effective("throttle").redis_timeout == 0.5
    assert own.source_of("cache.redis_url") == "flags"
    env = TransportConfig.load(environ={"PYWATS_TRANSPORT_REDIS__URL": "redis+cluster://h1:7000,h2:7000"})
    assert env.effective("cache").redis_url == "redis+cluster://h1:7000,h2:7000"
    assert env.source_of("throttle.redis_url") == "redis.url, environment PYWATS_TRANSPORT_REDIS__URL"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_through_sentinel_and_across_a_failover(mode: str, redis_sentinel: Any) -> None:
    """``redis+sentinel://``: the cache, its near cache and the fleet rate use the primary the sentinel
    names; when that primary dies, requests keep being answered, and after the failover they use the
    new primary with nothing to restart."""

    build = build_transport if mode == "sync" else build_async_transport
    stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                  redis={"url": redis_sentinel.url, "retry_after": 0.2},
                  cache={"mode": "ttl", "storage": "redis", "near_cache": True},
                  throttle={"enabled": True, "backend": "redis", "rate": 100})
    caller = Caller(mode, stack)
    try:
        await caller.get("/s/a")
        assert (await caller.get("/s/a")).extensions["caching"]["from_cache"]
        assert stack.stats()["throttle"]["fleet"]["redis_failures"] == 0
        first = redis_sentinel.primary_port()
        assert first == redis_sentinel.primary.port
        redis_sentinel.primary.kill()
        deadline = time.monotonic() + 20
        while redis_sentinel.primary_port() == first:  # the sentinel promotes the replica
            assert (await caller.get("/s/during")).status_code == 200  # answered meanwhile
            assert time.monotonic() < deadline, "no failover within 20 s"
            await asyncio_sleep(0.1)
        assert redis_sentinel.primary_port() == redis_sentinel.replica.port
        await asyncio_sleep(0.3)  # past retry_after: Redis is tried again
        deadline = time.monotonic() + 5
        while not (await caller.get("/s/b")).extensions["caching"]["from_cache"]:  # stored on the new primary
            assert time.monotonic() < deadline, "the cache never used the new primary"
            await asyncio_sleep(0.25)
        fleet = stack.layer("throttle").fleet
        assert (fleet.acquire("after.test") if mode == "sync" else await fleet.acquire("after.test")) == 0.0
        # The new primary is a new process: the cache the replica held was cleared, and is trusted from now on.
        from pywats_transport.caching.redis_keys import EPOCH

        with sync_client(f"redis://127.0.0.1:{redis_sentinel.replica.port}/0", 1.0) as promoted:
            assert promoted.get(EPOCH) == promoted.info("server")["run_id"].encode()
        assert not (await caller.get("/s/a")).extensions["caching"]["from_cache"]
    finally:
        await caller.close()


# -- one rate for the fleet ------------------------------------------------------------------------------

HAMMER = textwrap.dedent("""
    import sys, time
    import httpx
    from pywats_transport import build_transport

    class Granted(httpx.HTTPTransport):
        \"\"\"Notes when the throttle let each request go (the system's monotonic clock, shared by processes).\"\"\"
        times = []

        def handle_request(self, request):
            self.times.append(time.monotonic())
            return super().handle_request(request)

    url, redis_url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stack = build_transport(enable_cache=False, enable_retry=False, inner=Granted(),
                            throttle={"enabled": True, "backend": "redis", "redis_url": redis_url, "rate": 20, "burst": 5})
    with httpx.Client(transport=stack, base_url=url, timeout=httpx.Timeout(10, pool=None)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.get("/ping")
    print(stack.stats()["throttle"]["fleet"]["local_fallbacks"], *Granted.times)
""")


def recording_server() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from pywats_transport._server import BackgroundServer

    times: list[float] = []

    async def ping(request: Any) -> JSONResponse:
        times.append(time.monotonic())
        return JSONResponse({})

    server = BackgroundServer(Starlette(routes=[Route("/ping", ping)]))
    server.times = times  # type: ignore[attr-defined]
    return server


def test_four_processes_share_one_rate(tmp_path: Path, fleet_url: str) -> None:
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    with recording_server() as server:
        procs = [subprocess.Popen([sys.executable, str(script), server.url, fleet_url, "2.5"], stdout=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
        arrived = len(server.times)
    assert all(p.returncode == 0 for p in procs) and all(out[0] == "0" for out in outputs)  # Redis answered
    # When the fleet's limiter let each request go, across the four processes. (Arrival times at the
    # server would add the machine's scheduling jitter; the benchmark measures those.)
    granted = sorted(float(t) for out in outputs for t in out[1:])
    busiest = max(sum(1 for t in granted if start <= t < start + 1.0) for start in granted)
    # A token bucket of 20/s and 5 lets 24-25 go in a second; one more allows for a late-noted grant on a
    # busy machine. Four processes each limited alone would let about 4 x 25 go.
    assert busiest <= 26, f"{busiest} requests let go in one second; the fleet limit is 20/s (burst 5)"
    assert len(granted) == arrived >= 30  # every process got its turns, and each reached the server
    # Sustained: after the first burst, 20 a second for the whole fleet.
    assert 20 * 0.9 <= (len(granted) - 5) / (granted[-1] - granted[0]) <= 20 * 1.1


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_fleet_honours_burst(mode: str, fleet_url: str) -> None:
    """At most ``burst`` turns at once for the whole fleet, then one per interval of ``rate``."""

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    host = f"burst-{mode}-{time.time_ns()}.test"
    # One a second: the bucket refills far slower than the turns below take, even on a busy machine.
    settings = {"enabled": True, "backend": "redis", "redis_url": fleet_url, "rate": 1, "burst": 3}
    stations = [cls(httpx.MockTransport(lambda r: httpx.Response(200)), **settings) for _ in range(2)]
    waits = []
    for i in range(8):  # two stations taking turns at once, after an idle while
        fleet = stations[i % 2].fleet
        waits.append(fleet.acquire(host) if mode == "sync" else await fleet.acquire(host))
    assert waits[:3] == [0.0, 0.0, 0.0] and all(w > 0 for w in waits[3:])
    assert 0.5 < waits[3] <= 1.0  # the next turn comes one interval (1 s at one a second) later
    for station in stations:
        station.close() if mode == "sync" else await station.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("first", ["ahead", "behind"])
async def test_stations_whose_clocks_disagree_share_one_rate(mode: str, first: str, fleet_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One station's clock is 2 s ahead of another's (a test station without NTP). After one takes a turn,
    the other's next comes one interval later (1 s at one a second, burst 1), whichever clock is ahead.
    The turns were timed by each station's own clock: after the one ahead took a turn, the other waited
    2 s; after the one behind, the one ahead went at once, over the rate."""
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    host = f"skew-{mode}-{first}-{time.time_ns()}.test"
    # One a second: the second station's turn is asked for well within the interval, even on a busy machine.
    settings = {"enabled": True, "backend": "redis", "redis_url": fleet_url, "rate": 1, "burst": 1}
    ahead, behind = (cls(httpx.MockTransport(lambda r: httpx.Response(200)), **settings) for _ in range(2))
    real = time.time

    def skewed() -> float:
        return real() + 2.0

    ahead.fleet.clock = skewed  # the clock a fleet rate was given (time.time) before Redis's timed the turns
    order = [ahead, behind] if first == "ahead" else [behind, ahead]
    waits = []
    for station in order:
        if station is ahead:  # and the station's own clock, while it takes its turn
            monkeypatch.setattr(time, "time", skewed)
        try:
            waits.append(station.fleet.acquire(host) if mode == "sync" else await station.fleet.acquire(host))
        finally:
            monkeypatch.undo()
    assert waits[0] == 0.0
    assert 0.3 < waits[1] <= 1.0, f"the second station waits {waits[1]:.2f} s; one interval is 1 s"
    for station in order:
        station.close() if mode == "sync" else await station.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_turns_the_fleet_gives_are_counted_like_the_local_buckets(mode: str, fleet_url: str) -> None:
    """The throttle's stats (and so /health/details) count the fleet's turns, its waits and refusals."""
    from pywats_transport.errors import ThrottledError

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    host = f"counted-{mode}-{time.time_ns()}.test"
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=fleet_url, rate=10, burst=1)
    caller = Caller(mode, layer, base_url=f"http://{host}")
    for _ in range(3):  # the first goes at once, each of the next two waits one interval (0.1 s)
        assert (await caller.get("/a")).status_code == 200
    layer.settings.max_wait = 0.0
    with pytest.raises(ThrottledError):
        await caller.get("/a")
    stats = layer.stats()
    assert stats["fleet"]["local_fallbacks"] == 0
    assert (stats["requests"], stats["waited"], stats["rejections"]) == (4, 2, 1)
    assert 0.1 < stats["wait_seconds_total"] < 0.4
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_429s_in_a_row_at_one_station_halve_the_fleet_rate(mode: str, fleet_url: str) -> None:
    """No Retry-After: the adaptive slow-down one station's policy decides is the fleet's too."""
    from pywats_transport.policies.fleet_throttle import SLOW

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    host = f"slow-{mode}-{time.time_ns()}.test"
    # burst 1: every turn after the first waits one interval, 50 ms at 20 a second
    settings = {"enabled": True, "backend": "redis", "redis_url": fleet_url, "rate": 20, "burst": 1,
                "per_host": True, "fleet_slowdown_seconds": 0.5}
    answers = iter([httpx.Response(429), httpx.Response(429)])
    first_layer = cls(httpx.MockTransport(lambda r: next(answers, httpx.Response(200))), **settings)
    second_layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), **settings)
    first, second = Caller(mode, first_layer, base_url=f"http://{host}"), Caller(mode, second_layer, base_url=f"http://{host}")

    async def interval(layer: Any) -> float:
        """The wait the fleet asks for right after this host's turn: one interval of the rate in force."""
        while True:
            wait = layer.fleet.acquire(host) if mode == "sync" else await layer.fleet.acquire(host)
            if wait == 0:
                break
            await asyncio_sleep(wait)
        return float(layer.fleet.acquire(host) if mode == "sync" else await layer.fleet.acquire(host))

    assert (await first.get("/a")).status_code == 429
    assert (await first.get("/a")).status_code == 429  # two in a row: this station's policy slows down
    assert first_layer.stats()["fleet"]["fleet_slowdowns"] == 1
    assert 0.05 < await interval(second_layer) <= 0.1  # 10 a second now, for the other station too
    time.sleep(0.6)  # one halving lasts 0.5 s without another
    assert 0 < await interval(second_layer) <= 0.05  # 20 a second again
    fleet = second_layer.fleet
    for _ in range(3):  # halvings stack, each adding 0.5 s, and come back one at a time
        fleet.slow_down(host) if mode == "sync" else await fleet.slow_down(host)
    admin = sync_client(fleet_url, 1.0)
    left = admin.pttl(SLOW + host)
    admin.close()

    def per_second(slow_ms: int) -> float:
        return float(fleet._rates(slow_ms)[0].limit / 1000)

    assert 1000 < left <= 1500 and per_second(left) == 20 / 8
    assert per_second(left - 500) == 5 and per_second(left - 1000) == 10 and per_second(-2) == 20
    await first.close()
    await second.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_retry_after_seen_by_one_holds_the_host_for_all(mode: str, fleet_url: str) -> None:
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    settings = {"enabled": True, "backend": "redis", "redis_url": fleet_url, "rate": 100, "per_host": True}
    answers = iter([httpx.Response(429, headers={"Retry-After": "1"})])
    first = Caller(mode, cls(httpx.MockTransport(lambda r: next(answers, httpx.Response(200))), **settings),
                   base_url=f"http://hold-{mode}.test")
    second = Caller(mode, cls(httpx.MockTransport(lambda r: httpx.Response(200)), **settings),
                    base_url=f"http://hold-{mode}.test")
    assert (await first.get("/a")).status_code == 429
    started = time.monotonic()
    assert (await second.get("/a")).status_code == 200  # another "process": it waits out the server's pause
    assert time.monotonic() - started >= 0.8
    await first.close()
    await second.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_shorter_retry_after_does_not_cut_a_longer_hold(mode: str, fleet_url: str) -> None:
    from pywats_transport.policies.fleet_throttle import HOLD

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=fleet_url, per_host=True)
    host = f"held-{mode}-{time.time_ns()}.test"
    for hold in (3.0, 0.5):  # two stations, two servers' answers: the later, shorter one must not shorten it
        layer.fleet.signal(host, hold=hold) if mode == "sync" else await layer.fleet.signal(host, hold=hold)
    admin = sync_client(fleet_url, 1.0)
    assert admin.pttl(HOLD + host) > 2000
    admin.close()
    layer.close() if mode == "sync" else await layer.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_clearing_the_cache_leaves_the_fleet_rate_alone(mode: str, fleet_url: str) -> None:
    """The cache's ``clear()`` took every key with the fleet's hash tag, the fleet rate's too: a server's
    ``Retry-After`` hold on a host was lifted for the whole fleet, and its slow-down undone."""
    from pywats_transport.policies.fleet_throttle import SLOW

    throttle_cls, cache_cls = (ThrottleLayer, CacheLayer) if mode == "sync" else (AsyncThrottleLayer, AsyncCacheLayer)
    throttle = throttle_cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                            redis_url=fleet_url, per_host=True)
    cache = Caller(mode, cache_cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=fleet_url))
    host = f"held-{mode}-{time.time_ns()}.test"
    try:
        await cache.get("/cleared")
        if mode == "sync":
            throttle.fleet.signal(host, hold=30.0, slow_down=True)
        else:
            await throttle.fleet.signal(host, hold=30.0, slow_down=True)
        assert cache.transport.clear() >= 1  # the async layer's too: it may be called outside the loop
        wait = throttle.fleet.acquire(host) if mode == "sync" else await throttle.fleet.acquire(host)
        assert wait > 25  # still held
        assert not (await cache.get("/cleared")).extensions["caching"]["from_cache"]  # and the cache is empty
        admin = sync_client(fleet_url, 1.0)
        assert admin.pttl(SLOW + host) > 0  # the slow-down too
        admin.close()
    finally:
        await cache.close()
        throttle.close() if mode == "sync" else await throttle.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hold_and_a_slow_down_count_as_used_while_stations_read_them(mode: str, fleet_url: str) -> None:
    """Redis's LRU did not see the stations' reads of a hold (``PTTL``), so a Redis that the cache fills
    (``allkeys-lru``) took it for the least used key and evicted it, lifting the hold for the fleet."""
    from pywats_transport.policies.fleet_throttle import HOLD, SLOW

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=fleet_url, per_host=True)
    host = f"used-{mode}-{time.time_ns()}.test"
    admin = sync_client(fleet_url, 1.0)
    try:
        if mode == "sync":
            layer.fleet.signal(host, hold=30.0, slow_down=True)
        else:
            await layer.fleet.signal(host, hold=30.0, slow_down=True)
        for name in (HOLD + host, SLOW + host):  # as if last used an hour ago
            admin.restore(name, admin.pttl(name), admin.dump(name), replace=True, idletime=3600)
        assert (layer.fleet.acquire(host) if mode == "sync" else await layer.fleet.acquire(host)) > 25
        assert max(admin.object("idletime", HOLD + host), admin.object("idletime", SLOW + host)) <= 1  # s
    finally:
        admin.close()
        layer.close() if mode == "sync" else await layer.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_plain_url_to_a_cluster_node_says_how_to_name_the_cluster(mode: str, redis_cluster_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    plain = redis_cluster_url.replace("redis+cluster://", "redis://")
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis", redis_url=plain))
    try:
        assert (await caller.get("/plain")).status_code == 200  # the network answers meanwhile
    finally:
        await caller.close()
    assert "MovedError: a Redis Cluster node; give the cluster as redis+cluster://" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_with_redis_down_each_process_takes_its_share(mode: str, scheme: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=f"{scheme}://127.0.0.1:{port}", rate=40, burst=1, expected_processes=4,
                redis_retry_after=0.5)
    caller = Caller(mode, layer)
    for _ in range(3):
        assert (await caller.get("/a")).status_code == 200
    stats = layer.stats()
    assert stats["fleet"]["local_fallbacks"] == 3 and stats["fleet"]["redis_outages"] == 1
    said = [r for r in caplog.records if r.name == "pywats_transport.throttle"]
    assert len(said) == 1 and "Redis unavailable for the fleet rate" in said[0].getMessage()  # once an outage
    assert "tried again every 0.5 s" in said[0].getMessage()
    assert stats["rate_per_host"]["test"] == 10.0  # 40 / 4 processes
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_with_redis_down_the_share_divides_by_the_stations_the_fleet_counted(mode: str, own_redis: Any) -> None:
    """``expected_processes`` left at its default of 1: three stations that took turns together each took
    the fleet's whole rate and burst when Redis went down, three times what the server was to see."""
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layers = [cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                  redis_url=own_redis.url, rate=30, burst=3, redis_retry_after=30) for _ in range(3)]
    callers = [Caller(mode, layer) for layer in layers]
    try:
        for _ in range(2):  # the second round: each has seen the others' turns
            for caller in callers:
                assert (await caller.get("/a")).status_code == 200
        assert [layer.stats()["fleet"]["stations_seen"] for layer in layers] == [{"test": 3}] * 3
        own_redis.kill()
        sent, end = 0, time.monotonic() + 0.6
        while time.monotonic() < end:
            assert (await callers[0].get("/a")).status_code == 200
            sent += 1
        stats = layers[0].stats()
        assert stats["fleet"]["local_fallbacks"] == sent and stats["rate_per_host"]["test"] == 10.0  # 30 / 3
        # a burst of 3 // 3 = 1, then 10 a second (the whole rate and burst: about 3 + 0.6 x 30 = 21)
        assert sent <= 1 + 0.6 * 10 + 1, f"{sent} requests in 0.6 s; its share is 10/s, burst 1"
    finally:
        for caller in callers:
            await caller.close()


SHARE = textwrap.dedent("""
    import os, sys, time
    import httpx
    from pywats_transport import build_transport

    redis_url, folder, stations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stack = build_transport(enable_cache=False, enable_retry=False,
                            inner=httpx.MockTransport(lambda request: httpx.Response(200)),
                            throttle={"enabled": True, "backend": "redis", "redis_url": redis_url, "rate": 30,
                                      "burst": 3, "redis_retry_after": 30})
    with httpx.Client(transport=stack, base_url="http://wats") as client:
        deadline = time.monotonic() + 20  # turns with the others until this station has seen them all
        while stack.stats()["throttle"]["fleet"]["stations_seen"].get("wats", 0) < stations:
            assert time.monotonic() < deadline, "the stations never all took turns together"
            client.get("/a")
        open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(folder, "redis-killed")):
            time.sleep(0.01)
        sent, end = 0, time.monotonic() + 1.0
        while time.monotonic() < end:
            client.get("/a")
            sent += 1
    throttle = stack.stats()["throttle"]
    print(sent, throttle["rate_per_host"]["wats"], throttle["fleet"]["local_fallbacks"])
""")


def test_station_processes_that_took_turns_together_split_the_rate_while_redis_is_down(tmp_path: Path,
                                                                                      own_redis: Any) -> None:
    """Three station processes, ``expected_processes`` left at 1, Redis SIGKILLed: each sent at the
    fleet's whole rate (30/s, burst 3) for as long as it was down, three times what the server was to see."""
    script = tmp_path / "share.py"
    script.write_text(SHARE)
    procs = [subprocess.Popen([sys.executable, str(script), own_redis.url, str(tmp_path), "3"],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready-*"))) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a station did not start"
            time.sleep(0.05)
        own_redis.kill()
        (tmp_path / "redis-killed").touch()
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs)
    for sent, rate, fallbacks in outputs:
        assert float(rate) == 10.0 and int(fallbacks) == int(sent)  # 30 / 3, from the local bucket
        # in its second without Redis: a burst of 3 // 3 = 1, then 10 a second (alone: 3 + 30)
        assert int(sent) <= 1 + 10 + 1, f"{sent} requests in 1 s from one station; its share is 10/s, burst 1"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_station_of_ever_new_hosts_keeps_what_it_knows_of_them_bounded(mode: str, fleet_url: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each host's station count and rate store was kept for the layer's life: a client of ever new hosts
    grew them, and ``stats()``, without end."""
    from pywats_transport.policies import fleet_throttle

    monkeypatch.setattr(fleet_throttle, "MAX_BUCKETS", 8)
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=fleet_url, rate=1000, burst=100)
    caller = Caller(mode, layer)
    run = uuid.uuid4().hex[:8]
    try:
        for i in range(40):
            assert (await caller.get(f"http://h{i}-{run}/a")).status_code == 200
        seen = layer.stats()["fleet"]["stations_seen"]
        assert 4 <= len(seen) <= 8 and f"h39-{run}" in seen
        assert len(layer.fleet._stores) <= 8
        await caller.get(f"http://h0-{run}/a")  # a host met again is counted again
        assert layer.stats()["fleet"]["stations_seen"][f"h0-{run}"] == 1
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_station_idle_past_the_presence_window_is_no_longer_counted(mode: str, fleet_url: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pywats_transport.policies import fleet_throttle

    monkeypatch.setattr(fleet_throttle, "PRESENCE_MS", 300)
    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    host = f"idle-{mode}-{uuid.uuid4().hex[:8]}"
    layers = [cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                  redis_url=fleet_url, rate=1000, burst=100, expected_processes=1) for _ in range(2)]
    busy, idle = (Caller(mode, layer, base_url=f"http://{host}") for layer in layers)
    try:
        for caller in (idle, busy):  # connected first, so that the two turns below come well within 300 ms
            await caller.get(f"http://warm-{host}/a")
        await idle.get("/a")
        await busy.get("/a")
        assert layers[0].stats()["fleet"]["stations_seen"][host] == 2
        await asyncio_sleep(0.5)
        await busy.get("/a")
        assert layers[0].stats()["fleet"]["stations_seen"][host] == 1
    finally:
        await busy.close()
        await idle.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_local_share_divides_the_burst_too_or_is_set(mode: str) -> None:
    """Each process kept the whole burst while Redis was down: four processes could send four bursts at
    once to a host the fleet holds to one."""
    from pywats_transport import ThrottledError

    cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
    nowhere = f"redis://127.0.0.1:{free_port()}"
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=nowhere, rate=4, burst=8, expected_processes=4, max_wait=0.05)
    caller = Caller(mode, layer)
    for _ in range(2):  # 8 / 4 at once; then 1 per second
        assert (await caller.get("/a")).status_code == 200
    with pytest.raises(ThrottledError, match="over max_wait"):
        await caller.get("/a")
    await caller.close()
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                redis_url=nowhere, rate=40, burst=8, expected_processes=4, local_rate=2.5, local_burst=3)
    caller = Caller(mode, layer)
    for _ in range(3):
        await caller.get("/a")
    assert layer.stats()["rate_per_host"]["test"] == 2.5 and layer.policy.settings.burst == 3
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_password_may_come_from_the_environment(mode: str, redis_binary: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``REDIS_PASSWORD`` reaches every Redis connection of ours: the cache's and the fleet rate's (limits)."""

    server = RedisServer(redis_binary, tmp_path, "--requirepass", "pw-from-env")
    server.start()
    monkeypatch.setenv("REDIS_PASSWORD", "pw-from-env")
    try:
        build = build_transport if mode == "sync" else build_async_transport
        stack = build(inner=httpx.MockTransport(lambda r: httpx.Response(200)), enable_retry=False,
                      cache={"mode": "ttl", "storage": "redis", "redis_url": server.url},
                      throttle={"enabled": True, "backend": "redis", "redis_url": server.url, "rate": 50})
        caller = Caller(mode, stack)
        try:
            for _ in range(3):
                assert (await caller.get("/a")).status_code == 200
            stats = stack.stats()
            assert stats["throttle"]["fleet"]["redis_failures"] == 0
            assert stats["throttle"]["fleet"]["local_fallbacks"] == 0
            assert stats["cache"]["hits"] == 2
        finally:
            await caller.close()
    finally:
        server.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_tls_to_redis_with_the_ca_as_a_url_option(mode: str, redis_binary: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """``rediss://`` to a real TLS redis-server: the cache, its near cache's subscription and the fleet rate
    all connect with the CA given in the URL; without it the certificate is refused, not trusted."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = RedisServer(redis_binary, tmp_path)
    server.args = ("--port", "0", "--tls-port", str(server.port), "--tls-cert-file", str(tmp_path / "server.pem"),
                   "--tls-key-file", str(tmp_path / "server.pem"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                   "--tls-auth-clients", "no")
    server.start()
    tls_url = f"rediss://127.0.0.1:{server.port}/0"
    build = build_transport if mode == "sync" else build_async_transport
    try:
        stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False,
                      redis={"url": f"{tls_url}?ssl_ca_certs={tmp_path / 'ca.pem'}"},
                      cache={"mode": "ttl", "storage": "redis", "near_cache": True},
                      throttle={"enabled": True, "backend": "redis", "rate": 50})
        caller = Caller(mode, stack)
        try:
            deadline = time.monotonic() + 5
            while not stack.layer("cache")._near_sub.listening and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stack.layer("cache")._near_sub.listening
            assert [(await caller.get("/tls")).json()["n"] for _ in range(3)] == [1, 1, 1]
            stats = stack.stats()
            assert stats["cache"]["redis_failures"] == 0 and stats["throttle"]["fleet"]["local_fallbacks"] == 0
        finally:
            await caller.close()
        untrusted = build(inner=httpx.MockTransport(Counter()), enable_retry=False, redis={"url": tls_url},
                          cache={"mode": "ttl", "storage": "redis"})
        caller = Caller(mode, untrusted)
        try:
            assert [(await caller.get("/tls")).json()["n"] for _ in range(2)] == [1, 2]  # from the network
            assert untrusted.stats()["cache"]["redis_outages"] == 1
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text  # the log says why
        finally:
            await caller.close()
    finally:
        server.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_wrong_password_is_named_and_never_shown(mode: str, redis_binary: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(redis_binary, tmp_path, "--requirepass", "the-right-one")
    server.start()
    url = f"redis://:not-the-password@127.0.0.1:{server.port}/0"
    build = build_transport if mode == "sync" else build_async_transport
    try:
        stack = build(inner=httpx.MockTransport(Counter()), enable_retry=False, redis={"url": url},
                      cache={"mode": "ttl", "storage": "redis"}, throttle={"enabled": True, "backend": "redis"})
        caller = Caller(mode, stack)
        try:
            assert [(await caller.get("/pw")).json()["n"] for _ in range(2)] == [1, 2]
        finally:
            await caller.close()
        said = [r.getMessage() for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(said) == 2 and all("AuthenticationError" in line for line in said)  # the cache, the rate
        assert "not-the-password" not in caplog.text
    finally:
        server.kill()


# -- one fetch per URL for the fleet ---------------------------------------------------------------------

SAME_TIME = textwrap.dedent("""
    import sys, time
    import httpx
    from pywats_transport import build_transport

    url, redis_url, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stack = build_transport(profile="wats", enable_throttling=False, cache={"storage": "redis", "redis_url": redis_url})
    with httpx.Client(transport=stack, base_url=url) as client:
        time.sleep(max(0.0, start - time.time()))  # every process misses at the same moment
        bodies = [client.get(f"/slow/{i}").json()["n"] for i in range(5)]
    print(",".join(map(str, bodies)), stack.stats()["cache"]["fleet_fetches_awaited"])
""")


def test_processes_that_miss_together_fetch_once(tmp_path: Path, fleet_url: str) -> None:
    import asyncio as _asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from pywats_transport._server import BackgroundServer

    counts: dict[str, int] = {}

    async def slow(request: Any) -> JSONResponse:
        key = request.path_params["i"]
        counts[key] = counts.get(key, 0) + 1
        await _asyncio.sleep(0.2)  # long enough for the others to miss meanwhile
        return JSONResponse({"n": counts[key]})

    script = tmp_path / "same_time.py"
    script.write_text(SAME_TIME)
    with BackgroundServer(Starlette(routes=[Route("/slow/{i}", slow)])) as server:
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, str(script), server.url, fleet_url, str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert counts == {str(i): 1 for i in range(5)}  # one server request per URL for the four processes
    assert all(out[0] == "1,1,1,1,1" for out in outputs)  # every process got that one answer
    assert sum(int(out[1]) for out in outputs) >= 3  # the others waited for the one fetching


@pytest.mark.anyio
async def test_a_fetch_its_caller_gave_up_on_lets_the_others_fetch_at_once(fleet_url: str) -> None:
    """An asyncio station's GET is cancelled while it fetches (``asyncio.wait_for`` around a call gives up):
    another station waiting for that fetch, and another task of its own, go on at once, and still fetch
    once between them. They waited out ``coalesce_timeout`` (5 s here) for a fetch nobody was doing."""
    server = Counter()

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return server(request)

    def station() -> AsyncCacheLayer:
        return AsyncCacheLayer(httpx.MockTransport(slow), mode="ttl", storage="redis", redis_url=fleet_url,
                               coalesce_timeout=5)

    path = f"/fleet/given-up/{uuid.uuid4().hex}"
    async with httpx.AsyncClient(transport=station(), base_url="http://test") as a, \
            httpx.AsyncClient(transport=station(), base_url="http://test") as b:
        leader = asyncio.create_task(a.get(path))
        await asyncio.sleep(0.1)  # the leader holds the fleet's lock and fetches
        start = time.monotonic()
        followers = asyncio.gather(a.get(path), b.get(path))
        await asyncio.sleep(0.05)
        leader.cancel()
        answers = await followers
        waited = time.monotonic() - start
    assert leader.cancelled()
    assert waited < 2.5, f"the followers waited {waited:.1f} s for a fetch given up on"
    assert [answer.json()["n"] for answer in answers] == [1, 1] and server.count == 1


def test_a_fetch_interrupted_by_ctrl_c_lets_the_others_fetch_at_once(fleet_url: str) -> None:
    """Ctrl-C reaches a sync station's thread while it fetches: the station's other threads and another
    station waiting for that fetch go on at once (they waited out ``coalesce_timeout``, 5 s here)."""
    server = Counter()
    fetching = threading.Event()

    def origin(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-first"):
            fetching.set()
            time.sleep(0.3)
            raise KeyboardInterrupt
        time.sleep(0.1)
        return server(request)

    def station() -> CacheLayer:
        return CacheLayer(httpx.MockTransport(origin), mode="ttl", storage="redis", redis_url=fleet_url,
                          coalesce_timeout=5)

    path = f"/fleet/interrupted-fetch/{uuid.uuid4().hex}"
    outcomes: dict[str, Any] = {}

    def call(name: str, client: httpx.Client, **headers: str) -> None:
        try:
            outcomes[name] = client.get(path, headers=headers).json()["n"]
        except BaseException as exc:  # noqa: BLE001 - the thread's outcome, asserted below
            outcomes[name] = type(exc)

    with httpx.Client(transport=station(), base_url="http://test") as a, \
            httpx.Client(transport=station(), base_url="http://test") as b:
        first = threading.Thread(target=call, args=("first", a), kwargs={"x-first": "1"})
        first.start()
        assert fetching.wait(5)
        start = time.monotonic()
        followers = [threading.Thread(target=call, args=(name, client)) for name, client in (("same", a), ("other", b))]
        for thread in followers:
            thread.start()
        for thread in (first, *followers):
            thread.join(30)
        waited = time.monotonic() - start
    assert outcomes == {"first": KeyboardInterrupt, "same": 1, "other": 1}
    assert waited < 2.5, f"the followers waited {waited:.1f} s for a fetch interrupted"
    assert server.count == 1


# -- the near cache ----------------------------------------------------------------------------------------

def near(mode: str, server: Any, redis_url: str) -> tuple[Caller, Any]:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url, near_cache=True,
                redis_retry_after=5)
    return Caller(mode, layer), layer


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_near_cache_is_bounded_in_bytes_too(mode: str, redis_url: str) -> None:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(lambda r: httpx.Response(200, content=b"x" * 1000)), mode="ttl",
                storage="redis", redis_url=redis_url, near_cache=True, max_bytes=1500)
    caller = Caller(mode, layer)
    base = f"/near-bytes/{mode}/{uuid.uuid4().hex}"
    try:
        for name in ("a", "b"):
            await caller.get(f"{base}/{name}")
        stats = layer.stats()
        assert (stats["near_entries"], stats["near_body_bytes"]) == (1, 1000)  # /a went to keep /b near
        assert (await caller.get(f"{base}/a")).extensions["caching"]["from_cache"]  # from Redis, which kept it
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_near_cache_keeps_an_entry_no_longer_than_it_is_fresh(mode: str, redis_url: str) -> None:
    """TTL 2 s, near cache 5 s: neither the station that fetched the entry nor one that read it from Redis
    half-way through its life serves it once the 2 s are over. Both kept it near for ``near_ttl``, and
    served it for 5 s."""
    server = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    a, b = (Caller(mode, cls(httpx.MockTransport(server), mode="ttl", ttl=2, storage="redis", redis_url=redis_url,
                             near_cache=True, near_ttl=5)) for _ in range(2))
    path = f"/near/ttl/{uuid.uuid4().hex}"
    try:
        assert (await a.get(path)).json()["n"] == 1
        await asyncio.sleep(1.0)
        assert (await b.get(path)).extensions["caching"]["from_cache"]  # from Redis, about 1 s left
        assert (await b.get(path)).extensions["caching"]["from_cache"]  # from the near cache
        await asyncio.sleep(1.3)
        assert (await b.get(path)).json()["n"] == 2, "the reader served the entry past its TTL"
        assert (await a.get(path)).json()["n"] in (2, 3), "the fetcher served the entry past its TTL"
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_near_cache_hits_need_no_redis_and_a_lost_subscription_empties_it(mode: str, own_redis: Any) -> None:
    redis = own_redis
    server = Counter()
    caller, layer = near(mode, server, redis.url)
    lookups = []
    original = layer.storage.client.hgetall
    layer.storage.client.hgetall = lambda *a: lookups.append(a) or original(*a)
    try:
        await caller.get("/n/1")
        asked = len(lookups)
        for _ in range(5):
            assert (await caller.get("/n/1")).extensions["caching"]["from_cache"]
        assert len(lookups) == asked and server.count == 1  # answered from process memory, Redis not asked
        assert layer.stats()["near_entries"] == 1
        redis.kill()  # the subscription is gone: invalidations could be missed, so nothing is kept
        deadline = time.monotonic() + 3
        while layer.stats()["near_entries"] and time.monotonic() < deadline:
            await asyncio_sleep(0.02)
        assert layer.stats()["near_entries"] == 0
        assert (await caller.get("/n/1")).status_code == 200  # Redis down: the network answers
    finally:
        await caller.close()
        redis.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_near_caches_drop_what_any_process_invalidates(mode: str, fleet_url: str) -> None:
    server = Counter()
    writer, writer_layer = near(mode, server, fleet_url)
    reader, reader_layer = near(mode, server, fleet_url)
    path = f"/near/{mode}/items/1"
    await writer.get(path)
    assert (await reader.get(path)).extensions["caching"]["from_cache"]  # from Redis, now kept near
    assert (await reader.get(path)).extensions["caching"]["from_cache"] and reader_layer.stats()["near_entries"] == 1
    await writer.request("PUT", f"/near/{mode}/items")
    assert not (await writer.get(path)).extensions["caching"]["from_cache"]  # its own near entry went at once
    deadline = time.monotonic() + 2.0
    while reader_layer.stats()["near_entries"] and time.monotonic() < deadline:
        await asyncio_sleep(0.005)
    assert reader_layer.stats()["near_entries"] == 0 and reader_layer.stats()["near_invalidations"] >= 1
    after = await reader.get(path)
    assert after.json()["n"] > 1  # the answer fetched after the write, not the one kept near before it
    await writer.close()
    await reader.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_near_cache_started_while_redis_is_down_subscribes_when_it_comes(mode: str, own_redis: Any) -> None:
    """A station may start before Redis: once Redis is there, its near cache hears invalidations as any other."""
    own_redis.kill()
    server = Counter()
    reader, reader_layer = near(mode, server, own_redis.url)
    reader_layer.storage.guard.retry_after = 0.05  # try Redis again soon
    own_redis.start()
    writer, _ = near(mode, server, own_redis.url)
    path = f"/late/{mode}/items/1"
    try:
        await writer.get(path)
        # Kept near only once the reader listens for invalidations again (and its skip window has passed).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            await reader.get(path)
            if reader_layer.stats()["near_entries"]:
                break
            await asyncio_sleep(0.06)
        assert reader_layer.stats()["near_entries"] == 1 and reader_layer._near_sub.listening
        await writer.request("PUT", f"/late/{mode}/items")
        deadline = time.monotonic() + 3
        while reader_layer.stats()["near_entries"] and time.monotonic() < deadline:
            await asyncio_sleep(0.01)
        assert reader_layer.stats()["near_entries"] == 0  # the invalidation reached it
        assert (await reader.get(path)).json()["n"] > 1
    finally:
        await writer.close()
        await reader.close()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.mark.parametrize("missing", ["pyrate_limiter", "redis"])
def test_the_fleet_rate_without_its_extra_says_what_to_install(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pywats_transport.layers.throttle import ThrottleLayer

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'pywats-transport\[redis\]'"):
        ThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_redis_killed_while_the_server_answers(mode: str, cache_mode: str, method: str, own_redis: Any) -> None:
    """Redis dies between a request's lookup and the store of its answer (or a write's invalidation):
    the answer still reaches the caller, body and all, and the outage is counted."""
    redis = own_redis
    origin = Counter(headers={"cache-control": "max-age=60"})

    def answer_after_redis_died(request: httpx.Request) -> httpx.Response:
        redis.kill()  # SIGKILL, after the lookup went through
        return origin(request)

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(answer_after_redis_died), mode=cache_mode, storage="redis", redis_url=redis.url)
    caller = Caller(mode, layer)
    try:
        response = await caller.request(method, "/items/1")
        assert response.status_code == 200 and response.json()["n"] == 1
        assert (await caller.request(method, "/items/1")).json()["n"] == 2  # Redis skipped: to the network
        stats = layer.stats()
        assert stats["redis_outages"] == 1 and stats["storage_errors"] >= 1
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_304_answered_as_redis_dies_is_served_from_the_entry(mode: str, own_redis: Any) -> None:
    """rfc mode: the origin confirms the stored entry (304) just as Redis dies; the caller gets the stored
    body, revalidated, without a second request to the origin."""
    redis, sent = own_redis, []

    def origin(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        headers = {"etag": '"v1"', "cache-control": "max-age=0"}
        if request.headers.get("if-none-match") == '"v1"':
            redis.kill()
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, json={"n": len(sent)}, headers=headers)

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(origin), mode="rfc", storage="redis", redis_url=redis.url))
    try:
        assert (await caller.get("/etag")).json() == {"n": 1}
        again = await caller.get("/etag")
        assert again.status_code == 200 and again.json() == {"n": 1} and again.extensions["caching"]["revalidated"]
        assert len(sent) == 2
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_full_redis_that_evicts_nothing_still_serves_hits_and_takes_invalidations(
        mode: str, redis_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis's default policy once it has a maxmemory is to refuse writes, and only writes: what is stored
    is served, a write still drops it for every station, and new answers go unstored (each station's log
    says what to change, once). A refused store used to be taken for an outage: the station skipped Redis for
    ``retry_after``, its write's invalidation with it, and the other stations served the pre-write entry."""
    server = RedisServer(redis_binary, tmp_path, "--maxmemory-policy", "noeviction")
    server.start()
    filler = sync_client(server.url, 1.0)
    origin = Counter()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    a, b = (cls(httpx.MockTransport(origin), mode="ttl", ttl=60, storage="redis", redis_url=server.url,
                redis_retry_after=30) for _ in range(2))
    writer, reader = Caller(mode, a), Caller(mode, b)
    try:
        stored = [(await writer.get(path)).json()["n"] for path in ("/full/item", "/full/other")]
        filler.mset({f"fill{i}": b"v" * 10_000 for i in range(100)})
        # Full, well past the bound: a write's buffers freed after it was refused make no room
        filler.config_set("maxmemory", int(filler.info("memory")["used_memory"]) - 256 * 1024)
        with pytest.raises(Exception, match="maxmemory"):
            filler.set("one-more", b"v")
        assert [(await writer.get("/full/new")).json()["n"] for _ in range(2)] == [3, 4]  # not stored
        assert (await writer.get("/full/other")).json()["n"] == stored[1]  # a hit: the writer still reads
        await writer.request("PUT", "/full/item")
        assert (await reader.get("/full/item")).json()["n"] == 6, "the pre-write entry was served"
        assert (await reader.get("/full/other")).json()["n"] == stored[1]
        stats = a.stats()
        assert stats["redis_outages"] == 0 and stats["redis_writes_refused_full"] >= 2
        assert stats["redis_invalidations_unconfirmed"] == 0
        assert caplog.text.count("Redis is full and evicts nothing") == 2  # once by each station
        rate_cls = ThrottleLayer if mode == "sync" else AsyncThrottleLayer
        rate = rate_cls(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                        redis_url=server.url, rate=100, burst=10)
        rated = Caller(mode, rate)
        assert (await rated.get("/full/rate")).status_code == 200  # every turn is a write: the local bucket's
        assert (rate.stats()["fleet"]["redis_outages"], rate.stats()["fleet"]["local_fallbacks"]) == (1, 1)
        await rated.close()
        assert "give it maxmemory-policy allkeys-lru" in caplog.text
        filler.flushall()  # room again: the next answer is stored
        assert [(await writer.get("/full/new")).json()["n"] for _ in range(2)] == [7, 7]
        assert "Redis has room for the cache again" in caplog.text
    finally:
        await writer.close()
        await reader.close()
        filler.close()
        server.kill()


@pytest.mark.anyio
async def test_services_join_the_fleet_from_their_client_json(tmp_path: Path, redis_url: str) -> None:
    """Two stations' services whose client.json names the fleet tier (no environment): one server GET for
    both, and a write by one is seen by the other."""
    from pywats_transport.emulator import EmulatorServer
    from pywats_transport.service import AsyncClientService, ClientConfig

    route = "GET /api/Product/{partNumber}"
    with EmulatorServer(token="svc") as emu:
        services = []
        for station in ("a", "b"):
            path = tmp_path / f"{station}.json"
            path.write_text(json.dumps({
                "service_address": emu.url, "api_token": "svc", "queue_dir": str(tmp_path / station), "health_port": 0,
                "metrics_port": None, "transport": {"redis": {"url": redis_url}, "cache": {"storage": "redis"},
                                                    "throttle": {"backend": "redis"}}}))
            services.append(AsyncClientService(ClientConfig.load(path)))
        a, b = [await service.start() for service in services]
        try:
            assert a.api is not None and b.api is not None
            assert (b.api.config.cache.storage, b.api.config.throttle.backend) == ("redis", "redis")
            assert b.api.config.cache.mode == "ttl"  # the WATS profile beneath the section
            product = await a.api.product.get("PN-1001")
            await b.api.product.get("PN-1001")
            assert emu.state.requests[route] == 1
            await a.api.product.save(product)
            await b.api.product.get("PN-1001")
            assert emu.state.requests[route] == 2
        finally:
            for service in (a, b):
                await service.stop()


@pytest.mark.anyio
async def test_a_service_sends_reports_while_its_redis_is_down(tmp_path: Path, own_redis: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A client service on the fleet tier (configured through the environment): Redis dies, reports are
    still confirmed, /health stays ok, and /health/details says what runs degraded until Redis is back."""
    from pywats_transport.emulator import EmulatorServer
    from pywats_transport.service import AsyncClientService, ClientConfig

    from .test_service import done, drop, report, until

    for name, value in {"REDIS__URL": own_redis.url, "REDIS__RETRY_AFTER": "0.2", "CACHE__STORAGE": "redis",
                        "THROTTLE__BACKEND": "redis"}.items():
        monkeypatch.setenv(f"PYWATS_TRANSPORT_{name}", value)
    with EmulatorServer(token="svc") as emu:
        cfg = ClientConfig(service_address=emu.url, api_token="svc", queue_dir=str(tmp_path / "queue"), health_port=0,
                           metrics_port=None, poll_interval=0.05, ping_interval=0.2, retry_backoff_max=0.5)
        queue = Path(cfg.queue_dir)
        async with AsyncClientService(cfg) as service, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as health:
            drop(queue, "a.json", report("SN-R1"))
            await until(lambda: len(done(queue)) == 1)
            assert (await health.get("/health/details")).json()["health"]["degraded"] == []
            own_redis.kill()
            drop(queue, "b.json", report("SN-R2"))
            await until(lambda: len(done(queue)) == 2)
            assert service.api is not None
            await service.api.product.get("PN-1001")  # a lookup meets the dead Redis too
            assert (await health.get("/health")).json() == {"status": "ok"}
            details = (await health.get("/health/details")).json()
            cache_down, rate_down = details["health"]["degraded"]
            assert cache_down.startswith("Redis unavailable for the cache for ")
            assert rate_down.startswith("Redis unavailable for the fleet rate for ")
            assert details["cache"]["redis_outages"] == 1 and details["throttle"]["fleet"]["redis_down_seconds"] > 0
            own_redis.start()
            await asyncio.sleep(0.3)  # past retry_after: the next calls try Redis again
            await service.api.product.get("PN-1001")
            drop(queue, "c.json", report("SN-R3"))
            await until(lambda: len(done(queue)) == 3)
            assert (await health.get("/health/details")).json()["health"]["degraded"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_storage_errors_are_counted_by_the_layer_they_happen_in(mode: str) -> None:
    """Two clients in one process: the one whose Redis is down counts its storage errors; the other,
    on memory, counts none."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    down = cls(httpx.MockTransport(Counter()), mode="ttl", storage="redis",
               redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    fine = cls(httpx.MockTransport(Counter()), mode="ttl")
    callers = [Caller(mode, down), Caller(mode, fine)]
    try:
        for caller in callers:
            for _ in range(3):
                assert (await caller.get("/counted")).status_code == 200
        assert down.stats()["storage_errors"] == 3 and fine.stats()["storage_errors"] == 0
    finally:
        for caller in callers:
            await caller.close()
