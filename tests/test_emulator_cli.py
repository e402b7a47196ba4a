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
