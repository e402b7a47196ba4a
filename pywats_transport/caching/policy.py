"""The cache layer's decisions, free of I/O: keys, per-request control, invalidation, statistics.

RFC 9111 itself is hishel's; this adds what sits around it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config import CacheSettings
from ..extensions import checked
from .freshness import StoreDecision, request_forbids_stored, rfc_decision, ttl_decision
from .index import PathIndex
from .url_parts import origin_of, split_prefix

CACHEABLE = frozenset({"GET", "HEAD"})
_NO_CONTROL: dict[str, Any] = {}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since"})

#: request extension for per-request control: {"bypass": bool, "refresh": bool, "ttl": seconds,
#: "invalidates": [path prefixes a successful write also drops]}
EXTENSION = "cache"
CONTROL_KEYS = frozenset({"bypass", "refresh", "ttl", "invalidates"})
#: response extension holding {"from_cache", "stored", "revalidated", "lookup"}
RESPONSE_EXTENSION = "caching"


@dataclass(slots=True)
class Plan:
    action: str  # "lookup", "bypass" (not cacheable or asked), "write" (may invalidate)
    key: str = ""
    ttl: float | None = None
    refresh: bool = False
    #: rfc mode: the request asks that a stored response be validated before it is used
    revalidate: bool = False


_WRITE = Plan("write")  # shared, never mutated
_BYPASS = Plan("bypass")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    invalidations: int = 0
    storage_errors: int = 0
    stale_served: int = 0
    refreshes: int = 0
    refresh_failures: int = 0

    def as_dict(self, entries: int | None, evictions: int) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "stores": self.stores,
            "evictions": evictions,
            "invalidations": self.invalidations,
            "storage_errors": self.storage_errors,
            "stale_served": self.stale_served,
            "refreshes": self.refreshes,
            "refresh_failures": self.refresh_failures,
            "entries": entries,
            "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
        }


def identity_digest(values: list[tuple[bytes, bytes]]) -> str:
    """A short hash of the credential-bearing headers; the secret itself never leaves this function."""
    if not values:
        return "anon"
    return _digest(tuple(sorted(values)))


@functools.lru_cache(maxsize=256)
def _digest(values: tuple[tuple[bytes, bytes], ...]) -> str:
    # A client sends the same credential on every request: hash it once, not per request.
    h = hashlib.sha256()
    for name, value in values:
        h.update(name)
        h.update(b"\0")
        h.update(value)
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass
class CachePolicy:
    """Decides, per request, what the cache layer does, and keeps the invalidation index."""

    settings: CacheSettings
    clock: Callable[[], float] = time.time
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.rfc = self.settings.mode == "rfc"
        self._identity = frozenset(h.lower().encode() for h in self.settings.identity_headers)
        self._cookie = self.settings.cookie_identity
        # Where each stored key was fetched from, for prefix invalidation in any storage.
        self._index = PathIndex()
        # Invalidated keys whose stored entries are removed on their next lookup (any storage).
        self._stale: dict[str, float] = {}
        # Fetches in flight on a storage without tokens of its own (hishel's SQLite), by key: the count of
        # invalidations when each began. A write marks its key stale once; a lookup that takes the mark
        # fetches anew, but a fetch begun before the write may still store its answer after that one.
        # Until it ends, each lookup of its key fetches anew; when it ends, the key is marked again.
        self._flying: dict[str, list[int]] = {}
        self._overlapped: dict[str, int] = {}  # key -> the invalidation a fetch of it in flight overlapped
        self._marks = 0
        self._prune_at = 1024
        # A sync client may be shared by threads: the index and stale set change under this lock.
        self._lock = threading.Lock()

    # -- before the request ---------------------------------------------------------------

    def plan(self, request: httpx.Request) -> Plan:
        method = request.method
        control = request.extensions.get(EXTENSION)
        control = _NO_CONTROL if control is None else checked(EXTENSION, control, CONTROL_KEYS)
        if method not in CACHEABLE:
            if method in WRITES and self.settings.invalidate_on_write:
                if "invalidates" in control:
                    _check_invalidates(control["invalidates"])  # before it is sent: after, it is too late
                return _WRITE
            return _BYPASS
        refresh = bool(control.get("refresh"))
        # One pass over the raw headers: the identity headers and Cache-Control.
        identity: list[tuple[bytes, bytes]] = []
        cookies: list[tuple[bytes, bytes]] = []
        cache_control = b""
        wanted = self._identity
        for name, value in request.headers.raw:
            lname = name.lower()
            if lname in wanted:
                identity.append((lname, value))
            elif lname == b"cookie":
                cookies.append((lname, value))
            elif lname == b"cache-control":
                cache_control = value.lower()
            elif lname in _CONDITIONAL:
                return _BYPASS  # the app validates its own copy: the answer is for it, not for the cache
        # A cookie identifies the user only when nothing else does: behind load balancers that rotate
        # an affinity cookie on every response, keying by it would make every request a new key.
        if cookies and (self._cookie == "always" or (self._cookie == "fallback" and not identity)):
            identity.extend(cookies)
        if control.get("bypass") or b"no-store" in cache_control:
            return _BYPASS
        revalidate = False
        if b"no-cache" in cache_control or b"max-age" in cache_control:
            # no-cache or max-age=0: ttl mode fetches anew; rfc mode validates what it holds first
            if self.rfc:
                revalidate = request_forbids_stored(request)
            else:
                refresh = request_forbids_stored(request)
        ttl = control.get("ttl")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl < 0):
            raise ValueError(f"request extension cache.ttl must be a number >= 0, got {ttl!r}")
        url = str(request.url)
        ident = identity_digest(identity)
        basis = f"RFC {url} {ident}" if self.rfc else f"{method} {url} {ident}"
        key = hashlib.sha256(basis.encode()).hexdigest()
        if self._stale or self._overlapped:
            with self._lock:
                if self._stale.pop(key, None) is not None or self._overlaps(key):
                    refresh = True
        return Plan("lookup", key, float(ttl) if ttl is not None else self.settings.ttl, refresh, revalidate)

    # -- after the response ---------------------------------------------------------------

    def decide(self, request: httpx.Request, response: httpx.Response) -> StoreDecision:
        """Whether and how to store a response: the one place where the two modes differ."""
        if self.rfc:
            return rfc_decision(request, response)
        return ttl_decision(request, response, store_no_store=self.settings.store_no_store)

    def record_lookup(self, plan: Plan, request: httpx.Request, status: dict[str, Any] | None) -> str:
        """Count a looked-up request; returns "hit" or "miss"."""
        if status is not None and status.get("from_cache"):
            self.stats.hits += 1
            return "hit"
        self.stats.misses += 1
        if status is not None and status.get("stored"):
            self.stats.stores += 1
            self.remember(plan, request)
        return "miss"

    def remember(self, plan: Plan, request: httpx.Request) -> None:
        """Index a stored key by origin and path, for prefix invalidation."""
        url = request.url
        ttl = plan.ttl if plan.ttl is not None else self.settings.ttl
        keep = ttl + max(self.settings.stale_if_error, self.settings.stale_while_revalidate)
        with self._lock:
            self._index.add(plan.key, origin_of(url), url.path, self.clock() + keep)
            if len(self._index) + len(self._stale) >= self._prune_at:
                self._prune()

    def begin_fetch(self, plan: Plan, request: httpx.Request) -> tuple[str, int, float]:
        """A lookup going to a storage without tokens of its own (hishel's SQLite), which may fetch and
        store: indexed now, so that a write meanwhile marks its key. Hand the result to :meth:`end_fetch`
        once its answer is stored, or never will be (read, closed or failed)."""
        self.remember(plan, request)
        keep = (plan.ttl if plan.ttl is not None else self.settings.ttl) + max(
            self.settings.stale_if_error, self.settings.stale_while_revalidate)
        with self._lock:
            self._flying.setdefault(plan.key, []).append(self._marks)
            return plan.key, self._marks, keep

    def end_fetch(self, fetch: tuple[str, int, float]) -> None:
        key, began, keep = fetch
        with self._lock:
            flying = self._flying.get(key)
            if flying is None or began not in flying:
                return  # ended already
            flying.remove(began)
            if began < self._overlapped.get(key, 0):
                # It overlapped a write: the answer it may have stored predates it.
                self._stale[key] = self.clock() + keep
            if not flying:
                del self._flying[key]
                self._overlapped.pop(key, None)

    def _overlaps(self, key: str) -> bool:
        """A fetch of ``key`` begun before a write to it is still in flight (under the lock)."""
        mark = self._overlapped.get(key)
        return mark is not None and min(self._flying[key]) < mark

    def write_targets(self, request: httpx.Request, response: httpx.Response | None) -> list[tuple[str | None, str]]:
        """(origin, path) prefixes a successful write drops (``response`` None: one that may have been applied,
        but never answered): in a shared storage for every process, and in any storage the answers being
        fetched under them."""
        if not self.settings.invalidate_on_write or not _applied(response):
            return []
        origin = origin_of(request.url)
        targets: list[tuple[str | None, str]] = [(origin, request.url.path)]
        control = request.extensions.get(EXTENSION)
        for prefix in control.get("invalidates", ()) if control else ():
            targets.append(split_prefix(prefix, origin))
        return targets

    def write_invalidates(self, request: httpx.Request, response: httpx.Response | None) -> list[str]:
        """Keys a finished write drops: when it succeeded, or may have (``response`` None: never answered)."""
        if not _applied(response) or not len(self._index):
            return []
        url = request.url
        origin = origin_of(url)
        with self._lock:
            keys = self._index.under(url.path, origin)
        control = request.extensions.get(EXTENSION)
        if control:
            for prefix in control.get("invalidates", ()):  # related collections the caller knows about
                keys.extend(k for k in self.keys_under(*split_prefix(prefix, origin)) if k not in keys)
        return keys

    # -- explicit invalidation -----------------------------------------------------------

    def keys_under(self, origin: str | None, path: str) -> list[str]:
        """Keys whose path equals ``path`` or lies under it (``path/...``), at ``origin`` (None: any); both as
        :mod:`.url_parts` names them (a caller's prefix goes through ``split_prefix`` first)."""
        with self._lock:
            return self._index.under(path, origin)

    def forget(self, keys: list[str]) -> None:
        """Keys whose entries the storage dropped (evicted, expired) leave the index: it stays as small as the cache."""
        with self._lock:
            for key in keys:
                self._index.discard(key)

    def mark_stale(self, keys: list[str]) -> None:
        """Invalidated keys leave the index; their entries must not be served again."""
        with self._lock:
            self._marks += 1
            for key in keys:
                expires = self._index.discard(key)
                self._stale[key] = expires if expires is not None else self.clock() + self.settings.ttl
                if key in self._flying:
                    self._overlapped[key] = self._marks

    def _prune(self) -> None:
        now = self.clock()
        for key in self._index.expired(now):
            self._index.discard(key)
        for key in [k for k, t in self._stale.items() if t <= now]:
            del self._stale[key]
        self._prune_at = max(1024, 2 * len(self._index))


def _check_invalidates(prefixes: Any) -> None:
    """The ``cache.invalidates`` request extension: a list of path prefixes or URLs (a bare string would be
    read one character at a time, and its ``/`` would drop the whole origin)."""
    if isinstance(prefixes, (str, bytes)) or not isinstance(prefixes, (list, tuple, set, frozenset)):
        raise ValueError(f"request extension cache.invalidates must be a list of path prefixes or URLs, "
                         f"got {prefixes!r}")
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise ValueError(f"request extension cache.invalidates: each prefix must be a string, got {prefix!r}")
        try:
            split_prefix(prefix, None)
        except ValueError as exc:
            raise ValueError(f"request extension cache.invalidates: {exc}") from None


def _applied(response: httpx.Response | None) -> bool:
    """A write answered 2xx, or not answered at all after it may have reached the server (the caller
    passes None only then): a 4xx or 5xx answer says it was not applied."""
    return response is None or 200 <= response.status_code < 300
