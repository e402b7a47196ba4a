"""Metrics: one OpenTelemetry MeterProvider per process, exposed in Prometheus text and as a JSON summary."""

from .collector import DURATION_BUCKETS, MetricsCollector, default_collector, global_collector

__all__ = ["MetricsCollector", "default_collector", "global_collector", "DURATION_BUCKETS"]
