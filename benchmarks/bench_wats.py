"""The demo workload against the emulator with 20 ms latency: hit rate, repeated-lookup time, uncached calls.

Throttling is off in both runs here so the figures isolate what caching does (the demo itself
runs the default stack, throttle included). The emulator runs in a process of its own: in this one, its
thread waited for the interpreter lock while the stations ran, longest in the cached run (hits are all
CPU), and the uncached calls of that run looked slower by the emulator's wait, not the cache's work."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from pywats_transport.workload import run_workload, worst_uncached_ratio

from .common import Row

SUITE = "wats workload"
TOKEN = "bench-token"


@contextmanager
def emulator(latency_ms: int) -> Iterator[str]:
    """``pywats-transport emulator`` in a process of its own; yields its URL once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "emulator", "--port", str(port), "--token",
                             TOKEN, "--latency-ms", str(latency_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats")
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the emulator did not start on port {port}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(quick: bool = False) -> list[Row]:
    stations, units = (2, 2) if quick else (3, 4)

    async def counted(url: str, name: str, **flags: object) -> tuple:
        async with httpx.AsyncClient() as stats:
            before = (await stats.get(f"{url}/_emulator/stats")).json()["total"]
            result = await run_workload(url, TOKEN, name, stations=stations, units=units, enable_throttling=False,
                                        **flags)
            result.server_requests = (await stats.get(f"{url}/_emulator/stats")).json()["total"] - before
        return result

    async def both(url: str) -> tuple:
        return await counted(url, "cached"), await counted(url, "uncached", enable_cache=False)

    with emulator(latency_ms=20) as url:
        cached, uncached = asyncio.run(both(url))
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
