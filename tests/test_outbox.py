"""The WATS clients' outbox: written to disk first, sent at once or later, exactly once by id."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pywats_transport import WATS, AsyncWATS
from pywats_transport.emulator import EmulatorServer
from pywats_transport.wats import UUTReport

TOKEN = "outbox-token"
FAST = {"retry": {"backoff_base": 0.01, "backoff_max": 0.05}}


@pytest.fixture
def emulator(wats_emulator: Any) -> Any:
    """The testing kit's emulator (its token: ``emulator.token``)."""
    return wats_emulator


def stored_ids(emu: EmulatorServer) -> list[str]:
    return sorted(emu.state.reports)


def report(sn: str) -> UUTReport:
    return UUTReport(partNumber="PN-1001", serialNumber=sn)


@pytest.mark.anyio
async def test_async_outbox_sends_at_once_or_keeps_until_the_server_is_back(tmp_path: Path,
                                                                            emulator: EmulatorServer) -> None:
    async with AsyncWATS(emulator.url, emulator.token, outbox=tmp_path / "outbox", **FAST) as api:
        first = report("SN-1")
        sent = await api.outbox.submit(first)
        assert (sent.status, sent.id) == ("sent", first.id) and stored_ids(emulator) == [first.id]
        emulator.outage(1.5, "refuse")
        queued = [await api.outbox.submit(report(f"SN-Q{i}")) for i in range(5)]
        assert all(q.status == "queued" for q in queued) and api.outbox.pending() == 5
        assert len(list((tmp_path / "outbox").glob("*.json"))) + len(list((tmp_path / "outbox" / "sending").glob("*.json"))) == 5
        assert await api.outbox.drain(timeout=15)
    assert stored_ids(emulator) == sorted([first.id, *(q.id for q in queued)])
    assert emulator.state.report_posts == len(emulator.state.reports)  # none was sent twice
    posts = emulator.state.report_posts
    again = await _resubmit_same(tmp_path, emulator, first)
    assert (again.status, again.duplicate) == ("sent", True) and stored_ids(emulator).count(first.id) == 1
    assert emulator.state.report_posts == posts  # confirmed before: not sent again


async def _resubmit_same(tmp_path: Path, emulator: EmulatorServer, rep: UUTReport) -> Any:
    async with AsyncWATS(emulator.url, emulator.token, outbox=tmp_path / "outbox", **FAST) as api:
        return await api.outbox.submit(rep)  # already confirmed: nothing is sent twice


def test_sync_outbox_through_a_503_outage(tmp_path: Path, emulator: EmulatorServer) -> None:
    with WATS(emulator.url, emulator.token, outbox=tmp_path / "outbox", **FAST) as api:
        emulator.outage(1.0, "503")
        outcome = api.outbox.submit(report("SN-S1"))
        assert outcome.status == "queued" and "503" in (outcome.reason or "")
        assert api.outbox.drain(timeout=15) and api.outbox.pending() == 0
        last = api.outbox.submit(report("SN-S2"))
        assert last.status == "sent", (last, api.outbox.queue.stats, emulator.outage_active)
    assert len(stored_ids(emulator)) == 2


def test_without_an_outbox_the_error_says_how_to_get_one() -> None:
    api = AsyncWATS("http://127.0.0.1:9", TOKEN)
    with pytest.raises(RuntimeError, match="outbox='<folder>'"):
        api.outbox  # noqa: B018


def test_a_report_the_queue_cannot_send_is_refused_at_once(tmp_path: Path) -> None:
    with WATS("http://127.0.0.1:9", TOKEN, outbox=tmp_path / "o") as api, pytest.raises(ValueError, match="serialNumber"):
        api.outbox.submit({"partNumber": "PN-1", "result": "P"})


# -- a station killed while its outbox holds reports -------------------------------------------------

