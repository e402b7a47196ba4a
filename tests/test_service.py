from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pywats_transport import ConfigError, TransportConfig
from pywats_transport.emulator import EmulatorServer
from pywats_transport.service import AsyncClientService, ClientConfig

from .helpers import TlsVersionServer

TOKEN = "service-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp_path: Path, url: str, **kw: Any) -> ClientConfig:
    values: dict[str, Any] = dict(service_address=url, api_token=TOKEN, queue_dir=str(tmp_path / "queue"),
                                  health_port=0, metrics_port=None, poll_interval=0.05, ping_interval=0.2,
                                  retry_backoff_max=0.5)
    values.update(kw)
    return ClientConfig(**values)


def drop(queue: Path, name: str, report: dict[str, Any] | str) -> None:
    queue.mkdir(parents=True, exist_ok=True)
    tmp = queue / f".{name}.tmp"
    tmp.write_text(report if isinstance(report, str) else json.dumps(report))
    os.replace(tmp, queue / name)


def report(sn: str, **kw: Any) -> dict[str, Any]:
    return {"partNumber": "PN-1001", "serialNumber": sn, "result": "P", "processCode": 100, **kw}


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def done(queue: Path) -> list[Path]:
    return sorted((queue / "done").glob("*.json")) if (queue / "done").exists() else []


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(token=TOKEN) as emu:
        yield emu


@pytest.mark.anyio
async def test_dropped_reports_reach_the_server_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    cfg = config(tmp_path, emulator.url)
    queue = Path(cfg.queue_dir)
    given = str(uuid.uuid4())
    drop(queue, "a.json", report("SN-A", id=given))
    drop(queue, "b.json", report("SN-B"))  # no id: the queue derives one before sending
    async with AsyncClientService(cfg) as service:
        drop(queue, "c.json", report("SN-C"))
        await until(lambda: len(done(queue)) == 3)
        assert service.queue is not None and service.queue.stats.confirmed == 3
    ids = {json.loads(p.read_text())["id"] for p in done(queue)}
    assert given in ids and set(emulator.state.reports) == ids and emulator.state.report_posts == 3
    assert list(queue.glob("*.json")) == [] and list((queue / "sending").glob("*.json")) == []


@pytest.mark.anyio
async def test_server_down_then_up_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, f"http://127.0.0.1:{port}")
    queue = Path(cfg.queue_dir)
    for i in range(3):
        drop(queue, f"r{i}.json", report(f"SN-{i}"))
    async with AsyncClientService(cfg) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            await until(lambda: service.queue is not None and service.queue.stats.failed_attempts >= 1)
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and "WATS not reached" in ready.json()["reasons"][0]
            assert len(done(queue)) == 0 and len(list((queue / "sending").glob("*.json"))) == 1
            with EmulatorServer(token=TOKEN, port=port) as emu:
                await until(lambda: len(done(queue)) == 3, timeout=30)
                assert len(emu.state.reports) == 3
                await until(lambda: service.last_contact is not None)
                assert (await client.get("/health/ready")).status_code == 200


@pytest.mark.anyio
async def test_malformed_files_go_to_error_and_never_block(tmp_path: Path, emulator: EmulatorServer) -> None:
    cfg = config(tmp_path, emulator.url, write_grace_seconds=0.2)  # unchanged that long: no writer is at them
    queue = Path(cfg.queue_dir)
    drop(queue, "1-garbage.json", "{not json")
    drop(queue, "2-list.json", "[1, 2]")
    drop(queue, "3-missing.json", json.dumps({"partNumber": "PN-1"}))
    drop(queue, "4-badid.json", report("SN-X", id="not-a-uuid"))
    drop(queue, "5-good.json", report("SN-GOOD"))
    async with AsyncClientService(cfg) as service:
        assert service.queue is not None
        await until(lambda: len(done(queue)) == 1 and service.queue.stats.malformed == 4)
    errors = sorted(p.name for p in (queue / "error").iterdir())
    assert [e for e in errors if e.endswith(".json")] == ["1-garbage.json", "2-list.json", "3-missing.json", "4-badid.json"]
    assert (queue / "error" / "3-missing.json.reason.txt").read_text().startswith("missing required field(s): serialNumber, result")
    assert "not valid JSON" in (queue / "error" / "1-garbage.json.reason.txt").read_text()
    assert len(emulator.state.reports) == 1


