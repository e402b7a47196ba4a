"""The health server's ASGI app: liveness, readiness, details and /metrics.

A plain ASGI callable rather than a framework app: orchestrators and load balancers probe these
paths many times a second, and a framework's routing, request object and middleware cost several
times what the answer itself does (they were ~40 % of the server's time under 100 concurrent
probes). Five fixed paths need no router.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .service import AsyncClientService

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = b"application/json"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, bytes, bytes]  # status, body, content type


def _json(payload: Any, status: int = 200) -> Answer:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return status, body, JSON_CONTENT_TYPE


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


#: the answers /metrics gives by ``?format=``; None: as the Accept header asks
FORMATS = (None, "json", "prometheus")
#: media types the Prometheus exposition answers (what scrapers and browsers accept)
_TEXT_TYPES = frozenset({"text/plain", "text/*", "*/*", "application/openmetrics-text"})


def _prefers_json(accept: str) -> bool:
    """Whether ``accept`` weighs JSON above the exposition (a tie is the exposition, which scrapers expect)."""
    best = {"json": 0.0, "text": 0.0}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        kind = "json" if media.lower() == "application/json" else "text" if media.lower() in _TEXT_TYPES else None
        if kind is None:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        best[kind] = max(best[kind], weight)
    return best["json"] > best["text"]


def metrics_answer(service: AsyncClientService, scope: Scope) -> Answer:
    collector = service.collector
    if collector is None:
        return _json({"error": "metrics are disabled (enable_metrics: false)"}, 404)
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    asked = query.get("format", [None])[-1]
    if asked not in FORMATS:
        return _json({"error": f"format must be 'json' or 'prometheus', got {asked!r}"}, 400)
    if asked == "json" or (asked is None and _prefers_json(_header(scope, b"accept"))):
        return _json(collector.summary())
    return 200, collector.render_prometheus().encode(), PROMETHEUS_CONTENT_TYPE.encode()


def _routes(service: AsyncClientService, metrics_only: bool) -> dict[str, Callable[[Scope], Answer]]:
    def health(scope: Scope) -> Answer:
        problems = service.problems(readiness=False)
        if problems:
            return _json({"status": "unhealthy", "reasons": problems}, 503)
        return _json({"status": "ok"})

    def live(scope: Scope) -> Answer:
        return _json({"status": "alive", "uptime_seconds": round(service.uptime(), 3)})

    def ready(scope: Scope) -> Answer:
        problems = service.problems(readiness=True)
        if problems:
            return _json({"status": "not ready", "reasons": problems}, 503)
        return _json({"status": "ready"})

    def details(scope: Scope) -> Answer:
        return _json(service.details())

    def metrics(scope: Scope) -> Answer:
        return metrics_answer(service, scope)

    routes: dict[str, Callable[[Scope], Answer]] = {"/metrics": metrics}
    if not metrics_only:
        routes.update({"/health": health, "/health/live": live, "/health/ready": ready, "/health/details": details})
    return routes


def create_health_app(service: AsyncClientService, *, metrics_only: bool = False) -> Callable[..., Awaitable[None]]:
    routes = _routes(service, metrics_only)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; a websocket is not answered
        path = scope["path"]
        handler = routes.get(path.rstrip("/") or "/")
        if handler is None:
            status, body, content_type = _json({"error": "not found", "path": path}, 404)
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = _json({"error": "method not allowed", "allowed": ["GET", "HEAD"]}, 405)
        else:
            status, body, content_type = handler(scope)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app
