"""The fleet's cache is trusted only on the Redis process it was written on.

A Redis restored from a snapshot, or a replica promoted by a failover, may hold entries that writes
dropped after the snapshot, or just before the old primary died: every station would serve them again
until they expire. So each new connection of the cache's asks Redis for its ``run_id`` (a new one for
every Redis process) and compares it with the one the cache was written on (``EPOCH``, kept in Redis
itself, so a snapshot or a replica holds the old one). On a change, the first station to see it clears
the cache, while the others go to the network; then every station uses Redis again.

A plain restart without persistence comes back empty: the clear finds nothing. On a Redis Cluster the
epoch is the ``run_id`` of the node that owns the cache's slot: a promoted replica, or the node restarted
from its snapshot, holds the old one. Every node's new connections are checked; on the others the epoch's
script answers MOVED, and there is nothing to compare.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

from redis.exceptions import AskError, ConnectionError, MovedError, ResponseError

from .redis_clock import CLOCK
from .redis_guard import log
from .redis_keys import CACHE_KEYS, CHANNEL, EPOCH

CLEAR_MS = 30_000  # how long a station's claim on clearing holds, should it die meanwhile

# KEYS[1]: the epoch key. ARGV[1]: this Redis process's run_id, ARGV[2]: ms the claim holds.
# 'ok': the cache was written here; 'busy': another station clears it; 'clear': the caller must (it
# holds the claim). A Redis the cache filled may come back full and evicting nothing: it refuses the
# claim, a write, and the caller clears without one. Another station may clear alongside, which does
# no harm, and the clear makes the room the cache needs.
CLAIM = """
local seen = redis.call('GET', KEYS[1])
if seen == ARGV[1] then
  return 'ok'
end
if seen == 'clearing:' .. ARGV[1] then
  return 'busy'
end
redis.pcall('SET', KEYS[1], 'clearing:' .. ARGV[1], 'PX', ARGV[2])
return 'clear'
"""

BUSY_WAIT = 0.5  # seconds a new connection waits for another station's clear before it gives up
BUSY = "another station is clearing the cache this Redis came back with (a restart or a failover)"


def _field(info: Any, name: str) -> str | None:
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


def _cleared(count: int) -> None:
    log.warning("Redis is a new process holding data (a restart from a snapshot, or a failover): the cache "
                "it came back with may hold entries that writes had dropped; %d keys were cleared", count)


def _steps() -> Generator[tuple[Any, ...], Any, None]:
    """The check, sans I/O: yields each command to send and is sent its answer (a ResponseError thrown in);
    ``("sleep", seconds)`` is a pause, not a command."""
    try:
        info = yield ("INFO", "server")
    except ResponseError:  # INFO refused (a managed Redis may rename it): nothing to compare with
        return
    server_time = _field(info, "server_time_usec")
    if server_time is not None and server_time.isdigit():
        CLOCK.learn(int(server_time))
    run_id = _field(info, "run_id")
    if run_id is None:
        return
    try:
        verdict = yield ("EVAL", CLAIM, 1, EPOCH, run_id, CLEAR_MS)
    except (MovedError, AskError):  # a cluster node that does not own the cache's slot
        return
    if verdict == b"ok":
        return
    if verdict == b"busy":  # mostly the empty Redis of a plain restart: a short wait sees it done
        deadline = time.monotonic() + BUSY_WAIT
        while time.monotonic() < deadline:
            yield ("sleep", 0.01)
            if (yield ("GET", EPOCH)) == run_id.encode():
                return
        raise ConnectionError(BUSY)
    cursor, count = b"0", 0
    while True:
        cursor, names = yield ("SCAN", cursor, "MATCH", CACHE_KEYS, "COUNT", 1000)
        if names:
            count += int((yield ("UNLINK", *names)))
        if cursor in (b"0", 0):
            break
    yield ("PUBLISH", CHANNEL, "*")
    try:
        yield ("SET", EPOCH, run_id)
    except ResponseError:  # still full (of data not the cache's): the next connection clears again
        pass
    if count:
        _cleared(count)


def check(conn: Any) -> None:
    """redis-py's ``redis_connect_func`` for the cache's sync connections."""
    conn.on_connect()
    check_connected(conn)


def check_connected(conn: Any) -> None:
    """As :func:`check`, on a connection whose handshake is done: the sync cluster client calls its connect
    callback after its own."""
    steps = _steps()
    try:
        command = next(steps)
        while True:
            if command[0] == "sleep":
                time.sleep(command[1])
                command = steps.send(None)
                continue
            conn.send_command(*command)
            try:
                answer = conn.read_response()
            except ResponseError as exc:
                command = steps.throw(exc)
                continue
            command = steps.send(answer)
    except StopIteration:
        return


async def acheck(conn: Any) -> None:
    """As :func:`check`, for the cache's asyncio connections."""
    await conn.on_connect()
    steps = _steps()
    try:
        command = next(steps)
        while True:
            if command[0] == "sleep":
                await asyncio.sleep(command[1])
                command = steps.send(None)
                continue
            await conn.send_command(*command)
            try:
                answer = await conn.read_response()
            except ResponseError as exc:
                command = steps.throw(exc)
                continue
            command = steps.send(answer)
    except StopIteration:
        return
