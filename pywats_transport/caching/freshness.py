"""What to store and for how long it is fresh, decided once per response, with hishel's RFC 9111 rules.

The layer answers from its memory storage in both modes. ``ttl`` mode and ``rfc`` mode differ only in
this decision: ``ttl`` takes the configured TTL whatever the server says; ``rfc`` takes RFC 9111 §3
(may it be stored) and §4.2 (how long is it fresh), reading the directives with hishel's own
parsers. Deciding at store time, not at every lookup, is what lets a hit in either mode cost what a
dictionary lookup costs: a stored entry carries the instant it stops being fresh.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from hishel import Headers
from hishel import Response as HishelResponse
from hishel._core._spec import (
    HEURISTICALLY_CACHEABLE_STATUS_CODES,
    get_age,
    get_freshness_lifetime,
    parse_cache_control,
)

Vary = tuple[tuple[str, "str | None"], ...]


@dataclass(slots=True)  # not frozen: that costs every storable miss half a microsecond; none is changed
class StoreDecision:
    store: bool
    #: request header values the response's ``Vary`` names; None: any request matches
    vary: Vary | None = None
    #: seconds the entry is fresh from now (rfc mode); None: for the entry's whole TTL (ttl mode)
    fresh_for: float | None = None
    #: the response's age when stored (rfc mode), for the ``Age`` header of hits
    age: float = 0.0
    #: RFC 5861 windows the response itself grants (rfc mode)
    stale_if_error: float = 0.0
    stale_while_revalidate: float = 0.0


DO_NOT_STORE = StoreDecision(False)


def vary_of(request: httpx.Request, response: httpx.Response) -> Vary | None | Literal[False]:
    """The request header values ``Vary`` names, None without ``Vary``, False for ``Vary: *`` (matches nothing)."""
    vary = response.headers.get("vary")
    if not vary:
        return None
    names = sorted({n.strip().lower() for n in vary.split(",") if n.strip()})
    if "*" in names:
        return False
    return tuple((n, request.headers.get(n)) for n in names)


_STORE_PLAIN = StoreDecision(True)


def ttl_decision(request: httpx.Request, response: httpx.Response, *, store_no_store: bool) -> StoreDecision:
    """Mode ``ttl``: 2xx (not 206) GET/HEAD answers for the TTL; variants and ``no-store`` still respected."""
    status = response.status_code
    if not 200 <= status < 300 or status == 206:
        return DO_NOT_STORE
    # One pass over the raw headers (a miss pays for this on every response).
    varies = False
    for name, value in response.headers.raw:
        lname = name.lower()
        if lname == b"vary":
            varies = True
        elif lname == b"cache-control" and not store_no_store and b"no-store" in value.lower():
            return DO_NOT_STORE
        elif lname == b"content-type" and value[:17].lower() == b"text/event-stream":
            # Server-sent events: a subscription, not a document; kept, it would hold every other
            # subscriber of the URL behind the first (single flight), then replay what it once said.
            return DO_NOT_STORE
    if not varies:
        return _STORE_PLAIN
    vary = vary_of(request, response)
    if vary is False:
        return DO_NOT_STORE
    return StoreDecision(True, vary)


_RFC_HEADERS = frozenset({b"cache-control", b"expires", b"date", b"etag", b"last-modified", b"vary"})


def rfc_decision(request: httpx.Request, response: httpx.Response) -> StoreDecision:
    """Mode ``rfc``: RFC 9111 §3 storage rules for a private cache, and the §4.2 freshness lifetime."""
    status = response.status_code
    if status < 200 or status in (206, 304):
        return DO_NOT_STORE
    # One pass over the raw headers (a miss pays for this on every response; each lookup by name
    # would decode and scan them all again).
    seen: dict[bytes, list[bytes]] = {}
    for name, value in response.headers.raw:
        lname = name.lower()
        if lname in _RFC_HEADERS:
            seen.setdefault(lname, []).append(value)
    control = seen.get(b"cache-control")
    directives = _directives(b", ".join(control).decode("latin-1") if control else None)
    if directives.no_store:
        return DO_NOT_STORE
    if not (directives.public or directives.private or b"expires" in seen or directives.max_age is not None
            or status in HEURISTICALLY_CACHEABLE_STATUS_CODES):
        return DO_NOT_STORE
    vary = vary_of(request, response) if b"vary" in seen else None
    if vary is False:
        return DO_NOT_STORE
    validators = b"etag" in seen or b"last-modified" in seen
    # hishel's Response is built only when its rules need more than the directives (a Date, no max-age).
    internal = HishelResponse(status, _internal_headers(response.headers)) \
        if b"date" in seen or directives.max_age is None else None
    age = float(get_age(internal)) if internal is not None else 0.0
    sie, swr = float(directives.stale_if_error or 0), float(directives.stale_while_revalidate or 0)
    if directives.no_cache:
        if not validators:
            return DO_NOT_STORE
        return StoreDecision(True, vary, 0.0, age, sie)  # stored, but revalidated before every use
    # A private cache: max-age wins (s-maxage is for shared caches), then Expires or heuristics (hishel).
    if directives.max_age is not None:
        lifetime: int | None = directives.max_age
    else:
        assert internal is not None
        lifetime = get_freshness_lifetime(internal, False)
    fresh_for = max(0.0, float(lifetime) - age) if lifetime is not None else 0.0
    if not fresh_for and not sie and not validators:
        return DO_NOT_STORE  # never fresh and nothing to validate it with: it could never answer
    return StoreDecision(True, vary, fresh_for, age, sie, swr)


def request_forbids_stored(request: httpx.Request) -> bool:
    """Request ``Cache-Control: no-cache`` (or ``max-age=0``): a stored response must be validated first."""
    value = request.headers.get("cache-control")
    if not value:
        return False
    directives = _directives(value)
    return bool(directives.no_cache) or directives.max_age == 0


def forbids_stale(headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 9111 §4.2.4: a response marked ``must-revalidate`` or ``no-cache`` is never served stale, by
    stale-if-error or stale-while-revalidate alike, whatever the configuration or its own directives allow."""
    control = [value for name, value in headers if name.lower() == b"cache-control"]
    if not control:
        return False
    directives = _directives(b", ".join(control).decode("latin-1"))
    return bool(directives.must_revalidate or directives.no_cache)


