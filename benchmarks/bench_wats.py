"""The demo workload against the emulator with 20 ms latency: hit rate, repeated-lookup time, uncached calls.

Throttling is off in both runs here so the figures isolate what caching does (the demo itself
runs the default stack, throttle included)."""

from __future__ import annotations

import asyncio

from pywats_transport.emulator import EmulatorServer
from pywats_transport.workload import run_workload, worst_uncached_ratio

from .common import Row

SUITE = "wats workload"
TOKEN = "bench-token"


def run(quick: bool = False) -> list[Row]:
    stations, units = (2, 2) if quick else (3, 4)

    async def both(url: str, state: object) -> tuple:
        common = dict(stations=stations, units=units, emulator_state=state, enable_throttling=False)
        cached = await run_workload(url, TOKEN, "cached", **common)
        uncached = await run_workload(url, TOKEN, "uncached", enable_cache=False, **common)
        return cached, uncached

    with EmulatorServer(token=TOKEN, latency_ms=20) as emu:
        cached, uncached = asyncio.run(both(emu.url, emu.state))
    if cached.errors or uncached.errors:
        raise RuntimeError(f"workload failed: {cached.errors + uncached.errors}")
    hit = cached.hit_rate()
    reduced = 1 - cached.repeat_seconds() / uncached.repeat_seconds()
    worst, route = worst_uncached_ratio(cached, uncached)
    return [
        Row(SUITE, "server requests, cached / uncached", cached.server_requests / uncached.server_requests, "x"),
        Row(SUITE, "cache hit rate", hit * 100, "%", ">= 80", hit >= 0.80),
        Row(SUITE, "repeated-lookup time saved", reduced * 100, "%", ">= 85", reduced >= 0.85),
        Row(SUITE, f"slowest uncached call vs cache off ({route})", worst, "x", "<= 1.1", worst <= 1.1),
    ]
