"""Verification of a lot's trace: recompute every leaf, check its proof and the root on chain.

For each record of the lot (ledger.records.records_of_lot) the record is rebuilt from the
database, and telemetry records (growth summaries, daily digests) from InfluxDB; its leaf is
recomputed from that, never taken from storage. A daily digest is recomputed from the default
retention policy only (the readings that were on time), a supplementary digest from its batch of
late readings only (retention policy `late`, ledger/late.py), so late data never changes what was
anchored and is itself verifiable. Then each record is one of:

- **verified**: recomputed leaf equal to the anchored one, its proof leading to the window's root,
  and that root recorded by the contract (with block, time and transaction; where a
  reorganisation re-included the anchor in another block than the ledger recorded, the chain's
  block, with a note);
- **pending**: no leaf yet, its window not yet in a block, or its anchor no longer on the chain
  (a reorganisation dropped it, or the chain was reset: the window is re-queued and waits to be
  sent again, `anchor_state` "re-queued", the reason saying so). The contract holds windows
  strictly in order and counts them, so a window is taken as dropped only when its place is
  empty on chain (its number is above `windowCount()`);
- **tampered**: what the database (or InfluxDB) holds differs from what was anchored, naming the
  fields (the stored canonical bytes are checked against the chain first, so the fields listed
  are the difference between what was anchored and what is there now); or the ledger's window
  differs from the anchor at its place on chain (another root, leaf count or previous root);
- **unverifiable**: no TraceAnchor is known to check an anchored window against. A chain that
  cannot be reached raises `ChainError` (callers report "unverifiable"), never "tampered".

Verification is read-only: the anchoring worker (ledger/anchoring.py) owns the windows' states
and re-queues a dropped window itself on its next pass; the API's database role may not write
ledger tables at all.

Completeness: every leaf listed by an anchored manifest of the lot must still belong to one of
its records; a record deleted after anchoring is reported as tampered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from core.catalogue import get_catalogue
from core.influx import InfluxV1
from core.settings import Settings
from ledger import digests, growth, late, manifest
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
from ledger.anchoring import hex32, unhex
from ledger.chain import Chain
from ledger.codes import canonical_lot_uri
from ledger.merkle import leaf_hash, process_proof
from ledger.models import Lot
from ledger.proofs import proofs_of
from ledger.records import (
    RecordNotFound,
    RecordRef,
    canonical_bytes,
    chunks,
    record,
    records_many,
    records_of_lot,
    rows_where_in,
)

VERIFIED, PENDING, TAMPERED, UNVERIFIABLE = "verified", "pending", "tampered", "unverifiable"
STATUSES = (VERIFIED, PENDING, TAMPERED, UNVERIFIABLE)


def requeued_reason(windows: list[str]) -> str:
    """Why records are pending when the chain dropped their windows' anchors (the CLI, API and pages say it)."""
    if len(windows) == 1:
        return f"the anchor of window {windows[0]} was dropped by a reorganisation of the chain and waits to be re-sent"
    return (
        f"the anchors of windows {', '.join(windows)} were dropped by a reorganisation of the chain "
        "and wait to be re-sent"
    )


@dataclass
class RecordCheck:
    kind: str
    record_id: int | None
    status: str
    leaf: str | None = None
    window: str | None = None
    anchor_state: str | None = None
    block_number: int | None = None
    anchored_at: str | None = None
    tx_hash: str | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verification:
    lot_code: str
    lot_uri: str
    status: str
    records: list[RecordCheck]
    counts: dict[str, int]
    chain_id: int | None
    contract: str | None
    checked_at: str
    reason: str | None = None  # why the lot is not verified, in one sentence
    requeued: list[str] = field(default_factory=list)  # windows whose anchor the chain dropped, waiting to be re-sent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON values, by JSON path."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else key
            if key not in before:
                out.append(f"{sub}: added")
            elif key not in after:
                out.append(f"{sub}: removed")
            else:
                out += diff(before[key], after[key], sub)
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (a, b) in enumerate(zip(before, after, strict=True)) for d in diff(a, b, f"{path}[{i}]")]
    if before != after:
        return [f"{path}: {json.dumps(before, ensure_ascii=False)} -> {json.dumps(after, ensure_ascii=False)}"]
    return []


