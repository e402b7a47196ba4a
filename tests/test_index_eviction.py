"""Redis may evict an index set (a path prefix's list of cache keys) and keep the entries it named:
``allkeys-lru`` (the policy the fleet page asks for) samples keys, and counts idle time in whole seconds,
so it may pick a set over an entry read as often. A write then found nothing to drop, and every station
went on reading the pre-write entry until it expired."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from pywats_transport.caching.redis_connect import sync_client
from pywats_transport.caching.redis_keys import ENTRY, prefixes
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .conftest import RedisServer
from .helpers import Caller
from .test_write_race import RaceOrigin, while_reading

pytestmark = pytest.mark.redis


class Versioned:
    """An item whose version a PUT raises; GETs may be cached for a minute (rfc mode)."""

    def __init__(self) -> None:
        self.version = 0
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.version += 1
        else:
            self.gets += 1
        return httpx.Response(200, json={"v": self.version}, headers={"cache-control": "max-age=60"})


def stations(mode: str, handler: Any, url: str, cache_mode: str = "ttl") -> tuple[Caller, Caller]:
    """Two stations on one Redis: one writes, one reads."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    return tuple(Caller(mode, cls(httpx.MockTransport(handler), mode=cache_mode, ttl=60, storage="redis",  # type: ignore[return-value]
                                  redis_url=url)) for _ in range(2))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("write", ["PUT", "invalidate"])
async def test_an_entry_whose_index_set_is_gone_is_not_served_after_a_write(
        mode: str, cache_mode: str, write: str, fleet_url: str) -> None:
    """The set is deleted as eviction deletes it: the path's own set for a PUT of the path, the
    collection's for ``invalidate`` of the collection."""
    item = Versioned()
    writer, reader = stations(mode, item, fleet_url, cache_mode)
    admin = sync_client(fleet_url, 2.0)
    path = f"/items-{uuid.uuid4().hex}/1"
    try:
        assert (await reader.get(path)).json() == {"v": 0}
        assert (await reader.get(path)).extensions["caching"]["from_cache"]
        sets = prefixes("http://test" + path)
        assert admin.delete(sets[-1] if write == "PUT" else sets[-2]) == 1
        if write == "PUT":
            assert (await writer.request("PUT", path)).status_code == 200
        else:
            item.version += 1
            writer.transport.invalidate("http://test" + path.rsplit("/", 1)[0])
        after = await reader.get(path)
        assert after.json() == {"v": 1} and not after.extensions["caching"]["from_cache"]
        # The cache still caches the path: the answer fetched afresh is listed again and served.
        again = await writer.get(path)
        assert again.json() == {"v": 1} and again.extensions["caching"]["from_cache"]
        assert item.gets == 2
    finally:
        admin.close()
        await writer.close()
        await reader.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_a_fetch_whose_index_set_is_gone_when_a_write_comes_stores_nothing(
        mode: str, cache_mode: str, redis_url: str) -> None:
    """The write's invalidation finds the fetch's lease through the index; with the set gone it cannot,
    so the store must see for itself that the index lost the key."""
    origin = RaceOrigin(mode)
    handler = origin.sync_handler if mode == "sync" else origin.async_handler
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    slow, writer, later = (Caller(mode, cls(httpx.MockTransport(handler), mode=cache_mode, ttl=300, storage="redis",
                                            redis_url=redis_url)) for _ in range(3))
    admin = Redis.from_url(redis_url)
    path = f"/items/{uuid.uuid4().hex}"

    async def change() -> None:
        assert admin.delete(prefixes("http://test" + path)[-1]) == 1
        assert (await writer.request("PUT", path)).json() == {"v": 1}

    try:
        await while_reading(origin, slow, path, change)
        assert (await later.get(path)).json() == {"v": 1}
        assert slow.transport.stats()["redis_stores_overtaken_by_writes"] == 1
    finally:
        admin.close()
        for caller in (slow, writer, later):
            await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_write_after_redis_evicted_the_index_set_is_seen(mode: str, redis_binary: str, tmp_path: Path) -> None:
    """Real eviction: a full redis-server with ``allkeys-lru``. A hit reads the path's sets as well as the
    entry, so they are as recently used as the entry: LRU is sampled and counts idle time in whole seconds,
    and which of them goes first is chance, near even. Each attempt fills Redis until one of them goes."""
    server = RedisServer(redis_binary, tmp_path, "--maxmemory", "3mb")
    server.start()
    item = Versioned()
    writer, reader = stations(mode, item, server.url)
    admin = Redis.from_url(server.url)
    try:
        for _attempt in range(30):  # about half the attempts evict the set first (30 failing: under once in a million)
            path = f"/items/{uuid.uuid4().hex}"
            await reader.get(path)
            (key,) = reader.transport.policy.keys_under(None, path)
            own = prefixes("http://test" + path)[-1]
            while admin.exists(own) and admin.exists(ENTRY + key):
                await reader.get(path)  # keeps the entry hot (re-fetched, once another of its sets is gone)
                admin.set(f"filler:{uuid.uuid4().hex}", b"x" * 20_000)
            if admin.exists(ENTRY + key):
                break
        else:
            pytest.fail("Redis never evicted the index set before the entry")
        assert (await writer.request("PUT", path)).status_code == 200
        after = await reader.get(path)
        assert after.json() == {"v": item.version} and not after.extensions["caching"]["from_cache"]
    finally:
        admin.close()
        await writer.close()
        await reader.close()
        server.kill()


def test_the_index_finds_its_expired_keys_without_walking_before_any_can_have_expired() -> None:
    from pywats_transport.caching.index import PathIndex

    index = PathIndex()
    index.add("a", "http://h", "/api/a", 10.0)
    index.add("b", "http://h", "/api/b/c", 20.0)
    index.add("c", "http://g", "/", 30.0)
    assert index.expired(5.0) == [] and index.earliest == 10.0
    assert index.expired(15.0) == ["a"]
    index.discard("a")
    assert index.earliest == 20.0 and sorted(index.expired(25.0)) == ["b"]
    index.discard("b")
    index.add("d", "http://h", "/api", 12.0)  # a key that expires before the others
    assert index.expired(13.0) == ["d"] and sorted(index.expired(31.0)) == ["c", "d"]