@pytest.mark.anyio
async def test_a_report_written_in_place_is_sent_once_its_writer_is_done(tmp_path: Path, emulator: EmulatorServer) -> None:
    """A station writing its report straight into the folder (no rename) was caught half-way by a scan: the
    half file was "not valid JSON" and went to error/, never to be sent. A file that does not parse and was
    changed since it was last read is read again later; one that stays malformed and unchanged for
    ``write_grace_seconds`` still goes to error/. Timed by the service's clock: a file's time, set by a
    share's clock, may be far off (here an hour behind)."""
    cfg = config(tmp_path, emulator.url, write_grace_seconds=30)
    queue = Path(cfg.queue_dir)
    queue.mkdir(parents=True)
    body = json.dumps(report("SN-SLOW", steps=[{"name": f"step {i}", "status": "P"} for i in range(200)])).encode()
    async with AsyncClientService(cfg) as service:
        assert service.queue is not None
        with open(queue / "slow.json", "wb") as writer:
            writer.write(body[: len(body) // 2])
            writer.flush()
            os.utime(queue / "slow.json", (time.time() - 3600, time.time() - 3600))
            for _ in range(4):  # several scans see the half file
                await service.queue.process_once()
            assert not list((queue / "error").iterdir()) and service.queue.stats.malformed == 0
            writer.write(body[len(body) // 2:])
        await until(lambda: len(done(queue)) == 1)
        assert [r["serialNumber"] for r in emulator.state.reports.values()] == ["SN-SLOW"]
        assert len(next(iter(emulator.state.reports.values()))["steps"]) == 200
        service.queue.write_grace = 0.5
        drop(queue, "broken.json", "{never finished")
        for _ in range(3):
            await service.queue.process_once()
        assert not list((queue / "error").iterdir())
        # counted once the move has returned: the file is in error/ a moment before
        await until(lambda: service.queue.stats.malformed == 1)  # type: ignore[union-attr]
        assert (queue / "error" / "broken.json").exists()


@pytest.mark.anyio
async def test_health_endpoints_and_metrics(tmp_path: Path, emulator: EmulatorServer) -> None:
    cfg = config(tmp_path, emulator.url, metrics_port=0)
    queue = Path(cfg.queue_dir)
    async with AsyncClientService(cfg) as service:
        drop(queue, "r.json", report("SN-M"))
        await until(lambda: len(done(queue)) == 1 and service.last_contact is not None)
        assert service.api is not None
        await service.api.product.get("PN-1001")
        await service.api.product.get("PN-1001")  # a cache hit
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            live = await client.get("/health/live")
            assert live.status_code == 200 and live.json()["status"] == "alive"
            assert (await client.get("/health/ready")).json() == {"status": "ready"}
            details = (await client.get("/health/details")).json()
            assert set(details) >= {"version", "uptime_seconds", "api", "transport", "cache", "retry", "throttle", "queue"}
            assert details["api"]["reachable"] is True and details["queue"]["depth"]["done"] == 1
            assert details["queue"]["folder"] == str(queue.absolute())
            assert [t["name"] for t in details["transport"]] == ["metrics", "cache", "retry", "throttle", "transport"]
            assert details["cache"]["hits"] >= 1 and TOKEN not in json.dumps(details)
            text = await client.get("/metrics")
            assert text.headers["content-type"].startswith("text/plain")
            samples = [s for f in text_string_to_metric_families(text.text) for s in f.samples]

            def val(name: str, **labels: str) -> float:
                return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

            assert val("http_client_request_duration_seconds_count", url_template="/api/Report/WSJF",
                       http_response_status_code="201") >= 1
            assert val("pywats_transport_cache_lookups_total", result="hit") >= 1
            assert val("pywats_transport_queue_depth", state="done") == 1
            assert val("pywats_transport_queue_processing_duration_seconds_count", outcome="confirmed") >= 1
            assert TOKEN not in text.text
            as_json = (await client.get("/metrics?format=json")).json()
            assert as_json["requests"]["total"] >= 3 and as_json["queue"]["done"] == 1
            accept = await client.get("/metrics", headers={"Accept": "application/json"})
            assert accept.json()["enabled"] is True
            missing = await client.get("/nope")
            assert missing.status_code == 404 and missing.json()["error"] == "not found"
            head = await client.head("/health")
            assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
            assert (await client.get("/health/")).json() == {"status": "ok"}
            posted = await client.post("/health")
            assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
            assert (await client.get("/health")).headers["cache-control"] == "no-store"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.metrics_port}") as client:
            assert "http_client_request_duration_seconds" in (await client.get("/metrics")).text
            assert (await client.get("/health")).status_code == 404


@pytest.mark.anyio
async def test_a_password_in_the_service_address_is_not_shown(tmp_path: Path, emulator: EmulatorServer) -> None:
    """/health/details showed ``service_address`` as written, a password in it included, to anyone who
    can reach the health port; the WATS client's repr did too."""
    address = emulator.url.replace("http://", "http://station:pw-S3CRET@")
    async with AsyncClientService(config(tmp_path, address)) as service:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            details = (await client.get("/health/details")).text
        assert service.api is not None
        shown = repr(service.api)
    assert "pw-S3CRET" not in details and "station:***@" in details
    assert "pw-S3CRET" not in shown and "station:***@" in shown


@pytest.mark.anyio
async def test_unhealthy_when_queue_stuck(tmp_path: Path) -> None:
    cfg = config(tmp_path, f"http://127.0.0.1:{free_port()}", stuck_after=0.2)
    queue = Path(cfg.queue_dir)
    drop(queue, "old.json", report("SN-OLD"))
    async with AsyncClientService(cfg) as service:
        await asyncio.sleep(0.4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            health = await client.get("/health")
            assert health.status_code == 503 and "queue stuck" in health.json()["reasons"][0]
            assert (await client.get("/health/live")).status_code == 200


@pytest.mark.anyio
async def test_a_report_with_an_old_file_time_is_not_a_stuck_queue(tmp_path: Path) -> None:
    """A report copied in with its time kept (robocopy, Explorer, ``cp -p``), moved from a folder it was
    buffered in, or written on a share whose clock is behind made the queue "stuck" (503) the moment it
    arrived: its wait was timed from the file's time. The service times it from when it found the file."""
    cfg = config(tmp_path, f"http://127.0.0.1:{free_port()}", stuck_after=600)
    queue = Path(cfg.queue_dir)
    drop(queue, "old.json", report("SN-OLD"))
    week_ago = time.time() - 7 * 86400
    os.utime(queue / "old.json", (week_ago, week_ago))
    async with AsyncClientService(cfg) as service:
        queue_ = service.queue
        assert queue_ is not None
        await until(lambda: queue_.oldest_waiting_age() > 0)  # the service's own scans found it waiting
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.health_port}") as client:
            health = await client.get("/health")
            assert health.status_code == 200, health.text  # before: 503, "queue stuck"
            details = (await client.get("/health/details")).json()
        assert details["queue"]["oldest_waiting_seconds"] < 60  # before: a week


@pytest.mark.parametrize(("query", "accept", "answer"), [
    ("format=json", "", "json"),
    ("format=prometheus", "application/json", "text"),
    ("", "application/json", "json"),
    ("", "text/plain;q=0.1, application/json", "json"),  # before: the text, JSON's higher weight unread
    ("", "application/json;q=0.2, */*;q=0.5", "text"),
    ("", "application/json, text/plain", "text"),  # a tie: the exposition scrapers expect
    ("", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1", "text"),
    ("", "", "text"),
])
def test_metrics_answers_as_the_query_or_the_accept_weights_ask(query: str, accept: str, answer: str) -> None:
    from pywats_transport.metrics import MetricsCollector
    from pywats_transport.service.health import metrics_answer

    service: Any = type("Service", (), {"collector": MetricsCollector()})()
    headers = [(b"accept", accept.encode())] if accept else []
    status, _, content_type = metrics_answer(service, {"query_string": query.encode(), "headers": headers})
    assert status == 200 and content_type.startswith(b"application/json" if answer == "json" else b"text/plain")


def test_metrics_refuses_a_format_it_does_not_know() -> None:
    from pywats_transport.metrics import MetricsCollector
    from pywats_transport.service.health import metrics_answer

    service: Any = type("Service", (), {"collector": MetricsCollector()})()
    status, body, _ = metrics_answer(service, {"query_string": b"format=jsno", "headers": []})
    # before: 200 and the Prometheus text, the typo unnoticed
    assert status == 400 and json.loads(body) == {"error": "format must be 'json' or 'prometheus', got 'jsno'"}


def test_client_config_errors_name_field_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"service_address": "wats.example", "api_token": "s3cret-token", "cache_ttl_seconds": -1}))
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    message = str(info.value)
    assert str(path) in message and "service_address" in message and "cache_ttl_seconds = -1" in message
    assert "(root)" not in message  # each problem once, under its own name
    assert "s3cret-token" not in message
    path.write_text(json.dumps({"service_address": "https://w", "api_token": 5, "typo": 1}))
    with pytest.raises(ConfigError, match=r"api_token = \*\*\*.*typo: unknown key"):
        ClientConfig.load(path)
    path.write_text(json.dumps({"service_address": "https://w"}))
    monkeypatch.setenv("PYWATS_CLIENT_API_TOKEN", "12345")
    monkeypatch.setenv("PYWATS_CLIENT_HEALTH_PORT", "9999")
    monkeypatch.setenv("PYWATS_CLIENT_METRICS_PORT", "null")
    monkeypatch.setenv("PYWATS_CLIENT_ENABLE_CACHE", "false")
    cfg = ClientConfig.load(path)
    assert cfg.api_token.get_secret_value() == "12345" and cfg.health_port == 9999
    assert cfg.metrics_port is None and cfg.enable_cache is False
    assert "12345" not in repr(cfg) and cfg.health_host == "127.0.0.1"
    # A bad value from the environment is named as such, not as the file's.
    monkeypatch.setenv("PYWATS_CLIENT_HEALTH_PORT", "port-x")
    monkeypatch.setenv("PYWATS_CLIENT_TRANSPORT", '{"cache": {"storag": 1}}')
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    assert "health_port (from environment PYWATS_CLIENT_HEALTH_PORT) = 'port-x': " in str(info.value)
    assert "transport.cache.storag (from environment PYWATS_CLIENT_TRANSPORT): unknown key" in str(info.value)
    assert str(info.value).startswith(f"invalid ClientConfig in {path}: ")


def test_the_transport_section_is_checked_key_by_key_and_never_shows_a_password(tmp_path: Path) -> None:
    """client.json's ``transport`` (the fleet tier, any layer setting) is refused at load with each bad key
    named under ``transport.`` and what it allows, before a service starts on it."""
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "s3cret-token", "transport": {
        "cache": {"storage": "redsi", "ttll": 3}, "redis": {"url": "http://station:pw-redis-9@h:1/0"},
        "throttle": {"rate": 0}}}))
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    problems = {p.split(" ", 1)[0].rstrip(":"): p for p in info.value.problems}
    assert set(problems) == {"transport.cache.storage", "transport.cache.ttll", "transport.redis.url",
                             "transport.throttle.rate"}
    assert problems["transport.cache.storage"].endswith("= 'redsi': Input should be 'memory', 'sqlite' or 'redis'")
    assert problems["transport.cache.ttll"].startswith("transport.cache.ttll: unknown key; allowed keys: coalesce, ")
    assert "= 'http://station:***@h:1/0': must start with one of redis://" in problems["transport.redis.url"]
    assert problems["transport.throttle.rate"].startswith("transport.throttle.rate = 0: ")
    assert "pw-redis-9" not in str(info.value) and "s3cret-token" not in str(info.value)
    assert str(info.value).startswith(f"invalid ClientConfig in {path}: transport.cache.storage")
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "t", "transport": {"profile": "x"}}))
    with pytest.raises(ConfigError, match=r"transport.profile = 'x': unknown profile; allowed: generic, wats"):
        ClientConfig.load(path)
    # Kept as given: what the section leaves out stays the WATS profile's when the service builds its chain.
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "t", "transport": {"retry": {"max_attempts": 5}}}))
    assert ClientConfig.load(path).transport == {"retry": {"max_attempts": 5}}


