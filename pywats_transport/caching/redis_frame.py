"""How an entry is one Redis value: a JSON line (the format's version, request method and URL, status,
headers, a digest of each request header value ``Vary`` names, and from the ttl mode's lookup the end of
freshness), then the body.

``Vary`` values are kept as digests, never as they were sent: a response that varies on
``Authorization`` (or a key header) would otherwise leave every station's credential readable in the
fleet's Redis. A variant answers a request whose values have the same digests. For the same reason the
URL is kept without its userinfo.

A value that does not read as this version's frame (corrupt, or written by another version of the
format while a fleet is upgraded station by station) is :class:`Unreadable`: the storage treats it as
absent, so the next fetch replaces it instead of every request going to the network until it expires."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from hishel import Headers, Request

from .freshness import Vary
from .memory import NOT_KEPT, Record, keep_at_most
from .url_parts import without_userinfo

#: the frame format's version: bumped whenever a reader of the old one would misread the new (2: ``Vary``
#: values as digests)
FORMAT = 2


def vary_digest(value: str | None) -> str | None:
    """What a frame keeps of a request header value ``Vary`` names (None: the header was absent)."""
    return None if value is None else hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def vary_digests(vary: Vary) -> Vary:
    return tuple((name, vary_digest(value)) for name, value in vary)


class Unreadable(ValueError):
    """A stored value that is not an entry in this version's frame format."""


def frame(request: Request, status: int, headers: Headers, body: bytes, stored_at: float, *,
          vary: Vary | None = None, fresh_until: float | None = None) -> bytes:
    """An entry as one value: a JSON line (request method and URL, status, headers, and, from the ttl
    mode's lookup, the request header values ``Vary`` names and the end of freshness), then the body."""
    return framed(request.method, request.url, status, _kept(headers), body, stored_at, vary=vary,
                  fresh_until=fresh_until)


def _kept(headers: Headers) -> list[list[str]]:
    """The headers a frame keeps: every value, but those a stored answer must not replay (``NOT_KEPT``)."""
    return [[k, v] for k in headers if k.lower().encode("latin-1") not in NOT_KEPT for v in headers.get_list(k) or []]


def framed(method: str, url: str, status: int, headers: list[list[str]], body: bytes, stored_at: float, *,
           vary: Vary | None = None, fresh_until: float | None = None) -> bytes:
    meta: dict[str, Any] = {"v": FORMAT, "method": method, "url": without_userinfo(url), "status": status, "stored_at": stored_at, "headers": headers}
    if vary is not None:
        meta["vary"] = [list(pair) for pair in vary_digests(vary)]
    if fresh_until is not None:
        meta["fresh_until"] = fresh_until
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = data.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError as exc:  # UnicodeDecodeError included
        raise Unreadable(f"not a frame: {exc}") from None
    if not isinstance(meta, dict) or meta.get("v") != FORMAT:
        raise Unreadable(f"frame format {meta.get('v') if isinstance(meta, dict) else None!r}, not {FORMAT}")
    return meta, body


def record_of(key: str, entry_id: bytes, data: bytes) -> Record:
    """A stored entry as the layer's direct path serves it (no hishel entry, no stream conversions)."""
    meta, body = unframe(data)
    try:
        vary = meta.get("vary")
        return Record(entry_id.decode(), key, Request(meta["method"], meta["url"]), meta["status"], None, body, None,
                      None, None, [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]],
                      tuple((name, value) for name, value in vary) if vary is not None else None,
                      meta.get("fresh_until", float("inf")), meta.get("stored_at", 0.0), vary_digest=vary_digest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unreadable(f"incomplete frame: {type(exc).__name__}: {exc}") from None


class Decoded:
    """Entries as read from Redis, decoded once. A station looks up the same entries again and again, and
    decoding a frame (its JSON, its headers as httpx holds them) cost a good part of a hit. An entry is
    taken from here while Redis answers the very value decoded, compared in full: a variant stored again
    keeps its id. Holds ``size`` entries of at most ``largest`` bytes (a larger one is decoded each time),
    the oldest let go first."""

    def __init__(self, size: int = 256, largest: int = 64 * 1024) -> None:
        self.size, self.largest = size, largest
        self._kept: OrderedDict[bytes, tuple[bytes, Record]] = OrderedDict()

    def record(self, key: str, entry_id: bytes, data: bytes) -> Record:
        """As :func:`record_of`; a copy of the caller's own (it may time it)."""
        kept = self._kept.get(entry_id)
        if kept is not None and kept[0] == data:
            return kept[1].copied()
        record = record_of(key, entry_id, data)
        if len(data) > self.largest:
            return record
        record.response_headers()  # built once here, shared by the copies
        keep_at_most(self._kept, entry_id, (data, record), self.size)
        return record.copied()


def choose(key: str, found: dict[bytes, bytes], method: str, headers: Any,
           unreadable: Callable[[Unreadable], None], decode: Callable[[str, bytes, bytes], Record] = record_of,
           ) -> Record | None:
    """The stored variant answering ``method`` and, by ``Vary``, these request headers; ``unreadable`` is
    told of each value skipped."""
    for entry_id, data in found.items():
        try:
            record = decode(key, entry_id, data)
        except Unreadable as exc:
            unreadable(exc)
            continue
        if record.matches(method, headers):
            return record
    return None


def variant_id(key: str, method: str, vary: Vary | None) -> str:
    """One field per variant, so that storing a variant again replaces it instead of adding to the key;
    unique across keys too, as an entry's id finds its key (``OWNER``)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([key, method, vary_digests(vary) if vary else vary])))


def request_for_hishel(method: str, url: str, vary: list[list[Any]] | None, headers: Any,
                       url_now: str | None = None) -> Request:
    """The stored request as hishel's ``Vary`` check reads it, for the request in progress (``headers``,
    ``url_now``; None when unknown): a value whose digest matches is that request's own, one that does
    not can match nothing. hishel serves an entry only for its request's very URL: the frame keeps it
    without userinfo, so the request in progress shows its own when that is all they differ by."""
    if url_now is not None and url_now != url and without_userinfo(url_now) == url:
        url = url_now
    if not vary:
        return Request(method, url)
    shown: dict[str, list[str]] = {}
    for name, digest in vary:
        value = headers.get(name) if headers is not None else None
        if digest is not None:
            shown[name] = [value if value is not None and vary_digest(value) == digest else f"\0{digest}"]
    return Request(method, url, Headers(shown))


def reframed(data: bytes, headers: Headers) -> bytes:
    """A stored entry with new headers (a 304 refreshed it), its body unchanged."""
    meta, body = unframe(data)
    meta["headers"] = _kept(headers)
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body
