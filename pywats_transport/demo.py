"""``pywats-transport demo``: the station workload against the embedded emulator, with and without caching.

A third run goes through a short WATS outage mid-run: the stations keep testing (lookups answered
from the cache, reports kept in their outbox) and every report reaches the server once afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .cli_types import number, whole
from .emulator import EmulatorServer
from .wats import AsyncWATS
from .workload import RunResult, run_workload

TOKEN = "demo-station-token"


def _line(label: str, cached: Any, uncached: Any) -> str:
    return f"  {label:<34}{cached!s:>14}{uncached!s:>14}"


def report(cached: RunResult, uncached: RunResult, emulator: EmulatorServer) -> str:
    retry_c, retry_u = cached.stats.get("retry", {}), uncached.stats.get("retry", {})
    thr_c, thr_u = cached.stats.get("throttle", {}), uncached.stats.get("throttle", {})
    saved = uncached.seconds - cached.seconds
    rep_c, rep_u = cached.repeat_seconds(), uncached.repeat_seconds()
    rows = [
        "pywats-transport demo: station workload against the embedded WATS emulator",
        f"  emulator: {emulator.url}  latency {emulator.state.faults.latency_ms:.0f} ms, "
        f"injected failures {emulator.state.faults.fail_rate:.0%} (503/429 with Retry-After)",
        "",
        _line("", "default stack", "cache off"),
        _line("wall time (s)", f"{cached.seconds:.2f}", f"{uncached.seconds:.2f}"),
        _line("calls made", len(cached.timings), len(uncached.timings)),
        _line("requests that reached the server", cached.server_requests, uncached.server_requests),
        _line("cache hit rate", f"{cached.hit_rate():.1%}", "-"),
        _line("time in repeated lookups (s)", f"{rep_c:.3f}", f"{rep_u:.3f}"),
        _line("retries", retry_c.get("retries", 0), retry_u.get("retries", 0)),
        _line("throttle waits (count / s)", f"{thr_c.get('waited', 0)} / {thr_c.get('wait_seconds_total', 0):.2f}",
              f"{thr_u.get('waited', 0)} / {thr_u.get('wait_seconds_total', 0):.2f}"),
        _line("reports accepted", len(set(cached.reports)), len(set(uncached.reports))),
        "",
        f"  time saved by caching: {saved:.2f} s ({saved / uncached.seconds:.0%} of the uncached run); "
        f"repeated lookups {1 - rep_c / rep_u:.1%} faster" if uncached.seconds and rep_u else "",
        f"  transport chain: {' -> '.join(cached.chain)}",
    ]
    return "\n".join(rows)


@dataclass
class Outage:
    """A WATS outage during the run: when it started and ended, and when the outbox was empty again."""

    seconds: float
    mode: str
    after_reports: int
    started: float | None = None
    ended: float | None = None
    drained: float | None = None

    async def __call__(self, result: RunResult, api: AsyncWATS, emulator: EmulatorServer) -> None:
        while len(result.reports) < self.after_reports:
            await asyncio.sleep(0.01)
        emulator.outage(self.seconds, self.mode)
        self.started = time.perf_counter()
        while emulator.outage_active:
            await asyncio.sleep(0.01)
        self.ended = time.perf_counter()
        deadline = self.ended + 60
        while await asyncio.to_thread(api.outbox.queue.count_waiting) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        self.drained = time.perf_counter()


def outage_report(result: RunResult, outage: Outage) -> str:
    drain = f"{outage.drained - outage.ended:.2f} s" if outage.drained and outage.ended else "-"
    return "\n".join([
        "",
        f"  outage run: WATS {'off the network' if outage.mode == 'refuse' else 'answering 503'} for "
        f"{outage.seconds:.1f} s after {outage.after_reports} reports; reports through the outbox",
        f"    lookups answered from expired entries (stale)   {result.stale_answers()}",
        "    lookups that failed                             0" if not result.errors else
        f"    lookups that failed                             {len(result.errors)}",
        f"    reports handed to the outbox: sent / queued     {result.submissions['sent']} / "
        f"{result.submissions['queued']}",
        f"    unit checks skipped (nothing to fall back on)   {result.unit_checks_skipped}",
        f"    queued reports drained after WATS came back in  {drain}",
    ])


async def _demo(args: argparse.Namespace) -> int:
    # The outage is reported in the figures; the queue's warnings about it would only repeat them.
    logging.getLogger("pywats_transport.queue").setLevel(logging.ERROR)
    with EmulatorServer(token=TOKEN, latency_ms=args.latency_ms, fail_rate=args.fail_rate, seed=args.seed) as emu, \
            tempfile.TemporaryDirectory(prefix="pywats-outbox-") as outbox:
        # Every run hands its reports to the outbox, as a station should: one whose retries the
        # injected faults exhaust is kept and sent again, not lost with the run.
        common = dict(stations=args.stations, units=args.units, emulator_state=emu.state, retry={"backoff_base": 0.05},
                      outbox=outbox)
        per_run = args.stations * args.units * 3
        cached = await run_workload(emu.url, TOKEN, "default stack", **common)
        uncached = await run_workload(emu.url, TOKEN, "cache off", enable_cache=False, **common)
        print(report(cached, uncached, emu))
        runs = [cached, uncached]
        if args.outage_seconds > 0:
            outage = Outage(args.outage_seconds, args.outage_mode, per_run // 3)

            async def during(result: RunResult, api: AsyncWATS) -> None:
                await outage(result, api, emu)

            # Seconds-long TTL and test steps: the outage meets expired entries, as an outage of an hour
            # would with the profile's 300 s.
            offline = await run_workload(emu.url, TOKEN, "outage", during=during, offline=True,
                                         cache_ttl=args.outage_cache_ttl, test_seconds=args.test_ms / 1000, **common)
            print(outage_report(offline, outage))
            runs.append(offline)
        expected = per_run * len(runs)
        failures = [error for run in runs for error in run.errors]
        if not all(run.drained for run in runs):
            failures.append("the outbox did not drain")
        stored = set(emu.state.reports)
        lost = [i for run in runs for i in run.reports if i not in stored]
    if failures:
        print("\nworkload FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    if lost or len(stored) != expected:
        print(f"\nworkload FAILED: the server holds {len(stored)} reports, expected {expected}; "
              f"{len(lost)} handed over but not stored", file=sys.stderr)
        return 1
    print(f"\n  OK: {len(stored)} of {expected} reports stored, each once.")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.fleet is not None:
        from .fleet_demo import run as run_fleet

        return run_fleet(args)
    return asyncio.run(_demo(args))


#: station processes ``demo --fleet`` starts at most
MAX_FLEET = 64


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the station workload against the embedded emulator, cached and uncached")
    p.add_argument("--stations", type=whole(1), default=3, help="test stations running at once (default: 3)")
    p.add_argument("--units", type=whole(1), default=4, help="units per station (each passes 3 operations)")
    p.add_argument("--latency-ms", type=number(0), default=20.0, help="the emulator's latency per request (default: 20)")
    p.add_argument("--fail-rate", type=number(0, 1), default=0.03,
                   help="share of requests the emulator answers 503/429 with Retry-After (default: 0.03)")
    p.add_argument("--seed", type=int, default=1, help="seed of the injected failures: the same seed, the same run")
    # Each station is a process of its own, on this one machine: a bound that a typo (1000) does not pass.
    p.add_argument("--fleet", type=whole(1, MAX_FLEET), metavar="N", default=None,
                   help=f"N station processes (at most {MAX_FLEET}) sharing a local redis-server (cache, "
                        "invalidation, rate), against the same N without it")
    p.add_argument("--outage-seconds", type=number(0), default=2.0,
                   help="the outage run's WATS outage (0: no outage run)")
    p.add_argument("--test-ms", type=number(0), default=100.0, help="outage run: how long each test operation takes")
    p.add_argument("--outage-cache-ttl", type=number(0, above=True), default=1.0,
                   help="outage run: seconds a lookup is fresh; short, so that the outage meets expired entries "
                        "as an outage of an hour would with the profile's 300 s")
    p.add_argument("--outage-mode", choices=["refuse", "503"], default="refuse",
                   help="refuse: WATS off the network; 503: WATS answering 503")
    p.set_defaults(func=run)
