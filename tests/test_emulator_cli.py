from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def test_emulator_command_serves_checks_tokens_and_stops() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pywats_transport", "emulator", "--port", str(port), "--token", "T", "--latency-ms", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"{url}/api/App/Version", headers={"Authorization": "Basic T"})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.05)
        assert response.status_code == 200 and "emulator" in response.json()["version"]
        assert httpx.get(f"{url}/api/App/Version", headers={"Authorization": "Basic wrong"}).status_code == 401
        assert httpx.get(f"{url}/api/App/Version").status_code == 401
        assert httpx.get(f"{url}/api/Product/PN-1001", headers={"Authorization": "Basic T"}).json()["partNumber"] == "PN-1001"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_emulator_rejects_bad_rates() -> None:
    run = subprocess.run([sys.executable, "-m", "pywats_transport", "emulator", "--fail-rate", "2"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "fail_rate must be within 0..1, got 2.0" in run.stderr


def test_an_outage_length_or_mode_without_its_start_is_refused() -> None:
    """``--outage-seconds 5`` alone started an emulator that never went down, saying nothing."""
    for args in (["--outage-seconds", "5"], ["--outage-mode", "503"]):
        run = subprocess.run([sys.executable, "-m", "pywats_transport", "emulator", "--port", "0", *args],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, run.stdout
        assert f"{args[0]} needs --outage-after SECONDS (when the outage starts)" in run.stderr


def _get(url: str) -> httpx.Response:
    return httpx.get(f"{url}/api/App/Version", headers={"Authorization": "Basic T"}, timeout=2)


def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _refused(url: str) -> bool:
    """Off the network: the connection refused, or (a request that met the server as it left) dropped."""
    try:
        _get(url)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False


def test_outages_from_code_and_the_control_endpoint() -> None:
    from pywats_transport.emulator import EmulatorServer

    with EmulatorServer() as emu:
        emu.outage(0.5, "503")
        assert _get(emu.url).status_code == 503 and emu.outage_active
        _until(lambda: _get(emu.url).status_code == 200)
        emu.outage(0.8, "refuse")
        assert _refused(emu.url) and emu.outage_active
        _until(lambda: not _refused(emu.url))  # back on the same port
        assert _get(emu.url).status_code == 200 and not emu.outage_active
        answer = httpx.post(f"{emu.url}/_emulator/outage", json={"seconds": 0.5, "mode": "503"})
        assert answer.status_code == 200 and answer.json()["outage"]["mode"] == "503"
        assert _get(emu.url).status_code == 503
        bad = httpx.post(f"{emu.url}/_emulator/outage", json={"seconds": 1, "mode": "sometimes"})
        assert bad.status_code == 400 and "503" in bad.text and "refuse" in bad.text
        _until(lambda: _get(emu.url).status_code == 200)
        httpx.post(f"{emu.url}/_emulator/outage", json={"seconds": 0.5, "mode": "refuse"})
        _until(lambda: _refused(emu.url))
        _until(lambda: not _refused(emu.url))
        assert [o["mode"] for o in emu.state.outages] == ["503", "refuse", "503", "refuse"]


def test_emulator_command_schedules_an_outage() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pywats_transport", "emulator", "--port", str(port), "--outage-after", "1",
         "--outage-seconds", "1", "--outage-mode", "refuse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: not _refused(url), 20)
        _until(lambda: _refused(url))
        _until(lambda: not _refused(url))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
