"""hishel's storage as a refresh sees it: nothing found, what is fetched stored as usual.

A refresh (``Cache-Control: no-cache`` in ttl mode, the ``refresh`` extension, or a key a write made stale)
must not be answered from the storage. Removing the key's entries before it goes through hishel is not
enough on SQLite: an answer a fetch began to store before the write becomes readable when its body ends,
which may be between that removal and hishel's read. hishel takes a storage per request (the ``caching``
extension's ``storage``), so a refresh gets this view of the layer's own.
"""

from __future__ import annotations

import uuid
from typing import Any

import hishel


class FetchOnly(hishel.BaseStorage):
    def __init__(self, storage: hishel.BaseStorage) -> None:
        super().__init__(default_ttl=storage.default_ttl, default_tti=storage.default_tti,
                         max_stream_size=storage.max_stream_size)
        self._storage = storage

    def create_entry(self, *args: Any, **kwargs: Any) -> Any:
        return self._storage.create_entry(*args, **kwargs)

    def get_entries(self, key: str) -> list[Any]:
        return []

    def update_headers(self, id: uuid.UUID, headers: Any) -> None:
        self._storage.update_headers(id, headers)

    def remove_entry(self, id: uuid.UUID) -> None:
        self._storage.remove_entry(id)

    def close(self) -> None:
        """The layer's storage is closed with the layer, not with a request."""


class AsyncFetchOnly(hishel.AsyncBaseStorage):
    def __init__(self, storage: hishel.AsyncBaseStorage) -> None:
        super().__init__(default_ttl=storage.default_ttl, default_tti=storage.default_tti,
                         max_stream_size=storage.max_stream_size)
        self._storage = storage

    async def create_entry(self, *args: Any, **kwargs: Any) -> Any:
        return await self._storage.create_entry(*args, **kwargs)

    async def get_entries(self, key: str) -> list[Any]:
        return []

    async def update_headers(self, id: uuid.UUID, headers: Any) -> None:
        await self._storage.update_headers(id, headers)

    async def remove_entry(self, id: uuid.UUID) -> None:
        await self._storage.remove_entry(id)

    async def close(self) -> None:
        """The layer's storage is closed with the layer, not with a request."""
