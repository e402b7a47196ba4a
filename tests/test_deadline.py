"""Deadlines of calls made one at a time, kept by one timer (caching.deadline), and the async lookups on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pywats_transport.caching.deadline import Expired, SharedDeadline


def _counting_timers(loop: asyncio.AbstractEventLoop, of: object = None) -> list[float]:
    """The times of the timers set on ``loop`` from now on (``of``: only those of this object's methods)."""
    set_at: list[float] = []
    call_at = loop.call_at

    def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if of is None or getattr(callback, "__self__", None) is of:
            set_at.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counted  # type: ignore[method-assign]
    return set_at


def test_a_call_past_its_deadline_is_cancelled_and_said_to_have_expired() -> None:
    deadline = SharedDeadline(0.1)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(Expired, match="no answer within 0.1 s"):
            with deadline.running():
                await asyncio.sleep(5)
        return time.monotonic() - started

    assert 0.09 < asyncio.run(main()) < 0.5


def test_calls_in_a_row_share_one_timer_and_each_gets_its_full_time() -> None:
    """A thousand quick calls set the timer once; a slow call after them still has its own whole timeout
    (the timer set for an earlier call is set again, not taken for this one's)."""
    deadline = SharedDeadline(0.3)

    async def main() -> tuple[int, float]:
        timers = _counting_timers(asyncio.get_running_loop(), deadline)
        for _ in range(1000):
            with deadline.running():
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # most of the first call's time gone
        started = time.monotonic()
        with pytest.raises(Expired):
            with deadline.running():
                await asyncio.sleep(5)
        return len(timers), time.monotonic() - started

    timers, waited = asyncio.run(main())
    assert waited >= 0.29
    assert timers == 2  # the first call's, and the slow call's (set again when the first one's fired)


def test_the_callers_own_cancellation_is_raised_as_it_is() -> None:
    deadline = SharedDeadline(5)

    async def call() -> None:
        with deadline.running():
            await asyncio.sleep(5)

    async def main() -> None:
        task = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with deadline.running():  # the next call runs as usual
            await asyncio.sleep(0)

    asyncio.run(main())


def test_a_deadline_serves_a_new_event_loop_too() -> None:
    """The timer belongs to the loop it was set in: a call in the next loop still has its deadline."""
    deadline = SharedDeadline(0.1)

    async def quick() -> None:
        with deadline.running():
            await asyncio.sleep(0)

    async def slow() -> None:
        with pytest.raises(Expired):
            with deadline.running():
                await asyncio.sleep(5)

    asyncio.run(quick())
    started = time.monotonic()
    asyncio.run(slow())
    assert time.monotonic() - started < 0.5


@pytest.mark.redis
def test_async_lookups_set_no_timer_of_their_own_per_lookup(redis_url: str) -> None:
    """With a timer per lookup (``asyncio.timeout``), the event loop kept every cancelled one in its heap
    until its time: at a timeout of seconds and thousands of lookups a second, thousands, which every turn
    of the application's loop paid for. 500 lookups set at most a few."""
    from pywats_transport.caching.redis_connect import async_lookup_connection
    from pywats_transport.caching.redis_lookup import AsyncLookups

    async def main() -> int:
        lookups = AsyncLookups(lambda: async_lookup_connection(redis_url, 5.0), 5.0)
        try:
            await lookups.look("warm", "http://test/warm")  # connected
            timers = _counting_timers(asyncio.get_running_loop())
            for i in range(500):
                assert await lookups.look(f"k{i}", f"http://test/{i}") == []
            return len(timers)
        finally:
            await lookups.aclose()

    assert asyncio.run(main()) <= 2