def own_windows(cache_control: list[str] | None) -> float:
    """The longer of the ``stale-if-error`` and ``stale-while-revalidate`` windows a response grants itself."""
    if not cache_control:
        return 0.0
    directives = _directives(", ".join(cache_control))
    return float(max(directives.stale_if_error or 0, directives.stale_while_revalidate or 0))


def rfc_staleness(headers: Headers) -> tuple[float, float, float]:
    """An entry kept by hishel's rules, timed by its headers as hishel times it: seconds past its freshness
    now (negative: still fresh), and the ``stale-if-error`` / ``stale-while-revalidate`` windows it grants."""
    control = headers.get_list("cache-control")
    directives = _directives(", ".join(control) if control else None)
    internal = HishelResponse(200, headers)
    lifetime = directives.max_age if directives.max_age is not None else get_freshness_lifetime(internal, False)
    return (float(get_age(internal)) - float(lifetime or 0), float(directives.stale_if_error or 0),
            float(directives.stale_while_revalidate or 0))


def rfc_age(headers: Headers) -> float:
    """An entry's current age by its headers (``Date``, ``Age``), as hishel reckons it (RFC 9111 §4.2.3)."""
    return float(get_age(HishelResponse(200, headers)))


def conditional_headers(stored: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 9110 §13.1 validators for revalidating a stored response: ``If-None-Match`` and/or ``If-Modified-Since``."""
    out = []
    for name, value in stored:
        lname = name.lower()
        if lname == b"etag":
            out.append((b"if-none-match", value))
        elif lname == b"last-modified":
            out.append((b"if-modified-since", value))
    return out


def merge_not_modified(stored: list[tuple[bytes, bytes]], fresh: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """RFC 9111 §4.3.4: a 304 updates the stored headers, except the ones that describe the stored body."""
    keep = {b"content-length", b"content-encoding", b"transfer-encoding", b"content-type", b"content-range"}
    updated = {k.lower(): v for k, v in fresh.raw if k.lower() not in keep}
    merged = [(k, v) for k, v in stored if k.lower() not in updated]
    return merged + list(updated.items())


@functools.lru_cache(maxsize=512)
def _directives(value: str | None) -> Any:
    # A server sends the same few Cache-Control values over and over: parse each once.
    return parse_cache_control(value)


def _internal_headers(headers: httpx.Headers) -> Headers:
    grouped: dict[str, list[str]] = {}
    for key, value in headers.multi_items():
        grouped.setdefault(key, []).append(value)
    return Headers(grouped)
