"""The one cache class of the app: ``LRUCache``, a bounded, thread-safe mapping that forgets the
least recently used entry first.

Everything viz_app keeps for reuse lives in one: loaded models (``models.ModelRegistry``), model
runs (``analyser.Analyser``), detections canvases (``image_tab``), the Learn toy's backgrounds.
Keys are values (content hashes, names, numbers, tuples of them), never ``id()`` of an object:
an id is reused once its object is collected, so a key built from one could return another
image's result.

Gradio runs event handlers on worker threads, so every operation takes the cache's own lock.
``get_or_compute`` computes a missing value *outside* that lock (other keys stay readable
meanwhile); a caller that must not compute the same value twice at once (a model run) holds its
own lock around the call, and the cache looks again once it has it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")
_MISSING = object()


class LRUCache(Generic[Key, Value]):
    """At most ``capacity`` entries (0: remember nothing, every lookup misses).

    ``hits`` / ``misses`` count ``get_or_compute`` lookups (tests and benchmarks read them).
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.hits = self.misses = 0
        self._entries: OrderedDict[Key, Value] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key, default=None):
        """The value of ``key`` (now the most recently used), else ``default``."""
        with self._lock:
            value = self._entries.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._entries.move_to_end(key)
            return value

    def put(self, key: Key, value: Value) -> Value:
        """Store ``value`` under ``key`` (dropping the least recently used beyond the capacity);
        returns ``value``."""
        with self._lock:
            if self.capacity == 0:
                return value
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return value

    def get_or_compute(self, key: Key, compute: Callable[[], Value]) -> Value:
        """The cached value of ``key``, or ``compute()`` stored under it. An exception from
        ``compute`` propagates and nothing is stored."""
        value = self.get(key, _MISSING)
        with self._lock:
            if value is _MISSING:
                self.misses += 1
            else:
                self.hits += 1
        if value is not _MISSING:
            return value
        return self.put(key, compute())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
