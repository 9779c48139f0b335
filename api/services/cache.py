"""A small thread-safe cache with a time to live and a size bound, for per-worker caching.

Each API worker keeps its own (no shared store to run): what is cached is derived from the
database, the chain and InfluxDB, and is allowed to be `ttl` seconds old.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


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


class Refreshing:
    """Values computed from their key, served for `fresh_s`, then for up to `stale_s` more while one
    background thread recomputes them (stale-while-revalidate); a missing value is computed once, the
    other callers waiting for it. `compute` must open what it reads itself (it may run after the
    request that asked for it has ended)."""

    def __init__(self, fresh_s: float, stale_s: float, name: str, max_entries: int = 500) -> None:
        self.fresh_s = fresh_s
        self.stale_s = stale_s
        self.name = name
        self._data = TtlCache(fresh_s + stale_s, max_entries)  # key -> (time.monotonic() computed, value)
        self._locks: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()
        self._refreshing: set[Any] = set()
        self.computed = 0  # computations run (tests)

    def _lock(self, key: Any) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _compute(self, key: Any, compute: Callable[[], Any]) -> Any:
        value = compute()
        self.computed += 1
        if self.fresh_s > 0:
            self._data.set(key, (time.monotonic(), value))
        return value

    def get(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, float]:
        """The value and its age in seconds (0: computed now)."""
        hit = self._data.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age >= self.fresh_s:
                self._refresh_later(key, compute)
            return hit[1], age
        with self._lock(key):
            hit = self._data.get(key)
            if hit is not None:
                return hit[1], time.monotonic() - hit[0]
            return self._compute(key, compute), 0.0

    def _refresh_later(self, key: Any, compute: Callable[[], Any]) -> None:
        with self._guard:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def run() -> None:
            try:
                with self._lock(key):
                    self._compute(key, compute)
            except Exception as e:  # the stale value stays; the next request tries again
                log.warning("%s %s not refreshed: %s", self.name, key, e)
            finally:
                with self._guard:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name=f"refresh-{self.name}", daemon=True).start()

    def clear(self) -> None:
        self._data.clear()
