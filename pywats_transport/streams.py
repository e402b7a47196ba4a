"""A response body that tells when it is done with: closed, dropped, or grown past a bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx


class OnClose(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Passes a body through and calls ``on_close`` once: when the stream is closed, when it outgrows
    ``limit`` bytes (None: never), or when it is dropped unclosed (a caller that neither read nor closed
    it must not hold what waits on it for as long as the object lives elsewhere)."""

    def __init__(self, stream: Any, on_close: Callable[[], None], limit: int | None = None) -> None:
        self._stream = stream
        self._on_close: Callable[[], None] | None = on_close
        self._left = limit
        #: read to its end; grew past ``limit``: what ``on_close`` may want to know of how it ended
        self.completed = self.outgrew = False

    def _done(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def _count(self, chunk: bytes) -> None:
        if self._left is not None:
            self._left -= len(chunk)
            if self._left < 0:
                self.outgrew = True
                self._done()

    def __iter__(self) -> Any:
        for chunk in self._stream:
            self._count(chunk)
            yield chunk
        self.completed = True

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            self._count(chunk)
            yield chunk
        self.completed = True

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._done()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._done()

    def __del__(self) -> None:
        self._done()
