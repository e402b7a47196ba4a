"""A lookup in flight while a write goes through must not store its pre-write answer after the write's
invalidation: every later read, in every process, would get the pre-write entry until it expired."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller


class RaceOrigin:
    """An item whose version a PUT raises. The first GET reads the item, then holds its (pre-write) answer
    until the test has written."""

    def __init__(self, mode: str) -> None:
        self.version = 0
        self.held = False
        self.read: Any = threading.Event() if mode == "sync" else asyncio.Event()
        self.written: Any = threading.Event() if mode == "sync" else asyncio.Event()

    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, bool]:
        if request.method == "PUT":
            self.version += 1
            return httpx.Response(200, json={"v": self.version}), False
        hold, self.held = not self.held, True
        return httpx.Response(200, json={"v": self.version}, headers={"cache-control": "max-age=300"}), hold

    def sync_handler(self, request: httpx.Request) -> httpx.Response:
        response, hold = self._answer(request)
        if hold:
            self.read.set()
            assert self.written.wait(5)
        return response

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        response, hold = self._answer(request)
        if hold:
            self.read.set()
            await asyncio.wait_for(self.written.wait(), 5)
        return response


class BodyRaceOrigin(RaceOrigin):
    """As :class:`RaceOrigin`, but the first GET's answer is held half-way through its body: the storage has
    begun to store it (SQLite has its row) before the write, and finishes after."""

    def _answer(self, request: httpx.Request) -> tuple[httpx.Response, bool]:
        response, hold = super()._answer(request)
        if not hold:
            return response, False
        body, origin = response.content, self

        class HeldBody(httpx.SyncByteStream, httpx.AsyncByteStream):
            def __iter__(self) -> Any:
                yield body[:3]
                origin.read.set()
                assert origin.written.wait(5)
                yield body[3:]

            async def __aiter__(self) -> Any:
                yield body[:3]
                origin.read.set()
                await asyncio.wait_for(origin.written.wait(), 5)
                yield body[3:]

        headers = [(k, v) for k, v in response.headers.items() if k != "content-length"]
        return httpx.Response(200, headers=headers, stream=HeldBody()), False


async def while_reading(origin: RaceOrigin, reader: Caller, path: str, change: Callable[[], Awaitable[None]]) -> None:
    """``change`` runs while ``reader``'s GET of ``path`` holds its pre-write answer; then the GET ends."""
    if reader.mode == "sync":
        reading = threading.Thread(target=lambda: reader.client.get(path))
        reading.start()
        assert origin.read.wait(5)
        await change()
        origin.written.set()
        reading.join(5)
    else:
        task = asyncio.ensure_future(reader.get(path))
        await asyncio.wait_for(origin.read.wait(), 5)
        await change()
        origin.written.set()
        await task


