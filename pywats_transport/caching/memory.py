"""An in-process hishel storage bounded by entry count and by the bytes of the bodies it keeps (LRU),
for sync and async use.

Both storages share one ``_LRUCore`` guarded by a ``threading.Lock`` that is
never held across an ``await``: safe for threads and tasks alike, and the async
path never hops to a thread.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from hishel import AsyncBaseStorage, BaseStorage, Entry, Headers, Request, Response

from .index import is_under
from .url_parts import origin_of

Clock = Callable[[], float]
RecordId = uuid.UUID | int | str
# Not stored with an entry: the body is kept without its transfer coding, and a hit states its own Age.
#: response headers a stored answer does not keep: hop-by-hop framing, the age (recomputed on each hit),
#: and Set-Cookie, which a replay would hand to later requests (on the fleet, to other stations): a
#: session another client was given, or an old one over the client's newer cookie. The answer that was
#: fetched keeps it.
NOT_KEPT = frozenset({b"transfer-encoding", b"age", b"set-cookie"})
#: fetches in flight whose store is still awaited, at most (one token per key)
_MAX_PENDING = 10_000
#: the largest body a cache stores (a bigger one is answered, not kept: a download, not a lookup)
MAX_BODY = 10 * 1024 * 1024
_direct_ids = itertools.count(1)


def keep_at_most(kept: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    """``kept[key] = value``, the oldest let go first to hold ``size`` at most (threads may share ``kept``)."""
    while len(kept) >= size:
        try:
            kept.popitem(last=False)
        except KeyError:  # another thread emptied it meanwhile
            break
    kept[key] = value


@dataclass
class Record:
    #: hishel's entries get a UUID, the layer's own path a cheaper counter value, a Redis entry its field
    id: RecordId
    key: str
    request: Request
    status_code: int
    headers: Headers | None  # hishel's form; built on demand for entries stored by the layer's fast path
    body: bytes
    ttl_deadline: float | None
    tti: float | None
    expires_at: float | None
    raw_headers: list[tuple[bytes, bytes]] | None = None
    #: the request header values the response's ``Vary`` names (the layer's path); None: any request matches
    vary: tuple[tuple[str, str | None], ...] | None = None
    #: when the entry stops being fresh; it is kept past that (``expires_at``) for the stale windows
    fresh_until: float = float("inf")
    stored_at: float = 0.0
    #: the response's age when stored
    age: float = 0.0
    #: RFC 5861: seconds past ``fresh_until`` the entry may answer when the origin fails / while it is refreshed
    stale_if_error: float = 0.0
    stale_while_revalidate: float = 0.0
    #: how ``vary`` keeps a value (a digest in the fleet's Redis, see :mod:`.redis_frame`); None: as sent
    vary_digest: Callable[[str | None], str | None] | None = field(default=None, repr=False, compare=False)
    #: the headers of a hit as httpx holds them, and the raw list they were built from
    _response_headers: tuple[list[tuple[bytes, bytes]], httpx.Headers] | None = field(
        default=None, init=False, repr=False, compare=False)

    def copied(self) -> Record:
        """A copy to time and serve (its fields may be set), sharing the values nothing changes in place:
        the body, the header lists, and the headers built for a hit."""
        copy = object.__new__(Record)
        copy.__dict__.update(self.__dict__)
        return copy

    def matches(self, method: str, headers: Any) -> bool:
        if self.request.method != method:
            return False
        if self.vary is None:
            return True
        kept = self.vary_digest
        if kept is None:
            return all(headers.get(name) == value for name, value in self.vary)
        return all(kept(headers.get(name)) == value for name, value in self.vary)

    def httpx_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as httpx takes them, converted once per entry rather than once per hit."""
        if self.raw_headers is None:
            h = self.headers or Headers({})
            self.raw_headers = [(k.encode(), v.encode()) for k in h for v in h.get_list(k) or []]
        return self.raw_headers

    def response_headers(self) -> httpx.Headers:
        """The headers of a hit, built once per entry: a response copies them, which costs less than
        building them from bytes on every hit."""
        raw = self.httpx_headers()
        built = self._response_headers
        if built is None or built[0] is not raw:  # a 304 or an update replaced the headers since
            built = self._response_headers = (raw, httpx.Headers(raw))
        return built[1]

    def hishel_headers(self) -> Headers:
        if self.headers is None:
            self.headers = hishel_headers(self.raw_headers or ())
        return self.headers


