"""Offline stations: the station workload through a WATS outage, and what stale-while-revalidate costs."""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import time

import httpx

from pywats_transport import build_async_transport
from pywats_transport.demo import Outage
from pywats_transport.emulator import EmulatorServer
from pywats_transport.layers.cache import AsyncCacheLayer
from pywats_transport.wats import AsyncWATS, UUTReport
from pywats_transport.workload import RunResult, run_workload

from .common import Row, ok_response, quiet_service_logs

SUITE = "offline"
TOKEN = "bench-token"


def outage_run(quick: bool) -> list[Row]:
    stations, units, seconds = (2, 2, 2.0) if quick else (3, 4, 5.0)
    per_run = stations * units * 3
    outage = Outage(seconds, "refuse", per_run // 3)

    async def run(emu: EmulatorServer, folder: str) -> RunResult:
        async def during(result: RunResult, api: AsyncWATS) -> None:
            await outage(result, api, emu)

        return await run_workload(emu.url, TOKEN, "outage", stations=stations, units=units, emulator_state=emu.state,
                                  outbox=folder, during=during, offline=True, cache_ttl=1.0, test_seconds=0.1,
                                  retry={"backoff_base": 0.05})

    with EmulatorServer(token=TOKEN, latency_ms=20) as emu, tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(run(emu, folder))
        stored = set(emu.state.reports)
        posts = emu.state.report_posts
    lost = sum(1 for i in result.reports if i not in stored)
    drain = (outage.drained or 0) - (outage.ended or 0)
    return [
        Row(SUITE, f"outage of {seconds:.0f} s mid-workload: reports lost", lost, f"of {len(result.reports)}", "= 0",
            lost == 0),
        Row(SUITE, "... reports stored twice", len(result.reports) - len(set(result.reports)), "", "= 0",
            len(result.reports) == len(set(result.reports)) == len(stored)),
        Row(SUITE, "... re-sends the server recognised by id", posts - len(stored), ""),
        Row(SUITE, "... station errors (a lookup with nothing to fall back on)", len(result.errors), "", "= 0",
            not result.errors),
        Row(SUITE, "... lookups answered from expired entries", result.stale_answers(), ""),
        Row(SUITE, "... reports queued, then drained", result.submissions["queued"], ""),
        Row(SUITE, "... drained after WATS came back in", drain, "s", "<= 5", 0 <= drain <= 5),
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def stale_while_revalidate(quick: bool) -> list[Row]:
    n = 500 if quick else 3000
    clock = _Clock()
    refreshed = 0

    def origin(request: httpx.Request) -> httpx.Response:
        nonlocal refreshed
        refreshed += 1
        return ok_response(request)

    async def run() -> tuple[float, float, int, int]:
        raw = httpx.AsyncClient(transport=httpx.MockTransport(ok_response), base_url="http://bench")
        layer = AsyncCacheLayer(httpx.MockTransport(origin), clock=clock, mode="ttl", ttl=10, stale_while_revalidate=3600)
        cached = httpx.AsyncClient(transport=layer, base_url="http://bench")
        await cached.get("/x")
        clock.now += 11  # from here on every lookup is in the window
        raw_t: list[float] = []
        stale_t: list[float] = []
        for _ in range(n):
            for client, samples in ((raw, raw_t), (cached, stale_t)):
                start = time.perf_counter()
                await client.get("/x")
                samples.append(time.perf_counter() - start)
            await asyncio.sleep(0)  # the background refresh runs here, outside the timed calls
            clock.now += 11  # and the refreshed entry is stale again at the next lookup
        # One key, many lookups while its refresh is under way: one refresh.
        before = refreshed
        held = asyncio.Event()

        async def slow(request: httpx.Request) -> httpx.Response:
            await held.wait()
            return origin(request)

        slow_layer = AsyncCacheLayer(httpx.MockTransport(slow), clock=clock, mode="ttl", ttl=10,
                                     stale_while_revalidate=3600)
        async with httpx.AsyncClient(transport=slow_layer, base_url="http://bench") as client:
            held.set()
            await client.get("/y")
            held.clear()
            clock.now += 11
            for _ in range(100):
                await client.get("/y")
            held.set()
            while slow_layer.stats()["refreshes"] < 1:
                await asyncio.sleep(0.001)
        for c in (raw, cached):
            await c.aclose()
        return statistics.median(raw_t), statistics.median(stale_t), refreshed - before - 1, layer.stats()["stale_served"]

    raw, stale, refreshes, served = asyncio.run(run())
    ratio = stale / raw
    return [
        Row(SUITE, "stale-while-revalidate lookup / raw request (median)", ratio, "x", "<= 1.2", ratio <= 1.2),
        Row(SUITE, "... background refreshes for 100 lookups of one key", refreshes, "", "= 1", refreshes == 1),
        Row(SUITE, "... stale answers in the timed loop", served, f"of {n}"),
    ]


def known_down(quick: bool) -> list[Row]:
    """Lookups while WATS is down and known to be, through the WATS profile's chain (cache, retry,
    throttle): each is answered from its expired entry at once, not after a timeout (here a connect
    timeout shortened to 20 ms) and the retries' backoff."""
    n = 200 if quick else 1000
    clock = _Clock()
    down = False

    async def origin(request: httpx.Request) -> httpx.Response:
        if down:
            await asyncio.sleep(0.02)
            raise httpx.ConnectTimeout("no answer from the host", request=request)
        return ok_response(request)

    async def run() -> tuple[float, float, float, int]:
        nonlocal down
        raw = httpx.AsyncClient(transport=httpx.MockTransport(ok_response), base_url="http://bench")
        stack = build_async_transport(profile="wats", inner=httpx.MockTransport(origin), cache_ttl=10,
                                      throttle={"rate": 1e6, "burst": 10**6}, plugin_context={"clock": clock})
        station = httpx.AsyncClient(transport=stack, base_url="http://bench")
        urls = [f"/api/Product/PN-{i}" for i in range(20)]
        for url in urls:
            await station.get(url)
        clock.now += 11
        down = True
        start = time.perf_counter()
        await station.get(urls[0])  # finds WATS down: waits for the retries, once
        first = time.perf_counter() - start
        raw_t: list[float] = []
        down_t: list[float] = []
        for i in range(n):
            for client, samples in ((raw, raw_t), (station, down_t)):
                start = time.perf_counter()
                await client.get(urls[i % len(urls)])
                samples.append(time.perf_counter() - start)
            await asyncio.sleep(0)  # the refreshes behind (failing too) run outside the timed calls
        served = stack.stats()["cache"]["stale_served"] - 1
        for c in (raw, station):
            await c.aclose()
        return first, statistics.median(raw_t), statistics.median(down_t), served

    first, raw, known, served = asyncio.run(run())
    ratio = known / raw
    return [
        Row(SUITE, "lookup while WATS is known down / raw request (median)", ratio, "x", "<= 1.5", ratio <= 1.5),
        Row(SUITE, "... stale answers in the timed loop", served, f"of {n}", f"= {n}", served == n),
        Row(SUITE, "... the lookup that found it down (retries and backoff)", first, "s"),
    ]


def silent_handovers(quick: bool) -> list[Row]:
    """Reports handed to the outbox while WATS takes connections and never answers (a hung server, a
    firewall dropping packets): each hand-over waits at most the outbox's ``wait``, not the client's
    timeout on every attempt. Here the timeout is 2 s and the wait 0.5 s (10 s by default, 30 s timeout)."""
    reports = 3 if quick else 10
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)  # never accepts: no answer, no refusal

    async def run(folder: str) -> list[float]:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        times = []
        async with AsyncWATS(url, TOKEN, timeout=2.0, outbox=folder) as api:
            api.outbox.wait = 0.5
            for i in range(reports):
                start = time.perf_counter()
                outcome = await api.outbox.submit(UUTReport(partNumber="PN-1", serialNumber=f"SN-{i}"))
                times.append(time.perf_counter() - start)
                assert outcome.status == "queued", outcome
        return times

    with listener, tempfile.TemporaryDirectory() as folder:
        times = asyncio.run(run(folder))
    return [
        Row(SUITE, f"{reports} report hand-overs to a WATS that never answers: the first (wait 0.5 s, timeout 2 s)",
            times[0], "s", "<= 1", times[0] <= 1),
        Row(SUITE, "... the longest of the others (queued at once while its send goes on)", max(times[1:]), "s",
            "<= 0.1", max(times[1:]) <= 0.1),
    ]


def run(quick: bool = False) -> list[Row]:
    quiet_service_logs()
    return stale_while_revalidate(quick) + known_down(quick) + silent_handovers(quick) + outage_run(quick)