STATION = textwrap.dedent("""
    import asyncio, sys
    from pywats_transport import AsyncWATS
    from pywats_transport.wats import UUTReport

    async def main(url, folder, count):
        async with AsyncWATS(url, "outbox-token", outbox=folder, retry={"backoff_base": 0.01}) as api:
            for i in range(count):
                outcome = await api.outbox.submit(UUTReport(partNumber="PN-1001", serialNumber=f"SN-K{i}"))
                print(outcome.status, outcome.id, flush=True)
            if count == 0:
                print("drained", await api.outbox.drain(timeout=30), flush=True)
            await asyncio.sleep(3600)  # killed here, or while sending

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_killed_station_loses_nothing_and_sends_nothing_twice(tmp_path: Path) -> None:
    script = tmp_path / "station.py"
    script.write_text(STATION)
    folder = tmp_path / "outbox"
    port = free_port()
    with EmulatorServer(token=TOKEN, port=port, latency_ms=300) as emu:
        proc = subprocess.Popen([sys.executable, str(script), emu.url, str(folder), "8"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        handed = [proc.stdout.readline().split() for _ in range(2)]  # two confirmed, the third on its way
        time.sleep(0.15)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        on_disk = {p.stem for state in ("", "sending", "done") for p in (folder / state).glob("*.json")}
        assert {h[1] for h in handed} <= on_disk and all(h[0] == "sent" for h in handed)
        emu.outage(0.5, "refuse")  # the next run starts during an outage and waits it out
        proc = subprocess.Popen([sys.executable, str(script), emu.url, str(folder), "0"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "drained True"
        proc.kill()
        proc.wait(timeout=30)
        stored = sorted(emu.state.reports)
        posts = emu.state.report_posts
    assert set(stored) == on_disk  # every report handed over is stored ...
    assert posts - len(stored) <= 1  # at most the report in flight at the kill went twice, and was recognised
    assert json.loads(next((folder / "done").glob("*.json")).read_text())["partNumber"] == "PN-1001"


@pytest.mark.anyio
async def test_submissions_during_an_outage_do_not_wait_once_the_server_is_known_down(tmp_path: Path,
                                                                                       emulator: EmulatorServer) -> None:
    async with AsyncWATS(emulator.url, emulator.token, outbox=tmp_path / "o", **FAST) as api:
        emulator.outage(2.0, "refuse")
        await api.outbox.submit(report("SN-0"))  # finds out
        started = time.monotonic()
        for i in range(10):
            assert (await api.outbox.submit(report(f"SN-{i + 1}"))).status == "queued"
        assert time.monotonic() - started < 1.0
        assert await api.outbox.drain(timeout=15)
        await asyncio.sleep(0)
    assert len(stored_ids(emulator)) == 11


@pytest.mark.anyio
async def test_the_queue_never_holds_the_event_loop_on_the_disk(tmp_path: Path, emulator: EmulatorServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of a report (written, claimed, read, moved to ``done/`` or ``error/``) renamed and
    fsynced on the event loop's thread: on a slow disk, every fsync held each other task of the loop (a
    station's lookups, the client service's health server) for as long. They run in worker threads now."""
    import threading

    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if threading.get_ident() == loop_thread:
            on_loop.append(f"rename into {Path(dst).parent.name}/")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    folder = tmp_path / "outbox"
    async with AsyncWATS(emulator.url, emulator.token, outbox=folder, **FAST) as api:
        assert (await api.outbox.submit(report("SN-L1"))).status == "sent"
        emulator.outage(0.5, "refuse")
        assert (await api.outbox.submit(report("SN-L2"))).status == "queued"
        (tmp_path / "bad.json").write_text("{not json")
        real_replace(tmp_path / "bad.json", folder / "bad.json")
        assert await api.outbox.drain(timeout=15)
    assert len(stored_ids(emulator)) == 2 and (folder / "error" / "bad.json").exists()
    assert len(list((folder / "done").glob("*.json"))) == 2
    assert on_loop == []


@pytest.mark.anyio
async def test_the_same_report_handed_over_many_times_at_once_is_queued_once(tmp_path: Path) -> None:
    """Writes run in worker threads: ten hand-overs of one report at once must neither fail on each
    other's temporary file nor count the report ten times."""
    from pywats_transport.reportqueue import ReportQueue

    async def never(report: dict[str, Any]) -> Any:
        raise AssertionError("nothing is sent here")

    queue = ReportQueue(tmp_path / "q", never)
    data = {"partNumber": "PN-1", "serialNumber": "SN-1", "result": "Passed"}
    paths = await asyncio.gather(*(queue.aput(dict(data)) for _ in range(10)))
    assert len(set(paths)) == 1 and paths[0].exists()
    assert queue.depth()["pending"] == 1 and queue.count_waiting() == 1
    assert [p.name for p in (tmp_path / "q").iterdir() if p.is_file()] == [paths[0].name]  # no temporary left


@pytest.mark.anyio
async def test_an_outbox_whose_client_was_closed_says_so(tmp_path: Path) -> None:
    """After the client closed, the async outbox took a report, said "queued" and started a sender that
    sent through the closed client for as long as the event loop ran; the sync one failed with "Event
    loop is closed" and a coroutine never awaited. Both now say the outbox is closed, and where its
    reports wait."""
    folder = tmp_path / "outbox"
    data = {"partNumber": "PN-1", "serialNumber": "SN-1", "result": "P"}
    api = AsyncWATS("http://127.0.0.1:9", TOKEN, outbox=folder)
    await api.aclose()
    with pytest.raises(RuntimeError, match=f"the outbox is closed .*{folder}"):
        await api.outbox.submit(data)
    with pytest.raises(RuntimeError, match="the outbox is closed"):
        await api.outbox.drain(timeout=1)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "pywats-outbox"]
    sync = WATS("http://127.0.0.1:9", TOKEN, outbox=folder)
    sync.close()
    with pytest.raises(RuntimeError, match=f"the outbox is closed .*{folder}"):
        sync.outbox.submit(data)
    assert sync.outbox.pending() == 0


