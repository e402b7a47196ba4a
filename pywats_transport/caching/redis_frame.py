"""How an entry is one Redis value: a JSON line (request method and URL, status, headers, and from the
ttl mode's lookup the ``Vary`` values and the end of freshness), then the body."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hishel import Headers, Request

from .freshness import Vary
from .memory import Record


def frame(request: Request, status: int, headers: Headers, body: bytes, stored_at: float, *,
          vary: Vary | None = None, fresh_until: float | None = None) -> bytes:
    """An entry as one value: a JSON line (request method and URL, status, headers, and, from the ttl
    mode's lookup, the request header values ``Vary`` names and the end of freshness), then the body."""
    return framed(request.method, request.url, status, [[k, v] for k in headers for v in headers.get_list(k) or []],
                  body, stored_at, vary=vary, fresh_until=fresh_until)


def framed(method: str, url: str, status: int, headers: list[list[str]], body: bytes, stored_at: float, *,
           vary: Vary | None = None, fresh_until: float | None = None) -> bytes:
    meta: dict[str, Any] = {"method": method, "url": url, "status": status, "stored_at": stored_at, "headers": headers}
    if vary is not None:
        meta["vary"] = [list(pair) for pair in vary]
    if fresh_until is not None:
        meta["fresh_until"] = fresh_until
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = data.partition(b"\n")
    return json.loads(head), body


def record_of(key: str, entry_id: bytes, data: bytes) -> Record:
    """A stored entry as the layer's direct path serves it (no hishel entry, no stream conversions)."""
    meta, body = unframe(data)
    vary = meta.get("vary")
    return Record(entry_id.decode(), key, Request(meta["method"], meta["url"]), meta["status"], None, body, None, None,
                  None, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]],
                  tuple((name, value) for name, value in vary) if vary is not None else None,
                  meta.get("fresh_until", float("inf")), meta.get("stored_at", 0.0))


def choose(key: str, found: dict[bytes, bytes], method: str, headers: Any) -> Record | None:
    """The stored variant answering ``method`` and, by ``Vary``, these request headers."""
    for entry_id, data in found.items():
        record = record_of(key, entry_id, data)
        if record.matches(method, headers):
            return record
    return None


def variant_id(key: str, method: str, vary: Vary | None) -> str:
    """One field per variant, so that storing a variant again replaces it instead of adding to the key;
    unique across keys too, as an entry's id finds its key (``OWNER``)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([key, method, vary])))


def reframed(data: bytes, headers: Headers) -> bytes:
    """A stored entry with new headers (a 304 refreshed it), its body unchanged."""
    meta, body = unframe(data)
    meta["headers"] = [[k, v] for k in headers for v in headers.get_list(k) or []]
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body
