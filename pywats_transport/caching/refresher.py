"""Where a sync cache layer's background refreshes (stale-while-revalidate) run: a few daemon threads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

#: background refreshes of one layer running at once (sync and async): a burst of expired keys is
#: refreshed a few at a time, each answer served stale meanwhile, not all at once against the origin,
#: each on a thread of its own
REFRESH_WORKERS = 4


class Refresher:
    """Runs jobs in arrival order on at most ``workers`` daemon threads, started when there is work and
    ended when there is none. Daemon threads: a refresh the origin keeps waiting never holds up the
    interpreter's exit."""

    def __init__(self, workers: int = REFRESH_WORKERS) -> None:
        self._workers = workers
        self._jobs: deque[Callable[[], None]] = deque()
        self._running = 0
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._jobs.append(job)
            if self._running >= self._workers:
                return
            self._running += 1
        threading.Thread(target=self._work, name="pywats-cache-refresh", daemon=True).start()

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._jobs or self._closed:
                        return
                    job = self._jobs.popleft()
                job()
        finally:
            with self._lock:
                self._running -= 1

    def close(self) -> None:
        """Drop the jobs not started; those running end on their own."""
        with self._lock:
            self._closed = True
            self._jobs.clear()
