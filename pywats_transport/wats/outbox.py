"""The WATS clients' outbox: a report is handed over once and reaches the server exactly once.

A report is written to the durable queue on disk first (the same queue, and folder layout, as the
client service's), then sent at once if the server takes it; otherwise it stays queued and a
background sender sends it when the server is back, in this process or the next one that opens the
same folder. Exactly once by report id: the id is fixed before the first send, and a file moves to
``done/`` only after the server confirmed it.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from ..reportqueue import ALREADY, CONFIRMED, REJECTED, ReportQueue

T = TypeVar("T")


@dataclass(frozen=True)
class Submitted:
    """What became of a report handed to the outbox."""

    id: str
    #: ``sent``: the server confirmed it; ``queued``: kept on disk, the sender will send it;
    #: ``rejected``: the server refused its content (moved to ``error/`` with the reason)
    status: Literal["sent", "queued", "rejected"]
    #: the server already had this report id (a re-send it recognised)
    duplicate: bool = False
    reason: str | None = None

    @property
    def sent(self) -> bool:
        return self.status == "sent"


def _as_dict(report: Any) -> dict[str, Any]:
    if isinstance(report, BaseModel):
        return report.model_dump(mode="json", exclude_none=True)
    if isinstance(report, dict):
        return dict(report)
    raise TypeError(f"report must be a UUTReport or a dict, got {type(report).__name__}")


_NO_ANSWER = "WATS has not answered yet; the report is kept and its send goes on"


def closed_error(folder: str | os.PathLike[str]) -> RuntimeError:
    return RuntimeError(f"the outbox is closed (its client was closed); what it holds stays in {str(folder)!r} "
                        "for the next client that opens that folder")


#: seconds a hand-over waits for the server's answer before it says ``queued`` (its send goes on)
WAIT = 10.0


def _checked_wait(wait: float) -> float:
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:  # NaN is not
        return float(wait)
    raise ValueError(f"wait must be seconds >= 0 (math.inf: however long the server takes), got {wait!r}")


class AsyncOutbox:
    """``await api.outbox.submit(report)`` -> :class:`Submitted`; ``await api.outbox.drain(timeout=30)``.

    While the server is down the sender tries again at most every ``backoff_max`` seconds (a station
    wants its reports out soon after WATS is back; a fleet of stations asking every 2 s is still light).
    A hand-over waits at most :attr:`wait` seconds for the server: a server that neither answers nor
    refuses would otherwise hold the station for the client's timeout, each retry's.
    """

    def __init__(self, folder: str | os.PathLike[str], submit: Callable[[dict[str, Any]], Awaitable[Any]], *,
                 poll_interval: float = 0.5, backoff_max: float = 2.0, wait: float = WAIT) -> None:
        self.queue = ReportQueue(folder, submit, backoff_max=backoff_max, named="outbox")
        self.poll_interval = poll_interval
        self._wait = _checked_wait(wait)
        self._stopping: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        #: hand-overs' sends the server has not answered within their wait, going on behind
        self._unanswered: set[asyncio.Future[str]] = set()
        #: every send going on behind a hand-over that stopped waiting (timed out or cancelled): stopped by aclose
        self._behind: set[asyncio.Future[str]] = set()
        self._closed = False

    def _ensure_sender(self) -> None:
        if self._closed:  # a sender now would send through a closed client, for as long as the loop runs
            raise closed_error(self.queue.root)
        if self._sender is None or self._sender.done():
            self._stopping = asyncio.Event()
            self._sender = asyncio.get_running_loop().create_task(
                self.queue.run(self._stopping, self.poll_interval), name="pywats-outbox")

    async def start(self) -> None:
        """Start the background sender (reports left by an earlier process go out too)."""
        self._ensure_sender()

    @property
    def wait(self) -> float:
        """The longest a hand-over waits for the server's answer, in seconds (10; ``math.inf``: however long
        the client's timeout and retries take). Past it the report is ``queued`` and its send goes on
        behind; further hand-overs are queued at once until the server answers."""
        return self._wait

    @wait.setter
    def wait(self, value: float) -> None:
        self._wait = _checked_wait(value)

    async def submit(self, report: Any, *, wait: float | None = None) -> Submitted:
        """Write ``report`` to the folder, then send it at once unless the server is known down; ``wait``
        (default :attr:`wait`) bounds how long this hand-over waits for the server's answer."""
        limit = self._wait if wait is None else _checked_wait(wait)
        if self._closed:
            raise closed_error(self.queue.root)
        path = await self.queue.aput(_as_dict(report))
        report_id = path.stem
        self._ensure_sender()
        if self._unanswered:
            return Submitted(report_id, "queued", reason=_NO_ANSWER)
        send = asyncio.ensure_future(self.queue.send_now(path))
        try:
            outcome = await asyncio.wait_for(asyncio.shield(send), None if math.isinf(limit) else limit)
        except asyncio.TimeoutError:
            self._goes_on(send, self._unanswered)
            return Submitted(report_id, "queued", reason=_NO_ANSWER)
        except asyncio.CancelledError:  # the caller stopped waiting; the report is on disk and its send goes on
            self._goes_on(send)
            raise
        if outcome == ALREADY:
            return Submitted(report_id, "sent", duplicate=True)  # this id was confirmed before: not sent again
        if outcome == CONFIRMED:
            duplicate = bool(getattr(self.queue.last_result, "duplicate", False))
            return Submitted(report_id, "sent", duplicate)
        if outcome == REJECTED:
            return Submitted(report_id, "rejected", reason=self.queue.last_rejection)
        return Submitted(report_id, "queued", reason=self.queue.stats.last_error)

    def _goes_on(self, send: asyncio.Future[str], *sets: set[asyncio.Future[str]]) -> None:
        for kept in (self._behind, *sets):
            kept.add(send)
            send.add_done_callback(kept.discard)

    def pending(self) -> int:
        """Reports handed over and not yet confirmed (counted on disk)."""
        return self.queue.count_waiting()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued report was confirmed (or refused); False if ``timeout`` passed first."""
        self._ensure_sender()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if await asyncio.to_thread(self.queue.count_waiting) == 0:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.queue.wake()
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        """Stop the sender; what is still queued stays on disk for the next run."""
        self._closed = True
        behind = list(self._behind)  # a report whose send is stopped stays in sending/ for the next run
        for send in behind:
            send.cancel()
        if self._sender is not None:
            assert self._stopping is not None
            self._stopping.set()
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        await asyncio.gather(*behind, return_exceptions=True)


class Outbox:
    """The sync client's outbox: the same queue, its sender on a background thread with its own event loop."""

    def __init__(self, folder: str | os.PathLike[str], submit: Callable[[dict[str, Any]], Any], *,
                 poll_interval: float = 0.5, backoff_max: float = 2.0) -> None:
        async def submit_async(report: dict[str, Any]) -> Any:
            return await asyncio.to_thread(submit, report)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pywats-outbox", daemon=True)
        self._thread.start()
        self._folder = folder
        self._async = self._call(self._make, folder, submit_async, poll_interval, backoff_max)
        self._call(self._async.start)

    @staticmethod
    async def _make(folder: Any, submit: Any, poll_interval: float, backoff_max: float) -> AsyncOutbox:
        return AsyncOutbox(folder, submit, poll_interval=poll_interval, backoff_max=backoff_max)

    def _call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        if self._loop.is_closed():
            raise closed_error(self._folder)
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        return future.result()

    @property
    def queue(self) -> ReportQueue:
        return self._async.queue

    @property
    def wait(self) -> float:
        """The longest a hand-over waits for the server's answer (as :attr:`AsyncOutbox.wait`)."""
        return self._async.wait

    @wait.setter
    def wait(self, value: float) -> None:
        self._async.wait = value

    def submit(self, report: Any, *, wait: float | None = None) -> Submitted:
        """As :meth:`AsyncOutbox.submit`."""
        return self._call(partial(self._async.submit, report, wait=wait))

    def pending(self) -> int:
        return self._async.pending()

    def drain(self, timeout: float | None = None) -> bool:
        return self._call(self._async.drain, timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._async.aclose)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

