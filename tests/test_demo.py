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
