"""What keeps lot verification event-driven and off the threads that answer scans.

- `WindowChecks`: what the chain said of each window, shared by every lot's verification in the
  worker, keyed by the window as the ledger holds it (`ledger.verify.window_key`: a window
  anchored, confirmed, finalised or re-queued is another key) and re-asked after
  API_VERIFY_CACHE_S, since the chain can change (a reorganisation) without any database event.
- `ChangeListener`: a thread that LISTENs on PostgreSQL's `ledger_change` channel, which the
  triggers of migration 0014 notify at commit of any write to what a verification reads (every
  writer: the anchoring worker, the admin API and importers, the late digester, a hand-made SQL
  update). It hands the keys (`l<lot>`, `w<window>`, `u`, `*`) to a callback; when its connection
  drops (events may have been missed) it reports `*` once reconnected.
- `VerifierPool`: a few background threads that verify lots from a queue, scanned lots before
  start-up warming, one computation per lot at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine

from ledger.verify import WindowCheck, WindowKey

log = logging.getLogger(__name__)

CHANNEL = "ledger_change"
EVERYTHING = "*"


class WindowChecks:
    """A window's chain check, shared by lots, for `ttl` seconds from when the chain was asked; a new
    verification takes it only in the first half of that, so that its result lives long enough.

    `view()` gives one verification its own mapping, which remembers the oldest answer it used, so
    that a verification built on a shared answer expires with that answer."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict[WindowKey, tuple[float, WindowCheck]] = {}
        self._lock = threading.Lock()
        self.asked = 0  # how many times the chain was asked (tests: windows' checks are shared)

    def view(self) -> WindowView:
        return WindowView(self)

    def get(self, key: WindowKey) -> tuple[float, WindowCheck] | None:
        hit = self._data.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.ttl / 2:
            return None
        return hit

    def put(self, key: WindowKey, asked_at: float, check: WindowCheck) -> None:
        with self._lock:
            self.asked += 1
            if len(self._data) >= self.max_entries:
                now = time.monotonic()
                self._data = {k: v for k, v in self._data.items() if now - v[0] < self.ttl}
                if len(self._data) >= self.max_entries:
                    self._data.clear()
            self._data[key] = (asked_at, check)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class WindowView:
    """The `Answers` mapping of one verification (ledger.verify): shared answers, and the time the
    oldest of those it used was asked (a missing answer is asked now: `started`)."""

    def __init__(self, shared: WindowChecks) -> None:
        self.shared = shared
        self.started = time.monotonic()
        self.oldest = self.started
        self.local: dict[WindowKey, WindowCheck] = {}  # what this verification used: asked once per window

    def get(self, key: WindowKey, default: Any = None) -> WindowCheck | None:
        if key in self.local:
            return self.local[key]
        hit = self.shared.get(key)
        if hit is None:
            return default  # type: ignore[no-any-return]
        self.oldest = min(self.oldest, hit[0])
        self.local[key] = hit[1]
        return hit[1]

    def __getitem__(self, key: WindowKey) -> WindowCheck:
        hit = self.get(key)
        if hit is None:
            raise KeyError(key)
        return hit

    def __setitem__(self, key: WindowKey, value: WindowCheck) -> None:
        self.local[key] = value
        self.shared.put(key, self.started, value)  # asked during this verification: counted from its start

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __delitem__(self, key: WindowKey) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[WindowKey]:
        return iter(())

    def __len__(self) -> int:
        return 0


