"""The anchoring worker: records -> leaves -> windows -> one `anchor` transaction per window.

One pass (`Anchorer.run_once`) does, in order:

1. derive: seal finished days per village (committed on its own: ingest then stores later readings
   of them as late readings) and digest each closed batch of late readings; per-plot daily
   telemetry digests for days sealed at least ANCHOR_SEAL_WAIT_S ago and growth summaries for
   seasons sealed as long (from InfluxDB; ledger/late.py), then lot manifests (from the leaves of
   each lot's records);
2. leaves: every record without a leaf gets one, computed from its canonical bytes, which are
   kept with it (records are append-only from here on: changing one is tampering); records are
   built, hashed and stored `LEAF_CHUNK` at a time with set-based queries (ledger.records.
   records_many), so a pass over a million new records takes tens of seconds and bounded memory;
   lot manifests are updated for the lots the new leaves may concern (ledger.manifest);
3. windows: leaves without a window are closed into a window when there are
   ANCHOR_WINDOW_LEAVES of them or the oldest is ANCHOR_WINDOW_SECONDS old; the Merkle tree is
   built, and root, previous window's root and every node of the tree are stored, from which
   every leaf's proof is read (ledger/proofs.py). A large pass (one whose trace records go to
   child processes) holds its leaf rows back (`_Held`) until the windows they fall in are built,
   and writes each once with its window and place; other leaves get theirs by an UPDATE;
4. send: windows go on chain strictly in order (the contract refuses a `prevRoot` that is not
   its last root); before sending, the contract is asked whether the root is already there, so
   a window is never anchored twice, even after a crash between sending and recording;
5. track: receipts, confirmations and finality; a transaction whose block left the canonical
   chain (a reorganisation) puts its window back to `re-queued`, and it is sent again; so do
   final windows whose roots the contract no longer holds (a devnet that was reset).

The chain being down only delays steps 4 and 5: leaves and windows wait in the database.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import sqlalchemy as sa
from sqlalchemy import Engine, func
from sqlmodel import Session, SQLModel, col, select

from core.catalogue import get_catalogue
from core.db import driver_value, insert_many, session_scope, sqlite_cache, update_ints
from core.influx import LATE_RP, InfluxUnavailable, InfluxV1
from core.log import get_logger
from core.settings import Settings
from ledger import digests, growth, late, leafwork, manifest, proofs
from ledger.anchor_models import (
    ON_CHAIN,
    AnchorState,
    AnchorWindow,
    GrowthSummary,
    LateDigest,
    LedgerLeaf,
    LotManifest,
    TelemetryDigest,
)
from ledger.chain import AnchorReceipt, Chain, ChainError, ChainUnavailable
from ledger.merkle import HASH_BYTES, MerkleTree
from ledger.models import EventCorrection, Inspection, Lot, TraceEvent
from ledger.records import CORRECTION, EVENT, INSPECTION, LOT, chunks, raw_rows

log = get_logger("anchor")

ZERO_ROOT = "0x" + "00" * 32
PASS_CACHE_MIB = 128  # SQLite page cache of a pass's connection: the index of a million leaf hashes fits
LEAF_CHUNK = 10_000  # records built, hashed and inserted at a time: bounds the memory of a pass
SPREAD_CHUNKS = 4  # chunks of trace rows a pass must have beyond which child processes build them

#: record kind -> the table whose rows are its records (every row gets a leaf)
SOURCES: dict[str, type[SQLModel]] = {
    LOT: Lot,
    EVENT: TraceEvent,
    INSPECTION: Inspection,
    CORRECTION: EventCorrection,
    growth.GROWTH: GrowthSummary,
    digests.DIGEST: TelemetryDigest,
    late.LATE_DIGEST: LateDigest,
    manifest.MANIFEST: LotManifest,
}


def _as_datetime(value: Any) -> datetime:
    """A created_at as the driver took it (text on SQLite), as an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def hex32(b: bytes) -> str:
    return "0x" + b.hex()


def unhex(s: str) -> bytes:
    return bytes.fromhex(s.removeprefix("0x"))


