"""The fleet cache's clock is Redis's: an entry's freshness is judged by it, whichever station stored the
entry and whichever reads it.

Stations' clocks may disagree: a test station without NTP may be minutes off. Judged on each station's
own clock, a station ahead took every entry the others stored for stale and fetched it again, and one
behind served entries as fresh long after they went stale (as long as Redis kept them for
stale-if-error). So each new connection of the cache reads Redis's time with the check it makes of the
Redis process (:mod:`.redis_epoch`, ``INFO server``), each miss's lease reads it again (a clock that
jumps, a time sync that came late, is set again at the next miss), and the station keeps how far its own
clock is from it. A user that may run neither ``INFO`` nor ``TIME`` gives no time: the station's own
clock is used.
"""

from __future__ import annotations

import time


class FleetClock:
    """``now()``: this station's clock set to Redis's, as the latest new connection read it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def learn(self, server_time_usec: int) -> None:
        """Redis's time (``INFO server``'s ``server_time_usec``), read just now."""
        self.offset = server_time_usec / 1e6 - time.time()

    def now(self) -> float:
        return time.time() + self.offset


#: the clock of this process's fleet cache (one Redis, or a cluster's nodes, kept on time by their hosts)
CLOCK = FleetClock()
