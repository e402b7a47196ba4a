"""The station workload used by the demo and the benchmarks: what a line of test stations asks WATS.

Each unit passes through three test operations. Per operation a station looks
up the product, the process list, its software and its fixture, then submits a
report; per unit it checks the unit's production state and recent headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from .wats import AsyncWATS, UUTReport
from .wats.models import Step

PRODUCTS = ("PN-1001", "PN-1002", "PN-1003")
OPERATIONS = (50, 100, 500)


@dataclass
class CallTiming:
    route: str
    key: str  # the call's identity: route and arguments
    seconds: float
    repeat: bool  # the same call was made before in this run
    from_cache: bool


@dataclass
class RunResult:
    label: str
    seconds: float = 0.0
    timings: list[CallTiming] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_requests: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    chain: list[str] = field(default_factory=list)

    def repeat_seconds(self) -> float:
        return sum(t.seconds for t in self.timings if t.repeat)

    def hit_rate(self) -> float:
        cache = self.stats.get("cache")
        if not cache:
            return 0.0
        lookups = cache["hits"] + cache["misses"]
        return cache["hits"] / lookups if lookups else 0.0

    def median_by_route(self, *, uncached_only: bool) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for t in self.timings:
            if not uncached_only or not t.from_cache:
                groups[t.route].append(t.seconds)
        return {route: statistics.median(v) for route, v in groups.items()}


def worst_uncached_ratio(cached: RunResult, uncached: RunResult) -> tuple[float, str]:
    """The highest ratio, over routes, of a cache miss's median time to the same route's median with caching off."""
    mine, theirs = cached.median_by_route(uncached_only=True), uncached.median_by_route(uncached_only=False)
    ratios = [(mine[r] / theirs[r], r) for r in mine if r in theirs and theirs[r] > 0]
    return max(ratios, default=(0.0, "-"))


# What the cache said for the responses of the call being timed (one list per call, per task).
_cache_flags: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("cache_flags", default=None)


async def _note_cache(response: httpx.Response) -> None:
    flags = _cache_flags.get()
    if flags is not None:
        flags.append(bool((response.extensions.get("caching") or {}).get("from_cache")))


class _Timed:
    def __init__(self, api: AsyncWATS, result: RunResult) -> None:
        self.api, self.result = api, result
        self.seen: set[str] = set()
        # The client's response hook runs in the calling task, so concurrent stations do not mix up.
        api._http.event_hooks["response"].append(_note_cache)

    async def __call__(self, route: str, key: str, coro: Any) -> Any:
        token = _cache_flags.set([])
        started = time.perf_counter()
        try:
            value = await coro
            elapsed = time.perf_counter() - started
            flags = _cache_flags.get() or [False]
        finally:
            _cache_flags.reset(token)
        repeat = key in self.seen
        self.seen.add(key)
        self.result.timings.append(CallTiming(route, key, elapsed, repeat, all(flags)))
        return value


async def station(api: AsyncWATS, timed: _Timed, name: str, units: int, result: RunResult) -> None:
    for u in range(units):
        pn = PRODUCTS[u % len(PRODUCTS)]
        sn = f"{name}-SN{u:03d}"
        for op in OPERATIONS:
            await timed("GET /api/Product/{partNumber}", f"product {pn}", api.product.get(pn))
            await timed("GET /api/App/Processes", "processes", api.process.list())
            await timed("GET /api/Software/Packages", f"packages {pn}", api.software.packages(tag=pn))
            await timed("GET /api/Asset/Status", f"fixture {name}", api.asset.status("AS-1"))
            report = UUTReport(partNumber=pn, serialNumber=sn, processCode=op, stationName=name,
                               steps=[Step(name="Voltage", value=24.0, unit="V", lowLimit=23.5, highLimit=24.5)])
            submitted = await timed("POST /api/Report/WSJF", f"submit {report.id}", api.report.submit(report))
            result.reports.append(submitted.id)
        await timed("GET /api/Production/Unit/{serialNumber}/{partNumber}", f"unit {sn}", api.production.unit(sn, pn))
        await timed("GET /api/Report/Query/Header", f"headers {sn}", api.report.query_headers(serial_number=sn, top=5))


async def run_workload(url: str, token: str, label: str, *, stations: int = 3, units: int = 4,
                       emulator_state: Any = None, **client_flags: Any) -> RunResult:
    result = RunResult(label)
    before = emulator_state.total_requests if emulator_state is not None else 0
    async with AsyncWATS(url, token, **client_flags) as api:
        timed = _Timed(api, result)
        result.chain = [item["name"] for item in api.transport.describe()]
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(station(api, timed, f"ST{i + 1}", units, result) for i in range(stations)), return_exceptions=True
        )
        result.seconds = time.perf_counter() - started
        result.errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
        result.stats = api.transport.stats()
    if emulator_state is not None:
        result.server_requests = emulator_state.total_requests - before
    return result
