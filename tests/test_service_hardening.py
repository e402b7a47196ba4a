"""The client service in a hostile environment: secrets, disk faults, startup errors, exhaustion, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport import ConfigError, TransportConfig
from pywats_transport.emulator import EmulatorServer
from pywats_transport.service import AsyncClientService, ClientConfig
from pywats_transport.service.logs import RepeatFilter

from .test_service import TOKEN, config, done, drop, report, until

SECRET = "tok-S3CRET-value"


# -- 1. secrets never in errors -------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    {"api_token": SECRET},                                                   # service_address missing
    {"service_address": "https://w", "apitokn": SECRET},                      # misspelt key
    {"service_address": "https://w", "api_token": "t", "auth": SECRET},       # unknown key holding a token
    {"service_address": SECRET, "api_token": SECRET},                         # a bad value that is the token
])
def test_config_errors_never_echo_a_secret(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    message = str(info.value)
    assert SECRET not in message and SECRET not in repr(info.value.problems)
    assert str(path) in message
    for key in data:
        if key not in ClientConfig.model_fields:
            assert f"{key}: unknown key" in message


def test_transport_config_unknown_keys_are_named_without_values() -> None:
    with pytest.raises(ConfigError) as info:
        TransportConfig.from_dict({"cache": {"authorization": SECRET}, "x": SECRET})
    assert SECRET not in str(info.value) and "cache.authorization: unknown key" in str(info.value)


# -- 5. queue_dir and odd files ------------------------------------------------------------------

def test_an_empty_queue_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"queue_dir .*must name a folder"):
        ClientConfig(service_address="http://127.0.0.1:1", api_token="t", queue_dir="")
    with pytest.raises(ConfigError, match=r"service_address .*host"):
        ClientConfig(service_address="http://", api_token="t")


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(token=TOKEN) as emu:
        yield emu


@pytest.mark.anyio
async def test_links_directories_and_upper_case_names(tmp_path: Path, emulator: EmulatorServer) -> None:
    cfg = config(tmp_path, emulator.url)
    queue = Path(cfg.queue_dir)
    queue.mkdir(parents=True)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(report("SN-LINK")))
    (queue / "link.json").symlink_to(outside)
    (queue / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    (queue / "folder.json").mkdir()
    drop(queue, "UPPER.JSON", report("SN-UPPER"))
    async with AsyncClientService(cfg) as service:
        confirmed = lambda: sorted(p.name for p in (queue / "done").iterdir())  # noqa: E731
        await until(lambda: confirmed() == ["UPPER.JSON"] and (queue / "error" / "link.json").is_symlink())
        reason = (queue / "error" / "link.json.reason.txt").read_text()
        assert "symbolic link" in reason and outside.exists()  # the target is never read or moved
        details = service.details()["queue"]
        odd = {item["name"]: item["problem"] for item in details["ignored"]}
        assert set(odd) == {"dangling.json", "folder.json"}
        assert "dangling" in odd["dangling.json"] and "folder" in odd["folder.json"]


# -- 2, 3. disk full, read-only folder ----------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "512k") -> Iterator[tuple[Path, Path]]:
    """A tmpfs at ``where/rw`` and a bind mount of it at ``where/svc`` that the test can make read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    rw, svc = where / "rw", where / "svc"
    rw.mkdir()
    svc.mkdir()
    mounted: list[Path] = []
    try:
        for args in (["-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(rw)], ["--bind", str(rw), str(svc)]):
            run = subprocess.run(["mount", *args], capture_output=True, text=True)
            if run.returncode != 0:
                pytest.skip(f"this machine does not allow mounts: {run.stderr.strip()}")
            mounted.append(Path(args[-1]))
        yield rw, svc
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode},bind", str(path)], check=True, capture_output=True)


def fill(path: Path) -> Path:
    filler = path / "filler.bin"
    with contextlib.suppress(OSError), open(filler, "wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    return filler


@pytest.mark.anyio
async def test_a_full_disk_blocks_only_the_file_it_affects(tmp_path: Path, emulator: EmulatorServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with small_filesystem(tmp_path) as (rw, _):
        queue = rw / "queue"
        for state in ("sending", "done", "error"):
            (queue / state).mkdir(parents=True)
        (queue / "sending" / "broken.json").write_text("{not json")
        for i in range(3):
            drop(queue, f"r{i}.json", report(f"SN-{i}", id=f"00000000-0000-4000-8000-00000000000{i}"))
        filler = fill(rw)
        cfg = config(tmp_path, emulator.url, queue_dir=str(queue))
        async with AsyncClientService(cfg) as service:
            await until(lambda: len(done(queue)) == 3)
            await until(lambda: bool(service.problems(readiness=True)))
            assert any("broken.json" in p and "No space" in p for p in service.problems(readiness=True))
            assert "No space" in (service.details()["queue"]["last_error"] or "")
            await asyncio.sleep(1.0)  # many polls
            logged = [r for r in caplog.records if "broken.json" in r.getMessage()]
            assert len(logged) == 1 and not any(r.exc_info for r in caplog.records)
            filler.unlink()
            await until(lambda: (queue / "error" / "broken.json").exists())
            await until(lambda: not service.problems(readiness=True))
            assert (queue / "error" / "broken.json.reason.txt").exists()


@pytest.mark.anyio
async def test_a_queue_folder_made_read_only_is_a_problem_then_recovers(
        tmp_path: Path, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with small_filesystem(tmp_path, "4m") as (rw, svc):
        (rw / "queue").mkdir()
        cfg = config(tmp_path, emulator.url, queue_dir=str(svc / "queue"))
        async with AsyncClientService(cfg) as service:
            remount(svc, "ro")
            drop(rw / "queue", "a.json", report("SN-RO"))  # arrives through the writable mount
            await until(lambda: any("not writable" in p for p in service.problems(readiness=True)))
            await asyncio.sleep(1.0)
            assert len([r for r in caplog.records if "not writable" in r.getMessage()]) == 1
            assert not any(r.exc_info for r in caplog.records)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{service.health_port}/health/ready")
            assert ready.status_code == 503 and "not writable" in json.dumps(ready.json())
            remount(svc, "rw")
            await until(lambda: len(done(rw / "queue")) == 1 and not service.problems(readiness=True))
            assert any("recovered" in r.getMessage() for r in caplog.records)


# -- 4, 10. startup errors and the banner -------------------------------------------------------

def serve(cfg_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pywats_transport", "serve", "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, **kw: Any) -> Path:
    data = {"service_address": "http://127.0.0.1:9", "api_token": SECRET, "queue_dir": str(tmp_path / "q"),
            "health_port": 0, "metrics_port": None, **kw}
    path = tmp_path / "client.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("case", "code", "needle"), [
    ("queue_dir is a file", 3, "queue_dir"),
    ("queue_dir parent missing", 3, "queue_dir"),
    ("port in use", 4, "health_port"),
    ("host unresolvable", 4, "health_host"),
    ("address without host", 2, "service_address"),
    ("not utf-8", 2, "client.json"),
])
def test_startup_errors_are_one_clear_line(tmp_path: Path, case: str, code: int, needle: str) -> None:
    blocker = socket.socket()
    try:
        if case == "queue_dir is a file":
            (tmp_path / "f").write_text("x")
            path = write(tmp_path, queue_dir=str(tmp_path / "f"))
        elif case == "queue_dir parent missing":
            path = write(tmp_path, queue_dir=str(tmp_path / "missing" / "q"))
        elif case == "port in use":
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            path = write(tmp_path, health_port=blocker.getsockname()[1])
        elif case == "host unresolvable":
            path = write(tmp_path, health_host="no-such-host.invalid")
        elif case == "address without host":
            path = write(tmp_path, service_address="http://")
        else:
            path = tmp_path / "client.json"
            path.write_bytes(b'{"service_address": "http://h", "api_token": "\xff\xfe"}')
        run = serve(path)
    finally:
        blocker.close()
    assert run.returncode == code, run.stderr
    # (the test environment has deliberately broken plugins installed: their one warning each is theirs)
    lines = [line for line in run.stderr.strip().splitlines() if "pywats_transport.plugins" not in line]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in run.stderr
    assert SECRET not in run.stderr + run.stdout


def test_the_banner_names_the_bound_port(tmp_path: Path) -> None:
    path = write(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        port = int(banner.split("http://127.0.0.1:")[1].split()[0].rstrip(")"))
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


# -- 6. health is O(1) ----------------------------------------------------------------------------

@pytest.mark.anyio
async def test_health_never_lists_the_queue(tmp_path: Path) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9", retry_backoff_max=30)
    queue = Path(cfg.queue_dir)
    for i in range(2000):
        drop(queue, f"r{i:05}.json", report(f"SN-{i}"))
    async with AsyncClientService(cfg) as service:
        assert service.queue is not None
        await until(lambda: service.details()["queue"]["depth"]["pending"] + service.details()["queue"]["depth"][
            "sending"] == 2000)
        scans = []
        original = service.queue.scan
        service.queue.scan = lambda: scans.append(1) or original()  # type: ignore[method-assign]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            answers = await asyncio.gather(*(client.get(p) for p in ["/health", "/health/details"] * 50))
        assert all(a.status_code in (200, 503) for a in answers)
        assert scans == []  # /health and /health/details read counts kept by the queue
        assert answers[1].json()["queue"]["depth"]["pending"] + answers[1].json()["queue"]["depth"]["sending"] == 2000


# -- 7. idle connections and repeated errors --------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_half_sent_requests_are_closed_and_health_keeps_answering(tmp_path: Path, parser: str) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9", health_header_timeout=0.5, health_max_connections=40,
                 health_parser=parser)
    async with AsyncClientService(cfg) as service:
        assert parser in service._servers[0].config.http.__name__.lower()  # type: ignore[union-attr]
        port = service.health_port
        socks = []
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while True:  # the server sheds the extra connections and times out the idle ones
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/health/live", timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            assert r.status_code == 200
        await asyncio.sleep(1.0)
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (ConnectionError, TimeoutError, OSError):
                closed += 1
            s.close()
        assert closed == 60


@pytest.mark.parametrize("limit", [256, 160])
def test_a_connection_flood_under_a_low_descriptor_limit_leaves_the_queue_working(
        tmp_path: Path, emulator: EmulatorServer, limit: int) -> None:
    """A real ``serve`` process under ``ulimit -n 256`` (and one so low that the connection limit
    must give way), flooded with 300 half-sent requests: the queue still sends, /health still
    answers, and the log stays small."""
    import resource

    path = write(tmp_path, service_address=emulator.url, api_token=TOKEN, poll_interval=0.05, ping_interval=0.5)
    queue = tmp_path / "q"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=low_limit)
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        for _ in range(300):
            with contextlib.suppress(OSError):  # refused or reset once the server sheds them
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
                socks.append(s)
        for i in range(20):
            drop(queue, f"f{i:02}.json", report(f"SN-FLOOD-{i}"))
        deadline = time.monotonic() + 30
        while len(done(queue)) < 20:
            assert time.monotonic() < deadline, f"{len(done(queue))} of 20 reports sent under the flood"
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "ok"}
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Too many open files" not in stderr and len(stderr) < 20_000, stderr[-2000:]
    lowered = "health_max_connections 100 lowered to" in stderr
    assert lowered == (limit < 100 + 4 * 16 + 64)


