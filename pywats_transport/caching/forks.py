"""What holds a Redis connection or a thread of its own is told when the process forks.

A child made by ``fork`` (``multiprocessing`` on Linux, a pre-forking server) inherits the parent's
sockets and none of its threads. A child that went on using the parent's lookup connection would read
answers meant for the parent, or for its siblings: entries for other URLs, served as its own. A child
that trusted the parent's near-cache subscription would hear no invalidation at all. redis-py's pools
notice a fork by themselves; a connection held outside a pool, and a thread, do not.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol


class Forked(Protocol):
    def after_fork(self) -> None:
        """Called in the child, right after the fork: drop what belongs to the parent."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def follow(obj: Forked) -> None:
    """Tell ``obj`` when this process forks (for as long as it lives)."""
    _live.add(obj)


def _in_child() -> None:
    for obj in list(_live):
        obj.after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, where there is no fork
    os.register_at_fork(after_in_child=_in_child)
