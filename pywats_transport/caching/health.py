"""Counting hishel storage failures, which hishel logs and swallows, and logging each kind once."""

from __future__ import annotations

import logging
import threading

STORAGE_LOGGERS = (
    "hishel._core._storages._sync_sqlite",
    "hishel._core._storages._async_sqlite",
    "hishel._core._storages._sync_redis",
    "hishel._core._storages._async_redis",
)
log = logging.getLogger("pywats_transport.cache")


class _FailureCounter(logging.Filter):
    """Counts ERROR records of hishel's storages; lets the first of each message through, drops repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        with self._lock:
            self.count += 1
            key = (record.name, str(record.msg))
            if key in self._seen:
                return False
            self._seen.add(key)
        return True

    def note(self, exc: BaseException, *, logged: bool = False) -> None:
        """An error that escaped hishel: count it and log its kind once (unless ``logged`` elsewhere)."""
        with self._lock:
            self.count += 1
            key = ("escaped", type(exc).__name__)
            first = key not in self._seen
            self._seen.add(key)
        if first and not logged:
            log.error("cache storage failed (%s: %s); requests go to the network", type(exc).__name__, exc)


FAILURES = _FailureCounter()
for _name in STORAGE_LOGGERS:
    logging.getLogger(_name).addFilter(FAILURES)
