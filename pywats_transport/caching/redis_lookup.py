"""A hit's one round trip, on a Redis connection of the lookups' own.

A hit is one script call (``LOOK``). Through redis-py's client each call also passes its retry wrapper,
its connection lock and its observability hooks, and in asyncio a task per command for the socket
timeout: more, together, than the round trip itself. Lookups keep one redis-py connection instead, made
by a pool from the same URL and options as every other connection of the cache's (TLS, password, the
epoch check on connect), and send the script by its SHA1 (``EVALSHA``), by ``EVAL`` only when Redis does
not know it (a restart, ``SCRIPT FLUSH``), which loads it again.

What the client's retry gave is kept: a connection Redis closed (an idle timeout, a restart) is found as
it is used, and the call goes on once over a new one; a timeout is not retried, so a lookup waits at
most one timeout on a dead or hung Redis. The async connection has no socket timeout of its own: the
call runs under one deadline, which closes the connection when it passes (redis-py closes a connection
whose command was cancelled, as its answer would be read by the next).

One lookup at a time uses it (the store's ``free_reader``); others go through the client's pool. A
station looks up the same keys again and again: each one's command is packed once (by redis-py), and
kept for the next (``PACKED`` keys at most).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as Closed
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout

from .memory import keep_at_most
from .redis_keys import LOOK, look_args

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # redis-py depends on async-timeout before Python 3.11.3
    from async_timeout import timeout as _deadline

LOOK_SHA = hashlib.sha1(LOOK.encode()).hexdigest()  # noqa: S324 - Redis names scripts by their SHA1


#: keys whose packed lookup is kept (a station's lookup URLs are few; a serial number each are many)
PACKED = 1024


class _Packing:
    """The ``EVALSHA`` of each key's lookup, as packed for the connection, kept for the next."""

    def __init__(self) -> None:
        self._packed: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def _packed_look(self, conn: Any, key: str, url: str) -> Any:
        packed = self._packed.get((key, url))
        if packed is None:
            packed = conn.pack_command("EVALSHA", LOOK_SHA, *look_args(key, url))
            keep_at_most(self._packed, (key, url), packed, PACKED)
        return packed


class Lookups(_Packing):
    """Sync: ``Lookups(lambda: redis.ConnectionPool.from_url(url, ...).make_connection())``; the connection
    is made on the first lookup and connects as it sends."""

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        super().__init__()
        self._make = make_connection
        self._conn: Any = None

    def look(self, key: str, url: str) -> Any:
        try:
            return self._call(lambda conn: self._packed_look(conn, key, url))
        except NoScriptError:
            return self._call(lambda conn: conn.pack_command("EVAL", LOOK, *look_args(key, url)))

    def _call(self, pack: Callable[[Any], Any]) -> Any:
        if self._conn is None:
            self._conn = self._make()
        try:
            return self._send(pack)
        except Closed:
            self._conn.disconnect()
            return self._send(pack)

    def _send(self, pack: Callable[[Any], Any]) -> Any:
        conn = self._conn
        conn.send_packed_command(pack(conn), check_health=False)
        return conn.read_response()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()


class AsyncLookups(_Packing):
    """Async: as :class:`Lookups`, with a ``redis.asyncio`` connection made without a socket timeout, and
    ``timeout`` the deadline of each lookup (a ``redis.exceptions.TimeoutError`` when it passes)."""

    def __init__(self, make_connection: Callable[[], Any], timeout: float) -> None:
        super().__init__()
        self._make = make_connection
        self.timeout = timeout
        self._conn: Any = None

    async def look(self, key: str, url: str) -> Any:
        try:
            async with _deadline(self.timeout):
                try:
                    return await self._call(lambda conn: self._packed_look(conn, key, url))
                except NoScriptError:
                    return await self._call(lambda conn: conn.pack_command("EVAL", LOOK, *look_args(key, url)))
        except asyncio.TimeoutError:  # the deadline's
            raise RedisTimeout(f"Timeout reading from Redis after {self.timeout:g} s") from None

    async def _call(self, pack: Callable[[Any], Any]) -> Any:
        if self._conn is None:
            self._conn = self._make()
        try:
            return await self._send(pack)
        except Closed:
            await self._conn.disconnect()
            return await self._send(pack)

    async def _send(self, pack: Callable[[Any], Any]) -> Any:
        conn = self._conn
        await conn.send_packed_command(pack(conn), check_health=False)
        return await conn.read_response()

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
