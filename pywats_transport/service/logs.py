"""Logging for a long-running service: one line per condition, not one per poll.

A service that polls a broken disk or is flooded with bad connections would otherwise write the same
line (or traceback) many times a second and fill the disk it is trying to report on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: loggers whose repeats are limited while the service runs
SERVICE_LOGGERS = ("pywats_transport.service", "pywats_transport.queue", "pywats_transport.cache",
                   "pywats_transport.wats", "uvicorn.error", "asyncio")


class RepeatFilter(logging.Filter):
    """Lets the first record of each (logger, level, message template) through, then at most one per
    ``interval`` seconds, saying how many were held back meanwhile. Tracebacks of held-back records are
    dropped with them."""

    def __init__(self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval, self.clock = interval, clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            seen = self._last.get(key)
            if seen is not None and now - seen[0] < self.interval:
                self._last[key] = (seen[0], seen[1] + 1)
                return False
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # bounded, whatever the messages
                self._last.pop(next(iter(self._last)))
        held = seen[1] if seen is not None else 0
        if held:
            record.msg = f"{record.msg} ({held} similar messages suppressed in the last {self.interval:.0f}s)"
        return True


def install(interval: float = 60.0) -> Callable[[], None]:
    """Limit repeats on the service's loggers; returns a function that removes the filter again."""
    flt = RepeatFilter(interval)
    loggers = [logging.getLogger(name) for name in SERVICE_LOGGERS]
    for logger in loggers:
        logger.addFilter(flt)

    def remove() -> None:
        for logger in loggers:
            logger.removeFilter(flt)

    return remove