def test_client_flags_override_the_transport_section_only_when_given(tmp_path: Path) -> None:
    """client.json's own keys (``enable_cache``...) left out leave the ``transport`` section's value; given in
    the environment they win over it, even at their usual value; given in the file with the section
    saying otherwise, the file is refused, as ``config init`` writes every key and a setting added to the
    section would do nothing."""
    from pywats_transport.wats.client import resolve_config

    path = tmp_path / "client.json"
    section = {"cache": {"enabled": False, "ttl": 60}, "throttle": {"enabled": False, "rate": 3.0}}
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "t", "transport": section}))
    for environ, cache, throttle in (({}, False, False),
                                     ({"PYWATS_CLIENT_ENABLE_CACHE": "true", "PYWATS_CLIENT_ENABLE_THROTTLING": "true"},
                                      True, True)):
        cfg = ClientConfig.load(path, environ=environ)
        resolved = resolve_config(cfg.transport, cfg.transport_flags())
        assert (resolved.cache.enabled, resolved.throttle.enabled) == (cache, throttle)
        assert resolved.throttle.rate == 3.0 and resolved.cache.ttl == 60 and resolved.metrics.enabled
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "t", "transport": section,
                                "enable_cache": False, "cache_ttl_seconds": 300, "rate_limit": 3.0,
                                "enable_throttling": True}))
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path, environ={})
    assert info.value.problems == [
        "cache_ttl_seconds = 300.0 and transport.cache.ttl = 60 both set it: keep one (the key would win)",
        "enable_throttling = true and transport.throttle.enabled = false both set it: keep one (the key would win)",
    ]
    # The section given as just its switch says the same.
    path.write_text(json.dumps({"service_address": "https://w", "api_token": "t", "transport": {"throttle": False},
                                "enable_throttling": True}))
    with pytest.raises(ConfigError, match=r"enable_throttling = true and transport.throttle.enabled = false both set it"):
        ClientConfig.load(path, environ={})


