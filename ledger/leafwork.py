"""Leaves of records, in this process or spread over several (the anchoring worker's first passes).

A leaf is `keccak256(keccak256(canonical_bytes(record)))` of a record built by `records_many`;
`build` makes them for one chunk of ids in the caller's session. `Spread` makes them for many
chunks in child processes, each reading the database through a connection of its own, and gives
them back in order: building records and their canonical JSON is pure Python, one core's work,
while the database only answers reads. The children see committed rows only, so only kinds whose
rows the anchoring worker itself never writes in its pass (trace rows: `SHAREABLE`) go to them.

This module imports little (no web3): the children import it, not the worker's module.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import sys
import time
import types
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from ledger.merkle import HASH_BYTES, leaf_hashes
from ledger.records import CORRECTION, EVENT, INSPECTION, LOT, canonical_bytes, records_many

#: kinds whose rows come from the importers (committed before a pass reads them), never from the
#: anchoring worker's own transaction (as growth summaries, digests and manifests do)
SHAREABLE = frozenset({LOT, EVENT, INSPECTION, CORRECTION})

Built = tuple[list[bytes], list[str]]
"""(canonical bytes, 0x-hex leaves) of a chunk of records, in the order of its ids."""


@contextlib.contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Add the seconds the block takes to `timings[step]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start


def build(session: Session, kind: str, ids: Sequence[int], timings: dict[str, float]) -> Built:
    """Canonical bytes and leaves of the records of rows `ids` of `kind` (steps timed: records,
    canonical, leaves)."""
    with timed(timings, "records"):
        recs = records_many(session, kind, ids)
    return leaves_of(recs, timings)


def leaves_of(recs: list[dict[str, Any]], timings: dict[str, float]) -> Built:
    """Canonical bytes and leaves of records (steps timed: canonical, leaves); empties `recs`."""
    with timed(timings, "canonical"):
        canonical = [canonical_bytes(r) for r in recs]
        recs.clear()
    with timed(timings, "leaves"):
        hexes = leaf_hashes(canonical).tobytes().hex()
        leaves = ["0x" + hexes[k : k + 2 * HASH_BYTES] for k in range(0, len(hexes), 2 * HASH_BYTES)]
    return canonical, leaves


def shareable_url(engine: Engine) -> str | None:
    """The engine's URL when other processes can open the same database (not an in-memory SQLite)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and (url.database in (None, "", ":memory:") or "memory" in str(url)):
        return None
    return url.render_as_string(hide_password=False)


_ENGINE: Engine | None = None  # a child's own engine


def _start(url: str) -> None:
    global _ENGINE
    from core.db import make_engine

    _ENGINE = make_engine(url)


def _child(kind: str, ids: Sequence[int]) -> tuple[Built, dict[str, float], tuple[int, float, float]]:
    """The child's work on one chunk: what `build` gives, its step times, and (pid, the child's CPU
    seconds so far, its peak resident memory in MiB)."""
    assert _ENGINE is not None
    timings: dict[str, float] = {}
    with Session(_ENGINE) as session:
        built = build(session, kind, ids, timings)
    used = resource.getrusage(resource.RUSAGE_SELF)
    return built, timings, (os.getpid(), used.ru_utime + used.ru_stime, used.ru_maxrss / 1024)


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Children spawned inside this block do not import the parent's `__main__` again (spawn runs the
    main script of the parent in each child, e.g. the whole CLI: ~1 s of CPU and ~55 MiB a child,
    measured with `village`); they need nothing from it, only this module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to import
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class Spread:
    """A pool of `processes` children (spawned on first use, stopped on `close`) that build leaves."""

    def __init__(self, url: str, processes: int) -> None:
        self.url, self.processes = url, processes
        self._pool: ProcessPoolExecutor | None = None
        self.peak_rss_mb = 0.0  # the largest peak resident memory of a child (MiB)
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds of that child so far
        self._pending: deque[Future[tuple[Built, dict[str, float], tuple[int, float, float]]]] = deque()

    def build(self, parts: Iterable[tuple[str, Sequence[int]]], timings: dict[str, float]) -> Iterator[Built]:
        """`build` of every (kind, chunk of ids) of `parts`, in order. At most two chunks per child are in flight,
        so memory stays bounded when the caller is slower than the children. The children's step
        times are added to `timings` (so they sum the children's seconds, which overlap); the
        caller's waits for them go to `timings["wait_children"]`."""
        if self._pool is None:
            with timed(timings, "start_children"):
                context = multiprocessing.get_context("spawn")  # no fork: the parent holds connections
                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=context, initializer=_start, initargs=(self.url,)
                )
        todo = iter(parts)
        pending: deque[Future[tuple[Built, dict[str, float], tuple[int, float, float]]]] = deque()
        self._pending = pending

        def submit() -> None:
            part = next(todo, None)
            if part is not None:
                assert self._pool is not None
                pending.append(self._pool.submit(_child, *part))

        with _without_main():  # the first submits start the children (spawned as tasks arrive)
            for _ in range(2 * self.processes):
                submit()
        while pending:
            with timed(timings, "wait_children"):
                built, theirs, (pid, cpu, rss) = pending.popleft().result()
            submit()
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            self._cpu[pid] = max(self._cpu.get(pid, 0.0), cpu)
            for step, seconds in theirs.items():
                timings[step] = timings.get(step, 0.0) + seconds
            yield built

    def waiting(self) -> bool:
        """Whether the next chunk `build` gives is not ready yet (the caller would wait for it)."""
        return bool(self._pending) and not self._pending[0].done()

    @property
    def cpu_s(self) -> float:
        """CPU seconds the children used up to their last chunk (their start included)."""
        return sum(self._cpu.values())

    def close(self) -> None:
        """Stop the children (without waiting for them to exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