def layers(mode: str, origin: RaceOrigin, cache_mode: str, storage: str, request: pytest.FixtureRequest,
           tmp_path: Path, **settings: Any) -> tuple[Any, Any, Any]:
    """The reader whose lookup is in flight, the writer, and a reader that comes after: one layer for an
    in-process storage; three, as three processes would, on Redis."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    handler = origin.sync_handler if mode == "sync" else origin.async_handler
    options: dict[str, Any] = {"mode": cache_mode, "ttl": 300, **settings}
    if storage == "sqlite":
        options.update(storage="sqlite", sqlite_path=str(tmp_path / "cache.db"))
    elif storage in ("redis", "near", "cluster"):
        url = request.getfixturevalue("redis_cluster_url" if storage == "cluster" else "redis_url")
        options.update(storage="redis", redis_url=url, near_cache=storage == "near")
    if storage in ("memory", "sqlite"):
        layer = cls(httpx.MockTransport(handler), **options)
        return layer, layer, layer
    return tuple(cls(httpx.MockTransport(handler), **options) for _ in range(3))  # type: ignore[return-value]


def callers_of(mode: str, layers: tuple[Any, Any, Any]) -> dict[str, Caller]:
    return {name: Caller(mode, layer) for name, layer in zip(("slow", "writer", "later"), layers, strict=True)}


async def still_caches(callers: dict[str, Caller], path: str) -> None:
    """The cache still caches: the post-write answer is stored and served."""
    again = await callers["later"].get(path)
    assert again.json() == {"v": 1} and again.extensions["caching"]["from_cache"]


async def close_all(callers: dict[str, Caller]) -> None:
    for caller in {id(c.transport): c for c in callers.values()}.values():
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("write", ["PUT", "invalidate", "clear"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("storage", ["memory", "sqlite", *(pytest.param(s, marks=pytest.mark.redis)
                                                         for s in ("redis", "near", "cluster"))])
async def test_a_lookup_in_flight_during_a_write_does_not_store_its_pre_write_answer(
        mode: str, write: str, cache_mode: str, storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``write``: through the layer, or elsewhere and then ``invalidate(prefix)`` or ``clear()``, which must
    withdraw the stores of answers in flight too."""
    origin = RaceOrigin(mode)
    slow, writer, later = layers(mode, origin, cache_mode, storage, request, tmp_path)
    callers = callers_of(mode, (slow, writer, later))
    path = f"/items/{uuid.uuid4().hex}"

    async def change() -> None:
        if write == "PUT":
            assert (await callers["writer"].request("PUT", path)).json() == {"v": 1}
        elif write == "invalidate":
            origin.version += 1
            writer.invalidate("http://test/items")
        else:
            origin.version += 1
            writer.clear()

    try:
        await while_reading(origin, callers["slow"], path, change)
        assert (await callers["later"].get(path)).json() == {"v": 1}
        if slow.near is not None:  # the near cache's bound: the write's message must have reached it
            deadline = time.monotonic() + 2
            while slow.near_invalidations == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        assert (await callers["slow"].get(path)).json() == {"v": 1}
        await still_caches(callers, path)
    finally:
        await close_all(callers)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("storage", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_lookup_between_the_write_and_the_end_of_the_fetch_in_flight_does_not_let_it_store(
        mode: str, cache_mode: str, storage: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """On SQLite the write marked the key stale once: a lookup after the write took the mark (and fetched
    the post-write answer), and the fetch still in flight then stored its pre-write answer over it, served
    to every later read, the writer's own included, until it expired. (Without coalescing, so that the
    lookup after the write does not wait for the fetch in flight: a follower would wait here for good.)"""
    origin = BodyRaceOrigin(mode)
    callers = callers_of(mode, layers(mode, origin, cache_mode, storage, request, tmp_path, coalesce=False))
    path = f"/items/{uuid.uuid4().hex}"

    async def write_then_read() -> None:
        assert (await callers["writer"].request("PUT", path)).json() == {"v": 1}
        assert (await callers["later"].get(path)).json() == {"v": 1}  # before the fetch in flight ends

    try:
        await while_reading(origin, callers["slow"], path, write_then_read)
        for name in ("writer", "later", "slow"):
            assert (await callers[name].get(path)).json() == {"v": 1}, name
        await still_caches(callers, path)
    finally:
        await close_all(callers)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
async def test_a_refresh_on_sqlite_is_not_answered_by_an_entry_readable_after_the_key_was_emptied(
        mode: str, cache_mode: str, tmp_path: Path) -> None:
    """A refresh emptied the key, then went through hishel, which read the storage again: an answer whose
    body ended in between (a fetch begun before a write) answered the refresh. Here the emptying leaves
    the entry, as such an answer would appear just after it."""
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"n": len(calls)}, headers={"cache-control": "max-age=300"})

    layer = cls(httpx.MockTransport(answer), mode=cache_mode, ttl=300, storage="sqlite",
                sqlite_path=str(tmp_path / "cache.db"))
    caller = Caller(mode, layer)
    try:
        assert (await caller.get("/a")).json() == {"n": 1}

        def keep(key: str) -> None:
            return None

        async def akeep(key: str) -> None:
            return None

        layer._remove_now = keep if mode == "sync" else akeep  # type: ignore[method-assign]
        refreshed = await caller.get("/a", extensions={"cache": {"refresh": True}})
        assert refreshed.json() == {"n": 2} and not refreshed.extensions["caching"]["from_cache"]
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.redis
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("target", ["redis_url", "redis_cluster_url"])
async def test_an_answer_stored_while_clear_sweeps_the_keys_does_not_survive_the_clear(
        mode: str, target: str, request: pytest.FixtureRequest) -> None:
    """``clear()`` finds the cache's keys with SCAN and unlinks them a batch at a time, so an answer fetched
    before the clear can be stored between the two (its lease found by the SCAN, its entry not there yet).
    Its key stays in Redis, but the index sets the SCAN found go with the batch, and an entry they no
    longer name is a miss: no station reads the pre-clear answer."""
    url = request.getfixturevalue(target)
    version, fired = [0], []
    read: Any = threading.Event() if mode == "sync" else asyncio.Event()
    go: Any = threading.Event() if mode == "sync" else asyncio.Event()
    path = f"/items/{uuid.uuid4().hex}"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"v": version[0]})

    def sync_handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == path and not read.is_set():
            read.set()
            assert go.wait(5)
        return answer(request)

    async def async_handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == path and not read.is_set():
            read.set()
            await asyncio.wait_for(go.wait(), 5)
        return answer(request)

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    handler = sync_handler if mode == "sync" else async_handler
    slow, clearer, later = (Caller(mode, cls(httpx.MockTransport(handler), mode="ttl", ttl=300, storage="redis",
                                             redis_url=url)) for _ in range(3))
    try:
        await later.get(f"/items/{uuid.uuid4().hex}")  # an entry of another station's: the sweep has keys to unlink
        client = clearer.transport.storage.client
        unlink = client.unlink
        if mode == "sync":
            reading = threading.Thread(target=lambda: slow.client.get(path))
            reading.start()
            assert read.wait(5)

            def unlink_after_the_store(*names: Any) -> Any:
                if not fired:  # the slow answer arrives and is stored before this batch is unlinked
                    fired.append(names)
                    go.set()
                    reading.join(5)
                return unlink(*names)

            client.unlink = unlink_after_the_store
            version[0] += 1
            clearer.transport.clear()
            go.set()
            reading.join(5)
        else:
            task = asyncio.ensure_future(slow.get(path))
            await asyncio.wait_for(read.wait(), 5)

            async def aunlink_after_the_store(*names: Any) -> Any:
                if not fired:
                    fired.append(names)
                    go.set()
                    await task
                return await unlink(*names)

            client.unlink = aunlink_after_the_store
            version[0] += 1
            await clearer.transport.aclear()
            go.set()
            await task
        assert fired  # the store did land between the SCAN and the UNLINK
        assert (await later.get(path)).json() == {"v": 1}
        assert (await slow.get(path)).json() == {"v": 1}
    finally:
        for caller in (slow, clearer, later):
            await caller.close()