class Recomputed:
    """Daily digests recomputed from InfluxDB for a set of records: one query per plot or herd over
    all its days, instead of one per day (a season is some 180 days per plot)."""

    def __init__(self, session: Session, influx: InfluxV1, settings: Settings, refs: list[RecordRef]) -> None:
        self.digests: dict[int, tuple[int, str]] = {}
        groups: dict[tuple[str, str], list[TelemetryDigest]] = {}
        wanted = [ref.id for ref in refs if ref.kind == digests.DIGEST]
        for d in _rows(session, TelemetryDigest, wanted).values():
            groups.setdefault((d.tag, d.value), []).append(d)
        for (tag, value), rows in groups.items():
            first, last = min(r.day for r in rows), max(r.day for r in rows)
            lines = digests.canonical_days(influx, tag, value, first, last, settings.county_timezone)
            for r in rows:
                assert r.id is not None
                self.digests[r.id] = digests.digest(lines.get(r.day, []))


def _rows(session: Session, model: Any, ids: Sequence[int]) -> dict[int, Any]:
    """Rows of `model` by primary key (`session.get` of many), one query per `BULK_CHUNK` keys."""
    key = next(iter(model.__table__.primary_key.columns)).key
    out: dict[int, Any] = {}
    for part in chunks(sorted(set(ids))):
        q = select(model).where(col(getattr(model, key)).in_(part))
        out.update({getattr(r, key): r for r in session.exec(q).all()})
    return out


Memo = dict[tuple[str, int], dict[str, Any]]  # (kind, id) -> the record as last rebuilt


def current_record(
    session: Session,
    ref: RecordRef,
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
    memo: Memo | None = None,
) -> dict[str, Any]:
    """The record as the data says now: telemetry records are recomputed from InfluxDB. With `memo`
    (valid while nothing the record is made of changed: the caller drops it on a change), a record
    rebuilt before is taken from it."""
    got = current_records(session, [ref], influx, settings, recomputed, memo)[ref]
    if isinstance(got, RecordNotFound):
        raise got
    return got


_TELEMETRY = {digests.DIGEST: TelemetryDigest, late.LATE_DIGEST: LateDigest, growth.GROWTH: GrowthSummary}


def current_records(
    session: Session,
    refs: Sequence[RecordRef],
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
    memo: Memo | None = None,
) -> dict[RecordRef, dict[str, Any] | RecordNotFound]:
    """`current_record` of many records, set-based: each kind's records built in a few queries
    (`records_many`), the telemetry rows read in one query per kind. A record whose row is gone maps
    to its RecordNotFound."""
    out: dict[RecordRef, dict[str, Any] | RecordNotFound] = {}
    todo: dict[str, list[int]] = defaultdict(list)
    for ref in refs:
        if memo is not None and (ref.kind, ref.id) in memo:
            out[ref] = memo[(ref.kind, ref.id)]
        elif ref not in out:
            out[ref] = RecordNotFound(f"{ref.kind} {ref.id} not built")  # replaced below
            todo[ref.kind].append(ref.id)
    for kind, ids in todo.items():
        built = _build(session, kind, ids)
        rows = _rows(session, _TELEMETRY[kind], ids) if influx is not None and kind in _TELEMETRY else {}
        for i in ids:
            ref, rec = RecordRef(kind, i), built[i]
            if influx is not None and not isinstance(rec, RecordNotFound):
                rec = _recompute(session, ref, rec, rows.get(i), influx, settings, recomputed)
                if memo is not None:
                    memo[(kind, i)] = rec
            out[ref] = rec
    return out


def _build(session: Session, kind: str, ids: list[int]) -> dict[int, dict[str, Any] | RecordNotFound]:
    """The records of `kind` (`records_many`); one by one when a row is missing, to say which."""
    try:
        return dict(zip(ids, records_many(session, kind, ids), strict=True))
    except RecordNotFound:
        out: dict[int, dict[str, Any] | RecordNotFound] = {}
        for i in ids:
            try:
                out[i] = record(session, kind, i)
            except RecordNotFound as e:
                out[i] = e
        return out


def _recompute(
    session: Session,
    ref: RecordRef,
    rec: dict[str, Any],
    row: Any,
    influx: InfluxV1,
    settings: Settings,
    recomputed: Recomputed | None,
) -> dict[str, Any]:
    """A telemetry record's content recomputed from InfluxDB (`row`: its TelemetryDigest, LateDigest
    or GrowthSummary); other records as they are."""
    if ref.kind == digests.DIGEST:
        d: TelemetryDigest = row
        assert d is not None
        if recomputed is not None and ref.id in recomputed.digests:
            n, sha = recomputed.digests[ref.id]
        else:
            n, sha = digests.compute(influx, d.tag, d.value, d.day, settings.county_timezone)
        rec["content"] = {**rec["content"], "readings": n, "sha256": sha}
    elif ref.kind == late.LATE_DIGEST:
        ld: LateDigest = row
        assert ld is not None
        n, sha = late.compute(influx, ld, settings.county_timezone)
        rec["content"] = {**rec["content"], "readings": n, "sha256": sha}
    elif ref.kind == growth.GROWTH:
        g: GrowthSummary = row
        assert g is not None
        fresh = growth.compute(  # over the frozen season and devices, not today's events and registry
            session,
            influx,
            get_catalogue(settings.catalogue_file),
            g.lot_id,
            settings.county_timezone,
            (g.season_start, g.season_end),
            g.devices,
        )
        if fresh is not None:
            rec["content"] = fresh
    return rec


