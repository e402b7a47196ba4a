"""The JSON summary: a digest of what the Prometheus registry holds, with latency quantiles.

Quantiles are estimated from histogram buckets by linear interpolation, as
Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

QUANTILES = (0.5, 0.9, 0.99)


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``buckets``: sorted (upper bound, cumulative count) pairs, ending with +Inf."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _histograms(family: Any) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    out: dict[tuple[tuple[str, str], ...], dict[str, Any]] = defaultdict(lambda: {"buckets": [], "count": 0.0, "sum": 0.0})
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        if sample.name.endswith("_bucket"):
            out[key]["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            out[key]["count"] = sample.value
        elif sample.name.endswith("_sum"):
            out[key]["sum"] = sample.value
    return out


def summarise(registry: CollectorRegistry) -> dict[str, Any]:
    families = {f.name: f for f in registry.collect()}
    requests = []
    fam = families.get("http_client_request_duration_seconds")
    for key, h in (_histograms(fam) if fam else {}).items():
        labels = dict(key)
        buckets = sorted(h["buckets"])
        requests.append(
            {
                "method": labels.get("http_request_method"),
                "route": labels.get("url_template"),
                "status": labels.get("http_response_status_code"),
                "server": labels.get("server_address"),
                "cache": labels.get("pywats_cache"),
                "error": labels.get("error_type"),
                "count": int(h["count"]),
                "mean_seconds": h["sum"] / h["count"] if h["count"] else None,
                **{f"p{int(q * 100)}_seconds": bucket_quantile(q, buckets) for q in QUANTILES},
            }
        )
    requests.sort(key=lambda r: (-int(r["count"] or 0), str(r["route"]), str(r["method"])))

    def counter(name: str, label: str) -> dict[str, float]:
        fam = families.get(name)
        values: dict[str, float] = defaultdict(float)
        for s in fam.samples if fam else ():
            if s.name.endswith("_total"):
                values[s.labels.get(label, "")] += s.value
        return dict(values)

    def gauge(name: str) -> float | None:
        fam = families.get(name)
        return fam.samples[0].value if fam and fam.samples else None

    lookups = counter("pywats_transport_cache_lookups", "result")
    hits, misses = lookups.get("hit", 0.0), lookups.get("miss", 0.0)
    waits = _histograms(families["pywats_transport_throttle_wait_seconds"]) if "pywats_transport_throttle_wait_seconds" in families else {}
    cpu = gauge("process_cpu_utilization")
    queue_fam = families.get("pywats_transport_queue_depth")
    return {
        "enabled": True,
        "requests": {"total": sum(r["count"] for r in requests), "by_route": requests},
        "cache": {
            "lookups": lookups,
            "hit_rate": hits / (hits + misses) if hits + misses else None,
            "events": counter("pywats_transport_cache_events", "event"),
        },
        "retries": {"by_reason": counter("pywats_transport_retries", "reason"),
                    "exhausted": counter("pywats_transport_retry_exhausted", "reason")},
        "throttle": {
            "waits": int(sum(h["count"] for h in waits.values())),
            "wait_seconds_total": sum(h["sum"] for h in waits.values()),
            "rejections": sum(counter("pywats_transport_throttle_rejections", "server_address").values()),
            "fleet_fallbacks": sum(counter("pywats_transport_throttle_fleet_fallbacks", "server_address").values()),
        },
        "queue": {s.labels.get("state", ""): s.value for s in queue_fam.samples} if queue_fam else {},
        "process": {
            "cpu_percent": round(cpu * 100.0, 2) if cpu is not None else None,
            "memory_bytes": gauge("process_memory_usage_bytes"),
            "threads": gauge("process_thread_count"),
        },
    }
