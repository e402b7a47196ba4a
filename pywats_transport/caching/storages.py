"""The storage a cache layer's settings name: memory, SQLite or Redis, for a sync or an asyncio client."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hishel

from ..config import CacheSettings
from ..errors import ConfigError
from .memory import MAX_BODY, AsyncMemoryStorage, MemoryStorage
from .redis_connect import (
    async_client,
    async_lookup_connection,
    is_cluster,
    lookup_connection,
    one_server,
    require_redis,
    sync_client,
)
from .redis_store import RedisStore
from .redis_store_async import AsyncRedisStore


def _prepared(sqlite_path: str) -> None:
    """The SQLite file made ready before hishel opens it, or refused at once when it cannot be used: hishel
    would log two tracebacks on every request and answer each uncached, for the life of the process.

    Its folder is made (as hishel makes it; a bare name goes under .cache/hishel/), and the file made
    readable by its owner only: it holds what hishel stores, the answers and the requests' headers with
    them (a station's token). Made so before hishel opens it (SQLite gives its journal the file's
    permissions), or narrowed if an earlier run left it open to others."""
    path = Path(sqlite_path)
    if path.parent == Path("."):
        path = Path(".cache/hishel") / path.name
    if path.is_dir():
        _refuse(sqlite_path, "it is a folder; name a file in it")
    for above in (path.parent, *path.parent.parents):
        if above.exists():
            if not above.is_dir():
                _refuse(sqlite_path, f"{str(above)!r} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        # SQLite writes its journal beside the file, and hishel a .gitignore: the folder must take new files.
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        _refuse(sqlite_path, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
    try:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass  # another user's file we may write: theirs to narrow


def _refuse(sqlite_path: str, why: str) -> NoReturn:
    raise ConfigError(f"cache.sqlite_path {sqlite_path!r} cannot be used: {why}")


def make_storage(settings: CacheSettings, clock: Callable[[], float], *, is_async: bool) -> Any:
    """The hishel storage ``settings.storage`` names; a missing optional package is named with its extra."""
    if settings.storage == "memory":
        cls = AsyncMemoryStorage if is_async else MemoryStorage
        return cls(max_entries=settings.max_size, max_bytes=settings.max_bytes, default_ttl=settings.ttl, clock=clock)
    if settings.storage == "sqlite":
        _prepared(settings.sqlite_path)
        if is_async:
            try:
                import anysqlite  # noqa: F401
            except ImportError:
                raise ImportError("cache storage 'sqlite' on an async client needs anysqlite: "
                                  "pip install 'pywats-transport[sqlite]'") from None
            return hishel.AsyncSqliteStorage(database_path=settings.sqlite_path, default_ttl=settings.ttl,
                                             max_stream_size=MAX_BODY, max_size=settings.max_bytes)
        # A body over the bound is a download, as for the other storages: answered, not written to the file.
        # max_bytes bounds the file as it bounds the memory storage (hishel's own default is 1 GiB).
        return hishel.SqliteStorage(database_path=settings.sqlite_path, default_ttl=settings.ttl, max_stream_size=MAX_BODY,
                                    max_size=settings.max_bytes)
    require_redis("cache storage 'redis'")
    url, timeout = settings.redis_url, settings.redis_timeout
    # Fleet-wide single flight follows the coalescing switch: a miss waits for another process's fetch.
    flight = settings.coalesce_timeout if settings.coalesce else 0.0
    # Lookups have a connection of their own: taking one from the pool and giving it back cost about
    # as much as the round trip itself. A cluster or sentinel client routes every command itself.
    own = one_server(url)
    from . import redis_epoch  # imports redis: an optional extra
    from .redis_lookup import AsyncLookups, Lookups
    from .redis_slots import queue_wait

    # Each new connection checks that Redis is the process the cache was written on (redis_epoch).
    # (The sync cluster client calls its connect callback after its own handshake.)
    checked: dict[str, Any] = {"redis_connect_func": redis_epoch.check_connected if is_cluster(url)
                               else redis_epoch.check}
    achecked: dict[str, Any] = {"redis_connect_func": redis_epoch.acheck}
    if is_async:
        return AsyncRedisStore(async_client(url, timeout, **achecked), sync_client=sync_client(url, timeout, **checked),
                               reader=(lambda: AsyncLookups(lambda: async_lookup_connection(url, timeout, **achecked),
                                                            timeout)) if own else None,
                               default_ttl=settings.ttl, retry_after=settings.redis_retry_after, flight_timeout=flight,
                               max_calls=settings.redis_max_connections, call_wait=queue_wait(timeout))
    return RedisStore(sync_client(url, timeout, **checked), default_ttl=settings.ttl,
                      reader=(lambda: Lookups(lambda: lookup_connection(url, timeout, **checked))) if own else None,
                      retry_after=settings.redis_retry_after, flight_timeout=flight,
                      max_calls=settings.redis_max_connections, call_wait=queue_wait(timeout))


