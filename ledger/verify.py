"""Verification of a lot's trace: recompute every leaf, check its proof and the root on chain.

For each record of the lot (ledger.records.records_of_lot) the record is rebuilt from the
database, and telemetry records (growth summaries, daily digests) from InfluxDB; its leaf is
recomputed from that, never taken from storage. A daily digest is recomputed from the default
retention policy only (the readings that were on time), a supplementary digest from its batch of
late readings only (retention policy `late`, ledger/late.py), so late data never changes what was
anchored and is itself verifiable. Then:

- no leaf yet, or its window not yet in a block: **pending**;
- recomputed leaf equal to the anchored one, its proof leading to the window's root, and that
  root recorded by the contract: **verified** (with block, time and transaction);
- otherwise **tampered**, naming what differs: the stored canonical bytes are checked against
  the chain first, so the fields listed are the difference between what was anchored and what
  the database (or InfluxDB) holds now.

Completeness: every leaf listed by an anchored manifest of the lot must still belong to one of
its records; a record deleted after anchoring is reported as tampered.
"""

from __future__ import annotations

import json
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
from ledger.proofs import proof_of
from ledger.records import RecordNotFound, RecordRef, canonical_bytes, record, records_of_lot

VERIFIED, PENDING, TAMPERED = "verified", "pending", "tampered"


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
        for ref in refs:
            if ref.kind == digests.DIGEST and (d := session.get(TelemetryDigest, ref.id)) is not None:
                groups.setdefault((d.tag, d.value), []).append(d)
        for (tag, value), rows in groups.items():
            first, last = min(r.day for r in rows), max(r.day for r in rows)
            lines = digests.canonical_days(influx, tag, value, first, last, settings.county_timezone)
            for r in rows:
                assert r.id is not None
                self.digests[r.id] = digests.digest(lines.get(r.day, []))


def current_record(
    session: Session,
    ref: RecordRef,
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
) -> dict[str, Any]:
    """The record as the data says now: telemetry records are recomputed from InfluxDB."""
    rec = record(session, ref.kind, ref.id)
    if influx is None:
        return rec
    if ref.kind == digests.DIGEST:
        d = session.get(TelemetryDigest, ref.id)
        assert d is not None
        if recomputed is not None and ref.id in recomputed.digests:
            n, sha = recomputed.digests[ref.id]
        else:
            n, sha = digests.compute(influx, d.tag, d.value, d.day, settings.county_timezone)
        rec["content"] = {**rec["content"], "readings": n, "sha256": sha}
    elif ref.kind == late.LATE_DIGEST:
        ld = session.get(LateDigest, ref.id)
        assert ld is not None
        n, sha = late.compute(influx, ld, settings.county_timezone)
        rec["content"] = {**rec["content"], "readings": n, "sha256": sha}
    elif ref.kind == growth.GROWTH:
        g = session.get(GrowthSummary, ref.id)
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


Answers = dict[tuple[str, int | None], tuple[bool, str | None]]


def _anchored(chain: Chain | None, window: AnchorWindow, answers: Answers | None = None) -> tuple[bool, str | None]:
    """Is the window's root recorded by the contract (in the block we recorded)? With `answers`,
    one RPC call per window and verification (a lot's hundreds of records share a few windows)."""
    if answers is None:
        return _ask_chain(chain, window)
    key = (window.root, window.block_number)
    if key not in answers:
        answers[key] = _ask_chain(chain, window)
    return answers[key]


def _ask_chain(chain: Chain | None, window: AnchorWindow) -> tuple[bool, str | None]:
    if chain is None:
        return False, "no chain connection to check the root against"
    on_chain = chain.anchor_of(window.root)
    if on_chain is None:
        return False, f"root {window.root} of window {window.window_id} is not recorded by the contract"
    if window.block_number is not None and on_chain.block_number != window.block_number:
        return False, f"root anchored in block {on_chain.block_number}, ledger says {window.block_number}"
    return True, None


