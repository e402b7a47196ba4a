"""``pywats-transport demo``: the station workload against the embedded emulator, with and without caching."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .emulator import EmulatorServer
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


async def _demo(args: argparse.Namespace) -> int:
    with EmulatorServer(token=TOKEN, latency_ms=args.latency_ms, fail_rate=args.fail_rate, seed=args.seed) as emu:
        common = dict(stations=args.stations, units=args.units, emulator_state=emu.state, retry={"backoff_base": 0.05})
        cached = await run_workload(emu.url, TOKEN, "default stack", **common)
        uncached = await run_workload(emu.url, TOKEN, "cache off", enable_cache=False, **common)
        print(report(cached, uncached, emu))
        expected = args.stations * args.units * 3 * 2
        failures = cached.errors + uncached.errors
        stored = len(emu.state.reports)
    if failures:
        print("\nworkload FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    if stored != expected:
        print(f"\nworkload FAILED: the server holds {stored} reports, expected {expected}", file=sys.stderr)
        return 1
    print(f"\n  OK: {stored} of {expected} reports stored, each once.")
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the station workload against the embedded emulator, cached and uncached")
    p.add_argument("--stations", type=int, default=3)
    p.add_argument("--units", type=int, default=4, help="units per station (each passes 3 operations)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--fail-rate", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=run)
