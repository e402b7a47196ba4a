"""The MetricsCollector: instruments on an OpenTelemetry SDK meter, read by a PrometheusMetricReader.

The MeterProvider, its reader and the instruments exist once per process
(``_Telemetry``); every collector created without ``isolated=True`` is a handle on
that one set, so a second collector neither duplicates nor resets series.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import psutil
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from .._version import __version__
from .sources import Sources

# The OpenTelemetry semantic-conventions advice for http.client.request.duration.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SIZE_BUCKETS = (0, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


class _Telemetry:
    """The instruments on a MeterProvider: our own (with its Prometheus reader and registry), or the app's."""

    def __init__(self, provider: Any = None) -> None:
        self.registry: CollectorRegistry | None = None
        self.own = provider is None
        if provider is None:
            self.registry = CollectorRegistry(auto_describe=True)
            self.reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True, scope_info_enabled=False)
            provider = MeterProvider(
                metric_readers=[self.reader],
                # Prometheus text exposition carries no exemplars; sampling them would cost every measurement.
                exemplar_filter=AlwaysOffExemplarFilter(),
                resource=Resource.create({"service.name": "pywats-transport", "service.version": __version__}),
            )
        self.provider = provider
        meter = provider.get_meter("pywats_transport", __version__)
        self.duration = meter.create_histogram(
            "http.client.request.duration", unit="s", description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        # Observed at scrape time from the layers' own in-flight counts: two fewer SDK measurements per request.
        self.active_sources = Sources()
        meter.create_observable_up_down_counter(
            "http.client.active_requests", callbacks=[self._active], unit="{request}",
            description="Number of active HTTP requests.",
        )
        self.request_size = meter.create_histogram(
            "http.client.request.body.size", unit="By", description="Size of HTTP client request bodies.",
            explicit_bucket_boundaries_advisory=list(SIZE_BUCKETS),
        )
        self.response_size = meter.create_histogram(
            "http.client.response.body.size", unit="By", description="Size of HTTP client response bodies.",
            explicit_bucket_boundaries_advisory=list(SIZE_BUCKETS),
        )
        self.cache_lookups = meter.create_counter(
            "pywats_transport.cache.lookups", unit="{lookup}", description="Cache lookups by result (hit, miss, bypass, stale)."
        )
        self.cache_events = meter.create_counter(
            "pywats_transport.cache.events", unit="{event}",
            description="Cache stores, evictions, invalidations and storage errors.",
        )
        self.retries = meter.create_counter(
            "pywats_transport.retries", unit="{retry}", description="Retries by reason."
        )
        self.retry_give_ups = meter.create_counter(
            "pywats_transport.retry.exhausted", unit="{request}", description="Requests whose retries ran out or were refused by the budget."
        )
        self.throttle_wait = meter.create_histogram(
            "pywats_transport.throttle.wait", unit="s", description="Time requests waited for a throttle token.",
            explicit_bucket_boundaries_advisory=[0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0],
        )
        self.throttle_rejections = meter.create_counter(
            "pywats_transport.throttle.rejections", unit="{request}", description="Requests refused for waiting over max_wait."
        )
        self.throttle_fallbacks = meter.create_counter(
            "pywats_transport.throttle.fleet_fallbacks", unit="{request}",
            description="Requests that took the local share of the rate because the fleet rate in Redis was unavailable.",
        )
        self.queue_processing = meter.create_histogram(
            "pywats_transport.queue.processing.duration", unit="s", description="Time from pick-up to server confirmation.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.queue_reports = meter.create_counter(
            "pywats_transport.queue.reports", unit="{report}", description="Queued reports by outcome."
        )
        self._gauges: dict[str, Any] = {}
        self._gauge_sources: dict[str, Sources] = {}
        self._lock = threading.Lock()
        self._process = psutil.Process(os.getpid())
        self._cpu_mark = (time.monotonic(), self._cpu_seconds())
        self._meter = meter
        if not self.own:
            return  # an app that brings its provider brings its own process metrics too
        meter.create_observable_gauge(
            "process.cpu.utilization", callbacks=[self._cpu], unit="1",
            description="Process CPU use since the previous scrape, 1.0 = one core.",
        )
        meter.create_observable_gauge(
            "process.memory.usage", callbacks=[self._memory], unit="By", description="Resident memory of the process."
        )
        meter.create_observable_gauge(
            "process.thread.count", callbacks=[self._threads], unit="{thread}", description="Threads in the process."
        )

    def _active(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[tuple[tuple[str, Any], ...], int] = {}
        for source in self.active_sources.live():
            for key, count in source().items():
                totals[key] = totals.get(key, 0) + count
        for key, count in totals.items():
            yield Observation(count, dict(key))

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _cpu(self, options: CallbackOptions) -> Iterable[Observation]:
        now, cpu = time.monotonic(), self._cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        yield Observation((cpu - cpu_then) / (now - then) if now > then else 0.0)

    def _memory(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._process.memory_info().rss)

    def _threads(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(threading.active_count())

    def observe_gauge(self, name: str, unit: str, description: str, source: Any) -> None:
        """Register ``source()`` -> {attributes-tuple: value} as an observable gauge, read at scrape time only."""
        with self._lock:
            self._gauge_sources.setdefault(name, Sources()).add(source)
            if name in self._gauges:
                return

            def callback(options: CallbackOptions, _name: str = name) -> Iterable[Observation]:
                sources = self._gauge_sources.get(_name)
                for src in sources.live() if sources is not None else ():
                    for attrs, value in src().items():
                        yield Observation(value, dict(attrs))

            self._gauges[name] = self._meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

    def forget_gauge_source(self, name: str, source: Any) -> None:
        with self._lock:
            sources = self._gauge_sources.get(name)
            if sources is not None:
                sources.remove(source)


_shared: _Telemetry | None = None
_shared_lock = threading.RLock()
# Instruments per app provider: collectors on one provider share them, as collectors on ours do.
_on_provider: dict[int, _Telemetry] = {}

APP_EXPOSITION = ("# pywats-transport records into the application's MeterProvider: its own readers and exporters "
                  "(OTLP, a Prometheus reader) expose these metrics.\n")


def _shared_telemetry() -> _Telemetry:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _Telemetry()
        return _shared


def _telemetry_on(provider: Any) -> _Telemetry:
    with _shared_lock:
        telemetry = _on_provider.get(id(provider))
        if telemetry is None or telemetry.provider is not provider:
            telemetry = _on_provider[id(provider)] = _Telemetry(provider)
        return telemetry


class MetricsCollector:
    """Records HTTP, cache, retry, throttle and queue metrics; renders Prometheus text and a JSON summary.

    By default into a MeterProvider of its own (one per process) with Prometheus exposition.
    ``meter_provider=`` records into the application's provider instead, ``meter_provider="global"``
    into the global one (``opentelemetry.metrics.set_meter_provider``), as the OpenTelemetry
    instrumentations do; the exposition is then the application's. ``enabled=False`` gives a collector
    whose methods do nothing; ``isolated=True`` one with a provider and registry of its own (tests).
    """

    def __init__(self, *, enabled: bool = True, isolated: bool = False, meter_provider: Any = None) -> None:
        self.enabled = enabled
        self._t: _Telemetry | None = None
        if not enabled:
            return
        if meter_provider == "global":
            from opentelemetry import metrics

            meter_provider = metrics.get_meter_provider()  # a proxy until the app sets one: it forwards then
        if meter_provider is not None:
            self._t = _telemetry_on(meter_provider)
        else:
            self._t = _Telemetry() if isolated else _shared_telemetry()

    @property
    def provider(self) -> str:
        """``own`` (Prometheus exposition here) or ``app`` (the application's provider exposes)."""
        return "own" if self._t is None or self._t.own else "app"

    # -- recording (called by layers) ---------------------------------------------------

    @property
    def telemetry(self) -> _Telemetry | None:
        return self._t

    def add_cache_lookup(self, result: str) -> None:
        if self._t is not None:
            self._t.cache_lookups.add(1, {"result": result})

    def add_cache_event(self, event: str, count: int = 1) -> None:
        if self._t is not None and count:
            self._t.cache_events.add(count, {"event": event})

    def add_retry(self, reason: str) -> None:
        if self._t is not None:
            self._t.retries.add(1, {"reason": reason})

    def add_retry_exhausted(self, reason: str) -> None:
        if self._t is not None:
            self._t.retry_give_ups.add(1, {"reason": reason})

    def record_throttle_wait(self, seconds: float, host: str) -> None:
        if self._t is not None:
            self._t.throttle_wait.record(seconds, {"server.address": host})

    def add_throttle_rejection(self, host: str) -> None:
        if self._t is not None:
            self._t.throttle_rejections.add(1, {"server.address": host})

    def add_throttle_fallback(self, host: str) -> None:
        if self._t is not None:
            self._t.throttle_fallbacks.add(1, {"server.address": host})

    def record_queue_processing(self, seconds: float, outcome: str) -> None:
        if self._t is not None:
            self._t.queue_processing.record(seconds, {"outcome": outcome})
            self._t.queue_reports.add(1, {"outcome": outcome})

    def observe_gauge(self, name: str, source: Any, *, unit: str = "1", description: str = "") -> None:
        """Publish ``source()`` -> ``{((label, value), ...): number}`` as a gauge collected only when scraped.

        A bound method is held weakly (its object's life decides how long it is read, so a layer that was
        never closed is not kept alive); any other callable until :meth:`forget_gauge`."""
        if self._t is not None:
            self._t.observe_gauge(name, unit, description, source)

    def forget_gauge(self, name: str, source: Any) -> None:
        if self._t is not None:
            self._t.forget_gauge_source(name, source)

    # -- reading ------------------------------------------------------------------------

    def render_prometheus(self) -> str:
        """Prometheus text exposition (version 0.0.4); on an app's provider, a comment saying where they are."""
        if self._t is None:
            return ""
        if self._t.registry is None:
            return APP_EXPOSITION
        return generate_latest(self._t.registry).decode()

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable digest: requests and latency quantiles by method/route/status, cache, retries, throttle, process."""
        from .summary import summarise

        if self._t is None:
            return {"enabled": False}
        if self._t.registry is None:
            return {"enabled": True, "provider": "app", "note": APP_EXPOSITION.strip("# \n")}
        return summarise(self._t.registry)

    def __repr__(self) -> str:
        return f"<MetricsCollector enabled={self.enabled}>"


_default: MetricsCollector | None = None


def default_collector() -> MetricsCollector:
    """The process-wide collector used when metrics are enabled and none is given."""
    global _default
    with _shared_lock:
        if _default is None:
            _default = MetricsCollector()
    return _default


_global: MetricsCollector | None = None


def global_collector() -> MetricsCollector:
    """The collector recording into the global MeterProvider (``metrics.provider: global``)."""
    global _global
    with _shared_lock:
        if _global is None:
            _global = MetricsCollector(meter_provider="global")
    return _global
