"""Encoded chart series kept in memory, so that a chart shown again costs a lookup.

A downsampled series depends only on the chunks it was read from and the range and
point budget asked for (downsample.RangePlan.signature); chunks are never changed once
written and their ids are never reused, so an answer stays right for as long as the
store exists, and new points (new chunks) simply make a new signature. Reopening a page,
a second viewer, or the UI's compare of 1,000 runs after their table: each skips the
read and the bucketing (about 0.1-0.2 ms of CPU per series, 1,000 series per chart).

One cache per store object (a process may serve several stores), bounded in bytes
(least recently used answers go first), shared by the reader threads under a lock.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable

#: Bytes of encoded series one store's cache holds at most.
MAX_BYTES = 64 << 20


class SeriesCache:
    """Encoded series by (run_id, key, plan signature); least recently used evicted."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        """The cached answer, or None."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: bytes) -> None:
        """Keep an answer (one larger than a quarter of the cache is not kept)."""
        if len(value) > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._items[key] = value
            self.size += len(value)
            while self.size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.size -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)


_CACHES: weakref.WeakKeyDictionary[object, SeriesCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(store: object) -> SeriesCache:
    """The series cache of a store (made on first use, gone with the store)."""
    with _CACHES_LOCK:
        cache = _CACHES.get(store)
        if cache is None:
            cache = _CACHES[store] = SeriesCache()
        return cache