def test_two_writers_of_one_report_file_do_not_trip_over_each_other(tmp_path: Path) -> None:
    """Two processes sharing a queue folder (or a station and the client service) that write the same
    report at once shared its temporary file's name: one renamed it away under the other, which failed."""
    import threading

    from pywats_transport.reportqueue import _write_atomic

    target = tmp_path / "r.json"
    failures: list[BaseException] = []

    def writer() -> None:
        for _ in range(200):
            try:
                _write_atomic(target, b'{"id": "x"}')
            except OSError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and target.read_bytes() == b'{"id": "x"}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_an_outbox_that_cannot_be_a_folder_is_named_as_the_caller_named_it(tmp_path: Path) -> None:
    """It said "queue_dir '...' is a file", the client service's word, to a caller who gave ``outbox=``."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(Exception, match=r"^outbox '.*a-file' is a file, not a folder$"):
        WATS("http://127.0.0.1:9", TOKEN, outbox=tmp_path / "a-file")


class HungServer:
    """A host that takes connections and never answers (a hung WATS, a half-open path): no error comes
    before the client's timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> HungServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.anyio
async def test_a_hand_over_to_a_server_that_does_not_answer_waits_at_most_wait(tmp_path: Path) -> None:
    """A station handing a report to a WATS that neither answered nor refused waited for the client's
    timeout and retries (3 x 30 s) on every report."""
    with HungServer() as server:
        async with AsyncWATS(server.url, "t", outbox=tmp_path / "o") as api:
            assert api.outbox.wait == 10.0
            api.outbox.wait = 0.3
            started = time.monotonic()
            first = await asyncio.wait_for(api.outbox.submit(report("SN-1")), 20)
            assert first.status == "queued" and "not answered" in (first.reason or "")
            assert 0.3 <= time.monotonic() - started < 5
            # Its send goes on behind: the next hand-overs do not wait again.
            started = time.monotonic()
            more = [await api.outbox.submit(report(f"SN-{i}"), wait=30) for i in range(2, 5)]
            assert [m.status for m in more] == ["queued"] * 3 and time.monotonic() - started < 1
            assert api.outbox.pending() == 4
        # Closed with its send unanswered: the report stays for the next run.
        names = {p.stem for p in (tmp_path / "o").rglob("*.json") if p.parent.name in ("o", "sending")}
        assert names == {first.id, *(m.id for m in more)}


def test_a_sync_hand_over_waits_at_most_wait(tmp_path: Path) -> None:
    with HungServer() as server, WATS(server.url, "t", outbox=tmp_path / "o") as api:
        started = time.monotonic()
        assert api.outbox.submit(report("SN-1"), wait=0.3).status == "queued"
        assert time.monotonic() - started < 5
        with pytest.raises(ValueError, match=r"wait must be seconds >= 0 .*got -1"):
            api.outbox.wait = -1
        with pytest.raises(ValueError, match=r"wait must be seconds >= 0"):
            api.outbox.submit(report("SN-2"), wait=float("nan"))


@pytest.mark.anyio
async def test_a_slow_answer_past_wait_is_still_confirmed_once(tmp_path: Path) -> None:
    """Past its wait a report is queued, not given up: its send is confirmed when the server answers, the
    hand-overs meanwhile are queued at once, and once the server has answered they are sent again."""
    with EmulatorServer(token=TOKEN, latency_ms=1500) as emu:
        async with AsyncWATS(emu.url, TOKEN, outbox=tmp_path / "o", **FAST) as api:
            slow = await api.outbox.submit(report("SN-1"), wait=0.2)
            meanwhile = await api.outbox.submit(report("SN-2"), wait=0.2)
            assert (slow.status, meanwhile.status) == ("queued", "queued")
            assert await api.outbox.drain(timeout=20)
            assert (await api.outbox.submit(report("SN-3"), wait=math.inf)).status == "sent"
        assert len(stored_ids(emu)) == 3 and {slow.id, meanwhile.id} < set(stored_ids(emu))
        assert emu.state.report_posts == 3  # none sent twice


@pytest.mark.anyio
async def test_a_hand_over_the_caller_stopped_waiting_for_is_sent_or_kept_never_left_running(tmp_path: Path) -> None:
    """A caller's own timeout around ``submit`` left the send running unowned: closing the client did not
    stop it, and it went on through a closed client."""
    with EmulatorServer(token=TOKEN, latency_ms=1000) as emu:
        async with AsyncWATS(emu.url, TOKEN, outbox=tmp_path / "o", **FAST) as api:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(api.outbox.submit(report("SN-1"), wait=math.inf), 0.2)
            assert api.outbox.pending() == 1
        assert [t for t in asyncio.all_tasks() if "send_now" in repr(t.get_coro())] == []
        assert len(list((tmp_path / "o").rglob("*.json"))) == 1  # kept (or confirmed), never lost
        async with AsyncWATS(emu.url, TOKEN, outbox=tmp_path / "o", **FAST) as api:
            assert await api.outbox.drain(timeout=20)
        assert len(stored_ids(emu)) == 1
