"""What the cache layer tells the Redis store about the request in progress, in context variables that
hishel's storage interface has no room for: the layer's own lookup (ttl mode), the request's URL, and the
leases its fetches took before asking the origin."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from hishel import Request, Response

from .freshness import StoreDecision
from .memory import Record


class Lookup:
    """What the layer's lookup of one request (ttl mode) tells the storage underneath hishel's miss path.

    ``looked``: the layer read the key and found no usable variant, so the storage need not read it
    again; ``usable`` filters what a wait for another process's fetch finds; ``decide`` says whether
    and how the fetched response is stored (``no-store``, ``Vary``), which hishel's plain mode does not.
    """

    __slots__ = ("key", "looked", "usable", "decide", "stored", "keep_stale")

    def __init__(self, key: str, usable: Callable[[Record], bool],
                 decide: Callable[[Request, Response], StoreDecision], *, looked: bool = True,
                 keep_stale: float = 0.0) -> None:
        self.key, self.usable, self.decide = key, usable, decide
        self.looked = looked
        #: seconds an entry is kept past its freshness (the stale windows)
        self.keep_stale = keep_stale
        self.stored = True


#: the lookup in progress in this thread or task
LOOKUP: ContextVar[Lookup | None] = ContextVar("pywats_transport_redis_lookup", default=None)


class Fetches:
    """The layer's request in progress on Redis: its cache key and URL (a read checks that the key is still
    listed under every prefix of the URL's path, :data:`.redis_keys.LOOK`), and the leases its fetches took
    as each went to the origin: cache key -> lease token (None: Redis gave none, and the answer is not
    stored)."""

    __slots__ = ("key", "url", "headers", "leases")

    def __init__(self, key: str, url: str, headers: Any = None) -> None:
        self.key, self.url = key, url
        #: the request's headers, for hishel's ``Vary`` check of what a read finds (rfc mode)
        self.headers = headers
        self.leases: dict[str, str | None] = {}


#: the request the layer is serving in this thread or task on a shared storage. Without it (the store used
#: outside the layer) reads are not checked against the index and stores are unconditional.
FETCHES: ContextVar[Fetches | None] = ContextVar("pywats_transport_redis_fetches", default=None)


def current(key: str) -> Lookup | None:
    """The layer's lookup of ``key``, when one is in progress."""
    lookup = LOOKUP.get()
    return lookup if lookup is not None and lookup.key == key else None


def url_of(key: str) -> str | None:
    """The URL of the request the layer is serving under ``key``, when it is."""
    fetches = FETCHES.get()
    return fetches.url if fetches is not None and fetches.key == key else None


def headers_in_progress() -> Any:
    """The headers of the request the layer is serving on a shared storage, when it is."""
    fetches = FETCHES.get()
    return fetches.headers if fetches is not None else None


def url_in_progress() -> str | None:
    """The URL of the request the layer is serving on a shared storage, when it is."""
    fetches = FETCHES.get()
    return fetches.url if fetches is not None else None


def lease_of(key: str) -> tuple[bool, str | None]:
    """Whether a store for ``key`` needs a lease, and the lease."""
    fetches = FETCHES.get()
    return (False, None) if fetches is None else (True, fetches.leases.get(key))
