"""A process forked from a station (``multiprocessing`` on Linux, a pre-forking server) after its cache
used Redis: the child reads its own answers, hears invalidations, and the parent goes on as before."""

from __future__ import annotations

import multiprocessing
import sys
import time
from typing import Any

import httpx
import pytest

from pywats_transport import build_transport

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork as multiprocessing uses it on Linux")]

PATHS = ("/fork/a", "/fork/b", "/fork/c", "/fork/d")


def _client(redis_url: str, origin: Any, **cache: Any) -> httpx.Client:
    stack = build_transport(inner=httpx.MockTransport(origin), enable_retry=False,
                            cache={"mode": "ttl", "storage": "redis", "redis_url": redis_url, **cache})
    return httpx.Client(transport=stack, base_url="http://station")


def _echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"path": request.url.path})


def _read_own_answers(client: httpx.Client, times: int) -> None:
    wrong = sum(client.get(PATHS[i % 4]).json()["path"] != PATHS[i % 4] for i in range(times))
    sys.exit(min(wrong, 100))


def test_forked_children_read_their_own_answers(redis_url: str) -> None:
    """Three children of a station whose lookups had used Redis, each reading 300 entries: every answer is the
    one for its URL. They used to share the parent's lookup connection, and read each other's answers."""
    fork = multiprocessing.get_context("fork")
    with _client(redis_url, _echo) as client:
        for path in (*PATHS, PATHS[0]):
            client.get(path)  # stored, then a hit: the lookup connection is open
        children = [fork.Process(target=_read_own_answers, args=(client, 300)) for _ in range(3)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0, 0, 0], "wrong answers per child"
        for path in PATHS:  # the parent's own connection still answers it, and only it
            answer = client.get(path)
            assert answer.json()["path"] == path and answer.extensions["caching"]["from_cache"]


def _counting(count: Any) -> Any:
    def origin(request: httpx.Request) -> httpx.Response:
        with count.get_lock():
            count.value += 1
            return httpx.Response(200, json={"n": count.value})
    return origin


def _heard(client: httpx.Client) -> int:
    return int(client._transport.stats()["cache"]["near_invalidations"])  # type: ignore[attr-defined]


def _hears_a_write(client: httpx.Client, redis_url: str, count: Any) -> None:
    before = client.get("/fork/near").json()["n"]
    heard = _heard(client)
    with _client(redis_url, _counting(count)) as other:  # another station writes
        other.put("/fork/near")
    deadline = time.monotonic() + 5  # the near cache's bound is the message's delivery: wait for it
    while _heard(client) == heard and time.monotonic() < deadline:
        time.sleep(0.01)
    after = client.get("/fork/near").json()["n"]
    sys.exit(0 if after != before else 1)


def test_a_forked_childs_near_cache_hears_other_stations_writes(redis_url: str) -> None:
    """The parent kept an entry near; its forked child reads it, another station writes it, and the child's next
    read is the new answer. The child used to keep the parent's near entry, with no subscriber to drop it."""
    fork = multiprocessing.get_context("fork")
    count = fork.Value("i", 0)
    with _client(redis_url, _counting(count), near_cache=True, near_ttl=60) as client:
        assert client.get("/fork/near").json() == client.get("/fork/near").json() == {"n": 1}  # kept near
        child = fork.Process(target=_hears_a_write, args=(client, redis_url, count))
        child.start()
        child.join(60)
        assert child.exitcode == 0, "the child read the pre-write answer"
        deadline = time.monotonic() + 5
        while _heard(client) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/fork/near").json()["n"] != 1  # the parent heard it too


def _one_turn(client: httpx.Client, throttle: Any) -> None:
    assert client.get("/fork/turn").status_code == 200
    sys.exit(min(int(throttle.stats()["fleet"]["local_fallbacks"]), 100))


def test_a_forked_childs_fleet_rate_does_not_count_the_parents_calls(own_redis: Any) -> None:
    """A sync station with one Redis call of its fleet rate in flight (a thread waiting on a paused Redis)
    forks. That call is the parent's: the child's first turn waits for Redis only, and is the fleet's.
    The child used to count the parent's call as its own: with ``redis.max_connections`` at 1, it waited
    for a call that would never end in the child and took its turn from the local bucket instead."""
    import threading

    from redis import Redis

    from pywats_transport.layers.throttle import ThrottleLayer

    fork = multiprocessing.get_context("fork")
    throttle = ThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                             redis_url=own_redis.url, rate=1000, burst=100, redis_max_connections=1,
                             redis_timeout=3.0)
    with httpx.Client(transport=throttle, base_url="http://station") as client, \
            Redis.from_url(own_redis.url) as admin:
        assert client.get("/fork/turn").status_code == 200  # the fleet rate's connection is open
        admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        parent_turn = threading.Thread(target=client.get, args=("/fork/turn",))
        parent_turn.start()
        time.sleep(0.2)  # the parent's turn is in flight, waiting on Redis
        child = fork.Process(target=_one_turn, args=(client, throttle))
        child.start()
        child.join(30)
        parent_turn.join(10)
        assert child.exitcode == 0, "the child's turn came from its local bucket"
        assert throttle.stats()["fleet"]["local_fallbacks"] == 0


def _count_stations(client: httpx.Client, throttle: Any) -> None:
    assert client.get("/fork/count").status_code == 200
    sys.exit(throttle.stats()["fleet"]["stations_seen"].get("station", 0))


def test_a_forked_child_counts_as_a_station_of_its_own(own_redis: Any) -> None:
    """The fleet's count of its stations sets each one's share while Redis is down: a child that kept its
    parent's station id made two stations count as one, and each took half the fleet's rate for its own."""
    from pywats_transport.layers.throttle import ThrottleLayer

    fork = multiprocessing.get_context("fork")
    throttle = ThrottleLayer(httpx.MockTransport(lambda r: httpx.Response(200)), enabled=True, backend="redis",
                             redis_url=own_redis.url, rate=1000, burst=100)
    with httpx.Client(transport=throttle, base_url="http://station") as client:
        assert client.get("/fork/count").status_code == 200
        child = fork.Process(target=_count_stations, args=(client, throttle))
        child.start()
        child.join(30)
        assert child.exitcode == 2, "the child counted itself as its parent"
