"""Run the same test body through a sync or an async client."""

from __future__ import annotations

from typing import Any

import httpx


class Caller:
    def __init__(self, mode: str, transport: Any, base_url: str = "http://test") -> None:
        self.mode = mode
        self.transport = transport
        if mode == "sync":
            self.client: Any = httpx.Client(transport=transport, base_url=base_url)
        else:
            self.client = httpx.AsyncClient(transport=transport, base_url=base_url)

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        if self.mode == "sync":
            return self.client.request(method, url, **kw)  # type: ignore[no-any-return]
        return await self.client.request(method, url, **kw)  # type: ignore[no-any-return]

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", url, **kw)

    async def close(self) -> None:
        if self.mode == "sync":
            self.client.close()
        else:
            await self.client.aclose()


class Counter:
    """A MockTransport handler numbering the requests it answers."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.calls: list[httpx.Request] = []
        self.status = status
        self.headers = headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        status = self.status if request.method in ("GET", "HEAD") else 200
        return httpx.Response(status, json={"n": len(self.calls), "path": request.url.path}, headers=self.headers)

    @property
    def count(self) -> int:
        return len(self.calls)


class Clock:
    """A clock a test moves by hand (``clock.now += 61``)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now
