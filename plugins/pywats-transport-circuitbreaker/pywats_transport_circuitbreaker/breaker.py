"""The breaker's decisions, free of I/O and driven by the clock it is given."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import Field

from pywats_transport import PluginSettings, TransportError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
#: circuits kept before those a new one would equal (closed, no failure in a row, nothing in the window)
#: are dropped: a client of ever new hosts would otherwise keep one per host, and a gauge series per state
MAX_CIRCUITS = 1024


class BreakerSettings(PluginSettings):

    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    failure_ratio: float = Field(0.5, gt=0, le=1, description="Share of failures over the window that opens it.")
    window: float = Field(30.0, gt=0, description="Seconds over which the ratio is computed.")
    min_requests: int = Field(10, ge=1, description="Requests needed in the window before the ratio counts.")
    cooldown: float = Field(30.0, gt=0, description="Seconds open before a half-open probe is let through.")
    failure_statuses: list[int] = Field(default_factory=lambda: [500, 502, 503, 504],
                                        description="Statuses counted as failures (exceptions always are).")


class CircuitOpenError(TransportError, httpx.TransportError, RuntimeError):
    """The circuit for a host is open: the request was not sent.

    An ``httpx.TransportError``, as any failure of a transport: an app's ``except httpx.HTTPError`` handles
    it, and the WATS clients raise it as a ``WATSConnectionError``. The retry layer does not retry it.
    """

    def __init__(self, host: str, retry_in: float, failures: int) -> None:
        super().__init__(f"circuit for {host} is open after {failures} failure(s); next probe in {retry_in:.1f}s")
        self.host = host
        self.retry_in = retry_in


@dataclass
class _Circuit:
    state: str = CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    probing: bool = False
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, failed)
    opened: int = 0
    rejected: int = 0


class Breaker:
    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.failure_statuses = frozenset(settings.failure_statuses)
        self._circuits: dict[str, _Circuit] = {}
        self._sweep_at = MAX_CIRCUITS
        self._lock = threading.Lock()

    def before(self, host: str) -> bool:
        """Raise :class:`CircuitOpenError` unless a request to ``host`` may go now; True: it goes as the
        half-open probe, whose outcome (:meth:`after`) or end without one (:meth:`abandon`) must follow."""
        with self._lock:
            c = self._circuits.get(host)
            if c is None or c.state == CLOSED:
                return False
            now = self.clock()
            if c.state == OPEN:
                wait = c.opened_at + self.settings.cooldown - now
                if wait > 0:
                    c.rejected += 1
                    raise CircuitOpenError(host, wait, c.consecutive)
                c.state = HALF_OPEN
            if c.probing:  # one probe at a time while half-open
                c.rejected += 1
                raise CircuitOpenError(host, 0.0, c.consecutive)
            c.probing = True
            return True

    def abandon(self, host: str) -> None:
        """The probe ended without telling anything of the host (cancelled, or refused by a layer below
        before it was sent): the next request probes instead, rather than none ever again."""
        with self._lock:
            c = self._circuits.get(host)
            if c is not None:
                c.probing = False

    def after(self, host: str, failed: bool) -> None:
        with self._lock:
            now = self.clock()
            c = self._circuits.get(host)
            if c is None:
                if len(self._circuits) >= self._sweep_at:
                    self._drop_idle(now)
                c = self._circuits[host] = _Circuit()
            c.outcomes.append((now, failed))
            edge = now - self.settings.window
            while c.outcomes and c.outcomes[0][0] < edge:
                c.outcomes.popleft()
            if c.state == HALF_OPEN:
                c.probing = False
                if failed:
                    self._open(c, now)
                else:
                    c.state, c.consecutive = CLOSED, 0
                    c.outcomes.clear()
                return
            if not failed:
                c.consecutive = 0
                return
            c.consecutive += 1
            n = len(c.outcomes)
            ratio = sum(1 for _, f in c.outcomes if f) / n
            if c.consecutive >= self.settings.failure_threshold or (
                n >= self.settings.min_requests and ratio >= self.settings.failure_ratio
            ):
                self._open(c, now)

    def _drop_idle(self, now: float) -> None:
        edge = now - self.settings.window
        for host, c in list(self._circuits.items()):
            if c.state == CLOSED and not c.consecutive and not (c.outcomes and c.outcomes[-1][0] >= edge):
                del self._circuits[host]
        self._sweep_at = max(MAX_CIRCUITS, 2 * len(self._circuits))

    def _open(self, c: _Circuit, now: float) -> None:
        c.state, c.opened_at = OPEN, now
        c.opened += 1

    def is_failure(self, status: int | None) -> bool:
        return status is None or status in self.failure_statuses

    def state(self, host: str) -> str:
        with self._lock:
            c = self._circuits.get(host)
            if c is None:
                return CLOSED
            if c.state == OPEN and self.clock() >= c.opened_at + self.settings.cooldown:
                return HALF_OPEN  # the next request will probe
            return c.state

    def snapshot(self) -> dict[str, Any]:
        hosts = list(self._circuits)
        return {
            host: {"state": self.state(host), "consecutive_failures": self._circuits[host].consecutive,
                   "opened": self._circuits[host].opened, "rejected": self._circuits[host].rejected}
            for host in hosts
        }
