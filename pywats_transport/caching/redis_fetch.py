"""What the cache layer tells the Redis store about the request in progress, in context variables that
hishel's storage interface has no room for: the layer's own lookup (ttl mode), and the leases its
fetches took before asking the origin."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

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


#: the leases of the fetches in progress in this thread or task, taken as each goes to the origin: cache
#: key -> lease token (None: Redis failed to give one, and the answer is not stored). Without it (the
#: store used outside the layer) stores are unconditional.
LEASES: ContextVar[dict[str, str | None] | None] = ContextVar("pywats_transport_redis_leases", default=None)


def current(key: str) -> Lookup | None:
    """The layer's lookup of ``key``, when one is in progress."""
    lookup = LOOKUP.get()
    return lookup if lookup is not None and lookup.key == key else None


def lease_of(key: str) -> tuple[bool, str | None]:
    """Whether a store for ``key`` needs a lease, and the lease."""
    leases = LEASES.get()
    return (False, None) if leases is None else (True, leases.get(key))
