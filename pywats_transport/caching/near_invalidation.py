"""The near cache's ear: a thread subscribed to the fleet's invalidation channel in Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import forks
from .redis_keys import CHANNEL


class NearInvalidation:
    """Listens on the invalidation channel in a thread and hands each message to ``on_message``.

    Losing the connection loses messages: ``on_lost`` is called then (the near cache drops everything),
    and the subscription resumes when Redis answers again.
    """

    def __init__(self, client: Any, on_message: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        self.on_message, self.on_lost = on_message, on_lost
        self.client = client  # held: a collected client closes its pool, and the subscription with it
        self.pubsub: Any = None  # made in the thread: a cluster client connects when first used
        #: subscribed, and no message lost since: only then may the near cache keep entries
        self.listening = False
        self._forked = False  # in a child forked since: its own thread is yet to start
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.thread = self._start()
        # Entries kept before the subscription holds could miss an invalidation: wait for it (briefly).
        self._subscribed.wait(2.0)
        forks.follow(self)

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="pywats-near-cache", daemon=True)
        thread.start()
        return thread

    def after_fork(self) -> None:
        """In a forked child, which has neither the parent's thread nor a connection of its own (see
        :mod:`.forks`): what the parent kept near may have been invalidated since, unheard. Nothing is
        kept near until the child's own subscription holds; it starts when the child first asks
        (:meth:`heard`), not here, where a child about to ``exec`` would start a thread for nothing."""
        self.listening = False
        self.pubsub = None
        self._forked = True
        self.on_lost()

    def heard(self) -> bool:
        """Whether every invalidation since the subscription began has been heard: only then may the near
        cache keep an entry."""
        if self._forked and not self._stop.is_set():
            self._forked = False
            self._subscribed = threading.Event()
            self.thread = self._start()
        return self.listening

    def _run(self) -> None:
        # One thread owns the connection: redis-py's PubSub is not safe to share between threads.
        while not self._stop.is_set():
            try:
                if not self.listening:
                    self._subscribe()
                    self.listening = True
                    self._subscribed.set()
                message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            except Exception:
                self.listening = False
                self._subscribed.set()  # nothing to wait for at start: Redis is not there
                if self._stop.is_set():
                    return
                self.on_lost()
                self._stop.wait(0.2)  # then read again: redis-py reconnects and subscribes again
                continue
            if message and message.get("type") == "message":
                data = message.get("data")
                self.on_message(data.decode() if isinstance(data, bytes) else str(data))

    def _subscribe(self) -> None:
        if self.pubsub is None:
            self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        if not self.pubsub.channels:  # else redis-py subscribes again as it reconnects
            self.pubsub.subscribe(CHANNEL)
        self.pubsub.get_message(timeout=1.0)  # the subscription's confirmation (or a reconnection)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        try:
            if self.pubsub is not None:
                self.pubsub.close()
        except Exception:  # noqa: S110 - closing a dead connection
            pass
