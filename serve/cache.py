"""A small thread-safe LRU map (item vectors and fold-in vectors of the recall client)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Iterable

_MISSING = object()


class LRUCache:
    """Bounded mapping that forgets the least recently used entries.

    Parameters
    ----------
    capacity : int
        Entries kept; 0 disables caching (every get misses).
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default=None):
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def get_many(self, keys: Iterable[Hashable]) -> dict:
        """The cached subset of ``keys`` (one lock acquisition)."""
        keys = list(keys)
        out = {}
        with self._lock:
            for key in keys:
                value = self._data.get(key, _MISSING)
                if value is not _MISSING:
                    self._data.move_to_end(key)
                    out[key] = value
            self.hits += len(out)
            self.misses += len(keys) - len(out)
        return out

    def put(self, key: Hashable, value) -> None:
        self.put_many(((key, value),))

    def put_many(self, items: Iterable[tuple[Hashable, object]]) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            for key, value in items:
                self._data[key] = value
                self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
