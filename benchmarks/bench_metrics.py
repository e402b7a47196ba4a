"""Metrics layer: added cost per request on MockTransport, side by side with the OpenTelemetry httpx
instrumentation transports in the same run."""

from __future__ import annotations

import asyncio
import os
import warnings

import httpx
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from pywats_transport.layers.metrics import AsyncMetricsLayer, MetricsLayer
from pywats_transport.metrics import MetricsCollector

from .common import Row, ok_response, per_request_medians

SUITE = "metrics"


def run(quick: bool = False) -> list[Row]:
    # The instrumentation records the same stable histogram only with this opt-in.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from opentelemetry.instrumentation.httpx import (
            AsyncOpenTelemetryTransport,
            SyncOpenTelemetryTransport,
        )

    n = 1500 if quick else 15000
    mock = httpx.MockTransport(ok_response)
    collector = MetricsCollector(isolated=True)
    # An application's own pipeline: an SDK provider with a periodic reader, as an OTLP setup has.
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    app_collector = MetricsCollector(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    route = {"route": "/api/Product/{partNumber}"}
    otel_meters = MeterProvider()
    sdk_tracer = TracerProvider()
    rows = []
    loop = asyncio.new_event_loop()
    for mode in ("async", "sync"):
        if mode == "async":
            transports = {
                "raw": mock,
                "ours": AsyncMetricsLayer(mock, metrics_collector=collector),
                "ours_app": AsyncMetricsLayer(mock, metrics_collector=app_collector),
                "ours_sizes": AsyncMetricsLayer(mock, metrics_collector=collector, record_body_sizes=True),
                "otel": AsyncOpenTelemetryTransport(mock, tracer_provider=sdk_tracer, meter_provider=otel_meters),
                "otel_noop": AsyncOpenTelemetryTransport(mock, tracer_provider=NoOpTracerProvider(), meter_provider=otel_meters),
            }
            aclients = {k: httpx.AsyncClient(transport=t, base_url="http://bench") for k, t in transports.items()}
            calls = {k: (lambda c=c: loop.run_until_complete(c.get("/x", extensions=route))) for k, c in aclients.items()}
        else:
            transports = {
                "raw": mock,
                "ours": MetricsLayer(mock, metrics_collector=collector),
                "ours_app": MetricsLayer(mock, metrics_collector=app_collector),
                "ours_sizes": MetricsLayer(mock, metrics_collector=collector, record_body_sizes=True),
                "otel": SyncOpenTelemetryTransport(mock, tracer_provider=sdk_tracer, meter_provider=otel_meters),
                "otel_noop": SyncOpenTelemetryTransport(mock, tracer_provider=NoOpTracerProvider(), meter_provider=otel_meters),
            }
            clients = {k: httpx.Client(transport=t, base_url="http://bench") for k, t in transports.items()}
            calls = {k: (lambda c=c: c.get("/x", extensions=route)) for k, c in clients.items()}
        t = per_request_medians(calls, n)
        ours = (t["ours"] - t["raw"]) * 1e6
        app = (t["ours_app"] - t["raw"]) * 1e6
        sized = (t["ours_sizes"] - t["raw"]) * 1e6
        otel = (t["otel"] - t["raw"]) * 1e6
        noop = (t["otel_noop"] - t["raw"]) * 1e6
        rows += [
            Row(SUITE, f"metrics layer added cost, median per request ({mode})", ours, "us", "<= 20", ours <= 20),
            Row(SUITE, f"... recording into the application's MeterProvider ({mode})", app, "us", "<= 20", app <= 20),
            Row(SUITE, f"... with the opt-in body-size histograms ({mode})", sized, "us"),
            Row(SUITE, f"OTel instrumentation transport added cost, SDK tracer ({mode})", otel, "us"),
            Row(SUITE, f"OTel instrumentation / metrics layer, SDK tracer ({mode})", otel / max(ours, 1e-3), "x", ">= 3",
                otel >= 3 * ours),
            Row(SUITE, f"OTel instrumentation transport added cost, no-op tracer ({mode})", noop, "us"),
        ]
    loop.close()
    return rows
