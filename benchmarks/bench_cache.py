"""Cache layer: hit / miss / POST cost against raw MockTransport, against hishel's SQLite storage,
against a 20 ms loopback server, and memory per 1000 entries."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import hishel
import httpx
from hishel.httpx import AsyncCacheTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pywats_transport._server import BackgroundServer
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .common import Row, async_loop, interleaved, ok_response, paired_ratios, scratch_dir, sync_loop

SUITE = "cache"


def per_request(quick: bool) -> list[Row]:
    n, rounds = (200, 5) if quick else (500, 31)
    loop = asyncio.new_event_loop()
    tmp = scratch_dir()
    raw = httpx.AsyncClient(transport=httpx.MockTransport(ok_response), base_url="http://bench")
    cached = httpx.AsyncClient(transport=AsyncCacheLayer(httpx.MockTransport(ok_response), mode="ttl"),
                               base_url="http://bench")
    sqlite = httpx.AsyncClient(
        transport=AsyncCacheTransport(httpx.MockTransport(ok_response),
                                      storage=hishel.AsyncSqliteStorage(database_path=str(Path(tmp) / "b.db"))),
        base_url="http://bench",
    )
    miss_layer = AsyncCacheLayer(httpx.MockTransport(ok_response), mode="ttl", max_size=1_000_000)
    missing = httpx.AsyncClient(transport=miss_layer, base_url="http://bench")
    loop.run_until_complete(cached.get("/x"))
    loop.run_until_complete(sqlite.get("/x"))
    # Ratios paired within each round (drift cancels); SQLite apart: its thread would tax the next variant.
    gets = paired_ratios({"raw": async_loop(raw, loop), "hit": async_loop(cached, loop),
                          "miss": async_loop(missing, loop, url_of=lambda i: f"/m/{i}")}, n, rounds)
    posts = paired_ratios({"raw_post": async_loop(raw, loop, method="POST", content=b"{}"),
                           "post": async_loop(cached, loop, method="POST", content=b"{}")}, n, rounds, base="raw_post")
    sqlite_vs_ours = paired_ratios({"hit": async_loop(cached, loop), "sqlite_hit": async_loop(sqlite, loop)},
                                   n // 2, rounds, base="hit")
    raw_time = interleaved({"raw": async_loop(raw, loop)}, n, 3)["raw"]
    for c in (raw, cached, sqlite, missing):
        loop.run_until_complete(c.aclose())
    loop.close()
    hit, miss, post, sqlite_ratio = gets["hit"], gets["miss"], posts["post"], sqlite_vs_ours["sqlite_hit"]
    return [
        Row(SUITE, "raw MockTransport request (async)", raw_time * 1e6, "us"),
        Row(SUITE, "cache hit / raw", hit, "x", "<= 1.2", hit <= 1.2),
        Row(SUITE, "hishel AsyncSqliteStorage hit / our hit", sqlite_ratio, "x", ">= 5", sqlite_ratio >= 5),
        Row(SUITE, "POST through cache / raw POST", post, "x", "<= 1.05", post <= 1.05),
        Row(SUITE, "GET miss / raw", miss, "x", "<= 1.6", miss <= 1.6),
    ]


def fresh_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"partNumber": "PN-1", "name": "Power supply"}',
                          headers={"content-type": "application/json", "cache-control": "max-age=600",
                                   "etag": '"v1"'})


def rfc_mode(quick: bool) -> list[Row]:
    """RFC 9111 mode (the generic default) against raw httpx, async and sync, with a server that sends
    freshness headers; hishel's own CacheTransport on our storage is shown for comparison."""
    n, rounds = (200, 5) if quick else (500, 31)
    rows: list[Row] = []
    loop = asyncio.new_event_loop()
    raw = httpx.AsyncClient(transport=httpx.MockTransport(fresh_response), base_url="http://bench")
    hit = httpx.AsyncClient(transport=AsyncCacheLayer(httpx.MockTransport(fresh_response), mode="rfc"),
                            base_url="http://bench")
    miss = httpx.AsyncClient(transport=AsyncCacheLayer(httpx.MockTransport(fresh_response), mode="rfc",
                                                       max_size=1_000_000), base_url="http://bench")
    loop.run_until_complete(hit.get("/x"))
    ratios = paired_ratios({"raw": async_loop(raw, loop), "hit": async_loop(hit, loop),
                            "miss": async_loop(miss, loop, url_of=lambda i: f"/m/{i}")}, n, rounds)
    for c in (raw, hit, miss):
        loop.run_until_complete(c.aclose())
    loop.close()
    rows += [Row(SUITE, "rfc mode hit / raw (async)", ratios["hit"], "x", "<= 1.2", ratios["hit"] <= 1.2),
             Row(SUITE, "rfc mode miss / raw (async)", ratios["miss"], "x", "<= 1.6", ratios["miss"] <= 1.6)]
    raw_s = httpx.Client(transport=httpx.MockTransport(fresh_response), base_url="http://bench")
    hit_s = httpx.Client(transport=CacheLayer(httpx.MockTransport(fresh_response), mode="rfc"), base_url="http://bench")
    miss_s = httpx.Client(transport=CacheLayer(httpx.MockTransport(fresh_response), mode="rfc", max_size=1_000_000),
                          base_url="http://bench")
    hit_s.get("/x")
    ratios = paired_ratios({"raw": sync_loop(raw_s), "hit": sync_loop(hit_s),
                            "miss": sync_loop(miss_s, url_of=lambda i: f"/m/{i}")}, n, rounds)
    for c in (raw_s, hit_s, miss_s):
        c.close()
    rows += [Row(SUITE, "rfc mode hit / raw (sync)", ratios["hit"], "x", "<= 1.2", ratios["hit"] <= 1.2),
             Row(SUITE, "rfc mode miss / raw (sync)", ratios["miss"], "x", "<= 1.6", ratios["miss"] <= 1.6)]
    return rows


