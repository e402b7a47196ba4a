"""The names the cache gives a URL's place, for prefix invalidation: an origin and a path.

A write, an ``invalidate()`` and every stored entry must name one place the same way, in every process
and every storage (the in-process index, the Redis index sets, the near caches' invalidation messages),
however the URL was spelt. An origin is the scheme, the host lowercased and IDNA-encoded (an IPv6
address in brackets), the port only where it is not the scheme's default, and never the userinfo (a
password must not name a Redis key); a path is percent-decoded as httpx decodes it, so ``/A%20B`` and
``/A B`` are one path.
"""

from __future__ import annotations

import functools

import httpx


def origin_of(url: httpx.URL) -> str:
    return _origin(url.scheme, url.raw_host, url.port)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.lru_cache(maxsize=256)
def _origin(scheme: str, raw_host: bytes, port: int | None) -> str:
    # httpx keeps a default port spelt out after a scheme in capitals, and an IPv6 address's case
    host = raw_host.decode("ascii").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{scheme}://{host}:{port}"


@functools.lru_cache(maxsize=1024)
def place_of(url: str) -> tuple[str, str]:
    """A full URL's (origin, path)."""
    parsed = httpx.URL(url)
    return origin_of(parsed), parsed.path or "/"


def without_userinfo(url: str) -> str:
    """``url`` as a shared entry keeps it: without a user or password (the request's ``Authorization``,
    which httpx made of them, is what keys the entry)."""
    if "@" not in url:
        return url
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def split_prefix(prefix: str, origin: str | None) -> tuple[str | None, str]:
    """A caller's prefix as (origin, path): a full URL names its own origin; a path keeps ``origin``
    (None: any origin). Percent-escapes are decoded and a query is ignored, as in stored URLs."""
    if not isinstance(prefix, str):
        raise TypeError(f"cache prefix must be a str (a path or a URL), got {prefix!r}")
    try:
        parsed = httpx.URL(prefix)
    except httpx.InvalidURL as exc:
        raise ValueError(f"cache prefix {prefix!r} is neither a path nor a URL: {exc}") from None
    if parsed.is_absolute_url:
        return origin_of(parsed), parsed.path or "/"
    if parsed.scheme:
        raise ValueError(f"cache prefix {prefix!r} is neither a path nor a URL: it names no host")
    if parsed.path and not parsed.path.startswith("/"):
        # Stored paths all start at the root: this one would match nothing, and drop nothing, silently.
        raise ValueError(f"cache prefix {prefix!r} is a relative path; give it from the root "
                         f"({'/' + prefix!r}) or as a URL")
    return origin, parsed.path or "/"
