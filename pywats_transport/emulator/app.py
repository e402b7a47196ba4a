"""The emulator's ASGI app: WATS REST routes on in-memory data, token checks and injected faults."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .data import seed

VERSION = "2026.4.0 (emulator)"


class _Segment(Convertor[str]):
    """A path parameter matched on the raw path and decoded: ``PN%201%2F2`` is the one part number
    ``PN 1/2``, as the client encodes it (matched on the decoded path, its ``/`` made two segments)."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("wats_segment", _Segment())


class _RawPath:
    """Routes see the path as sent (percent-encoded), so that an encoded ``/`` stays inside its segment."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            scope = {**scope, "path": raw.decode("latin-1")}
        await self.app(scope, receive, send)
OUTAGE_MODES = ("503", "refuse")


@dataclass
class Faults:
    """What goes wrong, and how often. Rates are shares of /api requests (0..1)."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_rate: float = 0.0  # answered 503 or 429 with Retry-After
    retry_after: int = 0
    slow_body_ms: float = 0.0  # the body trickles out over this long
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate",):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        for name in ("latency_ms", "latency_jitter_ms", "slow_body_ms", "retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class EmulatorState:
    token: str | None = None
    faults: Faults = field(default_factory=Faults)
    data: dict[str, Any] = field(default_factory=seed)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_posts: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # by "METHOD route-template"
    injected: Counter[str] = field(default_factory=Counter)
    #: monotonic times of the latest /api requests (for peak-rate figures)
    request_times: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.faults.seed)
        self.outage_until = 0.0  # monotonic; while in the future every /api request answers 503
        #: set by EmulatorServer: takes the server off the network for a time ("refuse" outages)
        self.outage_hook: Any = None
        self.outages: list[dict[str, Any]] = []

    def outage(self, seconds: float, mode: str = "503") -> None:
        """Make the server unavailable for ``seconds``: ``503`` answers every /api request with 503;
        ``refuse`` takes it off the network (connections refused, open ones reset)."""
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode must be one of {', '.join(OUTAGE_MODES)}, got {mode!r}")
        self.outages.append({"mode": mode, "seconds": seconds, "at": time.time()})
        if mode == "503":
            self.outage_until = time.monotonic() + seconds
        elif self.outage_hook is None:
            raise ValueError("a 'refuse' outage needs the emulator run by EmulatorServer (or the CLI)")
        else:
            self.outage_hook(seconds)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.injected.clear()


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"message": message, "status": status}, status_code=status, headers=headers)


def _route_of(request: Request) -> str:
    """The route template, as the client names it (``/api/Product/{partNumber}``)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", request.url.path)).replace(":wats_segment}", "}")


class _Gate:
    """Authentication, counting and faults in front of every /api route."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def __call__(self, request: Request) -> Response | None:
        st = self.state
        with st.lock:
            st.requests[f"{request.method} {_route_of(request)}"] += 1
            st.request_times.append(time.monotonic())
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "basic" or not token or (st.token is not None and token != st.token):
            return _error(401, "missing or invalid token")
        if st.outage_until and time.monotonic() < st.outage_until:
            with st.lock:
                st.injected["outage"] += 1
            return _error(503, "service unavailable (emulated outage)")
        f = st.faults
        if f.latency_ms or f.latency_jitter_ms:
            await asyncio.sleep((f.latency_ms + st.rng.uniform(0, f.latency_jitter_ms)) / 1000.0)
        if f.fail_rate and st.rng.random() < f.fail_rate:
            status = 503 if st.rng.random() < 0.5 else 429
            with st.lock:
                st.injected[str(status)] += 1
            return _error(status, "injected fault", **{"Retry-After": str(f.retry_after)})
        return None


