"""Retry decisions: given attempt n, its response or exception, elapsed time and the budget,
retry after d seconds or stop. No I/O, no sleeping: the transports do that."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..config import RetrySettings
from ..extensions import checked

#: request extension: {"enabled": bool, "max_attempts": int, "idempotent": bool}
EXTENSION = "retry"
OVERRIDE_KEYS = frozenset({"enabled", "idempotent", "max_attempts"})
IDEMPOTENCY_HEADER = "idempotency-key"
#: request extension the retry layer sets: the instant (its clock) its deadline runs out, so that the
#: throttle below never waits past it
DEADLINE_EXTENSION = "pywats_deadline"
_NO_OVERRIDE: dict[str, Any] = {}

# Errors raised before the request left: safe to re-send whatever the method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after the request may have reached the server: only idempotent requests are re-sent.
MAYBE_SENT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout)


_MAYBE_APPLIED = (*MAYBE_SENT, httpx.ReadTimeout)


def may_have_been_applied(exc: BaseException) -> bool:
    """Whether a request that raised ``exc`` may have reached the server, and been applied there."""
    return isinstance(exc, _MAYBE_APPLIED)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""  # why it retries, or why it stops


_OK = Decision(False, reason="ok")
_NOT_RETRYABLE = Decision(False, reason="not_retryable")


class RetryBudget:
    """Retries may add at most ``ratio`` of the requests seen in the last ``window`` seconds, plus ``floor``."""

    def __init__(self, ratio: float, floor: int, window: float, clock: Callable[[], float]) -> None:
        self.ratio, self.floor, self.window, self.clock = ratio, floor, window, clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        edge = now - self.window
        for q in (self._requests, self._retries):
            while q and q[0] <= edge:
                q.popleft()

    def record_request(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        with self._lock:
            self._requests.append(now)
            if self._requests[0] <= now - self.window:
                self._prune(now)

    def try_spend(self) -> bool:
        now = self.clock()
        with self._lock:
            self._prune(now)
            if len(self._retries) < self.floor + self.ratio * len(self._requests):
                self._retries.append(now)
                return True
            return False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._prune(self.clock())
            return {"recent_requests": len(self._requests), "recent_retries": len(self._retries)}


@dataclass(slots=True)
class Attempt:
    """The state of one logical request across its attempts."""

    method: str
    started: float
    max_attempts: int
    idempotent: bool
    replayable: bool
    enabled: bool
    number: int = 1


@dataclass
class RetryStats:
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    budget_exhausted: int = 0
    gave_up: int = 0
    backoff_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "retries_by_reason": dict(self.by_reason),
            "budget_exhausted": self.budget_exhausted,
            "gave_up": self.gave_up,
            "backoff_seconds": round(self.backoff_seconds, 6),
        }


class RetryPolicy:
    def __init__(
        self,
        settings: RetrySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.clock, self.wall_clock, self.rng = clock, wall_clock, rng
        self.statuses = frozenset(settings.statuses)
        self.methods = frozenset(settings.methods)
        self.budget = RetryBudget(settings.budget_ratio, settings.budget_floor, settings.budget_window, clock)
        self.stats = RetryStats()

    def begin(self, request: httpx.Request) -> float:
        """Count a new logical request (budget, stats) and check its overrides; returns its start time.

        The success path needs nothing more: the :class:`Attempt` is built only once an attempt fails.
        """
        override = request.extensions.get(EXTENSION)
        if override is not None:
            checked(EXTENSION, override, OVERRIDE_KEYS)
            attempts = override.get("max_attempts", 1)
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise ValueError(f"request extension retry.max_attempts must be an integer >= 1, got {attempts!r}")
        now = self.clock()
        self.stats.requests += 1
        self.budget.record_request(now)
        if self.settings.deadline is not None:
            request.extensions[DEADLINE_EXTENSION] = now + self.settings.deadline
        return now

    def start(self, request: httpx.Request, started: float | None = None) -> Attempt:
        if started is None:
            started = self.begin(request)
        override = request.extensions.get(EXTENSION) or _NO_OVERRIDE
        idempotent = (
            request.method in self.methods
            or bool(override.get("idempotent"))
            or IDEMPOTENCY_HEADER in request.headers
        )
        return Attempt(
            method=request.method,
            started=started,
            max_attempts=int(override.get("max_attempts", self.settings.max_attempts)),
            idempotent=idempotent,
            replayable=isinstance(request.stream, httpx.ByteStream),
            enabled=self.settings.enabled and override.get("enabled", True) is not False,
        )

    def backoff(self, retry_number: int) -> float:
        """Delay before retry ``retry_number`` (1 = first retry), jitter applied."""
        s = self.settings
        base = min(s.backoff_max, s.backoff_base * (2 ** (retry_number - 1)))
        if s.jitter == "full":
            return base * self.rng()
        if s.jitter == "equal":
            return base / 2 + (base / 2) * self.rng()
        return base

    def on_response(self, attempt: Attempt, response: httpx.Response) -> Decision:
        if response.status_code not in self.statuses:
            return _OK
        reason = f"status_{response.status_code}"
        if not attempt.idempotent:
            return self._stop(attempt, "not_idempotent")
        retry_after = None
        if self.settings.respect_retry_after:
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.wall_clock())
        return self._decide(attempt, reason, retry_after)

    def on_exception(self, attempt: Attempt, exc: BaseException) -> Decision:
        s = self.settings
        if isinstance(exc, NOT_SENT):
            if not s.retry_connect_errors:
                return self._stop(attempt, "connect_error_disabled")
            return self._decide(attempt, "connect_error", None)
        if isinstance(exc, httpx.ReadTimeout):
            if not (s.retry_read_timeouts and attempt.idempotent):
                return self._stop(attempt, "read_timeout_not_retried")
            return self._decide(attempt, "read_timeout", None)
        if isinstance(exc, MAYBE_SENT):
            if not attempt.idempotent:
                return self._stop(attempt, "not_idempotent")
            return self._decide(attempt, "connection_dropped", None)
        return _NOT_RETRYABLE

    def _decide(self, attempt: Attempt, reason: str, retry_after: float | None) -> Decision:
        if not attempt.enabled:
            return self._stop(attempt, "disabled")
        if not attempt.replayable:
            return self._stop(attempt, "body_not_replayable")
        if attempt.number >= attempt.max_attempts:
            return self._stop(attempt, "attempts_exhausted")
        # The server's word, when it gives one, replaces our guess: "Retry-After: 0" means now, and a
        # queue behind a flaky server drains at the server's pace rather than at our backoff's.
        delay = self.backoff(attempt.number) if retry_after is None else min(retry_after, self.settings.backoff_max)
        if self.settings.deadline is not None:
            if self.clock() - attempt.started + delay > self.settings.deadline:
                return self._stop(attempt, "deadline")
        if not self.budget.try_spend():
            self.stats.budget_exhausted += 1
            return self._stop(attempt, "budget_exhausted")
        attempt.number += 1
        self.stats.retries += 1
        self.stats.by_reason[reason] += 1
        self.stats.backoff_seconds += delay
        return Decision(True, delay, reason)

    def _stop(self, attempt: Attempt, reason: str) -> Decision:
        self.stats.gave_up += 1
        return Decision(False, reason=reason)