@dataclass
class PassReport:
    """What one pass did; the CLI prints it and the tests read it."""

    derived: dict[str, int] = field(default_factory=dict)
    leaves: int = 0
    windows: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # window id -> state, for windows that changed
    chain_error: str | None = None
    seal_wait_s: float | None = None  # seconds until the newest seal is safe and its days can be digested
    # seconds per step of the pass, summed over kinds and windows: records (rows -> record dicts),
    # canonical (RFC 8785 bytes), leaves (double keccak), hold_leaves (a large pass's rows into its
    # temporary file), store_leaves, plan_manifests (each lot's records, found while waiting for the
    # children), manifests, tree, proofs (the tree's pages and each leaf's place), store_proofs (the
    # pages), place_leaves (window_seq and tree_index of leaves stored before), commit, track, send
    # (the child processes' records, canonical and leaves seconds are summed into these: see
    # ledger/leafwork.py; start_children and wait_children are this process's)
    timings: dict[str, float] = field(default_factory=dict)
    children: int = 0  # child processes that built leaves (0: none, all in this process)
    children_peak_rss_mb: float = 0.0  # the largest peak resident memory of one of them
    children_cpu_s: float = 0.0  # their CPU seconds (their start included)

    def __bool__(self) -> bool:
        return bool(self.leaves or self.windows or self.sent or self.states or any(self.derived.values()))