@dataclass(frozen=True)
class WindowCheck:
    """What the chain says of one window of the ledger (asked once per window and verification)."""

    status: str  # VERIFIED: its root is anchored as the ledger says; else PENDING, TAMPERED, UNVERIFIABLE
    anchor_state: str  # the ledger's state, or "re-queued" when the chain no longer holds the anchor
    reasons: tuple[str, ...] = ()
    block_number: int | None = None
    anchored_at: str | None = None
    tx_hash: str | None = None


WindowKey = tuple[Any, ...]
# window_key -> what the chain said; a plain dict per verification, or a cache shared by verifications
# (api/services/verifier.py WindowChecks) that re-asks the chain after a while
Answers = MutableMapping[WindowKey, WindowCheck]


def window_key(window: AnchorWindow) -> WindowKey:
    """A window as far as its chain check depends on the ledger: any change to it is another key."""
    return (
        window.seq,
        str(window.state),
        window.root,
        window.prev_root,
        window.leaf_count,
        window.tx_hash,
        window.block_number,
        window.block_hash,
    )


def _anchored(chain: Chain | None, window: AnchorWindow, answers: Answers | None = None) -> WindowCheck:
    """`check_window`, remembered in `answers`: a lot's hundreds of records share a few windows."""
    if answers is None:
        return check_window(chain, window)
    key = window_key(window)
    hit = answers.get(key)
    if hit is None:
        hit = answers[key] = check_window(chain, window)
    return hit


def check_window(chain: Chain | None, window: AnchorWindow) -> WindowCheck:
    """Where the window's anchor stands on chain. Read-only; ChainError when the node cannot answer.

    A root the contract does not hold is a dropped anchor (pending) only if the window's place on
    chain is empty: the contract takes windows in order and counts them, so a window numbered at
    or below `windowCount()` was anchored, with another root than the ledger's (tampered)."""
    wid, state = window.window_id, str(window.state)
    if window.state == AnchorState.requeued:
        again = f" (sent again in transaction {window.tx_hash})" if window.tx_hash else ""
        return WindowCheck(PENDING, state, (f"{requeued_reason([wid])}{again}",))
    if window.state not in ON_CHAIN:
        if window.tx_hash:
            return WindowCheck(PENDING, state, (f"window {wid} was sent in {window.tx_hash}, waiting for a block",))
        return WindowCheck(PENDING, state, (f"window {wid} waits to be sent",))
    if chain is None:
        return WindowCheck(UNVERIFIABLE, state, (f"no TraceAnchor contract is known to check window {wid} against",))
    on_chain = chain.anchor_of(window.root)
    if on_chain is None:
        count = chain.window_count()
        if window.seq > count:
            dropped = (
                f"{requeued_reason([wid])}: transaction {window.tx_hash} (block {window.block_number}) "
                f"is no longer on the chain, which holds {count} window(s)"
            )
            return WindowCheck(PENDING, str(AnchorState.requeued), (dropped,))
        return WindowCheck(
            TAMPERED,
            state,
            (
                f"the contract holds {count} windows in order, so window {wid} (number {window.seq}) was anchored, "
                f"but not with the ledger's root {window.root}: the ledger's window differs from what was anchored",
            ),
        )
    differs = []
    if on_chain.leaf_count != window.leaf_count:
        differs.append(f"leaf count: anchored {on_chain.leaf_count}, ledger {window.leaf_count}")
    if hex32(on_chain.prev_root) != window.prev_root:
        differs.append(f"previous root: anchored {hex32(on_chain.prev_root)}, ledger {window.prev_root}")
    if differs:
        return WindowCheck(TAMPERED, state, (f"window {wid} differs from what was anchored", *differs))
    anchored_at = window.block_time.isoformat() if window.block_time else None
    if on_chain.block_number == window.block_number and (
        window.block_hash is None or chain.is_canonical(on_chain.block_number, window.block_hash)
    ):
        return WindowCheck(VERIFIED, state, (), on_chain.block_number, anchored_at, window.tx_hash)
    # A reorganisation re-included the anchor elsewhere: the chain's block counts (the worker updates the ledger).
    receipt = chain.anchor_receipt(window.root, on_chain.block_number)
    return WindowCheck(
        VERIFIED,
        state,
        (
            f"re-included by a reorganisation in block {on_chain.block_number} (the ledger recorded block "
            f"{window.block_number}); the anchoring worker records the new block on its next pass",
        ),
        on_chain.block_number,
        datetime.fromtimestamp(on_chain.timestamp, UTC).isoformat(),
        hex32(receipt.tx_hash) if receipt is not None else window.tx_hash,
    )