def loopback(quick: bool) -> list[Row]:
    async def item(request: Request) -> JSONResponse:
        await asyncio.sleep(0.02)
        return JSONResponse({"id": request.path_params["i"]})

    app = Starlette(routes=[Route("/q/{i}", item)])
    urls = [f"/q/{i}" for i in range(10)]
    queries = 100

    async def run(transport: httpx.AsyncBaseTransport, base: str) -> float:
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            start = time.perf_counter()
            for k in range(queries):
                await client.get(urls[k % len(urls)])
            return time.perf_counter() - start

    with BackgroundServer(app) as server:
        loop = asyncio.new_event_loop()
        without = loop.run_until_complete(run(httpx.AsyncHTTPTransport(), server.url))
        with_cache = loop.run_until_complete(run(AsyncCacheLayer(httpx.AsyncHTTPTransport(), mode="ttl"), server.url))
        loop.close()
    saved = 1 - with_cache / without
    return [
        Row(SUITE, "100 queries over 10 URLs, 20 ms server: without cache", without, "s"),
        Row(SUITE, "... with cache", with_cache, "s"),
        Row(SUITE, "time saved by the cache", saved * 100, "%", ">= 85", saved >= 0.85),
    ]


def memory(quick: bool) -> list[Row]:
    body = b"x" * 2048

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    layer = AsyncCacheLayer(httpx.MockTransport(handler), mode="ttl", max_size=1000)

    async def fill() -> None:
        async with httpx.AsyncClient(transport=layer, base_url="http://bench") as client:
            for i in range(1000):
                await client.get(f"/e/{i}")

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asyncio.run(fill())
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    added = sum(s.size_diff for s in after.compare_to(before, "filename")) / (1024 * 1024)
    assert len(layer.storage) == 1000
    return [Row(SUITE, "memory for 1000 entries of 2 KiB", added, "MiB", "< 12", added < 12)]


def run(quick: bool = False) -> list[Row]:
    return per_request(quick) + rfc_mode(quick) + loopback(quick) + memory(quick)
