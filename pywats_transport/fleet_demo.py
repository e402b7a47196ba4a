"""``pywats-transport demo --fleet N``: N station processes against one emulator, with and without Redis.

With the fleet tier the stations share one cache (one fetch per URL, invalidation for all) and one
rate; without it each process has its own. The figures are printed side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from .emulator import EmulatorServer

TOKEN = "demo-fleet-token"
SHARED_LOOKUPS = ("GET /api/Product/{partNumber}", "GET /api/App/Processes", "GET /api/Software/Packages",
                  "GET /api/Asset/Status")


class LocalRedis:
    """A redis-server of our own on 127.0.0.1 and a free port (or ``port``: a restart where clients look),
    stopped with the demo."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        if port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="pywats-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--maxmemory", "64mb",
             "--maxmemory-policy", "allkeys-lru"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _station(url: str, config: str, units: int) -> None:
    """One station process (run by the demo as ``python -m pywats_transport.fleet_demo``): prints its result."""
    from .workload import run_workload

    result = asyncio.run(run_workload(url, TOKEN, "station", stations=1, units=units, config=json.loads(config),
                                      retry={"backoff_base": 0.05}))
    cache = result.stats.get("cache") or {}
    fleet_rate = (result.stats.get("throttle") or {}).get("fleet") or {}
    print(json.dumps({"reports": result.reports, "errors": result.errors, "hits": cache.get("hits", 0),
                      "misses": cache.get("misses", 0), "local_turns": fleet_rate.get("local_fallbacks", 0)}))


def _run(emu: EmulatorServer, n: int, units: int, config: dict[str, Any]) -> dict[str, Any]:
    before = emu.state.total_requests
    lookups_before = sum(emu.state.requests[r] for r in SHARED_LOOKUPS)
    emu.state.request_times.clear()
    procs = [subprocess.Popen([sys.executable, "-m", "pywats_transport.fleet_demo", emu.url, json.dumps(config),
                               str(units)], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    times = sorted(emu.state.request_times)
    peak = max((sum(1 for t in times if s <= t < s + 1.0) for s in times), default=0)
    hits = sum(r["hits"] for r in results)
    lookups = hits + sum(r["misses"] for r in results)
    return {
        "server": emu.state.total_requests - before,
        "shared": sum(emu.state.requests[r] for r in SHARED_LOOKUPS) - lookups_before,
        "hit_rate": hits / lookups if lookups else 0.0,
        "peak": peak,
        "reports": [i for r in results for i in r["reports"]],
        "errors": [e for r in results for e in r["errors"]],
        "local_turns": sum(r["local_turns"] for r in results),
    }


def run(args: argparse.Namespace) -> int:
    binary = shutil.which("redis-server")
    if binary is None:
        print("pywats-transport demo --fleet: redis-server is not on PATH; install it "
              "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)", file=sys.stderr)
        return 2
    n, units, rate, burst = args.fleet, args.units, 20.0, 5
    redis = LocalRedis(binary)
    try:
        with EmulatorServer(token=TOKEN, latency_ms=args.latency_ms) as emu:
            fleet = _run(emu, n, units, {"profile": "wats", "redis": {"url": redis.url},
                                         "cache": {"storage": "redis"},
                                         "throttle": {"rate": rate, "burst": burst, "backend": "redis"}})
            alone = _run(emu, n, units, {"profile": "wats", "throttle": {"rate": rate, "burst": burst}})
            stored = dict(emu.state.reports)
    finally:
        redis.stop()
    distinct = 2 * min(units, 3) + 2  # products and their packages, the processes, the fixture status
    rows = [
        ("server requests", fleet["server"], alone["server"]),
        (f"GETs for the {distinct} shared lookup URLs", fleet["shared"], alone["shared"]),
        ("... per URL", f"{fleet['shared'] / distinct:.1f}", f"{alone['shared'] / distinct:.1f}"),
        ("cache hit rate", f"{fleet['hit_rate']:.1%}", f"{alone['hit_rate']:.1%}"),
        (f"peak server requests in 1 s (limit {rate:.0f}/s, burst {burst})", fleet["peak"], alone["peak"]),
        ("... turns from a local bucket (Redis unreachable)", fleet["local_turns"], "-"),
        ("reports stored", len([i for i in fleet["reports"] if i in stored]),
         len([i for i in alone["reports"] if i in stored])),
    ]
    print(f"pywats-transport demo --fleet {n}: {n} station processes against the embedded WATS emulator "
          f"({args.latency_ms:.0f} ms), Redis on 127.0.0.1:{redis.port}\n")
    print(f"  {'':<52}{'with Redis':>14}{'without':>14}")
    for label, with_redis, without in rows:
        print(f"  {label:<52}{with_redis!s:>14}{without!s:>14}")
    handed = fleet["reports"] + alone["reports"]
    errors = fleet["errors"] + alone["errors"]
    lost = [i for i in handed if i not in stored]
    if errors or lost or len(handed) != len(set(handed)):
        print(f"\n  FAILED: {len(errors)} station errors, {len(lost)} reports not stored", file=sys.stderr)
        return 1
    print(f"\n  OK: {len(handed)} reports stored, each once.")
    return 0


if __name__ == "__main__":
    _station(sys.argv[1], sys.argv[2], int(sys.argv[3]))
