from __future__ import annotations

import socket
import subprocess
import sys

import pytest


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


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--stations", "0"], "argument --stations: must be a whole number >= 1, got '0'"),
    (["demo", "--units", "-1"], "argument --units: must be a whole number >= 1, got '-1'"),
    (["demo", "--fleet", "0"], "argument --fleet: must be a whole number within 1..64, got '0'"),
    (["demo", "--fleet", "-1"], "argument --fleet: must be a whole number within 1..64, got '-1'"),
    (["demo", "--fleet", "two"], "argument --fleet: must be a whole number within 1..64, got 'two'"),
    # before: a thousand station processes started on this one machine
    (["demo", "--fleet", "1000"], "argument --fleet: must be a whole number within 1..64, got '1000'"),
    (["demo", "--fail-rate", "2"], "argument --fail-rate: must be a number within 0..1, got '2'"),
    (["demo", "--latency-ms", "-5"], "argument --latency-ms: must be a number >= 0, got '-5'"),
    (["demo", "--test-ms", "nan"], "argument --test-ms: must be a number >= 0, got 'nan'"),
    (["demo", "--outage-cache-ttl", "0"], "argument --outage-cache-ttl: must be a number > 0, got '0'"),
    (["emulator", "--port", "99999"], "argument --port: must be a whole number within 0..65535, got '99999'"),
    (["emulator", "--outage-after", "-1"], "argument --outage-after: must be a number >= 0, got '-1'"),
    (["emulator", "--outage-seconds", "0"], "argument --outage-seconds: must be a number > 0, got '0'"),
])
def test_a_bad_argument_is_named_with_what_it_allows(argv: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The demo ran with 0 or -1 stations and units (reporting "OK: 0 reports"), took --fleet 0 as no fleet and
    --fleet -1 as a fleet of none, and answered a negative latency or a rate above 1 with a traceback."""
    from pywats_transport.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and "Traceback" not in err


def test_an_emulator_that_cannot_listen_says_why_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A port in use, or a host that does not resolve: one line naming the argument (it was a traceback)."""
    from pywats_transport.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["emulator", "--port", str(port)]) == 4
        assert capsys.readouterr().err.strip() == (
            f"pywats-transport emulator: error: --port {port} on 127.0.0.1 is already in use by another program")
    assert main(["emulator", "--host", "no-such-host.invalid", "--port", "0"]) == 4
    err = capsys.readouterr().err
    assert "--host 'no-such-host.invalid' cannot be resolved" in err and "Traceback" not in err