def check_record(
    session: Session,
    ref: RecordRef,
    chain: Chain | None,
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
    answers: Answers | None = None,
    memo: Memo | None = None,
) -> RecordCheck:
    """One record's check (`check_records` of one)."""
    return check_records(session, [ref], chain, influx, settings, recomputed, answers, memo)[0]


def _leaf_rows(session: Session, refs: Sequence[RecordRef]) -> dict[RecordRef, Any]:
    """The ledger's leaf rows of the records (one per record at most), in one query: rows of the
    same ids and other kinds are left out here."""
    t = LedgerLeaf.__table__  # type: ignore[attr-defined]
    wanted = set(refs)
    kinds = sorted({ref.kind for ref in wanted})  # (kind, record_id) is the index: no scan of every leaf
    rows = rows_where_in(session, [t], t.c.record_id, {ref.id for ref in wanted}, t.c.kind.in_(kinds))
    return {ref: r for r in rows if (ref := RecordRef(r.kind, r.record_id)) in wanted}


def check_records(
    session: Session,
    refs: Sequence[RecordRef],
    chain: Chain | None,
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
    answers: Answers | None = None,
    memo: Memo | None = None,
) -> list[RecordCheck]:
    """Each record's check, in the order of `refs`, in a number of queries bounded independently of
    how many there are: the records built per kind, their leaf rows, windows and proofs read at once."""
    recs = current_records(session, refs, influx, settings, recomputed, memo)
    rows = _leaf_rows(session, refs)
    windows = _rows(session, AnchorWindow, [r.window_seq for r in rows.values() if r.window_seq is not None])
    checks: list[RecordCheck] = []
    proving: list[tuple[RecordCheck, Any, AnchorWindow]] = []  # anchored: the proof decides
    for ref in refs:
        check = RecordCheck(ref.kind, ref.id, PENDING)
        checks.append(check)
        rec = recs[ref]
        if isinstance(rec, RecordNotFound):
            check.status, check.reasons = TAMPERED, [str(rec)]
            continue
        leaf = hex32(leaf_hash(canonical_bytes(rec)))
        check.leaf = leaf
        row = rows.get(ref)
        if row is None or row.window_seq is None:
            check.reasons = ["not yet in an anchoring window"]
            if row is not None and row.leaf != leaf:
                check.status = TAMPERED
                check.reasons = ["changed after its leaf was made", *diff(json.loads(row.canonical), rec)]
            continue
        window = windows[row.window_seq]
        check.window = window.window_id
        wc = _anchored(chain, window, answers)
        check.anchor_state, check.reasons = wc.anchor_state, list(wc.reasons)
        if wc.status != VERIFIED:  # not anchored now, or not checkable: the record against the ledger's copy
            check.status = wc.status
            if row.leaf != leaf:
                check.status = TAMPERED
                check.reasons += ["changed after its leaf was made", *diff(json.loads(row.canonical), rec)]
            continue
        check.block_number, check.anchored_at, check.tx_hash = wc.block_number, wc.anchored_at, wc.tx_hash
        proving.append((check, row, window))
    proofs = proofs_of(session, [row for _, row, _ in proving])
    for (check, row, window), proof in zip(proving, proofs, strict=True):
        assert check.leaf is not None
        rec = recs[RecordRef(check.kind, row.record_id)]
        _prove(check, check.leaf, rec, row, window, proof)  # type: ignore[arg-type]
    return checks


def _prove(
    check: RecordCheck, leaf: str, rec: dict[str, Any], row: Any, window: AnchorWindow, proof: list[bytes]
) -> None:
    """An anchored record's status from its proof against the window's root."""
    if hex32(process_proof(unhex(leaf), proof)) == window.root:
        check.status = VERIFIED
        return
    check.status = TAMPERED
    # Name the changed fields, from the anchored bytes if they still prove against the root.
    stored_ok = (
        hex32(leaf_hash(row.canonical)) == row.leaf and hex32(process_proof(unhex(row.leaf), proof)) == window.root
    )
    if stored_ok:
        check.reasons = ["differs from the anchored record", *diff(json.loads(row.canonical), rec)]
    else:
        check.reasons = ["differs from the anchored record; the ledger's own copy was altered too"]


