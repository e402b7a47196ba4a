"""Exceptions raised by the transport toolkit itself (not by the WATS client)."""

from __future__ import annotations


class TransportError(Exception):
    """Base class for errors raised by pywats-transport."""


class ConfigError(TransportError, ValueError):
    """Invalid configuration: the message names each field, the value given and what is allowed."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class PluginError(TransportError, LookupError):
    """A plugin that cannot be found or two layers claiming the same name or position."""


class ThrottledError(TransportError, RuntimeError):
    """A request would have waited longer than the throttle's ``max_wait``."""

    def __init__(self, message: str, *, host: str, wait: float) -> None:
        super().__init__(message)
        self.host = host
        self.wait = wait
