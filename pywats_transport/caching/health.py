"""Counting hishel storage failures, which hishel logs and swallows, and logging each kind once.

hishel's log records do not say which layer's storage failed: their count is the process's. Failures
that reach a layer of ours are counted by that layer."""

from __future__ import annotations

import logging
import threading

from ..config import redacted

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

    def log_once(self, exc: BaseException) -> None:
        """An error that reached a layer of ours (which counts it): log its kind once per process."""
        with self._lock:
            key = ("escaped", type(exc).__name__)
            first = key not in self._seen
            self._seen.add(key)
        if first:
            log.error("cache storage failed (%s: %s); requests go to the network", type(exc).__name__,
                      redacted(str(exc)))


FAILURES = _FailureCounter()
for _name in STORAGE_LOGGERS:
    logging.getLogger(_name).addFilter(FAILURES)
