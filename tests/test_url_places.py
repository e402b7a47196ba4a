"""A URL names one place for invalidation however it is spelt: userinfo, IPv6, IDNA hosts, escaped paths."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import httpx
import pytest
from redis import Redis

from pywats_transport.caching.redis_keys import CHANNEL
from pywats_transport.caching.url_parts import split_prefix
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller, Counter

# (how the stations spell the origin, the item's path under the collection)
SPELLINGS = {
    "userinfo": ("http://station:s3cret-pw@wats.example", "P1"),
    "ipv6": ("http://[::1]:8080", "P1"),
    "idna": ("http://bücher.example", "P1"),
    "space": ("http://wats.example", "PN 100"),
    "escaped-slash": ("http://wats.example", "PN%2F100"),
    "non-ascii": ("http://wats.example", "Größe-1"),
}


def layer(io: str, server: Counter, storage: str, redis_url: str | None, **kw: Any) -> Any:
    """A station's cache layer (``io``: sync or async), in ttl mode unless ``kw`` says otherwise."""
    cls = CacheLayer if io == "sync" else AsyncCacheLayer
    shared = {"redis_url": redis_url} if storage == "redis" else {}
    return cls(httpx.MockTransport(server), storage=storage, **{"mode": "ttl", **shared, **kw})


def hit(response: httpx.Response) -> bool:
    return bool(response.extensions["caching"]["from_cache"])


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "memory":
        return "memory", None
    return "redis", str(request.getfixturevalue("redis_url"))


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_a_write_drops_the_entry_for_every_station(mode: str, spelling: str,
                                                         storage: tuple[str, str | None]) -> None:
    """With Redis a second station reads; on the memory storage the writer's own reads must miss."""
    kind, redis_url = storage
    origin, item = SPELLINGS[spelling]
    server = Counter()
    writer = Caller(mode, layer(mode, server, kind, redis_url))
    reader = Caller(mode, layer(mode, server, kind, redis_url)) if kind == "redis" else writer
    url = f"{origin}/api/{uuid.uuid4().hex}/Product/{item}"
    try:
        await reader.get(url)
        assert hit(await reader.get(url))
        assert (await writer.request("PUT", url)).status_code == 200
        assert not hit(await reader.get(url))
    finally:
        await writer.close()
        if reader is not writer:
            await reader.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_invalidate_by_url_drops_the_entry_whatever_the_spelling(mode: str, spelling: str,
                                                                        storage: tuple[str, str | None]) -> None:
    kind, redis_url = storage
    origin, item = SPELLINGS[spelling]
    server = Counter()
    station = layer(mode, server, kind, redis_url)
    caller = Caller(mode, station)
    collection = f"/api/{uuid.uuid4().hex}/Product"
    url = f"{origin}{collection}/{item}"
    try:
        await caller.get(url)
        # the prefix as a user may write it: the origin in capitals, its default port spelt out
        scheme, _, host = origin.partition("://")
        prefix = f"{scheme.upper()}://{host.upper()}:80{collection}" if spelling != "ipv6" else origin + collection
        assert station.invalidate(prefix) == 1
        assert not hit(await caller.get(url))
    finally:
        await caller.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_password_in_the_url_is_in_no_redis_key_value_or_message(mode: str, redis_url: str) -> None:
    admin = Redis.from_url(redis_url)
    listener = admin.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(CHANNEL)
    caller = Caller(mode, layer(mode, Counter(), "redis", redis_url))
    url = f"http://station:s3cret-pw@wats.example/api/{uuid.uuid4().hex}/Product/P1"
    try:
        await caller.get(url)
        await caller.request("PUT", url)
        await caller.get(url)
        names = [name for name in admin.scan_iter(match="pwt:*", count=500)]
        assert names and not [name for name in names if b"s3cret" in name or b"station" in name]
        entries = [value for name in names if admin.type(name) == b"hash" for value in admin.hvals(name)]
        assert [value for value in entries if b"wats.example/api" in value]  # the entry stored again
        assert not [value for value in entries if b"s3cret" in value]
        deadline, messages = time.monotonic() + 2.0, []
        while not messages and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.1)
            if message is not None and message["data"] != b"*":  # "*": a first connection's clear
                messages.append(message["data"])
        assert messages and b"s3cret" not in messages[0] and messages[0].startswith(b"http://wats.example\n")
    finally:
        await caller.close()
        listener.close()
        admin.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_near_caches_drop_an_escaped_path_another_station_wrote(mode: str, redis_url: str) -> None:
    server = Counter()
    writer = Caller(mode, layer(mode, server, "redis", redis_url, near_cache=True))
    reader_layer = layer(mode, server, "redis", redis_url, near_cache=True)
    reader = Caller(mode, reader_layer)
    url = f"http://wats.example/api/{uuid.uuid4().hex}/Product/PN%20100"
    try:
        await writer.get(url)
        assert hit(await reader.get(url)) and hit(await reader.get(url))
        assert reader_layer.stats()["near_entries"] == 1
        await writer.request("PUT", url)
        deadline = time.monotonic() + 2.0
        while reader_layer.stats()["near_entries"] and time.monotonic() < deadline:
            await anyio.sleep(0.005)
        assert reader_layer.stats()["near_entries"] == 0
        assert not hit(await reader.get(url))
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.parametrize("prefix", ["http://", "https:///api"])
def test_a_prefix_with_a_scheme_but_no_host_is_refused_by_name(prefix: str) -> None:
    with pytest.raises(ValueError, match="cache prefix .* names no host"):
        split_prefix(prefix, None)
    station = CacheLayer(httpx.MockTransport(Counter()), mode="ttl")
    with pytest.raises(ValueError, match="cache prefix"):
        station.invalidate(prefix)


def test_a_prefix_that_is_not_a_string_is_refused_by_name() -> None:
    station = CacheLayer(httpx.MockTransport(Counter()), mode="ttl")
    with pytest.raises(TypeError, match="cache prefix must be a str .* got b'/api'"):
        station.invalidate(b"/api")  # type: ignore[arg-type]


def test_a_path_prefix_is_decoded_and_keeps_the_origin_given() -> None:
    assert split_prefix("/api/PN%20100?x=1", "http://wats.example") == ("http://wats.example", "/api/PN 100")
    assert split_prefix("HTTPS://User:pw@WATS.example:443/api", None) == ("https://wats.example", "/api")
    assert split_prefix("", None) == (None, "/")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("cache_mode", ["ttl", "rfc"])
@pytest.mark.parametrize("vary", ["", "Accept"])
async def test_a_url_with_userinfo_hits_in_every_station(mode: str, cache_mode: str, vary: str, redis_url: str) -> None:
    """In rfc mode hishel serves an entry only for its request's very URL, and a Redis frame keeps it
    without the userinfo: such a URL was fetched every time, with or without a ``Vary``."""
    server = Counter(headers={"Cache-Control": "max-age=60", **({"Vary": vary} if vary else {})})
    stations = [Caller(mode, layer(mode, server, "redis", redis_url, mode=cache_mode)) for _ in range(2)]
    url = f"http://station:s3cret-pw@wats.example/api/{uuid.uuid4().hex}/Product/P1"
    try:
        fetched = await stations[0].get(url)
        for station in stations:
            again = await station.get(url)
            assert hit(again) and again.json() == fetched.json()
        assert server.count == 1
    finally:
        for station in stations:
            await station.close()
