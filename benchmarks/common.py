"""Timing helpers and the result table."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Row:
    suite: str
    figure: str
    value: float
    unit: str
    target: str = ""
    passed: bool | None = None
    informational: bool = False  # missed in a quick run, which has too few samples to judge

    def cells(self) -> list[str]:
        verdict = "info" if self.informational else "" if self.passed is None else ("pass" if self.passed else "FAIL")
        value = f"{self.value:.3f}" if abs(self.value) < 100 else f"{self.value:.0f}"
        return [self.suite, self.figure, f"{value} {self.unit}".strip(), self.target, verdict]


def scratch_dir() -> Path:
    """A temporary folder of this run's, removed when the run ends."""
    path = Path(tempfile.mkdtemp(prefix="pywats-bench-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def ok_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b'{"partNumber": "PN-1", "name": "Power supply"}',
                          headers={"content-type": "application/json"})


def paired_ratios(variants: dict[str, Callable[[int], float]], n: int, rounds: int, base: str = "raw") -> dict[str, float]:
    """Median over rounds of each variant's time divided by the base's time in the same round.

    Pairing within a round cancels drift (frequency scaling, other load) that a ratio of
    separate medians would keep.
    """
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        times = {}
        for name, run in variants.items():
            gc.collect()
            gc.disable()
            try:
                times[name] = run(n)
            finally:
                gc.enable()
        for name in variants:
            ratios[name].append(times[name] / times[base])
    return {name: statistics.median(v) for name, v in ratios.items()}


def interleaved(variants: dict[str, Callable[[int], float]], n: int, rounds: int) -> dict[str, float]:
    """Per-request seconds for each variant: the median over rounds, variants alternating within each round.

    The garbage collector is paused while a loop runs (as ``timeit`` does), so that one variant does
    not pay for collections another variant's allocations triggered.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            gc.collect()
            gc.disable()
            try:
                samples[name].append(run(n) / n)
            finally:
                gc.enable()
    return {name: statistics.median(v) for name, v in samples.items()}


def sync_loop(client: httpx.Client, method: str = "GET", url_of: Callable[[int], str] = lambda i: "/x",
              **kw: Any) -> Callable[[int], float]:
    counter = [0]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            counter[0] += 1
            client.request(method, url_of(counter[0]), **kw)
        return time.perf_counter() - start

    return run


def async_loop(client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop, method: str = "GET",
               url_of: Callable[[int], str] = lambda i: "/x", **kw: Any) -> Callable[[int], float]:
    counter = [0]

    async def body(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            counter[0] += 1
            await client.request(method, url_of(counter[0]), **kw)
        return time.perf_counter() - start

    def run(n: int) -> float:
        return loop.run_until_complete(body(n))

    return run


def run_async(coro: Awaitable[Any], loop: asyncio.AbstractEventLoop) -> Any:
    return loop.run_until_complete(coro)


def per_request_medians(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """Median seconds of single calls, the variants alternating call by call so that each meets the
    same warm caches and the same background load; the collector is paused, as in ``timeit``."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    for call in calls.values():  # warm up
        for _ in range(200):
            call()
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            for name, call in calls.items():
                start = clock()
                call()
                samples[name].append(clock() - start)
    finally:
        gc.enable()
    return {name: statistics.median(v) for name, v in samples.items()}


def quiet_service_logs() -> None:
    """The figures say it all: the service's warnings (injected faults) would bury the table.
    Called by the suites that run the service, when they run, never on import."""
    for name in ("pywats_transport.service", "pywats_transport.queue"):
        logging.getLogger(name).setLevel(logging.ERROR)


def table(rows: list[Row], markdown: bool = False) -> str:
    header = ["suite", "figure", "measured", "target", "verdict"]
    cells = [r.cells() for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in cells]
    return "\n".join(out)
