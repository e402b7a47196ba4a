from __future__ import annotations

import subprocess
import sys


def test_demo_command_runs_the_workload_and_reports() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pywats_transport", "demo", "--stations", "2", "--units", "1", "--latency-ms", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for needle in ("cache hit rate", "requests that reached the server", "retries", "throttle waits",
                   "transport chain: cache -> retry -> throttle -> transport", "OK: 18 of 18 reports stored",
                   "outage run: WATS off the network", "lookups that failed                             0"):
        assert needle in out.stdout
    drained = next(line for line in out.stdout.splitlines() if "drained after WATS came back" in line)
    assert drained.split()[-1] == "s" and float(drained.split()[-2]) < 10


def test_fleet_demo_shares_one_cache_between_station_processes() -> None:
    import shutil

    import pytest

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs the Debian package redis-server)")
    out = subprocess.run(
        [sys.executable, "-m", "pywats_transport", "demo", "--fleet", "3", "--units", "1", "--latency-ms", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = {line[:46].strip(): line[46:].split() for line in out.stdout.splitlines() if line.startswith("  ")}
    assert rows["GETs for the 4 shared lookup URLs"] == ["4", "12"]  # one fetch per URL for the fleet
    assert "OK: 18 reports stored, each once." in out.stdout


def test_fleet_demo_says_how_to_get_redis_when_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    env = {**os.environ, "PATH": str(tmp_path)}  # no redis-server on this PATH
    out = subprocess.run([sys.executable, "-m", "pywats_transport", "demo", "--fleet", "2"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 2 and "apt-get install redis-server" in out.stderr
