"""Request coalescing: concurrent identical lookups wait for the first (the leader) instead of all missing.

The leader's flight lands when its response body has been read and closed,
which is when hishel makes the entry visible; followers then look it up.
The event type is the only difference between sync (threading) and async (anyio).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx


class Flight:
    __slots__ = ("key", "event", "leader")

    def __init__(self, key: str, event: Any, leader: bool) -> None:
        self.key, self.event, self.leader = key, event, leader


class Flights:
    def __init__(self, event_factory: Callable[[], Any]) -> None:
        self._event_factory = event_factory
        self._flying: dict[str, Any] = {}
        self._lock = threading.Lock()

    def join(self, key: str) -> Flight:
        with self._lock:
            event = self._flying.get(key)
            if event is not None:
                return Flight(key, event, leader=False)
            event = self._flying[key] = self._event_factory()
            return Flight(key, event, leader=True)

    def land(self, flight: Flight | None) -> None:
        if flight is None or not flight.leader:
            return
        with self._lock:
            if self._flying.get(flight.key) is flight.event:
                del self._flying[flight.key]
        flight.event.set()

    def land_when_read(self, flight: Flight | None, response: httpx.Response) -> httpx.Response:
        if flight is None or not flight.leader:
            return response
        if not response.extensions.get("caching", {}).get("stored") or response.is_closed:
            # Nothing to wait for: either nothing gets stored, or the body is already complete.
            self.land(flight)
            return response
        response.stream = _LandOnClose(response.stream, lambda: self.land(flight))
        return response


class _LandOnClose(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, stream: Any, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close = on_close

    def __iter__(self) -> Any:
        yield from self._stream

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._on_close()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._on_close()
