"""The retry layer: re-sends failed attempts as the sans-IO RetryPolicy decides."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ..config import RetrySettings
from ..hookspecs import LayerSpec, hookimpl
from ..layer import AsyncLayer, Layer, layer_settings
from ..policies.retry import Attempt, Decision, RetryPolicy


class _RetryCore:
    name = "retry"
    settings: RetrySettings

    def _setup(self, settings: RetrySettings | None, overrides: dict[str, Any], collector: Any,
               policy_kwargs: dict[str, Any]) -> None:
        settings = layer_settings(RetrySettings, settings, overrides, f"{type(self).__name__} settings")
        self.settings = settings
        self.policy = RetryPolicy(settings, **policy_kwargs)
        self.collector = collector

    def _note(self, decision: Decision) -> None:
        if self.collector is not None:
            if decision.retry:
                self.collector.add_retry(decision.reason)
            elif decision.reason not in ("ok", "not_retryable"):
                self.collector.add_retry_exhausted(decision.reason)

    def _first_try(self, response: httpx.Response) -> httpx.Response:
        self.policy.stats.attempts += 1
        response.extensions["retry"] = {"attempts": 1}
        return response

    def _finish(self, attempt: Attempt, response: httpx.Response) -> httpx.Response:
        self.policy.stats.attempts += attempt.number
        response.extensions["retry"] = {"attempts": attempt.number}
        return response

    def _failed(self, attempt: Attempt, exc: BaseException) -> None:
        self.policy.stats.attempts += attempt.number
        # The caller's exception type is unchanged; the count travels as a note.
        if hasattr(exc, "add_note"):
            exc.add_note(f"pywats-transport retry: gave up after {attempt.number} attempt(s)")
        try:
            exc.retry_attempts = attempt.number  # type: ignore[attr-defined]
        except AttributeError:
            pass

    def stats(self) -> dict[str, Any]:
        out = self.policy.stats.as_dict()
        out["budget"] = self.policy.budget.snapshot()
        return out


class _Run:
    """One logical request across its attempts: what to do after each, decided once for sync and async."""

    __slots__ = ("core", "request", "started", "attempt")

    def __init__(self, core: _RetryCore, request: httpx.Request) -> None:
        self.core, self.request = core, request
        self.started = core.policy.begin(request)
        self.attempt: Attempt | None = None  # built only once an attempt fails

    def failed(self, exc: BaseException) -> float | None:
        """Seconds to wait before the next attempt, or None: re-raise ``exc``."""
        policy = self.core.policy
        self.attempt = attempt = self.attempt or policy.start(self.request, self.started)
        decision = policy.on_exception(attempt, exc)
        self.core._note(decision)
        if decision.retry:
            return decision.delay
        self.core._failed(attempt, exc)
        return None

    def answered(self, response: httpx.Response) -> float | None:
        """Seconds to wait before the next attempt (the caller closes ``response``), or None: return it."""
        policy = self.core.policy
        if self.attempt is None and response.status_code not in policy.statuses:
            self.core._first_try(response)
            return None
        self.attempt = attempt = self.attempt or policy.start(self.request, self.started)
        decision = policy.on_response(attempt, response)
        self.core._note(decision)
        if decision.retry:
            return decision.delay
        self.core._finish(attempt, response)
        return None


class RetryLayer(_RetryCore, Layer):
    """Sync retry layer: ``RetryLayer(inner, max_attempts=5)``."""

    def __init__(self, inner: httpx.BaseTransport | None = None, *, settings: RetrySettings | None = None,
                 metrics_collector: Any = None, sleep: Callable[[float], None] = time.sleep,
                 policy_kwargs: dict[str, Any] | None = None, **overrides: Any) -> None:
        Layer.__init__(self, inner)
        self._setup(settings, overrides, metrics_collector, policy_kwargs or {})
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        run = _Run(self, request)
        while True:
            try:
                response = self.inner.handle_request(request)
            except Exception as exc:
                delay = run.failed(exc)
                if delay is None:
                    raise
            else:
                delay = run.answered(response)
                if delay is None:
                    return response
                response.close()  # hand the connection back before sleeping
            if delay > 0:
                self._sleep(delay)


class AsyncRetryLayer(_RetryCore, AsyncLayer):
    """Async retry layer; backoff sleeps on the event loop."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, *, settings: RetrySettings | None = None,
                 metrics_collector: Any = None, sleep: Callable[[float], Any] = anyio.sleep,
                 policy_kwargs: dict[str, Any] | None = None, **overrides: Any) -> None:
        AsyncLayer.__init__(self, inner)
        self._setup(settings, overrides, metrics_collector, policy_kwargs or {})
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        run = _Run(self, request)
        while True:
            try:
                response = await self.inner.handle_async_request(request)
            except Exception as exc:
                delay = run.failed(exc)
                if delay is None:
                    raise
            else:
                delay = run.answered(response)
                if delay is None:
                    return response
                await response.aclose()
            if delay > 0:
                await self._sleep(delay)


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="retry",
            position=300,
            config_model=RetrySettings,
            sync_factory=lambda inner, settings, ctx: RetryLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.waiting_kwargs()
            ),
            async_factory=lambda inner, settings, ctx: AsyncRetryLayer(
                inner, settings=settings, metrics_collector=ctx.metrics_collector, **ctx.waiting_kwargs()
            ),
            description="retries with backoff, jitter, Retry-After, deadline and a retry budget",
        )
    ]
