"""Deadlines for calls made one at a time (a connection's lookups), kept by one timer.

``asyncio.timeout`` schedules a timer per call and cancels it when the call returns. The event loop keeps
cancelled timers in its heap until their time comes: at thousands of lookups a second and a timeout of a
fraction of a second, thousands of them, and every turn of the loop pays for the heap (a Redis hit cost
about a sixth more for it, the whole application's loop as much). Here one timer serves every call: when
it fires it cancels the call in progress if that call's deadline has passed, and otherwise is set again
for that deadline; between calls it lapses.

As with ``asyncio.timeout``, a cancellation of the caller's own during the call is the caller's (it is
raised as it is), and only the deadline's becomes :class:`Expired` (Python 3.11 and later tell them apart
by the task's count of cancellations; before, a cancellation that meets the deadline's is taken for it).
"""

from __future__ import annotations

import asyncio
from typing import Any


class Expired(Exception):
    """The call in progress outlived its deadline and was cancelled."""


class SharedDeadline:
    """``with deadline.running(): await call()`` for one call at a time; :class:`Expired` past ``timeout``."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._task: asyncio.Task[Any] | None = None
        self._at = 0.0
        self._cancelling = 0
        self._fired: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def running(self) -> _Running:
        return _Running(self)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a deadline runs in a task"
        self._task, self._at, self._fired = task, loop.time() + self.timeout, None
        self._cancelling = task.cancelling() if hasattr(task, "cancelling") else 0
        if self._timer is None or self._timer_loop is not loop:  # none set, or set in another event loop
            self._timer, self._timer_loop = loop.call_at(self._at, self._check, loop), loop

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        task = self._task
        if task is None or self._timer_loop is not loop:
            return  # no call in progress: the next one sets the timer again
        if loop.time() >= self._at:
            self._fired = task
            task.cancel()
        else:
            self._timer = loop.call_at(self._at, self._check, loop)

    def _stop(self, exc: BaseException | None) -> None:
        task, self._task = self._task, None
        fired, self._fired = self._fired, None
        if fired is None or fired is not task or not isinstance(exc, asyncio.CancelledError):
            return
        if hasattr(task, "uncancel") and task.uncancel() > self._cancelling:
            return  # cancelled by its caller too: that cancellation goes on
        raise Expired(f"no answer within {self.timeout:g} s") from None


class _Running:
    __slots__ = ("_deadline",)

    def __init__(self, deadline: SharedDeadline) -> None:
        self._deadline = deadline

    def __enter__(self) -> None:
        self._deadline._start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._deadline._stop(exc)
