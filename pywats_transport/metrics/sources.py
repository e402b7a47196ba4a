"""Callables the metrics collector reads at scrape time, held so that they do not outlive their owners."""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any


def _strong(fn: Callable[[], Any]) -> Callable[[], Callable[[], Any]]:
    return lambda: fn


class Sources:
    """A bound method is held weakly: a layer nobody closed goes with its last reference, instead of living
    (with its cache and connections) as long as the process-wide collector, read at every scrape. Any other
    callable is held until it is removed."""

    def __init__(self) -> None:
        self._refs: list[Callable[[], Any]] = []
        self._lock = threading.Lock()

    def add(self, fn: Callable[[], Any]) -> None:
        ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else _strong(fn)
        with self._lock:
            self._refs.append(ref)

    def remove(self, fn: Callable[[], Any]) -> None:
        with self._lock:
            self._refs = [ref for ref in self._refs if ref() not in (None, fn)]

    def live(self) -> list[Callable[[], Any]]:
        """The sources whose owners still live (the others are let go)."""
        with self._lock:
            found = [(ref, ref()) for ref in self._refs]
            self._refs = [ref for ref, fn in found if fn is not None]
        return [fn for _, fn in found if fn is not None]

    def __len__(self) -> int:
        return len(self.live())