class Records:
    """Records rebuilt by verifications (from the database and InfluxDB), shared by lots: bags of one
    paddy lot share its growth summary, digests and events. Each entry is tagged with the lineage of
    the lot whose verification rebuilt it (every lot its record can belong to is in it), dropped on a
    change of any of those lots, and kept `max_age` seconds at most (InfluxDB announces nothing)."""

    def __init__(self, max_age: float, max_entries: int) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, int], tuple[float, frozenset[int], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.rebuilt = 0  # records rebuilt (tests: shared records are rebuilt once)

    def get(self, key: tuple[str, int]) -> dict[str, Any] | None:
        hit = self._data.get(key)
        if hit is None or time.monotonic() - hit[0] >= self.max_age:
            return None
        return hit[2]

    def commit(self, made: dict[tuple[str, int], tuple[float, dict[str, Any]]], lots: frozenset[int]) -> None:
        with self._lock:
            self.rebuilt += len(made)
            for key, (at, rec) in made.items():
                self._data[key] = (at, lots, rec)
                self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def drop_lots(self, lots: set[int]) -> None:
        with self._lock:
            for key in [k for k, (_, tags, _) in self._data.items() if tags & lots]:
                del self._data[key]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def view(self) -> RecordsView:
        return RecordsView(self)


class RecordsView:
    """The `memo` of one verification (ledger.verify): shared records, and those it rebuilt, which are
    shared once the verification knows the lot's lineage and that nothing changed meanwhile (`commit`)."""

    def __init__(self, shared: Records) -> None:
        self.shared = shared
        self.made: dict[tuple[str, int], tuple[float, dict[str, Any]]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.made or self.shared.get(key) is not None  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[str, int]) -> dict[str, Any]:
        if key in self.made:
            return self.made[key][1]
        hit = self.shared.get(key)
        if hit is None:
            raise KeyError(key)
        return hit

    def __setitem__(self, key: tuple[str, int], value: dict[str, Any]) -> None:
        self.made[key] = (time.monotonic(), value)

    def commit(self, lots: frozenset[int]) -> None:
        self.shared.commit(self.made, lots)


def libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """LISTEN ledger_change in a daemon thread; `on_keys` gets each notification's keys."""

    def __init__(self, engine: Engine, on_keys: Callable[[list[str]], None], reconnect_s: float = 1.0) -> None:
        self.url = libpq_url(engine)
        self.on_keys = on_keys
        self.reconnect_s = reconnect_s
        self.ready = threading.Event()  # set once listening (tests wait for it)
        self.since: float | None = None  # time.time() when first listening: changes before it were not heard
        self.heard = 0  # notifications received
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChangeListener:
        self._thread = threading.Thread(target=self._run, daemon=True, name="ledger-change-listener")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if not first:  # events of the gap were missed: everything derived is suspect
                        self.on_keys([EVERYTHING])
                    if first:
                        self.since = time.time()
                    first = False
                    self.ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.heard += 1
                            self.on_keys(note.payload.split(","))
            except Exception as e:  # the database restarted, a network cut: listen again
                if self._stop.is_set():
                    return
                log.warning("ledger change listener: %s; listening again in %.0f s", e, self.reconnect_s)
                self.ready.clear()
                time.sleep(self.reconnect_s)


class VerifierPool:
    """Background threads that run `verify(code)` for queued lots: scanned lots first, then warming."""

    def __init__(self, verify: Callable[[str], Any], threads: int) -> None:
        self.verify = verify
        self.threads = max(1, threads)
        self._urgent: deque[str] = deque()
        self._warm: deque[str] = deque()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._again: set[str] = set()  # asked again while running: run once more afterwards
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self.closed = False

    def start(self) -> None:
        self.closed = False
        if self._workers:
            return
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, daemon=True, name=f"verifier-{i}")
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        with self._cond:
            self.closed = True
            self._urgent.clear()
            self._warm.clear()
            self._queued.clear()
            self._cond.notify_all()
        self._workers = []

    def submit(self, code: str, *, urgent: bool = True) -> None:
        with self._cond:
            if code in self._running:
                self._again.add(code)
                return
            if code in self._queued:
                if urgent and code in self._warm:
                    self._warm.remove(code)
                    self._urgent.append(code)
                return
            self._queued.add(code)
            (self._urgent if urgent else self._warm).append(code)
            self._cond.notify()

    def busy(self, code: str) -> bool:
        return code in self._queued or code in self._running

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.closed and not self._urgent and not self._warm:
                    self._cond.wait(1.0)
                if self.closed:
                    return
                code = (self._urgent or self._warm).popleft()
                self._queued.discard(code)
                self._running.add(code)
            try:
                self.verify(code)
            except Exception:  # the verification reports its own failures; never end the thread
                log.exception("background verification of %s failed", code)
            finally:
                with self._cond:
                    self._running.discard(code)
                    again = code in self._again
                    self._again.discard(code)
            if again:
                self.submit(code)
