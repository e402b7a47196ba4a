"""The fleet tier on a real redis-server: one cache and one invalidation shared by station processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

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
                                                       redis_url: str) -> None:
    script = tmp_path / "station.py"
    script.write_text(STATION)
    args = (script, mode, wats_emulator.url, wats_emulator.token, redis_url)
    pn = f"PN-100{1 if mode == 'sync' else 2}"
    assert station(*args, f"get:{pn}") == [False]  # process A fetches and stores
    before = wats_emulator.state.requests["GET /api/Product/{partNumber}"]
    assert station(*args, f"get:{pn}") == [True]  # process B: a hit from Redis, no server request
    assert wats_emulator.state.requests["GET /api/Product/{partNumber}"] == before
    assert station(*args, f"put:{pn}") == ["saved"]  # process C writes (its own GET first is a hit)
    assert station(*args, f"get:{pn}", f"get:{pn}") == [False, True]  # process D: the pre-write entry is gone


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_invalidate_and_clear_reach_entries_other_layers_stored(mode: str, redis_url: str) -> None:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter()
    one = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url))
    other = cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url)
    base = f"/fleet/{mode}"
    for i in range(3):
        await one.get(f"{base}/items/{i}")
    await one.get(f"{base}/other")
    assert other.invalidate(f"http://test{base}/items") == 3  # a layer that stored nothing itself
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
async def test_redis_killed_and_restarted(mode: str, tmp_path: Path) -> None:
    import shutil

    from .conftest import RedisServer

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs the Debian package redis-server)")
    redis = RedisServer(binary, tmp_path)
    redis.start()
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
