"""The health server's socket and protocol: bound by us (clear startup errors), bounded and timed out.

uvicorn closes idle keep-alive connections but waits forever for a request whose headers never
finish, and accepts connections without limit: a few hundred half-open connections would take the
file descriptors the queue needs. The protocol here closes a connection that has not started a
request within ``header_timeout`` and refuses connections beyond ``max_connections``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C parser (the `service` extra): several times faster per request than h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - the pure-Python parser serves just the same
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from ..errors import ConfigError, StartupError


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
        if len(self.connections) > self.max_connections:
            transport.close()  # shed at once: the descriptor goes back before any work is done
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        armed_for = self.cycle
        timer = self.loop.call_later(self.header_timeout, self._headers_overdue, armed_for)
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
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"{port_field} {port} on {host} is already in use by another program") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise BindError(f"{port_field} {port} on {host}: permission denied (ports below 1024 need privileges)") from None
        raise BindError(f"{host_field} {host!r} / {port_field} {port}: cannot listen there: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