@pytest.mark.anyio
@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
async def test_a_client_file_holding_the_token_open_to_others_is_named(
        tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A started service says once that its token's file is readable by the machine's other users."""
    path = tmp_path / "client.json"
    cfg = config(tmp_path, emulator.url)
    path.write_text(json.dumps({**json.loads(cfg.model_dump_json()), "api_token": TOKEN}))
    seen = []
    for mode, from_env in ((0o644, False), (0o600, False), (0o644, True)):
        path.chmod(mode)
        if from_env:  # the file's token is not the one in use
            monkeypatch.setenv("PYWATS_CLIENT_API_TOKEN", TOKEN)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pywats_transport.service"):
            async with AsyncClientService(ClientConfig.load(path)):
                pass
        seen.append(f"{path} holds the API token and other users of this machine may read it (mode 644)"
                    in caplog.text)
        assert TOKEN not in caplog.text
    assert seen == [True, False, False]


def test_config_init_writes_a_loadable_example(tmp_path: Path) -> None:
    out = tmp_path / "client.json"
    run = subprocess.run([sys.executable, "-m", "pywats_transport", "config", "init", "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    cfg = ClientConfig.load(out)
    assert cfg.health_host == "127.0.0.1" and cfg.enable_cache and cfg.metrics_port == 9090
    if os.name == "posix":  # the token goes into it: not readable by the machine's other users
        assert out.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, "-m", "pywats_transport", "config", "init", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr


def test_config_init_makes_the_folder_and_says_in_one_line_what_it_cannot_write(tmp_path: Path) -> None:
    """``config init C:\\pywats\\client.json`` on a fresh station, the folder not made yet, ended in a traceback."""
    target = tmp_path / "pywats" / "station-1" / "client.json"
    run = subprocess.run([sys.executable, "-m", "pywats_transport", "config", "init", str(target)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert ClientConfig.load(target).queue_dir == str(target.parent / "pywats_queue")
    (tmp_path / "a-folder.json").mkdir()
    for bad in (tmp_path / "a-folder.json", tmp_path / "a-file" / "client.json"):
        (tmp_path / "a-file").write_text("")
        run = subprocess.run([sys.executable, "-m", "pywats_transport", "config", "init", "--force", str(bad)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and f"cannot write {bad}" in run.stderr


@pytest.mark.parametrize("given", ["queue", None], ids=["given", "default"])
def test_a_relative_queue_dir_in_a_file_is_the_files_neighbour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               given: str | None) -> None:
    """A service started elsewhere than its file's folder (by systemd, a shortcut, a scheduled task) watched a
    queue under whatever folder it started in, while the station wrote its reports beside the file."""
    folder = tmp_path / "station"
    folder.mkdir()
    path = folder / "client.json"
    data = {"service_address": "http://127.0.0.1:9", "api_token": TOKEN}
    path.write_text(json.dumps(data if given is None else {**data, "queue_dir": given}))
    monkeypatch.chdir(tmp_path)  # elsewhere
    expected = folder / (given or "pywats_queue")
    assert ClientConfig.load(path).queue_dir == str(expected)
    # From the environment (or given in code) it is the current folder's, as any path given there.
    assert ClientConfig.load(path, environ={"PYWATS_CLIENT_QUEUE_DIR": "q2"}).queue_dir == "q2"
    assert ClientConfig.load(path, queue_dir="q3").queue_dir == "q3"
    home = ClientConfig.load(path, environ={"PYWATS_CLIENT_QUEUE_DIR": "~/q4"})
    assert home.queue_dir == str(Path("~/q4").expanduser())


@pytest.mark.parametrize(("given", "where"), [
    ("cache.db", ".cache/hishel/cache.db"),  # a bare name, where hishel puts one: under .cache/hishel/
    ("data/cache.db", "data/cache.db"),
    (None, ".cache/hishel/pywats_transport_cache.db"),
], ids=["bare", "folder", "default"])
def test_a_relative_sqlite_path_in_a_file_is_the_files_neighbour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 given: str | None, where: str) -> None:
    """The SQLite cache of a service started elsewhere (by systemd, in /) went under that folder, while its
    queue was beside the file: an outage's stale answers were kept, or refused (not writable), elsewhere."""
    folder = tmp_path / "station"
    folder.mkdir()
    path = folder / "client.json"
    cache: dict[str, Any] = {"storage": "sqlite"} if given is None else {"storage": "sqlite", "sqlite_path": given}
    path.write_text(json.dumps({"service_address": "http://127.0.0.1:9", "api_token": TOKEN,
                                "health_port": 0, "metrics_port": None, "transport": {"cache": cache}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    service = AsyncClientService(ClientConfig.load(path))

    async def built() -> None:
        await service.start()
        await service.stop()

    asyncio.run(built())
    assert (folder / where).is_file()
    assert list(elsewhere.rglob("*")) == []
    # From the environment it is the current folder's, as any path given there.
    loaded = ClientConfig.load(path, environ={"PYWATS_CLIENT_TRANSPORT": json.dumps({"cache": cache})})
    assert loaded.transport["cache"].get("sqlite_path") == given
    # SQLite named by the environment, the file's path (or the default) is still the file's neighbour.
    path.write_text(json.dumps({"service_address": "http://127.0.0.1:9", "api_token": TOKEN,
                                "transport": {"cache": {k: v for k, v in cache.items() if k != "storage"}}}))
    loaded = ClientConfig.load(path, environ={"PYWATS_TRANSPORT_CACHE__STORAGE": "sqlite"})
    assert loaded.transport["cache"]["sqlite_path"] == str(folder / where)
    # Another storage: the section stays as given.
    path.write_text(json.dumps({"service_address": "http://127.0.0.1:9", "api_token": TOKEN}))
    assert ClientConfig.load(path).transport == {}


@pytest.mark.parametrize(("given", "expected"), [("~/cache.db", str(Path("~/cache.db").expanduser())),
                                                 ("cache.db", "cache.db")])
def test_sqlite_path_expands_home(given: str, expected: str) -> None:
    # "~/cache.db" made a folder named "~" in the current one.
    assert TransportConfig.load({"cache": {"sqlite_path": given}}, environ={}).cache.sqlite_path == expected


def test_an_empty_sqlite_path_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cache\.sqlite_path.*must name a database file"):
        TransportConfig.load({"cache": {"sqlite_path": " "}}, environ={})


@pytest.mark.anyio
async def test_a_wats_signed_by_a_factory_ca(tmp_path: Path) -> None:
    """A service could not be told a factory's own CA but through SSL_CERT_FILE, and said only "WATS not
    reached yet (... failed: ConnectError)", with nothing of the certificate."""
    folder = tmp_path / "station"
    folder.mkdir()
    with TlsVersionServer(folder / "factory-ca.pem") as server:
        path = folder / "client.json"
        data = {"service_address": server.url, "api_token": TOKEN, "health_port": 0, "metrics_port": None,
                "queue_dir": str(tmp_path / "q")}
        for given, reached in ((None, False), ("factory-ca.pem", True)):  # relative: the file's neighbour
            path.write_text(json.dumps(data if given is None else {**data, "verify_ssl": given}))
            service = AsyncClientService(ClientConfig.load(path))
            await service.start()
            try:
                deadline = time.monotonic() + 10
                while service.last_contact is None and service.last_contact_error is None:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                assert (service.server_version == "24.1") is reached
                if not reached:
                    assert "CERTIFICATE_VERIFY_FAILED" in (service.last_contact_error or "")
                    assert "verify_ssl" in (service.last_contact_error or "")
            finally:
                await service.stop()
    path.write_text(json.dumps({**data, "verify_ssl": "missing.pem"}))
    with pytest.raises(ConfigError, match=r"verify_ssl = '/.*: cannot be used as CA certificates: No such file"):
        ClientConfig.load(path)
    # A switch in words, as the environment gives every switch, is not a file's name.
    for word, expected in (("False", False), ("0", False), ("yes", True)):
        assert ClientConfig.load(path, environ={"PYWATS_CLIENT_VERIFY_SSL": word}).verify_ssl is expected
        path.write_text(json.dumps({**data, "verify_ssl": word}))
        assert ClientConfig.load(path).verify_ssl is expected


# -- a real service process, killed with SIGKILL while sending ------------------------------------

def start_service(cfg_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pywats_transport", "serve", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = config(tmp_path, url)
    path = tmp_path / "client.json"
    data = json.loads(cfg.model_dump_json())
    data["api_token"] = TOKEN
    path.write_text(json.dumps(data))
    return path


def test_sigkill_while_sending_resumes_without_loss(tmp_path: Path) -> None:
    with EmulatorServer(token=TOKEN, latency_ms=150) as emu:
        cfg_path = write_config(tmp_path, emu.url)
        queue = tmp_path / "queue"
        for i in range(8):
            drop(queue, f"r{i}.json", report(f"SN-K{i}"))
        proc = start_service(cfg_path)
        try:
            deadline = time.monotonic() + 30
            # Kill while a report is in flight: the server has it, the file is still in sending/.
            while not (emu.state.report_posts >= 2 and list((queue / "sending").glob("*.json"))):
                assert time.monotonic() < deadline, "service did not start sending"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert len(done(queue)) < 8
        proc = start_service(cfg_path)
        try:
            deadline = time.monotonic() + 60
            while len(done(queue)) < 8:
                assert time.monotonic() < deadline, "service did not finish after restart"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0  # a clean stop on SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
        sent = sorted(r["serialNumber"] for r in emu.state.reports.values())
        assert sent == sorted(f"SN-K{i}" for i in range(8))  # nothing lost, nothing stored twice