def test_repeated_log_records_are_rate_limited() -> None:
    now = [0.0]
    flt = RepeatFilter(interval=60.0, clock=lambda: now[0])

    def record(args: tuple[Any, ...] = ("full",)) -> logging.LogRecord:
        return logging.LogRecord("pywats_transport.service", logging.ERROR, __file__, 1, "disk %s", args, None)

    passed = [r for r in (record() for _ in range(100)) if flt.filter(r)]
    assert len(passed) == 1
    assert flt.filter(record(("other",))) is False  # same message template, other values: the same condition
    now[0] = 61.0
    later = record()
    assert flt.filter(later) and "100 similar messages suppressed" in later.getMessage()


def test_a_read_only_queue_dir_at_startup_is_one_clear_line(tmp_path: Path) -> None:
    with small_filesystem(tmp_path, "1m") as (rw, svc):
        (rw / "queue").mkdir()
        remount(svc, "ro")
        path = write(tmp_path, queue_dir=str(svc / "queue"))
        run = serve(path)
    lines = [line for line in run.stderr.strip().splitlines() if "pywats_transport.plugins" not in line]
    assert run.returncode == 3 and len(lines) == 1 and "queue_dir" in lines[0] and "not writable" in lines[0]


def test_a_service_address_ending_with_api_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """``pywats-transport serve`` died with a traceback from the client's constructor."""
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"service_address": "https://wats.example.com/api/", "api_token": "t"}))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"service_address .*without /api \(the routes add it\): 'https://wats.example.com'"):
        ClientConfig.load(path)