def check_record(
    session: Session,
    ref: RecordRef,
    chain: Chain | None,
    influx: InfluxV1 | None,
    settings: Settings,
    recomputed: Recomputed | None = None,
    answers: Answers | None = None,
) -> RecordCheck:
    check = RecordCheck(ref.kind, ref.id, PENDING)
    try:
        rec = current_record(session, ref, influx, settings, recomputed)
    except RecordNotFound as e:
        check.status, check.reasons = TAMPERED, [str(e)]
        return check
    leaf = hex32(leaf_hash(canonical_bytes(rec)))
    check.leaf = leaf
    row = session.exec(select(LedgerLeaf).where(LedgerLeaf.kind == ref.kind, LedgerLeaf.record_id == ref.id)).first()
    if row is None or row.window_seq is None:
        check.reasons = ["not yet in an anchoring window"]
        if row is not None and row.leaf != leaf:
            check.status = TAMPERED
            check.reasons = ["changed after its leaf was made", *diff(json.loads(row.canonical), rec)]
        return check
    window = session.get(AnchorWindow, row.window_seq)
    assert window is not None
    check.window, check.anchor_state = window.window_id, str(window.state)
    if window.state not in ON_CHAIN:
        check.reasons = [f"window {window.window_id} is {window.state}"]
        if row.leaf != leaf:
            check.status = TAMPERED
            check.reasons.append("changed after its leaf was made")
            check.reasons += diff(json.loads(row.canonical), rec)
        return check
    ok, why = _anchored(chain, window, answers)
    check.block_number, check.tx_hash = window.block_number, window.tx_hash
    check.anchored_at = window.block_time.isoformat() if window.block_time else None
    proof = [unhex(p) for p in proof_of(session, row)]
    if not ok:
        check.status, check.reasons = TAMPERED, [why or "root not on chain"]
        return check
    if hex32(process_proof(unhex(leaf), proof)) == window.root:
        check.status = VERIFIED
        return check
    check.status = TAMPERED
    # Name the changed fields, from the anchored bytes if they still prove against the root.
    stored_ok = (
        hex32(leaf_hash(row.canonical)) == row.leaf and hex32(process_proof(unhex(row.leaf), proof)) == window.root
    )
    if stored_ok:
        check.reasons = ["differs from the anchored record", *diff(json.loads(row.canonical), rec)]
    else:
        check.reasons = ["differs from the anchored record; the ledger's own copy was altered too"]
    return check


def _missing_from_manifests(
    session: Session, lot: Lot, present: set[str], chain: Chain | None, answers: Answers
) -> list[RecordCheck]:
    """Leaves named by an anchored manifest of the lot that no current record produces."""
    out = []
    rows = session.exec(select(LotManifest).where(LotManifest.lot_id == lot.id).order_by(LotManifest.version)).all()
    listed: dict[str, int] = {}
    for m in rows:
        leaf_row = session.exec(
            select(LedgerLeaf).where(LedgerLeaf.kind == manifest.MANIFEST, LedgerLeaf.record_id == m.id)
        ).first()
        window = session.get(AnchorWindow, leaf_row.window_seq) if leaf_row and leaf_row.window_seq else None
        if window is None or window.state not in ON_CHAIN or not _anchored(chain, window, answers)[0]:
            continue
        for leaf in m.content["leaves"]:
            listed.setdefault(leaf, m.version)
    for leaf, version in sorted(listed.items(), key=lambda kv: kv[1]):
        if leaf in present:
            continue
        row = session.exec(select(LedgerLeaf).where(LedgerLeaf.leaf == leaf)).first()
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
    session: Session, lot: Lot, chain: Chain | None, influx: InfluxV1 | None, settings: Settings
) -> Verification:
    assert lot.id is not None
    refs = records_of_lot(session, lot.id)
    answers: Answers = {}  # the chain is asked afresh on every verification, once per window
    recomputed = Recomputed(session, influx, settings, refs) if influx is not None else None
    checks = [check_record(session, ref, chain, influx, settings, recomputed, answers) for ref in refs]
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
    counts = {s: sum(c.status == s for c in checks) for s in (VERIFIED, PENDING, TAMPERED)}
    status = TAMPERED if counts[TAMPERED] else PENDING if counts[PENDING] else VERIFIED
    return Verification(
        lot_code=lot.code,
        lot_uri=canonical_lot_uri(lot),
        status=status,
        records=checks,
        counts=counts,
        chain_id=chain.chain_id if chain else None,
        contract=chain.address if chain and chain._contract is not None else None,
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
