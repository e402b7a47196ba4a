"""Stations whose clocks disagree (a test station without NTP, minutes off) share one cache on Redis: an
entry's freshness is judged on Redis's clock, whichever station stored it and whichever reads it. It was
judged on each station's own: one ahead never hit what the others stored, and one behind served entries
as fresh long after they went stale (for as long as Redis kept them for stale-if-error)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import httpx
import pytest

from pywats_transport.layers.cache import CacheLayer

pytestmark = pytest.mark.redis

# One lookup by a station process whose clock is ``skew`` seconds off; prints what the cache did.
STATION = textwrap.dedent("""
    import asyncio, json, sys, time
    real = time.time
    skew = float(sys.argv[3])
    time.time = lambda: real() + skew  # this machine's clock
    import httpx
    from pywats_transport.layers.cache import AsyncCacheLayer, CacheLayer

    def origin(request):
        return httpx.Response(200, json={"from": "origin"})

    settings = dict(mode="ttl", ttl=60, stale_if_error=300, storage="redis", redis_url=sys.argv[1])
    if sys.argv[4] == "sync":
        with httpx.Client(transport=CacheLayer(httpx.MockTransport(origin), **settings),
                          base_url="http://wats") as client:
            answer = client.get(sys.argv[2])
    else:
        async def main():
            async with httpx.AsyncClient(transport=AsyncCacheLayer(httpx.MockTransport(origin), **settings),
                                         base_url="http://wats") as client:
                return await client.get(sys.argv[2])
        answer = asyncio.run(main())
    print(json.dumps({"from_cache": answer.extensions["caching"]["from_cache"],
                      "stale": answer.extensions["caching"].get("stale", False)}))
""")


def lookup_by_station(redis_url: str, path: str, skew: float, mode: str = "sync") -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", STATION, redis_url, path, str(skew), mode], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def stored_here(redis_url: str, path: str, ttl: float) -> None:
    layer = CacheLayer(httpx.MockTransport(lambda r: httpx.Response(200, json={"from": "origin"})), mode="ttl",
                       ttl=ttl, stale_if_error=300, storage="redis", redis_url=redis_url)
    with httpx.Client(transport=layer, base_url="http://wats") as client:
        assert client.get(path).extensions["caching"]["stored"]
        assert client.get(path).extensions["caching"]["from_cache"]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("skew", [-300.0, 300.0])
def test_a_station_minutes_off_hits_what_another_stored(fleet_url: str, skew: float, mode: str) -> None:
    """Stored for a minute by a station on time: a station 5 minutes ahead (or behind) hits it. The one
    ahead took it for stale, and fetched it again on every lookup."""
    path = f"/clock/fresh/{uuid.uuid4().hex}"
    stored_here(fleet_url, path, ttl=60)
    assert lookup_by_station(fleet_url, path, skew, mode) == {"from_cache": True, "stale": False}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_station_behind_does_not_serve_a_stale_entry_as_fresh(fleet_url: str, mode: str) -> None:
    """Stored for a second by a station on time, kept in Redis for stale-if-error: after that second, a
    station 5 minutes behind fetches it afresh. It served the entry as fresh for 5 more minutes."""
    path = f"/clock/stale/{uuid.uuid4().hex}"
    stored_here(fleet_url, path, ttl=1)
    time.sleep(1.2)
    assert lookup_by_station(fleet_url, path, -300.0, mode) == {"from_cache": False, "stale": False}


def test_entries_stored_by_a_station_ahead_are_fresh_for_their_ttl_only(fleet_url: str) -> None:
    """A station 5 minutes ahead stores an entry for a minute: a station on time finds it fresh now, and it is
    fresh for that minute, not six (its freshness is on Redis's clock, not the storing station's)."""
    path = f"/clock/ahead/{uuid.uuid4().hex}"
    assert lookup_by_station(fleet_url, path, 300.0) == {"from_cache": False, "stale": False}  # stored by it
    layer = CacheLayer(httpx.MockTransport(lambda r: httpx.Response(200, json={"from": "origin"})), mode="ttl",
                       ttl=60, storage="redis", redis_url=fleet_url)
    with httpx.Client(transport=layer, base_url="http://wats") as client:
        assert client.get(path).extensions["caching"]["from_cache"]
    record = layer.storage.find(layer.policy.plan(httpx.Request("GET", f"http://wats{path}")).key, "GET", {},
                                f"http://wats{path}")
    assert record is not None and record.fresh_until - time.time() <= 61


JUMP = textwrap.dedent("""
    import json, sys, time
    real = time.time
    skew = {"now": 0.0}
    time.time = lambda: real() + skew["now"]  # this machine's clock, which a late time sync moves
    import httpx
    from pywats_transport.layers.cache import CacheLayer

    layer = CacheLayer(httpx.MockTransport(lambda r: httpx.Response(200, json={})), mode="ttl", ttl=60,
                       storage="redis", redis_url=sys.argv[1])
    with httpx.Client(transport=layer, base_url="http://wats") as client:
        client.get(sys.argv[2] + "/before")  # connected: its clock is on time
        skew["now"] = 300.0
        client.get(sys.argv[2] + "/after")  # a miss, after the jump
        answer = client.get(sys.argv[2])  # stored by a station on time
    print(json.dumps({"from_cache": answer.extensions["caching"]["from_cache"]}))
""")


def test_a_station_whose_clock_jumps_is_set_again_at_its_next_miss(fleet_url: str) -> None:
    """A station's clock jumps 5 minutes ahead while it runs (a time sync that came late): after its next
    miss it hits again what a station on time stored. It went on judging with the offset its connection
    had read, and fetched every entry again until it reconnected."""
    path = f"/clock/jump/{uuid.uuid4().hex}"
    stored_here(fleet_url, path, ttl=60)
    out = subprocess.run([sys.executable, "-c", JUMP, fleet_url, path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"from_cache": True}
