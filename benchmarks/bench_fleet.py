"""Fleet tier on a real redis-server (loopback): a Redis hit against raw httpx, stale reads after writes
across processes, and one rate shared by four processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import httpx
from hishel import AsyncRedisStorage, RedisStorage
from hishel.httpx import AsyncCacheTransport, CacheTransport
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pywats_transport._server import BackgroundServer
from pywats_transport.caching.redis_connect import async_lookup_connection
from pywats_transport.caching.redis_lookup import AsyncLookups
from pywats_transport.fleet_demo import LocalRedis
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .common import Row, async_loop, ok_response, paired_ratios, scratch_dir, sync_loop

SUITE = "fleet"


PING, PONG = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"


def redis_hit(redis: LocalRedis, quick: bool) -> list[Row]:
    """A Redis hit, and the floor under it on this machine: a raw request followed by one loopback round
    trip to the same redis-server on a bare socket, no client library. That round trip alone costs well
    under a raw request, but interleaved with httpx's work each one also leaves the next request running
    on cold caches, so the floor is measured as the pair, not added up."""
    n, rounds = (200, 5) if quick else (500, 15)
    loop = asyncio.new_event_loop()
    raw = httpx.AsyncClient(transport=httpx.MockTransport(ok_response), base_url="http://bench")
    shared_layer = AsyncCacheLayer(httpx.MockTransport(ok_response), mode="ttl", storage="redis", redis_url=redis.url)
    shared = httpx.AsyncClient(transport=shared_layer, base_url="http://bench")
    near = httpx.AsyncClient(transport=AsyncCacheLayer(httpx.MockTransport(ok_response), mode="ttl", storage="redis",
                                                       redis_url=redis.url, near_cache=True, near_ttl=3600),
                             base_url="http://bench")
    # hishel's own Redis storage, for comparison: several round trips per hit.
    hishel_redis = AsyncRedis.from_url(redis.url)
    hishel = httpx.AsyncClient(transport=AsyncCacheTransport(httpx.MockTransport(ok_response),
                                                             storage=AsyncRedisStorage(hishel_redis)),
                               base_url="http://bench")
    loop.run_until_complete(shared.get("/x"))
    loop.run_until_complete(near.get("/near"))
    loop.run_until_complete(hishel.get("/hishel"))
    # What the hit's read of the entry costs alone: its script, on a lookup connection as the hit's.
    bare = AsyncLookups(lambda: async_lookup_connection(redis.url, 1.0), 1.0)
    (key,) = shared_layer.policy.keys_under(None, "/x")
    stream = loop.run_until_complete(asyncio.open_connection("127.0.0.1", redis.port))

    def timed(step: Callable[[], Awaitable[object]]) -> Callable[[int], float]:
        async def body(count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                await step()
            return time.perf_counter() - start
        return lambda count: loop.run_until_complete(body(count))

    async def read() -> None:
        await bare.look(key, "http://bench/x")

    async def floor() -> None:
        await raw.get("/x")
        stream[1].write(PING)
        await stream[0].readexactly(len(PONG))

    ratios = paired_ratios({"raw": async_loop(raw, loop), "redis": async_loop(shared, loop),
                            "near": async_loop(near, loop, url_of=lambda i: "/near"),
                            "bare": timed(read), "floor": timed(floor),
                            "hishel": async_loop(hishel, loop, url_of=lambda i: "/hishel")}, n, rounds)
    stream[1].close()
    for client in (raw, shared, near, hishel):
        loop.run_until_complete(client.aclose())
    loop.run_until_complete(bare.aclose())
    loop.run_until_complete(hishel_redis.aclose())
    loop.close()
    sync = _sync_redis_hit(redis, n, rounds)
    pinned = _on_one_core(redis, lambda: _sync_redis_hit(redis, n, rounds))
    commands = commands_per_hit(redis)
    return [Row(SUITE, "Redis hit / raw request (async)", ratios["redis"], "x", "<= 2", ratios["redis"] <= 2),
            Row(SUITE, "... floor: a raw request plus one bare PING round trip to redis-server (async)",
                ratios["floor"], "x"),
            Row(SUITE, "... the hit's read of the entry alone (its script on a redis-py connection, async)",
                ratios["bare"], "x"),
            Row(SUITE, "... hishel's RedisStorage hit, for comparison (async)", ratios["hishel"], "x"),
            Row(SUITE, "Redis hit / raw request (sync)", sync["redis"], "x", "<= 2", sync["redis"] <= 2),
            Row(SUITE, "... floor: a raw request plus one bare PING round trip to redis-server (sync)",
                sync["floor"], "x"),
            Row(SUITE, "... hishel's RedisStorage hit, for comparison (sync)", sync["hishel"], "x"),
            Row(SUITE, "... Redis commands (round trips) per hit, counted by redis-server: ours", commands["ours"], ""),
            Row(SUITE, "... and hishel's RedisStorage", commands["hishel"], ""),
            *([Row(SUITE, "... with redis-server on the bench's core (no cross-core wake-up): the floor (sync)",
                   pinned["floor"], "x"),
               Row(SUITE, "... and the Redis hit (sync)", pinned["redis"], "x")] if pinned else []),
            Row(SUITE, "near-cache hit / raw request (async)", ratios["near"], "x", "<= 1.2", ratios["near"] <= 1.2),
            Row(SUITE, "near-cache hit / raw request (sync)", sync["near"], "x", "<= 1.2", sync["near"] <= 1.2)]


def commands_per_hit(redis: LocalRedis) -> dict[str, float]:
    """Commands a hit sends to Redis, ours and hishel's, as redis-server's own ``MONITOR`` feed shows them
    (what a script runs inside Redis is marked as the script's, not sent): each is a round trip, which is
    what a hit costs on a network."""
    ours = httpx.Client(transport=CacheLayer(httpx.MockTransport(ok_response), mode="ttl", storage="redis",
                                             redis_url=redis.url), base_url="http://bench")
    hishel_redis = Redis.from_url(redis.url)
    hishel = httpx.Client(transport=CacheTransport(httpx.MockTransport(ok_response), storage=RedisStorage(hishel_redis)),
                          base_url="http://bench")
    counts, hits = {}, 100
    with ours, hishel, hishel_redis:
        for name, client in (("ours", ours), ("hishel", hishel)):
            client.get("/count")
            counts[name] = _commands_sent(redis, partial(_get, client, "/count", hits)) / hits
    return counts


def _get(client: httpx.Client, url: str, times: int) -> None:
    for _ in range(times):
        client.get(url)


def _commands_sent(redis: LocalRedis, action: Callable[[], object]) -> int:
    marker = f"end-{uuid.uuid4().hex}"
    with Redis.from_url(redis.url) as watcher, Redis.from_url(redis.url) as other, watcher.monitor() as feed:
        action()
        other.echo(marker)
        sent = 0
        while marker not in (command := feed.next_command())["command"]:
            sent += command["client_type"] != "lua"
        return sent


def _on_one_core(redis: LocalRedis, measure: Callable[[], dict[str, float]]) -> dict[str, float] | None:
    """``measure`` with redis-server and this process on one CPU (Linux only; None elsewhere). Shows how
    much of a round trip is the other core waking up, which a Redis on another machine does not cost."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    ours, theirs = os.sched_getaffinity(0), os.sched_getaffinity(redis.proc.pid)
    core = {min(ours)}
    os.sched_setaffinity(0, core)
    os.sched_setaffinity(redis.proc.pid, core)
    try:
        return measure()
    finally:
        os.sched_setaffinity(redis.proc.pid, theirs)
        os.sched_setaffinity(0, ours)


def _sync_redis_hit(redis: LocalRedis, n: int, rounds: int) -> dict[str, float]:
    raw = httpx.Client(transport=httpx.MockTransport(ok_response), base_url="http://bench")
    shared = httpx.Client(transport=CacheLayer(httpx.MockTransport(ok_response), mode="ttl", storage="redis",
                                               redis_url=redis.url), base_url="http://bench")
    near = httpx.Client(transport=CacheLayer(httpx.MockTransport(ok_response), mode="ttl", storage="redis",
                                             redis_url=redis.url, near_cache=True, near_ttl=3600),
                        base_url="http://bench")
    hishel_redis = Redis.from_url(redis.url)
    hishel = httpx.Client(transport=CacheTransport(httpx.MockTransport(ok_response), storage=RedisStorage(hishel_redis)),
                          base_url="http://bench")
    probe = socket.create_connection(("127.0.0.1", redis.port))
    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def floor(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            raw.get("/x")
            probe.sendall(PING)
            probe.recv(len(PONG))
        return time.perf_counter() - start

    with raw, shared, near, hishel, hishel_redis, probe:
        shared.get("/sync")
        near.get("/sync-near")
        hishel.get("/sync-hishel")
        return paired_ratios({"raw": sync_loop(raw), "redis": sync_loop(shared, url_of=lambda i: "/sync"),
                              "near": sync_loop(near, url_of=lambda i: "/sync-near"), "floor": floor,
                              "hishel": sync_loop(hishel, url_of=lambda i: "/sync-hishel")}, n, rounds)


def near_staleness(redis: LocalRedis, quick: bool) -> list[Row]:
    """How long another process's near cache may still answer with an entry a write invalidated."""
    from pywats_transport.layers.cache import CacheLayer

    rounds = 50 if quick else 300
    count = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        count[0] += 1
        return httpx.Response(200, json={"n": count[0]})

    def layer() -> CacheLayer:
        return CacheLayer(httpx.MockTransport(handler), mode="ttl", storage="redis", redis_url=redis.url,
                          near_cache=True)

    writer, reader = layer(), layer()
    delays = []
    with httpx.Client(transport=writer, base_url="http://bench") as w, \
            httpx.Client(transport=reader, base_url="http://bench") as r:
        for i in range(rounds):
            path = f"/stale/{i}/item"
            r.get(path)
            r.get(path)  # now kept near in the reader
            (key,) = reader.policy.keys_under("http://bench", path)
            w.put(f"/stale/{i}")
            written = time.perf_counter()
            while reader.near.find(key, "GET") is not None:
                time.sleep(0.0002)
            delays.append(time.perf_counter() - written)
    delays.sort()
    p99 = delays[int(len(delays) * 0.99) - 1] * 1000
    return [Row(SUITE, "near cache: p99 delay before another process stops serving an invalidated entry",
                p99, "ms")]


WRITER_READER = textwrap.dedent("""
    import random, sys, threading
    import httpx
    from pywats_transport import build_transport

    url, redis_url, role, pairs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stack = build_transport(profile="wats", enable_throttling=False, cache={"storage": "redis", "redis_url": redis_url})
    stale = 0
    with httpx.Client(transport=stack, base_url=url) as client:
        if role == "busy":  # fetches the items afresh all along (and stores them for the fleet), so that
            done = threading.Event()  # its fetches are in flight as the writes go through
            threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
            while not done.is_set():  # in no step with the pairs, which go through the items in turn
                client.get(f"/items/{random.randrange(10)}", headers={"cache-control": "no-cache"})
            sys.exit(0)
        for i in range(pairs):
            line = sys.stdin.readline()
            if role == "writer":
                client.put(f"/items/{i % 10}", json={"v": i})
            else:
                body = client.get(f"/items/{i % 10}").json()
                stale += body["v"] != int(line)
            print("done", flush=True)
    print("stale", stale, flush=True)
""")


def items_app() -> Starlette:
    """``/items/{k}``: PUT stores a value, GET answers the last one stored, 5 ms after reading it (as a
    server reads its database, then answers over a network)."""
    values: dict[str, int] = {}

    async def item(request: Request) -> JSONResponse:
        key = request.path_params["k"]
        if request.method == "PUT":
            values[key] = (await request.json())["v"]
            return JSONResponse({"ok": True})
        value = values.get(key, -1)
        await asyncio.sleep(0.005)
        return JSONResponse({"v": value})

    return Starlette(routes=[Route("/items/{k}", item, methods=["GET", "PUT"])])


def stale_reads(redis: LocalRedis, quick: bool) -> list[Row]:
    pairs = 100 if quick else 1000
    return [Row(SUITE, f"stale reads in {pairs} write/read pairs across two processes",
                stale := _stale_reads(redis, pairs, busy=False), "", "= 0", stale == 0),
            Row(SUITE, "... with a third process fetching the same items afresh all along (in flight across writes)",
                stale := _stale_reads(redis, pairs, busy=True), "", "= 0", stale == 0)]


def _stale_reads(redis: LocalRedis, pairs: int, busy: bool) -> int:
    script = scratch_dir() / "wr.py"
    script.write_text(WRITER_READER)
    with BackgroundServer(items_app()) as server:
        def start(role: str) -> subprocess.Popen[str]:
            return subprocess.Popen([sys.executable, str(script), server.url, redis.url, role, str(pairs)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        busy_reader = start("busy") if busy else None
        writer, reader = start("writer"), start("reader")
        assert writer.stdin and writer.stdout and reader.stdin and reader.stdout
        for i in range(pairs):
            writer.stdin.write(f"{i}\n")
            writer.stdin.flush()
            writer.stdout.readline()  # the write's answer has returned
            reader.stdin.write(f"{i}\n")
            reader.stdin.flush()
            reader.stdout.readline()
        stale = int(reader.stdout.readline().split()[1])
        for proc in (writer, reader, *([busy_reader] if busy_reader else [])):
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(30)
    return stale


THROUGH_OUTAGE = textwrap.dedent("""
    import json, sys, time
    import httpx
    from pywats_transport import build_transport

    url, redis_url, start, back, end = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6])
    stack = build_transport(redis={"url": redis_url, "retry_after": 0.5}, enable_retry=False,
                            cache={"storage": "redis", "mode": "ttl"},
                            throttle={"enabled": True, "backend": "redis", "rate": 200, "burst": 20,
                                      "expected_processes": 2})
    requests = failed = hits_after = 0
    time.sleep(max(0.0, start - time.time()))
    with httpx.Client(transport=stack, base_url=url) as client:
        while time.time() < end:
            requests += 1
            path = f"/items/{requests % 20}"
            try:
                if requests % 4 == 0:  # a write: invalidated for the whole fleet
                    response = client.put(path, json={"v": requests})
                else:
                    response = client.get(path)
                    hits_after += bool(response.extensions["caching"]["from_cache"]) and time.time() > back
                failed += response.status_code != 200
            except Exception as exc:
                failed += 1
                print(type(exc).__name__, exc, file=sys.stderr)
    stats = stack.stats()
    print(json.dumps({"requests": requests, "failed": failed, "hits_after": hits_after,
                      "outages": [stats["cache"]["redis_outages"], stats["throttle"]["fleet"]["redis_outages"]]}))
""")


def redis_killed(binary: str, quick: bool) -> list[Row]:
    """Two station processes share the cache and the rate on a Redis of their own, which is SIGKILLed
    mid-run and started again on the same port two seconds later."""
    redis = LocalRedis(binary)
    script = scratch_dir() / "outage.py"
    script.write_text(THROUGH_OUTAGE)
    try:
        with BackgroundServer(items_app()) as server:
            start = time.time() + 3.0  # the processes have imported and built their stacks by then
            kill, restart = start + 2.0, start + 4.0
            # Hits are counted from just past the processes' retry_after (0.5 s) after the restart.
            times = [str(t) for t in (start, restart + 0.6, start + 7.0)]
            procs = [subprocess.Popen([sys.executable, str(script), server.url, redis.url, *times],
                                      stdout=subprocess.PIPE, text=True) for _ in range(2)]
            time.sleep(max(0.0, kill - time.time()))
            redis.stop()  # SIGKILL
            time.sleep(max(0.0, restart - time.time()))
            redis = LocalRedis(binary, port=redis.port)
            results = [json.loads(proc.communicate(timeout=120)[0].splitlines()[-1]) for proc in procs]
    finally:
        redis.stop()
    failed = sum(r["failed"] for r in results)
    total = sum(r["requests"] for r in results)
    counted = sum(outages == 1 for r in results for outages in r["outages"])
    hits = sum(r["hits_after"] for r in results)
    return [
        Row(SUITE, "Redis SIGKILLed mid-run for 2 s, then restarted (2 processes): failed requests", failed,
            f"of {total}", "= 0", failed == 0),
        Row(SUITE, "... stats that counted the outage once (cache and fleet rate, per process)", counted,
            f"of {2 * len(results)}", f"= {2 * len(results)}", counted == 2 * len(results)),
        Row(SUITE, "... hits from Redis after it came back", hits, "", "> 0", hits > 0),
    ]


HAMMER = textwrap.dedent("""
    import sys, time
    import httpx
    from pywats_transport import build_transport

    url, redis_url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stack = build_transport(enable_cache=False, enable_retry=False,
                            throttle={"enabled": True, "backend": "redis", "redis_url": redis_url, "rate": 20, "burst": 5})
    with httpx.Client(transport=stack, base_url=url, timeout=httpx.Timeout(10, pool=None)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.get("/ping")
""")


def shared_rate(redis: LocalRedis, quick: bool) -> list[Row]:
    seconds = 3.0 if quick else 10.0
    times: list[float] = []

    async def ping(request: Request) -> JSONResponse:
        times.append(time.monotonic())
        return JSONResponse({})

    script = scratch_dir() / "hammer.py"
    script.write_text(HAMMER)
    with BackgroundServer(Starlette(routes=[Route("/ping", ping)])) as server:
        procs = [subprocess.Popen([sys.executable, str(script), server.url, redis.url, str(seconds)])
                 for _ in range(4)]
        for proc in procs:
            proc.wait(120)
    times.sort()
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    # Sustained: after the first second, which holds the bucket's initial burst on top of the rate.
    steady = [t for t in times if t >= times[0] + 1.0]
    rate = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    return [
        Row(SUITE, "4 processes, fleet limit 20/s burst 5: most requests in any 1 s", busiest, "", "<= 25",
            busiest <= 25),
        Row(SUITE, "... sustained rate at the server", rate, "req/s", "19-21", abs(rate - 20) <= 1),
    ]


WORKLOAD = textwrap.dedent("""
    import asyncio, sys, time
    from pywats_transport.workload import run_workload

    url, token, storage, redis_url, start = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    time.sleep(max(0.0, start - time.time()))
    cache = {"storage": storage, "redis_url": redis_url}
    result = asyncio.run(run_workload(url, token, "fleet", stations=3, units=2, enable_throttling=False,
                                      config={"cache": cache}))
    print(len(result.errors))
""")
SHARED_LOOKUPS = ("GET /api/Product/{partNumber}", "GET /api/App/Processes", "GET /api/Software/Packages",
                  "GET /api/Asset/Status")


def shared_lookups(redis: LocalRedis, quick: bool) -> list[Row]:
    """Four station processes run the workload at once: server GETs for the lookups they share."""
    from pywats_transport.emulator import EmulatorServer

    script = scratch_dir() / "workload.py"
    script.write_text(WORKLOAD)
    fetched = {}
    for storage in ("redis", "memory"):
        with EmulatorServer(token="bench", latency_ms=20) as emu:
            start = time.time() + 3.0
            procs = [subprocess.Popen([sys.executable, str(script), emu.url, "bench", storage, redis.url, str(start)],
                                      stdout=subprocess.PIPE, text=True) for _ in range(4)]
            errors = sum(int(p.communicate(timeout=300)[0].split()[-1]) for p in procs)
            if errors:
                raise RuntimeError(f"workload errors with storage {storage}: {errors}")
            fetched[storage] = sum(emu.state.requests[route] for route in SHARED_LOOKUPS)
        if storage == "redis":
            subprocess.run(["redis-cli", "-p", str(redis.port), "FLUSHALL"], capture_output=True)
    distinct = 2 * 2 + 2  # 2 units: two products and their packages, the processes, the fixture status
    return [
        Row(SUITE, f"4 processes, station workload: server GETs for the {distinct} shared lookup URLs (fleet)",
            fetched["redis"], "", f"= {distinct}", fetched["redis"] == distinct),
        Row(SUITE, "... without the fleet tier (a memory cache per process)", fetched["memory"], ""),
    ]


def run(quick: bool = False) -> list[Row]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    redis = LocalRedis(binary)
    try:
        rows = (redis_hit(redis, quick) + near_staleness(redis, quick) + stale_reads(redis, quick)
                + shared_rate(redis, quick) + shared_lookups(redis, quick))
    finally:
        redis.stop()
    return rows + redis_killed(binary, quick)
