"""Processes sharing one queue folder (two services, a service and station programs' outboxes): a report
is sent by one of them at a time, and what another process does to a report is no problem of ours."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport.emulator import EmulatorServer
from pywats_transport.reportqueue import CONFIRMED, ReportQueue

from .test_service import TOKEN, drop, report, until

posix_only = pytest.mark.skipif(os.name != "posix", reason="claims are POSIX advisory locks (flock)")


class Sender:
    """A submit function that records what it was given and, for the names in ``hold``, waits to be let go."""

    def __init__(self, *hold: str) -> None:
        self.sent: list[str] = []
        self.hold = set(hold)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(data["serialNumber"])
        if data["serialNumber"] in self.hold:
            self.entered.set()
            await self.release.wait()
        return {"id": data["id"]}


@posix_only
@pytest.mark.anyio
@pytest.mark.parametrize("with_id", [True, False], ids=["with-id", "id-written-back"])
async def test_a_report_another_queue_is_sending_is_passed_by(tmp_path: Path, with_id: bool) -> None:
    folder = tmp_path / "q"
    a_sender, b_sender = Sender("SN-1"), Sender()
    a, b = ReportQueue(folder, a_sender), ReportQueue(folder, b_sender)
    # An id-less report gets its id written back as it is loaded: the file is replaced under the claim.
    drop(folder, "r1.json", report("SN-1", **({"id": "5a3c1b0e-8d2f-4c6a-9e7b-1f0d3c2b7e11"} if with_id else {})))
    a_step = asyncio.create_task(a.process_once())
    await asyncio.wait_for(a_sender.entered.wait(), 10)
    assert [p.name for p in (folder / "sending").iterdir()] == ["r1.json"]

    await b.process_once()  # B finds it in sending/, as it finds a report a crashed process left there
    assert b_sender.sent == [], "a report another queue is sending was sent again"

    a_sender.release.set()
    await a_step
    assert [p.name for p in (folder / "done").iterdir()] == ["r1.json"]
    await b.process_once()
    assert b_sender.sent == [] and a_sender.sent == ["SN-1"]
    assert a.problems == {} and b.problems == {}


@pytest.mark.anyio
async def test_a_report_moved_on_by_another_hand_while_sent_is_no_problem(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    sender = Sender("SN-1")
    queue = ReportQueue(folder, sender)
    drop(folder, "r1.json", report("SN-1"))
    step = asyncio.create_task(queue.process_once())
    await asyncio.wait_for(sender.entered.wait(), 10)
    os.replace(folder / "sending" / "r1.json", folder / "done" / "r1.json")  # another sender confirmed it
    sender.release.set()
    await step
    assert queue.problems == {}  # before: "r1.json: No such file or directory", kept for good
    drop(folder, "r2.json", report("SN-2"))
    await queue.process_once()
    assert queue.problems == {} and queue.stats.last_error is None
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["r1.json", "r2.json"]


@pytest.mark.anyio
async def test_a_problem_of_a_file_that_is_gone_is_forgotten(tmp_path: Path) -> None:
    folder = tmp_path / "q"

    async def down(data: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent in this test")

    queue = ReportQueue(folder, down)
    queue._problem("file:r1.json", "r1.json: No space left on device")  # as a failed move records it
    await queue.process_once()
    assert queue.problems == {}  # the file is in neither pending/ nor sending/: its problem went with it


CLAIM_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pywats_transport.report_claim import Claim
    claim = Claim.take(Path(sys.argv[1]))
    print("held" if claim is not None else "refused", flush=True)
    time.sleep(60)
""")


@posix_only
@pytest.mark.anyio
async def test_a_claim_holds_across_processes_and_dies_with_its_process(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    sender = Sender()
    queue = ReportQueue(folder, sender)
    drop(folder / "sending", "r1.json", report("SN-1"))  # being sent by another process
    holder = subprocess.Popen([sys.executable, "-c", CLAIM_HOLDER, str(folder / "sending" / "r1.json")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        await queue.process_once()
        assert sender.sent == []
        holder.send_signal(signal.SIGKILL)  # the process died mid-send: its report is resumed
        holder.wait(timeout=10)
        await queue.process_once()
        assert sender.sent == ["SN-1"]
        assert [p.name for p in (folder / "done").iterdir()] == ["r1.json"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _serve(path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    assert "http://127.0.0.1:" in banner, proc.stderr.read() if proc.stderr else banner
    return proc, int(banner.split("http://127.0.0.1:")[1].split()[0].rstrip(")"))


@posix_only
@pytest.mark.anyio
async def test_two_services_on_one_folder_send_each_report_once_and_stay_healthy(tmp_path: Path) -> None:
    count = 80
    with EmulatorServer(token=TOKEN, latency_ms=20) as emu:
        procs: list[subprocess.Popen[str]] = []
        try:
            ports = []
            for name in ("a", "b"):
                path = tmp_path / f"{name}.json"
                path.write_text(json.dumps({"service_address": emu.url, "api_token": TOKEN, "health_port": 0,
                                            "metrics_port": None, "queue_dir": str(tmp_path / "queue"),
                                            "poll_interval": 0.05}))
                path.chmod(0o600)
                proc, port = _serve(path)
                procs.append(proc)
                ports.append(port)
            for i in range(count):
                drop(tmp_path / "queue", f"r{i:03}.json", report(f"SN-{i}"))
            done = tmp_path / "queue" / "done"
            await until(lambda: len(list(done.glob("*.json"))) == count, timeout=60)
            async with httpx.AsyncClient() as client:
                stats = (await client.get(f"{emu.url}/_emulator/stats")).json()
                assert stats["reports"] == count
                assert stats["report_posts"] == count  # before: a report one service was sending, sent again
                for port in ports:
                    answer = await client.get(f"http://127.0.0.1:{port}/health")
                    # before: 503, "queue: r017.json: No such file or directory", for good
                    assert answer.status_code == 200, answer.text
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


@pytest.mark.anyio
async def test_a_report_handed_over_while_this_process_sends_it_waits_for_that_send(tmp_path: Path) -> None:
    """The outbox's background sender can pick a report up between its write and the hand-over's own
    send: the hand-over said "queued" for a report the server confirmed a moment later."""
    folder = tmp_path / "q"
    sender = Sender("SN-1")
    queue = ReportQueue(folder, sender)
    path = await queue.aput(report("SN-1"))
    background = asyncio.create_task(queue.process_once())
    await asyncio.wait_for(sender.entered.wait(), 10)
    handed_over = asyncio.create_task(queue.send_now(path))
    await asyncio.sleep(0.05)
    assert not handed_over.done()  # before: "kept" at once
    sender.release.set()
    assert await asyncio.wait_for(handed_over, 10) == CONFIRMED
    await background
    assert sender.sent == ["SN-1"]
