"""Retry and throttle: success-path cost against raw MockTransport, a 30 %-503 loopback server, and the
rate limit's accuracy over a few seconds."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pywats_transport._server import BackgroundServer
from pywats_transport.layers.retry import AsyncRetryLayer, RetryLayer
from pywats_transport.layers.throttle import AsyncThrottleLayer, ThrottleLayer

from .common import Row, async_loop, ok_response, paired_ratios, sync_loop

SUITE = "retry/throttle"


def success_path(quick: bool) -> list[Row]:
    n, rounds = (200, 7) if quick else (500, 41)
    loop = asyncio.new_event_loop()
    mock = httpx.MockTransport(ok_response)
    a = {
        "raw": httpx.AsyncClient(transport=mock, base_url="http://bench"),
        "retry": httpx.AsyncClient(transport=AsyncRetryLayer(mock), base_url="http://bench"),
        "throttle": httpx.AsyncClient(transport=AsyncThrottleLayer(mock, rate=1e9, burst=10**9), base_url="http://bench"),
    }
    s = {
        "raw": httpx.Client(transport=mock, base_url="http://bench"),
        "retry": httpx.Client(transport=RetryLayer(mock), base_url="http://bench"),
        "throttle": httpx.Client(transport=ThrottleLayer(mock, rate=1e9, burst=10**9), base_url="http://bench"),
    }
    at = paired_ratios({k: async_loop(c, loop) for k, c in a.items()}, n, rounds)
    st = paired_ratios({k: sync_loop(c) for k, c in s.items()}, n, rounds)
    loop.close()
    rows = []
    for mode, t in (("async", at), ("sync", st)):
        for layer in ("retry", "throttle"):
            ratio = t[layer]
            rows.append(Row(SUITE, f"{layer} layer success path / raw ({mode})", ratio, "x", "<= 1.05", ratio <= 1.05))
    return rows


def flaky_server(quick: bool) -> list[Row]:
    rng = random.Random(42)
    served = {"ok": 0, "failed": 0}

    async def item(request: Request) -> JSONResponse:
        if rng.random() < 0.3:
            served["failed"] += 1
            return JSONResponse({"error": "busy"}, status_code=503)
        served["ok"] += 1
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/item/{i}", item)])
    total = 200 if quick else 1000
    ratio, floor = 0.5, 10
    layer = AsyncRetryLayer(httpx.AsyncHTTPTransport(), max_attempts=10, backoff_base=0.001, backoff_max=0.01,
                            budget_ratio=ratio, budget_floor=floor, budget_window=60)

    async def run(url: str) -> int:
        ok = 0
        async with httpx.AsyncClient(transport=layer, base_url=url) as client:
            for i in range(total):
                if (await client.get(f"/item/{i}")).status_code == 200:
                    ok += 1
        return ok

    with BackgroundServer(app) as server:
        ok = asyncio.run(run(server.url))
    extra = served["ok"] + served["failed"] - total
    cap = ratio * total + floor
    return [
        Row(SUITE, f"GETs succeeding against a 30% 503 server (of {total})", ok, "", f"= {total}", ok == total),
        Row(SUITE, f"extra requests (budget: {ratio} x requests + {floor} = {cap:.0f})", extra, "", f"<= {cap:.0f}",
            extra <= cap),
    ]


def rate_accuracy(quick: bool) -> list[Row]:
    rate, seconds = 50.0, (1.5 if quick else 4.0)
    layer = AsyncThrottleLayer(httpx.MockTransport(ok_response), rate=rate, burst=1)

    async def run() -> float:
        done = 0
        async with httpx.AsyncClient(transport=layer, base_url="http://bench") as client:
            start = time.perf_counter()
            deadline = start + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await client.get("/x")
                    done += 1

            await asyncio.gather(*(worker() for _ in range(8)))
            elapsed = time.perf_counter() - start
        return (done - 1) / elapsed  # the first request spends the one-token burst

    achieved = asyncio.run(run())
    error = abs(achieved - rate) / rate
    return [Row(SUITE, f"throttle at {rate:.0f}/s over {seconds:.1f}s, 8 tasks: achieved", achieved, "req/s",
                "within 10%", error <= 0.10)]


def run(quick: bool = False) -> list[Row]:
    return success_path(quick) + flaky_server(quick) + rate_accuracy(quick)
