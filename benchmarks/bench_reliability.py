"""Queue reliability: reports through a failing, connection-dropping emulator, and a service killed with
SIGKILL while sending, again and again. Counts, not timings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pywats_transport.emulator import EmulatorServer
from pywats_transport.service import AsyncClientService, ClientConfig

from .common import Row, quiet_service_logs, scratch_dir

SUITE = "service queue"
TOKEN = "reliability-token"


def _drop(queue: Path, count: int, prefix: str) -> list[str]:
    queue.mkdir(parents=True, exist_ok=True)
    serials = []
    for i in range(count):
        sn = f"{prefix}-{i:04d}"
        tmp = queue / f".{sn}.tmp"
        tmp.write_text(json.dumps({"partNumber": "PN-1001", "serialNumber": sn, "result": "P"}))
        os.replace(tmp, queue / f"{sn}.json")
        serials.append(sn)
    return serials


def _done(queue: Path) -> int:
    return len(list((queue / "done").glob("*.json"))) if (queue / "done").exists() else 0


def faulty_server(quick: bool) -> list[Row]:
    n = 20 if quick else 100
    tmp = scratch_dir()
    with EmulatorServer(token=TOKEN, fail_rate=0.3, drop_rate=0.1, seed=3) as emu:
        cfg = ClientConfig(service_address=emu.url, api_token=TOKEN, queue_dir=str(tmp / "q"), health_port=0,
                           metrics_port=None, poll_interval=0.02, retry_backoff_max=0.2, rate_limit=200)
        serials = _drop(Path(cfg.queue_dir), n, "F")

        async def run() -> None:
            async with AsyncClientService(cfg):
                deadline = time.monotonic() + 300
                while _done(Path(cfg.queue_dir)) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

        asyncio.run(run())
        stored = sorted(r["serialNumber"] for r in emu.state.reports.values())
        injected = sum(emu.state.injected.values()) + (emu.proxy.dropped if emu.proxy else 0)
    accepted = len(set(stored) & set(serials))
    return [
        Row(SUITE, f"reports accepted, 30% 503/429 + 10% dropped connections ({injected} faults)", accepted, f"of {n}",
            f"= {n}", accepted == n),
        Row(SUITE, "... lost", n - accepted, "", "= 0", accepted == n),
        Row(SUITE, "... stored twice", len(stored) - len(set(stored)), "", "= 0", len(stored) == len(set(stored))),
    ]


def _config_file(tmp: Path, url: str) -> Path:
    path = tmp / "client.json"
    path.write_text(json.dumps({"service_address": url, "api_token": TOKEN, "queue_dir": str(tmp / "q"),
                                "health_port": 0, "metrics_port": None, "poll_interval": 0.02,
                                "retry_backoff_max": 0.2, "rate_limit": 200}))
    return path


def sigkill_loop(quick: bool) -> list[Row]:
    kills, n = (3, 10) if quick else (10, 30)
    tmp = scratch_dir()
    with EmulatorServer(token=TOKEN, latency_ms=60) as emu:
        cfg = _config_file(tmp, emu.url)
        queue = tmp / "q"
        serials = _drop(queue, n, "K")
        cmd = [sys.executable, "-m", "pywats_transport", "serve", "--config", str(cfg)]
        killed = 0
        route = "POST /api/Report/WSJF"
        for i in range(kills):
            arrived = emu.state.requests[route]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while emu.state.requests[route] <= arrived and time.monotonic() < deadline:
                time.sleep(0.002)
            # Half the kills land while the server is still working (60 ms), half just after it answered
            # but before the client could record the confirmation.
            time.sleep(0.03 if i % 2 == 0 else 0.062)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _done(queue) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stored: list[Any] = [r["serialNumber"] for r in emu.state.reports.values()]
    lost = len(set(serials) - set(stored))
    return [
        Row(SUITE, f"SIGKILL while sending, {killed} times in a row: reports lost (of {n})", lost, "", "= 0", lost == 0),
        Row(SUITE, "... stored twice", len(stored) - len(set(stored)), "", "= 0", len(stored) == len(set(stored))),
        Row(SUITE, "... re-sent and recognised by id", emu.state.report_posts - len(set(stored)), ""),
    ]


def run(quick: bool = False) -> list[Row]:
    quiet_service_logs()
    return faulty_server(quick) + sigkill_loop(quick)
