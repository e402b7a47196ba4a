"""Client service under load: /health latency with a deep queue, queue drain rates with and without
faults, and the cache's memory for many distinct URLs."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from pywats_transport.emulator import EmulatorServer
from pywats_transport.layers.cache import AsyncCacheLayer
from pywats_transport.service import AsyncClientService, ClientConfig

from .common import Row, quiet_service_logs, scratch_dir

SUITE = "service"
TOKEN = "bench-token"


def _drop(queue: Path, count: int, prefix: str) -> None:
    queue.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"{prefix}-{i:05d}"
        tmp = queue / f".{name}.tmp"
        tmp.write_text(json.dumps({"partNumber": "PN-1001", "serialNumber": name, "result": "P"}))
        os.replace(tmp, queue / f"{name}.json")


class _Probe:
    """One keep-alive connection sending bare ``GET /health`` requests.

    The figure is the server's, so the client must cost far less than the server does: an httpx
    client spends more per request than the health server itself and, on the same two cores, was
    most of what the earlier figures measured."""

    REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Probe:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def timed(self) -> float:
        start = time.perf_counter()
        self.writer.write(self.REQUEST)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        if status not in (200, 503):
            raise RuntimeError(f"/health answered {status}")
        return time.perf_counter() - start

    def close(self) -> None:
        self.writer.close()


@contextmanager
def _serving(depth: int) -> Iterator[int]:
    """A real ``serve`` process with ``depth`` reports queued (its server unreachable, so they stay), once
    it has counted the whole queue; yields its health port."""
    tmp = scratch_dir()
    _drop(tmp / "q", depth, "H")
    path = tmp / "client.json"
    path.write_text(json.dumps({"service_address": "http://127.0.0.1:9", "api_token": TOKEN, "queue_dir": str(tmp / "q"),
                                "health_port": 0, "metrics_port": None, "retry_backoff_max": 60}))
    proc = subprocess.Popen([sys.executable, "-m", "pywats_transport", "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        while True:
            d = httpx.get(f"http://127.0.0.1:{port}/health/details").json()["queue"]["depth"]
            if d["pending"] + d["sending"] >= depth:
                break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _health_latencies(ports: dict[str, int], concurrent: int, rounds: int
                            ) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """/health timed from this process on each service, one at a time, then ``concurrent`` at once, each on
    its own connection. The services take turns request by request and burst by burst (the first in a
    round alternating), so that a hiccup of this shared machine falls on both alike, not on one run."""
    probes: dict[str, list[_Probe]] = {}
    for name, port in ports.items():  # not one comprehension: Python 3.10 refuses an await in a nested one
        probes[name] = [await _Probe.open(port) for _ in range(concurrent)]
    names = list(ports)
    one: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(50 * rounds):
        for name in names:
            one[name].append(await probes[name][0].timed())
    bursts: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name in names if r % 2 else reversed(names):
            burst = await asyncio.gather(*(p.timed() for p in probes[name]))
            if r:  # the first round warms the connections
                bursts[name].append(burst)
    for name in names:
        for p in probes[name]:
            p.close()
    return one, bursts


def health_at_depth(quick: bool) -> list[Row]:
    depth, concurrent, rounds = (2000, 100, 6) if quick else (20_000, 100, 20)
    p99 = lambda xs: statistics.quantiles(xs, n=100)[98] * 1000  # noqa: E731
    with _serving(0) as empty, _serving(depth) as deep:
        one, bursts = asyncio.run(_health_latencies({"empty": empty, "deep": deep}, concurrent, rounds))
    many = {name: [t for burst in runs for t in burst] for name, runs in bursts.items()}
    growth = statistics.median(p99(d) / p99(e) for d, e in zip(bursts["deep"], bursts["empty"], strict=True))
    return [
        Row(SUITE, f"/health p99, one at a time, {depth} queued", p99(one["deep"]), "ms", "< 20", p99(one["deep"]) < 20),
        Row(SUITE, "/health p99, one at a time, empty queue", p99(one["empty"]), "ms"),
        Row(SUITE, f"/health p99, {concurrent} concurrent, {depth} queued", p99(many["deep"]), "ms", "< 20",
            p99(many["deep"]) < 20),
        Row(SUITE, f"/health p99, {concurrent} concurrent, empty queue", p99(many["empty"]), "ms"),
        Row(SUITE, "... queued / empty, a burst at each in turn (median of the rounds' p99 ratios)", growth, "x",
            "<= 1.5", growth <= 1.5),
    ]


def drain_rates(quick: bool) -> list[Row]:
    n = 30 if quick else 100

    def drain(fail_rate: float) -> float:
        tmp = scratch_dir()
        with EmulatorServer(token=TOKEN, fail_rate=fail_rate, retry_after=0, seed=5) as emu:
            cfg = ClientConfig(service_address=emu.url, api_token=TOKEN, queue_dir=str(tmp / "q"), health_port=0,
                               metrics_port=None, poll_interval=0.05, retry_backoff_max=0.5)
            _drop(Path(cfg.queue_dir), n, "D")

            async def run() -> float:
                async with AsyncClientService(cfg) as service:
                    assert service.queue is not None
                    start = time.perf_counter()
                    while service.queue.stats.confirmed < n:
                        await asyncio.sleep(0.02)
                    return n / (time.perf_counter() - start)

            return asyncio.run(run())

    clean, faulty = drain(0.0), drain(0.3)
    # Every attempt takes a throttle token: at 30 % faults a report needs ~1.43 attempts, so the
    # ceiling is ~7 reports/s at the WATS profile's 10 requests/s.
    return [
        Row(SUITE, f"queue drain, {n} reports, no faults (WATS profile: 10 req/s)", clean, "reports/s"),
        Row(SUITE, "queue drain, 30% 503/429 with Retry-After: 0", faulty, "reports/s", ">= 5", faulty >= 5),
        Row(SUITE, "... faulty / clean drain rate", faulty / clean, "x"),
    ]


def cache_memory(quick: bool) -> list[Row]:
    urls = 20_000 if quick else 100_000
    body = b"x" * 512
    layer = AsyncCacheLayer(httpx.MockTransport(lambda r: httpx.Response(200, content=body)), mode="ttl",
                            max_size=1000)
    process = psutil.Process()

    async def fill() -> float:
        async with httpx.AsyncClient(transport=layer, base_url="http://bench") as client:
            for i in range(2000):  # warm: the cache is full from here on
                await client.get(f"/api/Product/P{i}")
            before = process.memory_info().rss
            for i in range(2000, 2000 + urls):
                await client.get(f"/api/Product/P{i}")
            return (process.memory_info().rss - before) / (1024 * 1024)

    grown = asyncio.run(fill())
    index = len(layer.policy._index)
    return [
        Row(SUITE, f"RSS growth over {urls} distinct URLs, max_size=1000", grown, "MiB", "< 10", grown < 10),
        Row(SUITE, "... invalidation index entries", index, "", "<= 1000", index <= 1000),
    ]


def run(quick: bool = False) -> list[Row]:
    quiet_service_logs()
    return health_at_depth(quick) + drain_rates(quick) + cache_memory(quick)
