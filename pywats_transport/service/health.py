"""The health server's ASGI app: liveness, readiness, details and /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .service import AsyncClientService

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_response(service: AsyncClientService, request: Request) -> Response:
    collector = service.collector
    if collector is None:
        return JSONResponse({"error": "metrics are disabled (enable_metrics: false)"}, status_code=404)
    wants_json = request.query_params.get("format") == "json" or (
        "application/json" in request.headers.get("accept", "") and "text/plain" not in request.headers.get("accept", "")
    )
    if wants_json:
        return JSONResponse(collector.summary())
    return PlainTextResponse(collector.render_prometheus(), media_type=PROMETHEUS_CONTENT_TYPE)


def create_health_app(service: AsyncClientService, *, metrics_only: bool = False) -> Starlette:
    async def health(request: Request) -> Response:
        problems = service.problems(readiness=False)
        if problems:
            return JSONResponse({"status": "unhealthy", "reasons": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive", "uptime_seconds": round(service.uptime(), 3)})

    async def ready(request: Request) -> Response:
        problems = service.problems(readiness=True)
        if problems:
            return JSONResponse({"status": "not ready", "reasons": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def details(request: Request) -> Response:
        return JSONResponse(service.details())

    async def metrics(request: Request) -> Response:
        return metrics_response(service, request)

    routes: list[Any] = [Route("/metrics", metrics)]
    if not metrics_only:
        routes += [
            Route("/health", health),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/health/details", details),
        ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "not found", "path": request.url.path}, status_code=404)

    return Starlette(routes=routes, exception_handlers={404: not_found})
