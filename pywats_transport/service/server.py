"""The health server's socket and protocol: bound by us (clear startup errors), bounded and timed out.

uvicorn closes idle keep-alive connections but waits forever for a request whose headers never
finish, and accepts connections without limit: a few hundred half-open connections would take the
file descriptors the queue needs. The protocol here closes a connection that has not started a
request within ``header_timeout`` and holds at most ``max_connections``: beyond that, the connection
that has waited longest without a request is closed to make room.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C parser (httptools, a dependency): several times faster per request than h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - a platform without its wheel: the pure-Python parser serves
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from ..errors import ConfigError, StartupError

log = logging.getLogger("pywats_transport.service")


class BindError(StartupError):
    """The health (or metrics) server cannot listen where the config says."""

    exit_code = 4


class _Guard:
    """Mixed into a uvicorn protocol class: both keep ``cycle``, ``connections``, ``loop`` and ``transport``."""

    header_timeout: float = 10.0
    max_connections: int = 100
    cycle: Any
    connections: set[Any]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()
        if len(self.connections) > self.max_connections:
            # Full: make room by closing the connection that has waited longest without a
            # request (idle keep-alive or headers trickling in), as nginx reuses idle
            # connections first; a probe that does send a request must not be the one refused.
            # Only when every connection is busy is the new one closed.
            idle = [c for c in self.connections if isinstance(c, _Guard) and c is not self and c._idle()]
            victim = min(idle, key=lambda c: c._waiting_since) if idle else self
            victim.transport.close()

    def _idle(self) -> bool:
        return self.cycle is self._armed_for and not self.transport.is_closing()

    def _arm_header_timer(self) -> None:
        self._armed_for = self.cycle
        self._waiting_since = self.loop.time()
        timer = self.loop.call_later(self.header_timeout, self._headers_overdue, self._armed_for)
        self._header_timer: asyncio.TimerHandle | None = timer

    def _headers_overdue(self, armed_for: Any) -> None:
        # No new request began since the timer was armed: the client is idle or trickling headers.
        if self.cycle is armed_for and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._cancel_header_timer()
            self._arm_header_timer()

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]


class GuardedH11Protocol(_Guard, H11Protocol):
    pass


if HttpToolsProtocol is not None:
    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
        pass


# Descriptors kept for everything but health connections: the queue's files and folder scans,
# connections to WATS, logs, the event loop's own.
RESERVED_DESCRIPTORS = 64
LISTEN_BACKLOG = 1024
ACCEPT_BURST = 16


def connection_budget(max_connections: int) -> tuple[int, int]:
    """``(max_connections, accept_burst)`` that fit the process's descriptor limit, raising the
    soft limit toward the hard one first (as servers commonly do).

    asyncio accepts up to ``accept_burst`` connections per loop pass before the protocol can shed
    any, and a shed connection's descriptor is released a pass later: held connections, a few
    bursts in flight and the reserve must fit under the limit together.
    """
    burst = min(ACCEPT_BURST, max_connections)
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit of this kind
        return max_connections, burst
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_flight = 4 * burst + RESERVED_DESCRIPTORS
    needed = max_connections + in_flight
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections, burst
    fitted = max(1, soft - in_flight)
    log.warning("health_max_connections %d lowered to %d: this process may open only %d files (ulimit -n), "
                "and %d stay reserved for the queue and connections being accepted", max_connections, fitted, soft,
                in_flight)
    return fitted, burst


def protocol_class(header_timeout: float, max_connections: int, *, parser: str = "auto") -> type[Any]:
    """The guarded protocol on httptools when it is installed (``parser="auto"``), else on h11."""
    if parser not in ("auto", "h11", "httptools"):
        raise ConfigError(f"health_parser must be one of 'auto', 'h11', 'httptools', got {parser!r}")
    if parser == "httptools" and HttpToolsProtocol is None:
        raise ConfigError("health_parser 'httptools' needs the httptools package (pip install httptools), "
                          "or choose 'auto' or 'h11'")
    base: type[Any] = GuardedH11Protocol if parser == "h11" or HttpToolsProtocol is None else GuardedHttpToolsProtocol
    return type(f"Health{base.__name__}", (base,), {"header_timeout": header_timeout, "max_connections": max_connections})


def bind(host: str, port: int, *, host_field: str, port_field: str) -> socket.socket:
    """A listening socket, or a :class:`BindError` naming the setting at fault."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BindError(f"{host_field} {host!r} cannot be resolved: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it a response written in two parts waits for the
    # client's delayed ACK (~40 ms on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"{port_field} {port} on {host} is already in use by another program") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise BindError(f"{port_field} {port} on {host}: permission denied (ports below 1024 need privileges)") from None
        raise BindError(f"{host_field} {host!r} / {port_field} {port}: cannot listen there: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
