"""A Redis that comes back as a new process holding old data (restored from a snapshot, or a replica
promoted by a failover) held entries that writes had dropped since, and every station served them again
until they expired. The cache is now trusted only on the Redis process it was written on."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from pywats_transport.caching.redis_keys import EPOCH, prefixes
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .conftest import RedisCluster
from .helpers import Caller
from .test_index_eviction import Versioned

pytestmark = pytest.mark.redis


def station(mode: str, item: Versioned, url: str) -> Caller:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    return Caller(mode, cls(httpx.MockTransport(item), mode="ttl", ttl=60, storage="redis", redis_url=url,
                            redis_retry_after=0.2))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_redis_restored_from_a_snapshot_does_not_serve_what_writes_dropped(
        mode: str, own_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    item = Versioned()
    writer, reader = station(mode, item, own_redis.url), station(mode, item, own_redis.url)
    path = f"/items/{uuid.uuid4().hex}"
    try:
        assert (await reader.get(path)).json() == {"v": 0}
        with Redis.from_url(own_redis.url) as admin:
            admin.save()  # the snapshot holds the entry
        assert (await writer.request("PUT", path)).status_code == 200  # ...which the write drops
        own_redis.kill()
        own_redis.start()  # a new process, restored from the snapshot
        with Redis.from_url(own_redis.url) as admin:
            assert admin.exists(prefixes("http://test" + path)[-1])  # the dropped entry's index is back
        with caplog.at_level(logging.WARNING, logger="pywats_transport.cache"):
            after = await reader.get(path)
        assert after.json() == {"v": 1} and not after.extensions["caching"]["from_cache"]
        assert "keys were cleared" in caplog.text
        await asyncio.sleep(0.25)  # past retry_after, had the reconnection counted as a failure
        again = await writer.get(path)
        assert again.json() == {"v": 1} and again.extensions["caching"]["from_cache"]  # the cache works on
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_cluster_node_restored_from_a_snapshot_does_not_serve_what_writes_dropped(
        mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As above, on a Redis Cluster: the node owning the cache's slot comes back from its snapshot (as a replica
    promoted by a failover would, without the last invalidations). The stations reach it through another node."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        pytest.skip("redis-server and redis-cli are not installed (.ci/run installs the Debian package redis-server)")
    cluster = RedisCluster(binary, cli, tmp_path)
    cluster.start()
    item = Versioned()
    url = cluster.url_without(b"{pwt}")
    writer, reader = station(mode, item, url), station(mode, item, url)
    path = f"/items/{uuid.uuid4().hex}"
    try:
        assert (await reader.get(path)).json() == {"v": 0}
        assert (await reader.get(path)).extensions["caching"]["from_cache"]
        owner = cluster.owner(b"{pwt}")
        with Redis(port=owner.port) as admin:
            admin.save()  # the snapshot holds the entry
        assert (await writer.request("PUT", path)).status_code == 200  # ...which the write drops
        owner.kill()
        owner.start()  # a new process, restored from the snapshot, owning the slot again
        cluster.wait_ok()
        with Redis(port=owner.port) as admin:
            assert admin.exists(prefixes("http://test" + path)[-1])  # the dropped entry's index is back
        with caplog.at_level(logging.WARNING, logger="pywats_transport.cache"):
            seen = []
            for _ in range(6):  # past the skip after a reconnection failed, if one did
                seen.append((await reader.get(path)).json()["v"])
                await asyncio.sleep(0.1)
        assert 0 not in seen, seen
        assert "keys were cleared" in caplog.text
        await writer.get(path)  # its connection to the restarted node is found closed, or not
        await asyncio.sleep(0.3)  # past retry_after
        assert (await writer.get(path)).extensions["caching"]["from_cache"]  # the cache works on
    finally:
        await writer.close()
        await reader.close()
        cluster.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_station_goes_to_the_network_while_another_clears(mode: str, redis_url: str) -> None:
    item = Versioned()
    path = f"/items/{uuid.uuid4().hex}"
    with Redis.from_url(redis_url) as admin:
        run_id = admin.info("server")["run_id"]
        admin.set(EPOCH, f"clearing:{run_id}")  # as a station does while it clears
        caller = station(mode, item, redis_url)
        try:
            first, second = await caller.get(path), await caller.get(path)
            assert not first.extensions["caching"]["from_cache"] and not second.extensions["caching"]["from_cache"]
            assert item.gets == 2 and caller.transport.stats()["storage_errors"] >= 1
            admin.set(EPOCH, run_id)  # the clear is over
            await asyncio.sleep(0.25)  # past retry_after
            await caller.get(path)
            assert (await caller.get(path)).extensions["caching"]["from_cache"]
        finally:
            admin.set(EPOCH, run_id)
            await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_lookups_keep_the_epoch_in_use(mode: str, cache_mode: str, redis_url: str) -> None:
    """The epoch is read only as a connection starts. Left idle, an LRU Redis that the cache fills evicts
    it first, and the next station to connect clears the whole cache."""
    item = Versioned()
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    caller = Caller(mode, cls(httpx.MockTransport(item), mode=cache_mode, ttl=60, storage="redis", redis_url=redis_url))
    path = f"/items/{uuid.uuid4().hex}"
    try:
        await caller.get(path)
        with Redis.from_url(redis_url) as admin:  # as if last used an hour ago
            admin.restore(EPOCH, 0, admin.dump(EPOCH), replace=True, idletime=3600)
            assert (await caller.get(path)).extensions["caching"]["from_cache"]
            assert admin.object("idletime", EPOCH) <= 1  # s
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_station_waits_out_a_short_clear(mode: str, redis_url: str) -> None:
    """After a plain restart the first station clears an empty Redis at once: the others wait for it
    instead of counting an outage of their own."""
    item = Versioned()
    path = f"/items/{uuid.uuid4().hex}"
    with Redis.from_url(redis_url) as admin:
        run_id = admin.info("server")["run_id"]
        admin.set(EPOCH, f"clearing:{run_id}")

        def finish() -> None:  # the other station's clear
            with Redis.from_url(redis_url) as other:
                other.set(EPOCH, run_id)

        done = threading.Timer(0.1, finish)
        done.start()
        caller = station(mode, item, redis_url)
        try:
            await caller.get(path)
            assert (await caller.get(path)).extensions["caching"]["from_cache"]
            assert caller.transport.stats()["storage_errors"] == 0
        finally:
            done.join()
            admin.set(EPOCH, run_id)
            await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("filled_by", ["the cache", "other data"])
async def test_a_full_redis_restored_from_a_snapshot_is_cleared_and_used_again(
        mode: str, filled_by: str, own_redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis comes back from its snapshot full, and evicts nothing: the station that first meets it clears
    the cache all the same. Filled by the cache, the clear makes room and the cache works on; filled by
    other data, what does not write (lookups, invalidations) works on. The claim on the clear and the
    epoch's mark after it are writes, which the full Redis refused: the cache was never cleared, and no
    connection of the cache's was made for as long as Redis kept its data."""
    body = b"x" * 20_000

    def origin(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    station = Caller(mode, cls(httpx.MockTransport(origin), mode="ttl", ttl=60, storage="redis",
                               redis_url=own_redis.url, redis_retry_after=0.2))
    try:
        for i in range(100 if filled_by == "the cache" else 2):  # 2 MB of entries, or two
            await station.get(f"/big/{i}")
        with Redis.from_url(own_redis.url) as admin:
            if filled_by == "other data":
                admin.mset({f"other{i}": body for i in range(100)})
            admin.save()
        own_redis.kill()
        own_redis.start()  # a new process, restored from the snapshot...
        with Redis.from_url(own_redis.url) as admin:  # ...full, with Redis's default policy
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 256 * 1024)
            with pytest.raises(Exception, match="maxmemory"):
                admin.set("one-more", b"v")
        with caplog.at_level(logging.WARNING, logger="pywats_transport.cache"):
            first = await station.get("/big/0")
        assert not first.extensions["caching"]["from_cache"]
        assert "keys were cleared" in caplog.text
        await asyncio.sleep(0.25)  # past retry_after, had Redis been taken for down
        if filled_by == "the cache":
            stored = await station.get("/big/new")
            again = await station.get("/big/new")
            assert stored.extensions["caching"]["stored"] and again.extensions["caching"]["from_cache"]
        else:
            station.transport.invalidate("/big") if mode == "sync" else await station.transport.ainvalidate("/big")
            stats = station.transport.stats()
            assert (stats["redis_invalidations_unconfirmed"], stats["redis_outages"]) == (0, 0)
    finally:
        await station.close()
