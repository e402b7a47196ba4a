"""Exceptions raised by the transport toolkit itself (not by the WATS client)."""

from __future__ import annotations

import httpx


class TransportError(Exception):
    """Base class for errors raised by pywats-transport."""


class ConfigError(TransportError, ValueError):
    """Invalid configuration: the message names each field, the value given and what is allowed."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class StartupError(TransportError):
    """The client service cannot start; the message is one line naming the setting or file at fault."""

    #: the process exit code for this kind of failure (see docs/service.md)
    exit_code = 1


class PluginError(TransportError, LookupError):
    """A plugin that cannot be found or two layers claiming the same name or position."""


class ThrottledError(TransportError, httpx.TimeoutException):
    """A request would have waited for a throttle token, or for room under ``max_concurrency``, longer
    than it may.

    The limit is the throttle's ``max_wait``, the request's pool timeout (a token wait is part of getting
    a connection) or what is left of the retry layer's deadline. An ``httpx.TimeoutException``, so that
    code handling httpx's timeouts handles it; the retry layer does not retry it.
    """

    def __init__(self, message: str, *, host: str, wait: float, limit: str = "max_wait",
                 request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)
        self.host = host
        self.wait = wait
        self.limit = limit
