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
                   "transport chain: cache -> retry -> throttle -> transport", "OK: 12 of 12 reports stored"):
        assert needle in out.stdout