def hishel_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Raw header pairs as hishel keeps them: names in lower case, each with its values."""
    grouped: dict[str, list[str]] = {}
    for k, v in raw:
        grouped.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
    return Headers(grouped)


class _LRUCore:
    def __init__(self, max_entries: int, clock: Clock, max_bytes: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._records: OrderedDict[RecordId, Record] = OrderedDict()
        #: the bytes of the bodies in ``_records``: every way in and out keeps it
        self.body_bytes = 0
        self._by_key: dict[str, list[RecordId]] = {}
        self._lock = threading.Lock()
        self.evictions = 0
        self.expirations = 0
        # key -> the token of the answer being fetched for it, and its URL; dropping the key, or an
        # invalidation of a path above the URL, withdraws the token, so an answer that completes after its
        # entry was invalidated, cleared or refreshed is not stored.
        self._pending: dict[str, tuple[object, Any]] = {}
        self.closed = False
        #: called (outside the lock) with the keys that lost their last entry to eviction or expiry, so that
        #: what indexes keys elsewhere stays bounded by ``max_entries`` too
        self.on_forget: Callable[[list[str]], None] | None = None

    def __len__(self) -> int:
        return len(self._records)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the cache's memory storage is closed")

    def begin(self, key: str, url: Any = None) -> object:
        """A token for an answer about to be fetched for ``key`` (from ``url``, an ``httpx.URL``); :meth:`add`
        with it stores only if still valid: no drop of the key, no clear, no newer token, and no
        :meth:`withdraw_under` a prefix of the URL since."""
        token = object()
        with self._lock:
            if len(self._pending) >= _MAX_PENDING:
                # Tokens of fetches that ended without a store or an abandon (an exception on the way):
                # withdrawing them costs at most a store, never a wrong answer.
                self._pending.clear()
            self._pending[key] = (token, url)
        return token

    def abandon(self, key: str, token: object | None) -> None:
        if token is None:
            return
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and pending[0] is token:
                del self._pending[key]

    def fetching(self) -> bool:
        """Whether any answer is being fetched (a token is out)."""
        return bool(self._pending)

    def withdraw_under(self, targets: list[tuple[str | None, str]]) -> None:
        """An invalidation of these (origin, path) prefixes (origin None: any): the answers being fetched
        for URLs under them are not stored, whether their keys were ever stored or not."""
        with self._lock:
            for key, (_, url) in list(self._pending.items()):
                if url is not None and any((origin is None or origin_of(url) == origin) and is_under(url.path, path)
                                           for origin, path in targets):
                    del self._pending[key]

    def add(self, record: Record, token: object | None = None, *, replace_variant: bool = False) -> bool:
        forgotten: list[str] = []
        try:
            return self._add(record, token, replace_variant, forgotten)
        finally:
            if forgotten and self.on_forget is not None:
                self.on_forget(forgotten)

    def _add(self, record: Record, token: object | None, replace_variant: bool, forgotten: list[str]) -> bool:
        with self._lock:
            self._check_open()
            if token is not None:
                pending = self._pending.get(record.key)
                if pending is None or pending[0] is not token:
                    return False
                del self._pending[record.key]
            if self.max_bytes is not None and len(record.body) > self.max_bytes:
                return False  # it would push out everything else, and still not fit
            if replace_variant:
                # One entry per variant: a newer response for the same request headers replaces the older.
                for old_id in list(self._by_key.get(record.key, ())):
                    old = self._records[old_id]
                    if old.request.method == record.request.method and old.vary == record.vary:
                        del self._records[old_id]
                        self.body_bytes -= len(old.body)
                        self._unindex(old)
            replaced = self._records.get(record.id)
            self._records[record.id] = record
            self.body_bytes += len(record.body) - (len(replaced.body) if replaced is not None else 0)
            self._by_key.setdefault(record.key, []).append(record.id)
            while len(self._records) > self.max_entries or \
                    (self.max_bytes is not None and self.body_bytes > self.max_bytes):
                _, oldest = self._records.popitem(last=False)
                self.body_bytes -= len(oldest.body)
                self._unindex(oldest)
                self.evictions += 1
                if oldest.key not in self._by_key:
                    forgotten.append(oldest.key)
            return True

    def _unindex(self, record: Record) -> None:
        ids = self._by_key.get(record.key)
        if ids is not None:
            if record.id in ids:
                ids.remove(record.id)
            if not ids:
                del self._by_key[record.key]

    def lookup(self, key: str) -> list[Record]:
        found = self._lookup(key)
        if found is None:  # expired, and no entry left for the key
            if self.on_forget is not None:
                self.on_forget([key])
            return []
        return found

    def _lookup(self, key: str) -> list[Record] | None:
        now = self.clock()
        with self._lock:
            self._check_open()
            ids = self._by_key.get(key)
            if not ids:
                return []
            found = []
            for record_id in list(ids):
                record = self._records[record_id]
                if record.expires_at is not None and record.expires_at <= now:
                    del self._records[record_id]
                    self.body_bytes -= len(record.body)
                    self._unindex(record)
                    self.expirations += 1
                    continue
                if record.tti is not None:
                    record.expires_at = min(
                        x for x in (record.ttl_deadline, now + record.tti) if x is not None
                    )
                self._records.move_to_end(record_id)
                found.append(record)
            return found if found or key in self._by_key else None

    def refresh(self, record: Record, raw_headers: list[tuple[bytes, bytes]], fresh_for: float, age: float) -> None:
        """A revalidated entry (304): new headers, fresh again from now."""
        now = self.clock()
        with self._lock:
            record.raw_headers, record.headers = [(k, v) for k, v in raw_headers if k.lower() not in NOT_KEPT], None
            record.fresh_until, record.stored_at, record.age = now + fresh_for, now, age
            keep = record.fresh_until + max(record.stale_if_error, record.stale_while_revalidate)
            if record.expires_at is not None:
                record.expires_at = max(record.expires_at, keep)

    def update_headers(self, record_id: uuid.UUID, headers: Headers) -> None:
        with self._lock:
            record = self._records.get(record_id)
            if record is not None:
                record.headers = headers
                record.raw_headers = None

    def remove(self, record_id: uuid.UUID) -> None:
        with self._lock:
            record = self._records.pop(record_id, None)
            if record is not None:
                self.body_bytes -= len(record.body)
                self._unindex(record)

    def drop_keys(self, keys: list[str]) -> int:
        with self._lock:
            n = 0
            for key in keys:
                self._pending.pop(key, None)
                for record_id in self._by_key.pop(key, ()):
                    if (record := self._records.pop(record_id, None)) is not None:
                        self.body_bytes -= len(record.body)
                        n += 1
            return n

    def clear(self) -> int:
        with self._lock:
            n = len(self._records)
            self._records.clear()
            self.body_bytes = 0
            self._by_key.clear()
            self._pending.clear()
            return n


class _MemoryBase:
    def __init__(
        self,
        *,
        max_entries: int = 1000,
        max_bytes: int | None = None,
        default_ttl: float | None = None,
        default_tti: float | None = None,
        max_stream_size: int | None = MAX_BODY,
        clock: Clock = time.time,
    ) -> None:
        self.default_ttl = default_ttl
        self.default_tti = default_tti
        self.max_stream_size = max_stream_size
        self._core = _LRUCore(max_entries, clock, max_bytes)

    @property
    def evictions(self) -> int:
        return self._core.evictions

    @property
    def body_bytes(self) -> int:
        """The bytes of the bodies kept."""
        return self._core.body_bytes

    def __len__(self) -> int:
        return len(self._core)

    def __bool__(self) -> bool:
        # An empty storage is still a storage (hishel tests `storage or default`).
        return True

    def clear(self) -> int:
        return self._core.clear()

    def close(self) -> None:
        self._core.closed = True

    def begin(self, key: str, url: Any = None) -> object:
        return self._core.begin(key, url)

    def fetching(self) -> bool:
        return self._core.fetching()

    def withdraw_under(self, targets: list[tuple[str | None, str]]) -> None:
        self._core.withdraw_under(targets)

    def abandon(self, key: str, token: object | None) -> None:
        self._core.abandon(key, token)

    def drop_keys(self, keys: list[str]) -> int:
        return self._core.drop_keys(keys)

    def refresh(self, record: Record, raw_headers: list[tuple[bytes, bytes]], fresh_for: float, age: float) -> None:
        self._core.refresh(record, raw_headers, fresh_for, age)

    def store(self, key: str, method: str, url: str, status: int, raw_headers: list[tuple[bytes, bytes]],
              body: bytes, ttl: float | None, *, vary: tuple[tuple[str, str | None], ...] | None = None,
              token: object | None = None, fresh_for: float | None = None, age: float = 0.0,
              stale_if_error: float = 0.0, stale_while_revalidate: float = 0.0) -> bool:
        """Store a complete response directly (the layer's path), skipping hishel's entry streams.

        Fresh for ``fresh_for`` seconds (default: ``ttl``) but never past ``ttl``; kept for ``ttl`` (a
        stale entry can still be revalidated) or past its freshness for the stale windows, if longer. ``token`` (from :meth:`begin`) makes the store conditional: it fails once the key
        was dropped meanwhile.
        """
        now = self._core.clock()
        ttl = ttl if ttl is not None else self.default_ttl
        fresh = fresh_for if fresh_for is not None else ttl
        if ttl is not None and fresh is not None:
            fresh = min(fresh, ttl)
        deadline = None
        if fresh is not None:
            deadline = now + max(ttl if ttl is not None else fresh, fresh + max(stale_if_error, stale_while_revalidate))
        if self._too_big(len(body)):
            if token is not None:
                self._core.abandon(key, token)
            return False
        record = Record(next(_direct_ids), key, Request(method, url), status, None, body, deadline, None, deadline,
                         [(k, v) for k, v in raw_headers if k.lower() not in NOT_KEPT], vary,
                         now + fresh if fresh is not None else float("inf"), now, age, stale_if_error,
                         stale_while_revalidate)
        return self._core.add(record, token, replace_variant=True)

    def find(self, key: str, method: str, headers: Any = None) -> Record | None:
        """The stored record for ``key`` answering ``method`` (and, by ``Vary``, these request headers)."""
        for record in self._core.lookup(key):
            if record.matches(method, headers if headers is not None else {}):
                return record
        return None

    def _new_record(self, request: Request, response: Response, key: str, ttl: float | None, tti: float | None) -> Record:
        now = self._core.clock()
        ttl = ttl if ttl is not None else self.default_ttl
        tti = tti if tti is not None else self.default_tti
        deadline = now + ttl if ttl is not None else None
        expires = min((x for x in (deadline, now + tti if tti is not None else None) if x is not None), default=None)
        return Record(uuid.uuid4(), key, request, response.status_code, response.headers, b"", deadline, tti, expires)

    def _saved(self, record: Record, chunks: list[bytes], token: object) -> None:
        self._core.add(replace(record, body=b"".join(chunks)), token)

    def _too_big(self, size: int) -> bool:
        return self.max_stream_size is not None and size > self.max_stream_size

    @staticmethod
    def _entry(record: Record, stream: Iterator[bytes] | AsyncIterator[bytes]) -> Entry:
        return Entry(record.id,  # type: ignore[arg-type]  # the layer's own records count with ints
                      record.request, Response(record.status_code, record.hishel_headers(), stream))


def announced_over(headers: Any, limit: int | None) -> bool:
    """The answer's ``Content-Length`` says it is a download, over ``limit`` bytes, before it is read."""
    length = headers.get("content-length")
    return limit is not None and isinstance(length, str) and length.isdigit() and int(length) > limit


class Kept:
    """A body read through to its caller, kept while it fits ``limit`` bytes (None: any size): a bigger
    one is a download, not a lookup, and is answered without being held for the cache."""

    __slots__ = ("chunks", "size", "limit")

    def __init__(self, limit: int | None = MAX_BODY) -> None:
        self.chunks: list[bytes] | None = []
        self.size, self.limit = 0, limit

    def add(self, chunk: bytes) -> bool:
        """Keep ``chunk``; True when it made the body outgrow the limit (it is let go then, once)."""
        if self.chunks is not None:
            self.size += len(chunk)
            if self.limit is not None and self.size > self.limit:
                self.chunks = None
                return True
            self.chunks.append(chunk)
        return False


class _Body:
    """A body being read through: kept while it fits ``max_stream_size``, stored once complete."""

    __slots__ = ("storage", "record", "kept", "token")

    def __init__(self, storage: _MemoryBase, record: Record) -> None:
        self.storage, self.record = storage, record
        self.kept = Kept(storage.max_stream_size)
        self.token = storage.begin(record.key)

    def add(self, chunk: bytes) -> None:
        self.kept.add(chunk)

    def complete(self) -> None:
        if self.kept.chunks is not None:
            self.storage._saved(self.record, self.kept.chunks, self.token)
        else:
            self.storage.abandon(self.record.key, self.token)


class MemoryStorage(_MemoryBase, BaseStorage):
    """Sync in-process storage with LRU eviction at ``max_entries``."""

    def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        record = self._new_record(request, response, key, ttl, tti)
        source = response.stream if response.stream is not None else iter(())
        assert isinstance(source, Iterator), "sync storage needs a sync stream"

        body = _Body(self, record)  # claimed now: dropping the key from here on withdraws the save

        def saving() -> Iterator[bytes]:
            for chunk in source:
                body.add(chunk)
                yield chunk
            body.complete()

        return self._entry(record, saving())

    def get_entries(self, key: str) -> list[Entry]:
        return [self._entry(r, iter((r.body,))) for r in self._core.lookup(key)]

    def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002
        self._core.update_headers(id, headers)

    def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002
        self._core.remove(id)


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


class AsyncMemoryStorage(_MemoryBase, AsyncBaseStorage):
    """Async in-process storage with LRU eviction at ``max_entries``; no thread hop."""

    async def create_entry(
        self, request: Request, response: Response, key: str, *, ttl: float | None = None, tti: float | None = None
    ) -> Entry:
        record = self._new_record(request, response, key, ttl, tti)
        source = response.stream

        body = _Body(self, record)  # claimed now: dropping the key from here on withdraws the save

        async def saving() -> AsyncIterator[bytes]:
            if source is not None:
                assert isinstance(source, AsyncIterator) or hasattr(source, "__aiter__"), "async storage needs an async stream"
                async for chunk in source:  # type: ignore[union-attr]
                    body.add(chunk)
                    yield chunk
            body.complete()

        return self._entry(record, saving())

    async def get_entries(self, key: str) -> list[Entry]:
        return [self._entry(r, _one(r.body)) for r in self._core.lookup(key)]

    async def update_headers(self, id: uuid.UUID, headers: Headers) -> None:  # noqa: A002
        self._core.update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:  # noqa: A002
        self._core.remove(id)

    async def close(self) -> None:  # type: ignore[override]
        self._core.closed = True
