"""A download through the cache (a body over its 10 MiB bound: a software package, a log archive) is
answered and not stored. It used to be held whole in memory to its end, only to be dropped, and the
lookups of the same URL meanwhile, in the station and across the fleet, waited for that end before
they went to the network themselves."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller

MIB = 1024 * 1024
MODES = ["sync", "async"]


class Download(httpx.SyncByteStream, httpx.AsyncByteStream):
    """``size`` MiB, a fresh chunk at a time; with a ``gate``, it stops after ``hold_after`` chunks (and says
    so on ``held``) until the gate opens."""

    def __init__(self, size: int, gate: threading.Event | None = None, hold_after: int = 0) -> None:
        self.size, self.gate, self.hold_after = size, gate, hold_after
        self.held = threading.Event()

    def _holds(self, i: int) -> bool:
        if self.gate is None or i != self.hold_after:
            return False
        self.held.set()
        return True

    def __iter__(self) -> Any:
        for i in range(self.size):
            if self._holds(i):
                assert self.gate is not None and self.gate.wait(20)
            yield b"x" * MIB

    async def __aiter__(self) -> Any:
        for i in range(self.size):
            if self._holds(i):
                deadline = time.monotonic() + 20
                while self.gate is not None and not self.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            yield b"x" * MIB


def station(mode: str, origin: Any, **settings: Any) -> Caller:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    return Caller(mode, cls(httpx.MockTransport(origin), mode="ttl", ttl=60, **settings))


def storage_settings(storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if storage == "memory":
        return {}
    if storage == "sqlite":
        return {"storage": "sqlite", "sqlite_path": str(tmp_path / "cache.db")}
    return {"storage": "redis", "redis_url": request.getfixturevalue("redis_url")}


async def read_all(caller: Caller, url: str) -> int:
    if caller.mode == "sync":
        with caller.client.stream("GET", url) as response:
            return sum(len(chunk) for chunk in response.iter_bytes())
    async with caller.client.stream("GET", url) as response:
        return sum([len(chunk) async for chunk in response.aiter_bytes()])


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("storage", ["memory", "sqlite", pytest.param("redis near cache", marks=pytest.mark.redis)])
async def test_a_download_is_not_held_in_memory(mode: str, storage: str, request: pytest.FixtureRequest,
                                                tmp_path: Path) -> None:
    """64 MiB streamed through the cache: what it holds at most is about its bound (10 MiB), not the whole
    body; and the body is not stored. The memory storage and the near cache held all of it, and SQLite
    wrote all of it to its file."""
    settings = storage_settings(storage, request, tmp_path)
    if storage != "memory" and storage != "sqlite":
        settings["near_cache"] = True
    sent = []

    def origin(req: httpx.Request) -> httpx.Response:
        sent.append(req)
        return httpx.Response(200, stream=Download(64))

    caller = station(mode, origin, **settings)
    url = f"/packages/{uuid.uuid4().hex}"
    try:
        tracemalloc.start()
        try:
            size = await read_all(caller, url)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert size == 64 * MIB
        assert peak < 24 * MIB, f"{peak / MIB:.0f} MiB held while 64 MiB streamed through"
        await read_all(caller, url)
        assert len(sent) == 2  # not stored
        if storage == "sqlite":
            assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 32 * MIB  # written up to the bound only
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("storage", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("length", ["announced", "chunked"])
async def test_a_lookup_of_a_download_in_progress_does_not_wait_for_its_end(
        mode: str, storage: str, length: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A station streams a 20 MiB download and holds it open; the same URL is asked for meanwhile, in the
    station (memory) or by another station (Redis). That lookup goes to the network at once: when the
    answer's Content-Length says it is a download, or (chunked) once 10 MiB have come through. It waited
    for the download's end (here, ``coalesce_timeout``: 4 s)."""
    gate = threading.Event()
    leading = Download(20, gate, hold_after=0 if length == "announced" else 11)
    sent = []

    def origin(req: httpx.Request) -> httpx.Response:
        sent.append(req)
        body = leading if len(sent) == 1 else Download(1)
        headers = {"content-length": str(body.size * MIB)} if length == "announced" else {}
        return httpx.Response(200, headers=headers, stream=body)

    settings = {"coalesce_timeout": 4.0, **storage_settings(storage, request, tmp_path)}
    leader = station(mode, origin, **settings)
    other = station(mode, origin, **settings) if storage == "redis" else leader
    url = f"/packages/{uuid.uuid4().hex}"
    pool = None
    try:
        if mode == "sync":
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1)
            download: Any = asyncio.wrap_future(pool.submit(lambda: asyncio.run(read_all(leader, url))))
        else:
            download = asyncio.ensure_future(read_all(leader, url))
        deadline = time.monotonic() + 10
        while not leading.held.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert leading.held.is_set()
        started = time.monotonic()
        answer = await other.get(url)
        waited = time.monotonic() - started
        gate.set()
        assert await download == 20 * MIB
        assert len(answer.content) == MIB and len(sent) == 2
        assert waited < 2.0, f"the lookup waited {waited:.1f} s for the download"
    finally:
        gate.set()
        if pool is not None:
            pool.shutdown()
        await leader.close()
        if other is not leader:
            await other.close()


def test_a_body_over_the_bound_is_never_handed_on_as_complete() -> None:
    """The stream that keeps a body for the cache passes a download through whole, and never hands on what it
    let go of as a body (with nobody to tell it let go, it would have stored an empty one)."""
    from pywats_transport.caching.coalesce import SaveWhenRead

    done: list[bytes] = []
    kept = SaveWhenRead(iter([b"x" * 6, b"y" * 6]), done.append, None, limit=10)
    assert b"".join(kept) == b"x" * 6 + b"y" * 6 and done == []
    small = SaveWhenRead(iter([b"x" * 6, b"y" * 4]), done.append, None, limit=10)
    assert b"".join(small) == b"x" * 6 + b"y" * 4 and done == [b"x" * 6 + b"y" * 4]
