"""The station workload used by the demo and the benchmarks: what a line of test stations asks WATS.

Each unit passes through three test operations. Per operation a station looks
up the product, the process list, its software and its fixture, then submits a
report; per unit it checks the unit's production state and recent headers.

With an outbox, reports are handed to it (sent now or queued); while WATS is down
the lookups are answered from the cache (stale), and the per-unit checks, which
no copy can answer, are skipped and counted.
"""

from __future__ import annotations

import asyncio
import contextvars
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .wats import AsyncWATS, ServerError, UUTReport, WATSConnectionError
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
    stale: bool = False


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
    submissions: Counter[str] = field(default_factory=Counter)  # outbox outcomes: sent, queued, rejected
    unit_checks_skipped: int = 0
    drained: bool = True
    drained_at: float | None = None  # perf_counter time the outbox was empty again

    def stale_answers(self) -> int:
        return sum(t.stale for t in self.timings)

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
_cache_flags: contextvars.ContextVar[list[tuple[bool, bool]] | None] = contextvars.ContextVar("cache_flags", default=None)


async def _note_cache(response: httpx.Response) -> None:
    flags = _cache_flags.get()
    if flags is not None:
        caching = response.extensions.get("caching") or {}
        flags.append((bool(caching.get("from_cache")), bool(caching.get("stale"))))


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
            flags = _cache_flags.get() or [(False, False)]
        finally:
            _cache_flags.reset(token)
        repeat = key in self.seen
        self.seen.add(key)
        self.result.timings.append(CallTiming(route, key, elapsed, repeat, all(f for f, _ in flags),
                                              any(s for _, s in flags)))
        return value


async def station(api: AsyncWATS, timed: _Timed, name: str, units: int, result: RunResult,
                  outbox: bool = False, test_seconds: float = 0.0, offline: bool = False) -> None:
    if offline:
        # A station that must keep testing offline loads what it will look up when it starts, as test
        # software loads its sequences: an outage then finds a copy of everything it needs.
        for pn in PRODUCTS:
            await timed("GET /api/Product/{partNumber}", f"product {pn}", api.product.get(pn))
            await timed("GET /api/Software/Packages", f"packages {pn}", api.software.packages(tag=pn))
        await timed("GET /api/App/Processes", "processes", api.process.list())
        await timed("GET /api/Asset/Status", f"fixture {name}", api.asset.status("AS-1"))
    for u in range(units):
        pn = PRODUCTS[u % len(PRODUCTS)]
        sn = f"{name}-SN{u:03d}"
        for op in OPERATIONS:
            await timed("GET /api/Product/{partNumber}", f"product {pn}", api.product.get(pn))
            await timed("GET /api/App/Processes", "processes", api.process.list())
            await timed("GET /api/Software/Packages", f"packages {pn}", api.software.packages(tag=pn))
            await timed("GET /api/Asset/Status", f"fixture {name}", api.asset.status("AS-1"))
            if test_seconds:
                await asyncio.sleep(test_seconds)  # the test itself
            report = UUTReport(partNumber=pn, serialNumber=sn, processCode=op, stationName=name,
                               steps=[Step(name="Voltage", value=24.0, unit="V", lowLimit=23.5, highLimit=24.5)])
            if outbox:
                handed = await timed("POST /api/Report/WSJF", f"submit {report.id}", api.outbox.submit(report))
                result.submissions[handed.status] += 1
            else:
                handed = await timed("POST /api/Report/WSJF", f"submit {report.id}", api.report.submit(report))
            result.reports.append(handed.id)
        await _unit_check(timed, result, offline, "GET /api/Production/Unit/{serialNumber}/{partNumber}",
                          f"unit {sn}", api.production.unit(sn, pn))
        await _unit_check(timed, result, offline, "GET /api/Report/Query/Header", f"headers {sn}",
                          api.report.query_headers(serial_number=sn, top=5))


async def _unit_check(timed: _Timed, result: RunResult, offline: bool, route: str, key: str, call: Any) -> None:
    """A check about this very unit: no earlier answer can stand in for it while WATS is down."""
    try:
        await timed(route, key, call)
    except (WATSConnectionError, ServerError):
        if not offline:
            raise
        result.unit_checks_skipped += 1


async def run_workload(url: str, token: str, label: str, *, stations: int = 3, units: int = 4,
                       emulator_state: Any = None, outbox: Any = None,
                       during: Callable[[RunResult, AsyncWATS], Awaitable[None]] | None = None,
                       drain_timeout: float = 60.0, test_seconds: float = 0.0, offline: bool = False,
                       **client_flags: Any) -> RunResult:
    """Run the stations against ``url``. With ``outbox`` (a folder) reports go through the outbox, which is
    drained before the run ends; ``during`` runs beside the stations (an outage, say). ``offline``:
    stations ready for an outage load their lookups at start and skip checks no stored answer can make."""
    result = RunResult(label)
    before = emulator_state.total_requests if emulator_state is not None else 0
    async with AsyncWATS(url, token, outbox=outbox, **client_flags) as api:
        timed = _Timed(api, result)
        result.chain = [item["name"] for item in api.transport.describe()]
        started = time.perf_counter()
        side = asyncio.ensure_future(during(result, api)) if during is not None else None
        outcomes = await asyncio.gather(
            *(station(api, timed, f"ST{i + 1}", units, result, outbox is not None, test_seconds, offline)
              for i in range(stations)),
            return_exceptions=True,
        )
        if side is not None:
            await side
        if outbox is not None:
            result.drained = await api.outbox.drain(timeout=drain_timeout)
            result.drained_at = time.perf_counter()
        result.seconds = time.perf_counter() - started
        result.errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
        result.stats = api.transport.stats()
    if emulator_state is not None:
        result.server_requests = emulator_state.total_requests - before
    return result
