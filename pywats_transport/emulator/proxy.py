"""A loopback TCP proxy that drops a share of requests on the floor: real dropped connections.

An ASGI app cannot drop a connection before answering (the server answers 500
instead), so faults of that kind live here, in front of the server. Every
request gets its own connections on both sides (``Connection: close``), so each
request, not only each connection, draws its own fate. Request bodies must declare a
Content-Length (chunked uploads are not parsed).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable

MAX_HEAD = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_port: int, *, drop_rate: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 rng: Callable[[], float] = random.random, upstream_host: str = "127.0.0.1") -> None:
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"drop_rate must be within 0..1, got {drop_rate}")
        self.upstream = (upstream_host, upstream_port)
        self.drop_rate = drop_rate
        self.host, self.port = host, port
        self.rng = rng
        self.dropped = 0
        self.forwarded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        length = 0
        lines = head.split(b"\r\n")
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip() or 0)
            if lname in (b"connection", b"keep-alive") or not line:
                continue
            kept.append(line)
        body = await reader.readexactly(length) if length else b""
        return b"\r\n".join([*kept, b"Connection: close", b"", b""]) + body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_request(reader)
            if request is None:
                return
            if self.rng() < self.drop_rate:
                self.dropped += 1
                writer.transport.abort()  # no response at all
                return
            self.forwarded += 1
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(request)
            await up_writer.drain()
            # The upstream closes after one response (Connection: close), and so does the client side.
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        self._server.close()
        # Handlers still waiting on a slow peer are cancelled and awaited, so that none is
        # garbage-collected pending after the loop is gone (a warning in the host's test run).
        loop.run_until_complete(self._shutdown())
        loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        # Again until none is left: a connection accepted just before the listener closed starts its
        # handler while the ones found first are being cancelled.
        while pending := asyncio.all_tasks() - {asyncio.current_task()}:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