def _json(state: EmulatorState, payload: Any, status: int = 200) -> Response:
    if state.faults.slow_body_ms:
        import json

        body = json.dumps(payload).encode()
        step = max(1, len(body) // 4)
        delay = state.faults.slow_body_ms / 1000.0 / 4

        async def trickle() -> Any:
            for i in range(0, len(body), step):
                await asyncio.sleep(delay)
                yield body[i:i + step]

        return StreamingResponse(trickle(), status_code=status, media_type="application/json")
    return JSONResponse(payload, status_code=status)


# A string literal doubles each quote it holds (OData): 'O''Brien' is O'Brien.
_FILTER = re.compile(r"(\w+)\s+(eq|ge|le|gt|lt)\s+('((?:[^']|'')*)'|[\w.:-]+)")


def _odata_match(item: dict[str, Any], expr: str) -> bool:
    for field_name, op, raw, quoted in _FILTER.findall(expr):
        want = quoted.replace("''", "'") if raw.startswith("'") else raw
        have = str(item.get(field_name, ""))
        ok = {"eq": have == want, "ge": have >= want, "le": have <= want, "gt": have > want, "lt": have < want}[op]
        if not ok:
            return False
    return True


class BadRequest(Exception):
    """Input the emulator refuses with a 400, as the server would, rather than failing with a 500."""


def _top(request: Request) -> int | None:
    """``$top``: how many results at most (absent: all; 0: none, as OData says)."""
    value = request.query_params.get("$top")
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest(f"$top must be a whole number >= 0, got {value!r}")
    return int(value)


async def _object(request: Request, key: str) -> dict[str, Any]:
    """The body: a JSON object whose ``key`` is a non-empty string."""
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(body, dict) or not body.get(key):
        raise BadRequest(f"{key} is required")
    if not isinstance(body[key], str):
        raise BadRequest(f"{key} must be a string, got {type(body[key]).__name__}")
    return body


def create_app(state: EmulatorState | None = None) -> Starlette:
    st = state or EmulatorState()
    gate = _Gate(st)

    def api(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            refused = await gate(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except BadRequest as exc:
                return _error(400, str(exc))
            except ClientDisconnect:  # the client went away mid-request: nothing to answer
                return Response(status_code=499)

        return endpoint

    products = st.data["products"]

    async def product_get(request: Request) -> Response:
        pn = request.path_params["partNumber"]
        if pn not in products:
            return _error(404, f"product {pn} not found")
        return _json(st, products[pn])

    async def product_query(request: Request) -> Response:
        expr = request.query_params.get("$filter", "")
        found = [p for p in products.values() if _odata_match(p, expr)]
        top = _top(request)
        return _json(st, found if top is None else found[:top])

    async def product_put(request: Request) -> Response:
        body = await _object(request, "partNumber")
        revisions = body.get("revisions", [])
        if not (isinstance(revisions, list) and all(isinstance(r, dict) for r in revisions)):
            raise BadRequest("revisions must be a list of objects")
        pn = body["partNumber"]
        current = products.get(pn, {"revisions": [], "state": "Active"})
        products[pn] = {**current, **body}
        return _json(st, products[pn])

    async def product_groups(request: Request) -> Response:
        groups = sorted({p.get("productGroup") or "" for p in products.values()} - {""})
        return _json(st, [{"name": g} for g in groups])

    async def product_revisions(request: Request) -> Response:
        pn = request.path_params["partNumber"]
        if pn not in products:
            return _error(404, f"product {pn} not found")
        return _json(st, [{"partNumber": pn, **r} for r in products[pn].get("revisions", [])])

    def header_of(report: dict[str, Any]) -> dict[str, Any]:
        keys = ("id", "partNumber", "serialNumber", "revision", "processCode", "result", "start", "stationName")
        return {k: report.get(k) for k in keys}

    async def report_headers(request: Request) -> Response:
        expr = request.query_params.get("$filter", "")
        found = [header_of(r) for r in st.reports.values() if _odata_match(r, expr)]
        found.sort(key=lambda h: str(h.get("start")), reverse=True)
        top = _top(request)
        return _json(st, found if top is None else found[:top])

    async def report_post(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "a report must be a JSON object")
        missing = [k for k in ("id", "partNumber", "serialNumber", "result") if not body.get(k)]
        if missing:
            return _error(400, f"report is missing {', '.join(missing)}")
        try:
            report_id = str(uuid.UUID(str(body["id"])))
        except ValueError:
            return _error(400, f"report id {body['id']!r} is not a UUID")
        with st.lock:
            st.report_posts += 1
            duplicate = report_id in st.reports
            if not duplicate:
                st.reports[report_id] = {**body, "id": report_id, "receivedAt": time.time()}
        return _json(st, {"id": report_id, "duplicate": duplicate}, status=200 if duplicate else 201)

    async def report_get(request: Request) -> Response:
        report = st.reports.get(request.path_params["id"])
        if report is None:
            return _error(404, "report not found")
        return _json(st, report)

    assets = st.data["assets"]

    def find_asset(key: str) -> dict[str, Any] | None:
        return assets.get(key) or next((a for a in assets.values() if a["id"] == key), None)

    async def asset_get(request: Request) -> Response:
        asset = find_asset(request.path_params["idOrSerial"])
        return _json(st, asset) if asset else _error(404, "asset not found")

    async def asset_status(request: Request) -> Response:
        serial = request.query_params.get("serialNumber")
        if not serial:
            return _error(400, "serialNumber is required")
        asset = find_asset(serial)
        if asset is None:
            return _error(404, "asset not found")
        status = "Warning" if asset["runningCount"] > 0.8 * asset["totalCount"] else "OK"
        return _json(st, {"serialNumber": serial, "status": status, "runningCount": asset["runningCount"]})

    async def asset_put(request: Request) -> Response:
        body = await _object(request, "serialNumber")
        current = assets.get(body["serialNumber"], {"id": uuid.uuid4().hex[:8], "runningCount": 0, "totalCount": 0})
        assets[body["serialNumber"]] = {**current, **body}
        return _json(st, assets[body["serialNumber"]])

    async def processes(request: Request) -> Response:
        return _json(st, st.data["processes"])

    async def version(request: Request) -> Response:
        return _json(st, {"version": VERSION})

    async def production_unit(request: Request) -> Response:
        sn, pn = request.path_params["serialNumber"], request.path_params["partNumber"]
        if pn not in products:
            return _error(404, f"product {pn} not found")
        runs = [r for r in st.reports.values() if r.get("serialNumber") == sn and r.get("partNumber") == pn]
        revisions = products[pn].get("revisions") or [{}]  # a product saved without revisions has none
        return _json(st, {"serialNumber": sn, "partNumber": pn, "revision": revisions[-1].get("revision"),
                          "phase": "Finalized" if any(r.get("result") == "P" for r in runs) else "UnderProduction",
                          "testRuns": len(runs)})

    async def packages(request: Request) -> Response:
        tag = request.query_params.get("tag")
        return _json(st, [p for p in st.data["packages"] if tag is None or tag in p["tags"]])

    async def stats(request: Request) -> Response:
        return JSONResponse({"requests": dict(st.requests), "total": st.total_requests, "reports": len(st.reports),
                             "report_posts": st.report_posts, "injected": dict(st.injected)})

    async def outage(request: Request) -> Response:
        try:
            body = await request.json()
            st.outage(float(body.get("seconds", 0)), str(body.get("mode", "503")))
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, f"POST {{\"seconds\": > 0, \"mode\": \"503\" | \"refuse\"}}: {exc}")
        return JSONResponse({"outage": st.outages[-1]})

    routes = [
        Route("/api/Product/Query", api(product_query)),
        Route("/api/Product/Groups", api(product_groups)),
        Route("/api/Product", api(product_put), methods=["PUT"]),
        Route("/api/Product/{partNumber:wats_segment}/Revisions", api(product_revisions)),
        Route("/api/Product/{partNumber:wats_segment}", api(product_get)),
        Route("/api/Report/Query/Header", api(report_headers)),
        Route("/api/Report/WSJF", api(report_post), methods=["POST"]),
        Route("/api/Report/Wsjf/{id:wats_segment}", api(report_get)),
        Route("/api/Asset/Status", api(asset_status)),
        Route("/api/Asset", api(asset_put), methods=["PUT"]),
        Route("/api/Asset/{idOrSerial:wats_segment}", api(asset_get)),
        Route("/api/App/Processes", api(processes)),
        Route("/api/App/Version", api(version)),
        Route("/api/Production/Unit/{serialNumber:wats_segment}/{partNumber:wats_segment}", api(production_unit)),
        Route("/api/Software/Packages", api(packages)),
        Route("/_emulator/stats", stats),
        Route("/_emulator/outage", outage, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_RawPath)])
    app.state.emulator = st
    return app