def _missing_from_manifests(
    session: Session, lot: Lot, present: set[str], chain: Chain | None, answers: Answers
) -> list[RecordCheck]:
    """Leaves named by an anchored manifest of the lot that no current record produces."""
    out = []
    rows = session.exec(select(LotManifest).where(LotManifest.lot_id == lot.id).order_by(LotManifest.version)).all()
    leaf_rows = _leaf_rows(session, [RecordRef(manifest.MANIFEST, m.id) for m in rows if m.id is not None])
    windows = _rows(session, AnchorWindow, [r.window_seq for r in leaf_rows.values() if r.window_seq])
    listed: dict[str, int] = {}
    for m in rows:
        leaf_row = leaf_rows.get(RecordRef(manifest.MANIFEST, m.id)) if m.id is not None else None
        window = windows.get(leaf_row.window_seq) if leaf_row and leaf_row.window_seq else None
        if window is None or _anchored(chain, window, answers).status != VERIFIED:
            continue
        for leaf in m.content["leaves"]:
            listed.setdefault(leaf, m.version)
    missing = sorted((kv for kv in listed.items() if kv[0] not in present), key=lambda kv: kv[1])
    by_leaf: dict[str, LedgerLeaf] = {}
    for part in chunks([leaf for leaf, _ in missing]):
        q = select(LedgerLeaf).where(col(LedgerLeaf.leaf).in_(part)).order_by(col(LedgerLeaf.id))
        for r in session.exec(q).all():
            by_leaf.setdefault(r.leaf, r)
    for leaf, version in missing:
        row = by_leaf.get(leaf)
        kind = row.kind if row else "unknown"
        if row is not None:
            try:
                record(session, row.kind, row.record_id)
                continue  # the record exists: its own check reports any change
            except RecordNotFound:
                pass
        out.append(
            RecordCheck(
                kind,
                row.record_id if row else None,
                TAMPERED,
                leaf=leaf,
                reasons=[f"listed in anchored manifest version {version} of the lot, but the record is gone"],
            )
        )
    return out


def verify_lot(
    session: Session,
    lot: Lot,
    chain: Chain | None,
    influx: InfluxV1 | None,
    settings: Settings,
    answers: Answers | None = None,
    memo: Memo | None = None,
) -> Verification:
    """The lot's verification. By default the chain is asked afresh, once per window; `answers` may
    carry window checks shared between verifications, and `memo` the records rebuilt by an earlier
    verification of the lot (incremental: only records not in it are rebuilt and recomputed)."""
    assert lot.id is not None
    refs = records_of_lot(session, lot.id)
    if answers is None:
        answers = {}
    fresh = [r for r in refs if memo is None or (r.kind, r.id) not in memo]
    recomputed = Recomputed(session, influx, settings, fresh) if influx is not None and fresh else None
    checks = check_records(session, refs, chain, influx, settings, recomputed, answers, memo)
    present = {c.leaf for c in checks if c.leaf}
    present |= set(
        session.exec(
            select(LedgerLeaf.leaf).where(
                col(LedgerLeaf.kind).in_([c.kind for c in checks]),
                col(LedgerLeaf.record_id).in_([c.record_id for c in checks if c.record_id is not None]),
            )
        ).all()
    )
    checks += _missing_from_manifests(session, lot, present, chain, answers)
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    status = next((s for s in (TAMPERED, UNVERIFIABLE, PENDING) if counts[s]), VERIFIED)
    requeued = sorted({c.window for c in checks if c.window and c.anchor_state == AnchorState.requeued})
    return Verification(
        lot_code=lot.code,
        lot_uri=canonical_lot_uri(lot),
        status=status,
        records=checks,
        counts=counts,
        chain_id=chain.chain_id if chain else None,
        contract=chain.address if chain and chain._contract is not None else None,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        reason=_summary(status, checks, requeued),
        requeued=requeued,
    )


def _summary(status: str, checks: list[RecordCheck], requeued: list[str]) -> str | None:
    """The lot's status in one sentence (None when verified)."""
    n = sum(c.status == status for c in checks)
    if status == TAMPERED:
        return f"{n} record(s) differ from what was anchored"
    if status == UNVERIFIABLE:
        return next((c.reasons[0] for c in checks if c.status == UNVERIFIABLE and c.reasons), None)
    if status == PENDING and requeued:
        return requeued_reason(requeued)
    if status == PENDING:
        return f"{n} record(s) are not anchored yet"
    return None
