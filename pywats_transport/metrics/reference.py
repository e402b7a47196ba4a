"""Every series pywats-transport exports, as Prometheus names them: the source of the docs' metrics reference."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    name: str  # the Prometheus family name
    otel_name: str
    kind: str
    unit: str
    labels: tuple[str, ...]
    description: str


HTTP_LABELS = ("http_request_method", "http_response_status_code", "server_address", "server_port",
               "url_template", "error_type", "pywats_cache")

SERIES = (
    Series("http_client_request_duration_seconds", "http.client.request.duration", "histogram", "s", HTTP_LABELS,
           "Duration of HTTP client requests as the caller saw them (cache hits included). `url_template` only "
           "when the request carries a `route` extension; `pywats_cache` is hit, miss or bypass."),
    Series("http_client_active_requests", "http.client.active_requests", "gauge (up-down counter)", "{request}",
           ("http_request_method", "server_address", "server_port", "url_template"),
           "Requests in flight, observed when scraped."),
    Series("http_client_request_body_size_bytes", "http.client.request.body.size", "histogram", "By", HTTP_LABELS,
           "Opt-in (`record_body_sizes`): request body sizes, where the request declares its length."),
    Series("http_client_response_body_size_bytes", "http.client.response.body.size", "histogram", "By", HTTP_LABELS,
           "Opt-in (`record_body_sizes`): response body sizes, where the response declares its length."),
    Series("pywats_transport_cache_lookups_total", "pywats_transport.cache.lookups", "counter", "{lookup}",
           ("result",), "Cache lookups by result: hit, miss, bypass, stale (an expired entry answered: the "
           "origin failed, or the entry is being refreshed)."),
    Series("pywats_transport_cache_events_total", "pywats_transport.cache.events", "counter", "{event}",
           ("event",), "store, eviction, invalidation, storage_error, refresh (a background refresh answered); on "
           "Redis, invalidation_unconfirmed (a write's invalidation did not reach Redis: other stations may serve "
           "what it dropped until it is resent) and invalidation_resent."),
    Series("pywats_transport_retries_total", "pywats_transport.retries", "counter", "{retry}", ("reason",),
           "Retries by reason: status_503, connect_error, connection_dropped, read_timeout, ..."),
    Series("pywats_transport_retry_exhausted_total", "pywats_transport.retry.exhausted", "counter", "{request}",
           ("reason",), "Requests not retried further: attempts_exhausted, budget_exhausted, deadline, not_idempotent, ..."),
    Series("pywats_transport_throttle_wait_seconds", "pywats_transport.throttle.wait", "histogram", "s",
           ("server_address",), "Time each request waited for a token."),
    Series("pywats_transport_throttle_rejections_total", "pywats_transport.throttle.rejections", "counter",
           "{request}", ("server_address",), "Requests refused because they would wait over max_wait."),
    Series("pywats_transport_throttle_fleet_fallbacks_total", "pywats_transport.throttle.fleet_fallbacks", "counter",
           "{request}", ("server_address",), "`backend: redis`: requests that took the local bucket (the process's "
           "share of the fleet's rate, or `local_rate`) because Redis was unavailable."),
    Series("pywats_transport_queue_depth", "pywats_transport.queue.depth", "gauge", "{report}", ("state",),
           "Report files in the service queue by state: pending, sending, done, error."),
    Series("pywats_transport_queue_processing_duration_seconds", "pywats_transport.queue.processing.duration",
           "histogram", "s", ("outcome",), "From picking a report up to the server's confirmation."),
    Series("pywats_transport_queue_reports_total", "pywats_transport.queue.reports", "counter", "{report}",
           ("outcome",), "Queue outcomes: confirmed, failed (will be retried), error (moved aside)."),
    Series("pywats_transport_circuit_state", "pywats_transport.circuit.state", "gauge", "1",
           ("server_address", "state"), "Circuit-breaker plugin: 1 for each host's current state."),
    Series("process_cpu_utilization", "process.cpu.utilization", "gauge", "1", (),
           "Process CPU use since the previous scrape (1.0 = one core)."),
    Series("process_memory_usage_bytes", "process.memory.usage", "gauge", "By", (), "Resident memory."),
    Series("process_thread_count", "process.thread.count", "gauge", "{thread}", (), "Threads in the process."),
)
