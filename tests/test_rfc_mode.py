"""RFC 9111 mode on the layer's own path: freshness, revalidation, directives; sync and async, injected clock."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller, Clock


class Origin:
    """A resource with a version; answers conditional requests with 304 while the version is unchanged."""

    def __init__(self, headers: dict[str, str], *, validator: str = "etag") -> None:
        self.headers = headers
        self.validator = validator
        self.version = 1
        self.requests: list[httpx.Request] = []
        self.sent: list[httpx.Headers] = []  # the headers as each request left (the layer restores its own)

    def tag(self) -> str:
        return f'"v{self.version}"' if self.validator == "etag" else f"Mon, 0{self.version} Jun 2026 10:00:00 GMT"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.sent.append(httpx.Headers(request.headers))
        name = "etag" if self.validator == "etag" else "last-modified"
        asked = request.headers.get("if-none-match" if self.validator == "etag" else "if-modified-since")
        headers = {**self.headers, name: self.tag()} if self.validator else dict(self.headers)
        if asked is not None and asked == self.tag():
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, json={"version": self.version}, headers=headers)


def make(mode: str, origin: Any, clock: Clock) -> tuple[Caller, Any]:
    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    layer = cls(httpx.MockTransport(origin), mode="rfc", clock=clock)
    return Caller(mode, layer), layer


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
@pytest.mark.parametrize("validator", ["etag", "last-modified"])
async def test_fresh_then_revalidated_with_304(mode: str, validator: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "max-age=60"}, validator=validator)
    caller, layer = make(mode, origin, clock)
    await caller.get("/r")
    clock.now += 30
    hit = await caller.get("/r")
    assert hit.extensions["caching"]["from_cache"] and hit.headers["age"] == "30" and len(origin.requests) == 1
    clock.now += 31  # stale: validated with the server
    again = await caller.get("/r")
    caching = again.extensions["caching"]
    assert caching["from_cache"] and caching["revalidated"] and again.json() == {"version": 1}
    sent = origin.sent[-1]
    assert sent.get("if-none-match" if validator == "etag" else "if-modified-since") == origin.tag()
    assert "if-none-match" not in again.request.headers and "if-modified-since" not in again.request.headers
    clock.now += 59  # fresh again from the 304
    assert (await caller.get("/r")).extensions["caching"]["from_cache"] and len(origin.requests) == 2
    assert layer.stats()["hits"] == 3
    await caller.close()


@pytest.mark.anyio
async def test_a_changed_resource_replaces_the_stored_one(mode: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "max-age=10"})
    caller, layer = make(mode, origin, clock)
    await caller.get("/r")
    origin.version = 2
    clock.now += 11
    changed = await caller.get("/r")
    assert changed.json() == {"version": 2} and not changed.extensions["caching"]["from_cache"]
    assert (await caller.get("/r")).json() == {"version": 2} and layer.stats()["entries"] == 1
    await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("cache_control", "stored"), [("no-store", False), ("private, max-age=60", True),
                                                       ("public, max-age=60", True), ("max-age=0", True)])
async def test_directives_decide_what_is_stored(mode: str, cache_control: str, stored: bool) -> None:
    clock, origin = Clock(), Origin({"cache-control": cache_control})
    caller, layer = make(mode, origin, clock)
    first = await caller.get("/r")
    assert first.extensions["caching"]["stored"] is stored and layer.stats()["entries"] == int(stored)
    await caller.close()


@pytest.mark.anyio
async def test_response_no_cache_is_revalidated_before_every_use(mode: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "no-cache"})
    caller, _ = make(mode, origin, clock)
    await caller.get("/r")
    for _ in range(3):
        r = await caller.get("/r")
        assert r.extensions["caching"]["revalidated"] and r.json() == {"version": 1}
    assert len(origin.requests) == 4 and all("if-none-match" in h for h in origin.sent[1:])
    await caller.close()


@pytest.mark.anyio
async def test_request_no_cache_validates_a_fresh_entry(mode: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "max-age=600"})
    caller, _ = make(mode, origin, clock)
    await caller.get("/r")
    assert (await caller.get("/r")).extensions["caching"]["revalidated"] is False
    r = await caller.get("/r", headers={"Cache-Control": "no-cache"})
    assert r.extensions["caching"]["revalidated"] and len(origin.requests) == 2
    await caller.close()


@pytest.mark.anyio
async def test_no_freshness_and_no_validator_is_not_kept(mode: str) -> None:
    clock, origin = Clock(), Origin({}, validator="")
    caller, layer = make(mode, origin, clock)
    await caller.get("/r")
    await caller.get("/r")
    assert len(origin.requests) == 2 and layer.stats()["entries"] == 0
    await caller.close()


@pytest.mark.anyio
async def test_an_apps_own_conditional_request_passes_through(mode: str) -> None:
    clock, origin = Clock(), Origin({"cache-control": "max-age=600"})
    caller, _ = make(mode, origin, clock)
    await caller.get("/r")
    mine = await caller.get("/r", headers={"If-None-Match": '"v1"'})
    assert mine.status_code == 304 and mine.extensions["caching"]["lookup"] == "bypass"
    await caller.close()


@pytest.mark.anyio
async def test_expires_header_gives_freshness(mode: str) -> None:
    clock, origin = Clock(), Origin({"expires": "Thu, 01 Jan 2099 00:00:00 GMT"})
    caller, _ = make(mode, origin, clock)
    await caller.get("/r")
    assert (await caller.get("/r")).extensions["caching"]["from_cache"] and len(origin.requests) == 1
    await caller.close()
