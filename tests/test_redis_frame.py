"""Entries read from Redis are decoded once while Redis answers the same value (redis_frame.Decoded)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from pywats_transport.caching import redis_frame
from pywats_transport.caching.redis_frame import Decoded, framed
from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

from .helpers import Caller, Counter


def _frame(body: bytes, stored_at: float = 1.0) -> bytes:
    return framed("GET", "http://test/p", 200, [["content-type", "text/plain"]], body, stored_at, fresh_until=100.0)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The values :func:`redis_frame.record_of` decodes, in order."""
    seen: list[bytes] = []
    decode = redis_frame.record_of

    def counted(key: str, entry_id: bytes, data: bytes) -> Any:
        seen.append(data)
        return decode(key, entry_id, data)

    monkeypatch.setattr(redis_frame, "record_of", counted)
    return seen


def test_an_entry_read_again_is_decoded_once_and_each_reader_gets_its_own_copy(decodes: list[bytes]) -> None:
    decoded, data = Decoded(), _frame(b"hello")
    first = decoded.record("k", b"id-1", data)
    second = decoded.record("k", b"id-1", bytes(data))  # the same value, read again: a new bytes object
    assert len(decodes) == 1
    assert (second.body, second.status_code, second.fresh_until) == (b"hello", 200, 100.0)
    assert second is not first
    first.fresh_until = 5.0  # a lookup times its own copy (rfc mode sets it from the headers)
    assert decoded.record("k", b"id-1", data).fresh_until == 100.0
    # The headers built for a hit are built once, and shared by the copies.
    assert second.response_headers() is decoded.record("k", b"id-1", data).response_headers()


def test_a_variant_stored_again_under_its_id_is_decoded_anew(decodes: list[bytes]) -> None:
    decoded = Decoded()
    assert decoded.record("k", b"id-1", _frame(b"old")).body == b"old"
    assert decoded.record("k", b"id-1", _frame(b"new", stored_at=2.0)).body == b"new"
    assert decoded.record("k", b"id-1", _frame(b"new", stored_at=2.0)).body == b"new"
    assert len(decodes) == 2


def test_decoded_entries_are_bounded_in_number_and_size(decodes: list[bytes]) -> None:
    decoded = Decoded(size=2, largest=200)  # a frame here is about 140 bytes
    for entry_id in (b"a", b"b", b"c"):
        decoded.record("k", entry_id, _frame(entry_id))
    decoded.record("k", b"a", _frame(b"a"))  # the oldest was let go for the third
    decoded.record("k", b"c", _frame(b"c"))
    assert len(decodes) == 4
    big = _frame(b"x" * 200)
    assert decoded.record("k", b"big", big).body == b"x" * 200
    decoded.record("k", b"big", big)  # over ``largest``: decoded each time, never held
    assert len(decodes) == 6


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_station_that_read_an_entry_sees_another_stations_newer_answer(mode: str, redis_url: str) -> None:
    """Station B read the entry (and keeps it decoded); station A refreshes it from the server: B's next hit
    answers the new body from Redis, not the one it decoded."""
    import uuid

    cls = CacheLayer if mode == "sync" else AsyncCacheLayer
    server = Counter()
    a = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url))
    b = Caller(mode, cls(httpx.MockTransport(server), mode="ttl", storage="redis", redis_url=redis_url))
    path = f"/decoded/{uuid.uuid4().hex}"
    assert (await a.get(path)).json()["n"] == 1
    for _ in range(2):
        hit = await b.get(path)
        assert hit.extensions["caching"]["from_cache"] and hit.json()["n"] == 1
    refreshed = await a.get(path, extensions={"cache": {"refresh": True}})
    assert refreshed.json()["n"] == 2
    hit = await b.get(path)
    assert hit.extensions["caching"]["from_cache"] and hit.json()["n"] == 2
    await a.close()
    await b.close()


@pytest.mark.redis
def test_the_lookups_keep_each_keys_packed_command_for_a_bounded_number_of_keys(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key's lookup is packed once and kept (a station looks up the same keys again and again), for at
    most ``PACKED`` keys, the oldest let go first; what Redis answers is the same either way."""
    from pywats_transport.caching import redis_lookup
    from pywats_transport.caching.redis_connect import lookup_connection

    monkeypatch.setattr(redis_lookup, "PACKED", 3)
    lookups = redis_lookup.Lookups(lambda: lookup_connection(redis_url, 1.0))
    try:
        for key in ("k1", "k2", "k1", "k3", "k4"):
            assert lookups.look(key, f"http://test/{key}") == []  # nothing stored: an empty answer
        assert list(lookups._packed) == [(k, f"http://test/{k}") for k in ("k2", "k3", "k4")]
    finally:
        lookups.close()
