"""A small thread-safe cache with a time to live and a size bound, for per-worker caching.

Each API worker keeps its own (no shared store to run): what is cached is derived from the
database, the chain and InfluxDB, and is allowed to be `ttl` seconds old.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any


class TtlCache:
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        """The value if present and fresh, else None."""
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def entry(self, key: Any) -> tuple[Any, float] | None:
        """(value, seconds it stays fresh) if present and fresh, else None."""
        entry = self._data.get(key)
        left = entry[0] - time.monotonic() if entry is not None else 0.0
        return (entry[1], left) if entry is not None and left >= 0 else None

    def set(self, key: Any, value: Any, ttl: float | None = None) -> Any:
        if (ttl if ttl is not None else self.ttl) <= 0:
            return value
        with self._lock:
            self._data[key] = (time.monotonic() + (ttl if ttl is not None else self.ttl), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        """Entries held (fresh or not yet swept)."""
        return len(self._data)

    def pop(self, key: Any) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