class _Held:
    """Leaf rows of a large pass held back until their windows are built, so that each row is written
    once, with its window and place, instead of an UPDATE of every row afterwards (on SQLite that
    rewrote the whole table again: 7 s of a million-record pass): their canonical bytes wait in a
    temporary file (TMPDIR; the page cache, not this process's memory), their leaves in memory."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="village-leaves-")  # noqa: SIM115 (closed by `close`)
        # kind, record ids, leaves, canonical sizes, created_at (as the driver takes it)
        self.parts: list[tuple[str, Sequence[int], list[str], array[int], Any]] = []
        self.lots: set[int] | None = None  # lots whose manifests may grow (None: every lot)
        self.planning: Iterator[manifest.Plan] | None = None  # their plan, batch by batch
        self.plans: list[manifest.Plan] = []  # the batches planned so far

    def add(self, kind: str, ids: Sequence[int], canonical: list[bytes], leaves: list[str], created: Any) -> None:
        self.file.write(b"".join(canonical))
        self.parts.append((kind, ids, leaves, array("q", map(len, canonical)), created))

    def leaves(self) -> list[str]:
        return [leaf for part in self.parts for leaf in part[2]]

    def rows(self) -> Iterator[tuple[str, Sequence[int], list[str], list[bytes], Any]]:
        """(kind, ids, leaves, canonical bytes, created_at) of every part, in the order they came."""
        self.file.seek(0)
        for kind, ids, leaves, sizes, created in self.parts:
            data = memoryview(self.file.read(sum(sizes)))
            canonical, at = [], 0
            for n in sizes:
                canonical.append(bytes(data[at : at + n]))
                at += n
            yield kind, ids, leaves, canonical, created

    def close(self) -> None:
        self.file.close()


class Anchorer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        chain: Chain | None = None,
        influx: InfluxV1 | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        seal_wait_s: float | None = None,
    ) -> None:
        """`seal_wait_s` overrides ANCHOR_SEAL_WAIT_S, e.g. 0 where no ingest runs (readings written
        directly and completely before the pass): nothing can be in flight then."""
        self.engine = engine
        self.settings = settings
        self.chain = chain
        self.influx = influx
        self.clock = clock
        self.tz = settings.county_timezone
        self.seal_wait_s = settings.resolved_seal_wait_s() if seal_wait_s is None else seal_wait_s
        self._late_rp_ready = False
        self._manifests_checked = False  # the first pass checks every lot's manifest, later ones the touched lots
        self._timings: dict[str, float] = {}
        self._made: dict[str, dict[int, str]] = {}  # kind -> record id -> leaf of the leaves this pass stored
        self._held: _Held | None = None  # this pass's leaf rows, until their windows are built
        self._hold = True  # hold the rows of a pass that spreads over children (tests compare with False)
        self._children, self._children_rss_mb, self._children_cpu_s = 0, 0.0, 0.0
        if self.seal_wait_s < settings.ingest_registry_ttl_s and seal_wait_s is None:
            log.warning(
                "ANCHOR_SEAL_WAIT_S is shorter than INGEST_REGISTRY_TTL_S: a replica may write a sealed day "
                "after its digest",
                seal_wait_s=self.seal_wait_s,
                registry_ttl_s=settings.ingest_registry_ttl_s,
            )

    # -- 1 and 2: derived records and leaves ------------------------------------------------------------
    def seal(self) -> late.SealReport | None:
        """Move the seals in a transaction of their own, committed before any digest is computed."""
        if self.influx is None:
            return None
        now = self.clock()
        up_to = now.astimezone(ZoneInfo(self.tz)).date() - timedelta(days=1)
        if not self._late_rp_ready:  # 1.x: before ingest needs it (on 2.x the bucket <db>/late must exist)
            self.influx.ensure_retention_policy(LATE_RP)
            self._late_rp_ready = True
        with session_scope(self.engine) as session:
            villages = set(late.origin_villages(session).values())
            report = late.advance_seals(session, self.influx, villages, up_to, now, self.seal_wait_s, self.tz)
        if report.villages:
            log.info("days sealed", through=up_to.isoformat(), villages=len(report.villages))
        return report

    def derive(self, session: Session) -> dict[str, int]:
        out = {"digests": 0, "growth": 0}
        if self.influx is not None:
            now = self.clock()
            today = now.astimezone(ZoneInfo(self.tz)).date()
            safe = late.safe_days(session, now, self.seal_wait_s)
            origins = {o: safe[v] for o, v in late.origin_villages(session).items() if v in safe}
            try:
                out["digests"] = digests.ensure_digests(
                    session, self.influx, self.tz, today - timedelta(days=1), safe=origins
                )
                cat = get_catalogue(self.settings.catalogue_file)
                out["growth"] = growth.ensure_summaries(session, self.influx, cat, self.tz, today, safe_villages=safe)
            except InfluxUnavailable as e:
                log.warning("InfluxDB unavailable; telemetry records wait", error=str(e))
        return out

    def _timed(self, step: str) -> contextlib.AbstractContextManager[None]:
        return leafwork.timed(self._timings, step)

    def make_leaves(self, session: Session, kinds: list[str] | None = None) -> int:
        """Give every record of `kinds` (default: all) without a leaf its leaf; returns how many.
        Records are built, hashed and stored `LEAF_CHUNK` at a time; when there are more trace rows
        than `SPREAD_CHUNKS` chunks and ANCHOR_PROCESSES allows, child processes build and hash those
        (ledger/leafwork.py) while this one stores."""
        work: list[tuple[str, Sequence[int]]] = []
        for kind in kinds or list(SOURCES):
            table = SOURCES[kind]
            have = select(LedgerLeaf.record_id).where(LedgerLeaf.kind == kind)
            query = select(table.id).where(col(table.id).not_in(have)).order_by(table.id)  # type: ignore[attr-defined]
            made = self._made.get(kind, {})  # held rows are not in the table yet
            ids = [r[0] for r in raw_rows(session, query) if r[0] not in made]
            work += [(kind, part) for part in chunks(ids, LEAF_CHUNK)]
        processes = self.settings.anchor_processes or os.cpu_count() or 1
        url = leafwork.shareable_url(self.engine)
        shared = [w for w in work if w[0] in leafwork.SHAREABLE] if processes > 1 and url is not None else []
        worth = sum(len(part) for _, part in shared) > SPREAD_CHUNKS * LEAF_CHUNK  # children take seconds to start
        spread = leafwork.Spread(url, processes) if worth and url is not None else None
        if spread is not None and self._hold and self._held is None:
            self._held = _Held()
            if self._manifests_checked:  # the lots of the records about to get leaves, while none has its row
                self._held.lots = manifest.lots_to_check(session, None)
            # what the manifests are made from but the leaves, worked out while waiting for the children
            self._held.planning = manifest.plan(session, self._held.lots)
        from_children = iter(spread.build(shared, self._timings) if spread is not None else ())
        added = 0
        try:
            for kind, part in work:
                built = None
                if spread is not None and kind in leafwork.SHAREABLE:
                    while self._held is not None and self._held.planning is not None and spread.waiting():
                        self._plan_step(self._held)
                    try:
                        built = next(from_children)
                    except BrokenProcessPool as e:  # e.g. a __main__ that cannot be imported again
                        log.warning("leaf children failed; this process builds the rest", error=str(e))
                        spread.close()
                        spread = None
                canonical, leaves = built or leafwork.build(session, kind, part, self._timings)
                self._store(session, kind, part, canonical, leaves)
                del built, canonical, leaves
                added += len(part)
        finally:
            if spread is not None:
                spread.close()
                self._children = max(self._children, spread.processes)
                self._children_rss_mb = max(self._children_rss_mb, spread.peak_rss_mb)
                self._children_cpu_s += spread.cpu_s
        return added

    def _plan_step(self, held: _Held) -> None:
        """One batch of the manifests' plan (`manifest.plan`), or none when it is complete."""
        assert held.planning is not None
        with self._timed("plan_manifests"):
            step = next(held.planning, None)
        if step is None:
            held.planning = None
        else:
            held.plans.append(step)

    def _store(
        self, session: Session, kind: str, ids: Sequence[int], canonical: list[bytes], leaves: list[str]
    ) -> None:
        """Insert the leaf rows of records `ids` of `kind` (and remember their leaves for the manifests)."""
        leaf_t = LedgerLeaf.__table__  # type: ignore[attr-defined]
        now = driver_value(session, leaf_t, "created_at", datetime.now(UTC))
        if self._held is not None:
            with self._timed("hold_leaves"):
                self._held.add(kind, ids, canonical, leaves, now)
        else:
            with self._timed("store_leaves"):
                rows = [(kind, i, leaf, c, now) for i, leaf, c in zip(ids, leaves, canonical, strict=True)]
                insert_many(session, leaf_t, ("kind", "record_id", "leaf", "canonical", "created_at"), rows)
        self._made.setdefault(kind, {}).update(zip(ids, leaves, strict=True))

    def _store_records(self, session: Session, kind: str, ids: list[int], records: list[dict[str, Any]]) -> None:
        """Leaves of records built here (new manifest versions, from their content in memory), stored."""
        for lo in range(0, len(ids), LEAF_CHUNK):
            canonical, leaves = leafwork.leaves_of(records[lo : lo + LEAF_CHUNK], self._timings)
            self._store(session, kind, ids[lo : lo + LEAF_CHUNK], canonical, leaves)

    # -- 3: windows -------------------------------------------------------------------------------------
    def close_windows(self, session: Session, force: bool = False) -> list[AnchorWindow]:
        size, max_age = self.settings.anchor_window_leaves, self.settings.anchor_window_seconds
        windows = []
        leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
        while True:
            first = session.execute(
                sa.select(leaf.created_at).where(leaf.window_seq.is_(None)).order_by(leaf.id).limit(1)
            ).first()
            if first is None:
                break
            oldest = first.created_at if first.created_at.tzinfo else first.created_at.replace(tzinfo=UTC)
            waiting = raw_rows(
                session, sa.select(leaf.id, leaf.leaf).where(leaf.window_seq.is_(None)).order_by(leaf.id).limit(size)
            )
            age = (self.clock() - oldest).total_seconds()
            if len(waiting) < size and age < max_age and not force:
                break
            windows.append(self._window(session, [r[0] for r in waiting], [r[1] for r in waiting]))
        return windows

    def _window(self, session: Session, ids: list[int], hex_leaves: list[str]) -> AnchorWindow:
        """Build the tree over the leaves (in id order), store its nodes and each leaf's place in it."""
        window, places = self._tree(session, hex_leaves)
        with self._timed("place_leaves"):  # each leaf's window and place: one UPDATE per leaf (SQLite)
            leaf = LedgerLeaf.__table__  # type: ignore[attr-defined]
            update_ints(session, leaf, "id", ids, {"window_seq": window.seq}, {"tree_index": places})
        return window

    def _tree(self, session: Session, hex_leaves: list[str]) -> tuple[AnchorWindow, list[int]]:
        """A new window over the leaves (in id order): its tree built, its row and nodes stored; returns
        it and each leaf's place in the tree (`tree_index`)."""
        last = session.exec(select(AnchorWindow).order_by(col(AnchorWindow.seq).desc())).first()
        seq = (last.seq + 1) if last else 1
        with self._timed("tree"):
            values = np.frombuffer(bytes.fromhex("".join(h[2:] for h in hex_leaves)), dtype=np.uint8)
            tree = MerkleTree.build(values.reshape(len(hex_leaves), HASH_BYTES))
            del values
        window = AnchorWindow(
            seq=seq,
            window_id=f"w{seq:06d}",
            root=hex32(tree.root),
            prev_root=last.root if last else ZERO_ROOT,
            leaf_count=len(hex_leaves),
        )
        session.add(window)
        session.flush()
        with self._timed("proofs"):
            places = tree.tree_index.tolist()
            pages = list(proofs.pages(tree))
            del tree
        with self._timed("store_proofs"):
            proofs.store_pages(session, seq, pages)
        log.info("window closed", window=window.window_id, leaves=len(hex_leaves), root=window.root)
        return window, places

    def _place_held(self, session: Session, held: _Held, force: bool) -> list[AnchorWindow]:
        """The windows `close_windows` would close once the held rows were stored (leaves waiting from
        before first, then the held ones, in the order their rows get ids), closed now; then the held
        rows stored, each with its window and place (those of no window closed: without)."""
        size, max_age = self.settings.anchor_window_leaves, self.settings.anchor_window_seconds
        leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
        waiting = session.execute(
            sa.select(leaf.id, leaf.leaf, leaf.created_at).where(leaf.window_seq.is_(None)).order_by(leaf.id)
        ).all()
        new = held.leaves()
        # when each held leaf was made (the age of a window that starts with it)
        made_at = [created for _, ids, _, _, created in held.parts for _ in range(len(ids))]
        seqs: list[int | None] = [None] * len(new)
        places: list[int | None] = [None] * len(new)
        windows, start, total = [], 0, len(waiting) + len(new)
        while start < total:
            end = min(start + size, total)
            if start < len(waiting):
                oldest = waiting[start].created_at
                oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            else:
                oldest = _as_datetime(made_at[start - len(waiting)])
            if end - start < size and (self.clock() - oldest).total_seconds() < max_age and not force:
                break
            old, lo, hi = waiting[start:end], max(0, start - len(waiting)), max(0, end - len(waiting))
            window, tree_index = self._tree(session, [r.leaf for r in old] + new[lo:hi])
            with self._timed("place_leaves"):  # leaves waiting from before: an UPDATE each
                leaf_t = LedgerLeaf.__table__  # type: ignore[attr-defined]
                ids = [r.id for r in old]
                update_ints(
                    session, leaf_t, "id", ids, {"window_seq": window.seq}, {"tree_index": tree_index[: len(old)]}
                )
            seqs[lo:hi] = [window.seq] * (hi - lo)
            places[lo:hi] = tree_index[len(old) :]
            windows.append(window)
            start = end
        del new, made_at, waiting
        with self._timed("store_leaves"):  # every held row, once, in the order it came
            cols = ("kind", "record_id", "leaf", "canonical", "created_at", "window_seq", "tree_index")
            at = 0
            for kind, ids, leaves, canonical, created in held.rows():
                n = len(ids)
                rows = list(
                    zip(
                        [kind] * n,
                        ids,
                        leaves,
                        canonical,
                        [created] * n,
                        seqs[at : at + n],
                        places[at : at + n],
                        strict=True,
                    )
                )
                del canonical
                insert_many(session, LedgerLeaf.__table__, cols, rows)  # type: ignore[attr-defined]
                at += n
        return windows

    # -- 4 and 5: chain -------------------------------------------------------------------------------
    def send(self, session: Session, report: PassReport) -> None:
        assert self.chain is not None
        for window in session.exec(
            select(AnchorWindow).where(col(AnchorWindow.state).not_in(list(ON_CHAIN))).order_by(AnchorWindow.seq)
        ).all():
            earlier = session.exec(
                select(func.count())
                .select_from(AnchorWindow)
                .where(AnchorWindow.seq < window.seq, col(AnchorWindow.state).not_in(list(ON_CHAIN)))
            ).one()
            if earlier:
                return  # the contract takes windows in order
            if window.tx_hash and window.sent_at is not None:
                sent = window.sent_at if window.sent_at.tzinfo else window.sent_at.replace(tzinfo=UTC)
                if (self.clock() - sent).total_seconds() < self.settings.anchor_resend_s:
                    self._track_one(session, window, report)
                    if window.state not in ON_CHAIN:
                        return  # still waiting to be mined
                    continue
            existing = self.chain.anchor_of(window.root)
            if existing is not None:  # already on chain (a resend after a crash, or an old tx mined late)
                found = self.chain.anchor_receipt(window.root, existing.block_number)
                if found is not None:
                    self._record_receipt(session, window, found, report)
                    continue
            try:
                tx = self.chain.send_anchor(
                    unhex(window.root), unhex(window.prev_root), window.leaf_count, window.window_id
                )
            except ChainUnavailable:
                raise
            except ChainError as e:  # refused (e.g. another writer moved lastRoot): say why, try next pass
                window.last_error = str(e)[:500]
                session.add(window)
                log.error("anchor refused", window=window.window_id, error=str(e))
                return
            window.tx_hash, window.sent_at = hex32(tx), self.clock()
            window.attempts += 1
            window.chain_id, window.contract = self.chain.chain_id, self.chain.address
            session.add(window)
            session.flush()
            report.sent.append(window.window_id)
            log.info("anchor sent", window=window.window_id, tx=window.tx_hash)
            with contextlib.suppress(ChainError):  # a moment for the block (anvil mines just after accepting)
                self.chain.wait_mined(tx, timeout=self.settings.anchor_mine_wait_s)
            self._track_one(session, window, report)
            if window.state not in ON_CHAIN:
                return

    def track(self, session: Session, report: PassReport) -> None:
        for window in session.exec(
            select(AnchorWindow)
            .where(col(AnchorWindow.tx_hash).is_not(None), AnchorWindow.state != AnchorState.final)
            .order_by(AnchorWindow.seq)
        ).all():
            self._track_one(session, window, report)
        self._check_final(session, report)

    def _check_final(self, session: Session, report: PassReport) -> None:
        """A final anchor cannot go away on a real chain, but a devnet can be reset (or reorganised below
        its "finalized" block): when the newest final window's root is gone, re-queue every final window
        the contract no longer holds, so that it is sent again instead of waiting forever."""
        assert self.chain is not None
        final = select(AnchorWindow).where(AnchorWindow.state == AnchorState.final)
        newest = session.exec(final.order_by(col(AnchorWindow.seq).desc())).first()
        if newest is None or self.chain.anchor_of(newest.root) is not None:
            return
        log.error("final anchors are gone from the chain (reset, or reorganised below its finalized block)")
        for window in session.exec(final.order_by(AnchorWindow.seq)).all():
            if self.chain.anchor_of(window.root) is None:
                self._clear(window, AnchorState.requeued)
                session.add(window)
                report.states[window.window_id] = window.state

    def _track_one(self, session: Session, window: AnchorWindow, report: PassReport) -> None:
        assert self.chain is not None and window.tx_hash
        receipt = self.chain.receipt(window.tx_hash)
        if receipt is None:
            if window.state in ON_CHAIN:  # it was in a block that is no longer canonical
                log.warning("anchor dropped by a reorganisation; re-queued", window=window.window_id, tx=window.tx_hash)
                self._clear(window, AnchorState.requeued)
                session.add(window)
                report.states[window.window_id] = window.state
            return
        if not receipt.ok:
            window.last_error = f"transaction {window.tx_hash} reverted in block {receipt.block_number}"
            self._clear(window, window.state if window.state == AnchorState.requeued else AnchorState.pending)
            session.add(window)
            return
        self._record_receipt(session, window, receipt, report)

    def _record_receipt(self, session: Session, window: AnchorWindow, r: AnchorReceipt, report: PassReport) -> None:
        assert self.chain is not None
        depth = self.chain.depth(r.block_number)
        state = AnchorState.included
        if depth >= max(1, self.chain.confirmations):
            state = AnchorState.confirmed
        if r.block_number <= self.chain.finalized_block():
            state = AnchorState.final
        if window.block_time is None or window.block_hash != hex32(r.block_hash):
            anchored = self.chain.anchor_of(window.root)
            window.block_time = datetime.fromtimestamp(anchored.timestamp, UTC) if anchored else None
        window.tx_hash = hex32(r.tx_hash)
        window.block_number, window.block_hash, window.log_index = r.block_number, hex32(r.block_hash), r.log_index
        window.gas_used, window.chain_id, window.contract = r.gas_used, self.chain.chain_id, self.chain.address
        window.last_error = None
        if state != window.state:
            window.state = state
            report.states[window.window_id] = state
        session.add(window)

    @staticmethod
    def _clear(window: AnchorWindow, state: AnchorState) -> None:
        window.state = state
        window.tx_hash = window.block_hash = None
        window.block_number = window.log_index = window.gas_used = None
        window.block_time = window.sent_at = None

    def _pass(self, session: Session, report: PassReport, sealed: dict[str, int], force_window: bool) -> None:
        """Steps 1 to 3 of a pass, in its one transaction."""
        report.derived = {**sealed, **self.derive(session)}
        before = session.execute(sa.select(func.max(LedgerLeaf.id))).scalar() or 0
        self._made = {}
        windows: list[AnchorWindow] = []
        try:
            report.leaves = self.make_leaves(session, [k for k in SOURCES if k != manifest.MANIFEST])
            inner = ("canonical", "leaves", "store_leaves", "hold_leaves", "plan_manifests")  # timed apart
            spent = sum(self._timings.get(k, 0.0) for k in inner)
            with self._timed("manifests"):  # the leaves just made are not read back
                plans = None
                if self._held is not None:
                    lots = self._held.lots
                    while self._held.planning is not None:  # what was not planned while waiting
                        self._plan_step(self._held)
                    plans = self._held.plans
                else:
                    lots = manifest.lots_to_check(session, before) if self._manifests_checked else None
                store = functools.partial(self._store_records, session)
                made = manifest.ensure_manifests(session, lots, self._made, store, plans) if lots != set() else 0
                report.derived["manifests"] = made
            self._timings["manifests"] -= sum(self._timings.get(k, 0.0) for k in inner) - spent
            report.leaves += made + self.make_leaves(session, [manifest.MANIFEST])  # those: none, as a rule
            self._made = {}
            if self._held is not None:
                windows = self._place_held(session, self._held, force_window)
        finally:
            self._made = {}
            if self._held is not None:
                self._held.close()
                self._held = None
        windows += self.close_windows(session, force=force_window)
        report.windows = [w.window_id for w in windows]

    # -- the loop ---------------------------------------------------------------------------------------
    def run_once(self, force_window: bool = False) -> PassReport:
        report = PassReport()
        self._timings = report.timings
        self._children, self._children_rss_mb, self._children_cpu_s = 0, 0.0, 0.0
        sealed: dict[str, int] = {}
        try:
            if (seals := self.seal()) is not None:
                sealed = {"sealed": seals.sealed, "late_digests": seals.late_digests}
                report.seal_wait_s = seals.wait_s
        except InfluxUnavailable as e:  # a closed late batch could not be read: the seal waits
            log.warning("InfluxDB unavailable; seals wait", error=str(e))
        restore = None
        try:
            with session_scope(self.engine) as session:
                restore = sqlite_cache(session, PASS_CACHE_MIB)
                self._pass(session, report, sealed, force_window)
                committing = time.perf_counter()
            self._timings["commit"] = time.perf_counter() - committing
        finally:
            if restore is not None:
                restore()
        self._manifests_checked = True
        report.children, report.children_peak_rss_mb = self._children, round(self._children_rss_mb, 1)
        report.children_cpu_s = round(self._children_cpu_s, 2)
        if self.chain is not None:
            with session_scope(self.engine) as session:
                try:
                    with self._timed("track"):
                        self.track(session, report)
                    with self._timed("send"):
                        self.send(session, report)
                except ChainUnavailable as e:
                    report.chain_error = str(e)
                    log.warning("chain unavailable; windows wait", error=str(e))
        return report

    def run_forever(self, stop: threading.Event, on_pass: Callable[[PassReport], Any] | None = None) -> None:
        while not stop.is_set():
            try:
                report = self.run_once()
                if on_pass is not None:
                    on_pass(report)
            except Exception:  # one bad pass must not stop anchoring; the next one retries
                log.exception("anchoring pass failed")
            stop.wait(self.settings.anchor_interval_s)


def status(session: Session) -> dict[str, Any]:
    """Counts for dashboards and the CLI: leaves waiting, windows by state, the latest windows."""
    waiting = session.exec(
        select(func.count()).select_from(LedgerLeaf).where(col(LedgerLeaf.window_seq).is_(None))
    ).one()
    by_state = dict(session.exec(select(AnchorWindow.state, func.count()).group_by(AnchorWindow.state)).all())
    latest = session.exec(select(AnchorWindow).order_by(col(AnchorWindow.seq).desc()).limit(5)).all()
    return {
        "leaves_waiting": waiting,
        "windows": {str(k): v for k, v in by_state.items()},
        "latest": [
            {
                "window": w.window_id,
                "state": str(w.state),
                "leaves": w.leaf_count,
                "root": w.root,
                "tx": w.tx_hash,
                "block": w.block_number,
                "anchored_at": w.block_time.isoformat() if w.block_time else None,
            }
            for w in latest
        ],
    }
