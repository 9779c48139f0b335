"""Lot manifests: record kind "manifest/1", the completeness half of a lot's proof.

A manifest lists the leaves of every record of a lot's trace (ledger.records.records_of_lot,
manifests excluded) with counts per kind. A new version is made whenever that list grows, and
it never shrinks: each version holds every leaf of the one before. Verification checks that
every leaf named by any anchored manifest version still belongs to a record of the lot with
that exact content, so a record deleted after anchoring (a failed inspection, say) shows as
tampered, not as absent.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlmodel import Session, col, select

from ledger.anchor_models import LedgerLeaf, LotManifest
from ledger.codes import canonical_lot_uri
from ledger.models import Lot
from ledger.records import RecordNotFound, RecordRef, records_of_lot, register_kind

MANIFEST = "manifest/1"


def lot_leaves(session: Session, lot_id: int) -> dict[str, str]:
    """leaf hex -> kind of the lot's records that already have a leaf (manifests excluded)."""
    refs = [r for r in records_of_lot(session, lot_id) if r.kind != MANIFEST]
    out: dict[str, str] = {}
    by_kind: dict[str, list[int]] = {}
    for r in refs:
        by_kind.setdefault(r.kind, []).append(r.id)
    for kind, ids in by_kind.items():
        rows = session.exec(
            select(LedgerLeaf.leaf).where(LedgerLeaf.kind == kind, col(LedgerLeaf.record_id).in_(ids))
        ).all()
        out.update({leaf: kind for leaf in rows})
    return out


def latest(session: Session, lot_id: int) -> LotManifest | None:
    return session.exec(
        select(LotManifest).where(LotManifest.lot_id == lot_id).order_by(col(LotManifest.version).desc())
    ).first()


def build_content(lot: Lot, leaves: dict[str, str]) -> dict[str, Any]:
    return {
        "lot": canonical_lot_uri(lot),
        "counts": dict(sorted(Counter(leaves.values()).items())),
        "leaves": sorted(leaves),
    }


def ensure_manifests(session: Session) -> int:
    """Add a manifest version for every lot whose leaf list grew; returns how many were added."""
    added = 0
    for lot in session.exec(select(Lot)).all():
        assert lot.id is not None
        current = lot_leaves(session, lot.id)
        if not current:
            continue
        prev = latest(session, lot.id)
        if prev is not None:
            old = set(prev.content["leaves"])
            if set(current) <= old:
                continue  # nothing new (a record gone missing is for verification to report)
            kinds = dict(zip(prev.content["leaves"], _kinds_of(session, prev.content["leaves"]), strict=True))
            current = {**kinds, **current}
        session.add(
            LotManifest(lot_id=lot.id, version=(prev.version + 1) if prev else 1, content=build_content(lot, current))
        )
        added += 1
    session.flush()
    return added


def _kinds_of(session: Session, leaves: list[str]) -> list[str]:
    rows = dict(session.exec(select(LedgerLeaf.leaf, LedgerLeaf.kind).where(col(LedgerLeaf.leaf).in_(leaves))).all())
    return [rows.get(leaf, "unknown") for leaf in leaves]


def _load(session: Session, manifest_id: int) -> tuple[dict[str, Any], str]:
    m = session.get(LotManifest, manifest_id)
    if m is None:
        raise RecordNotFound(f"lot manifest {manifest_id} does not exist")
    return m.content, m.salt


def _collect(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    """Every manifest version of the lot itself (lot_ids[0]); ancestors' records are in it already."""
    rows = session.exec(
        select(LotManifest.id).where(LotManifest.lot_id == lot_ids[0]).order_by(LotManifest.version)
    ).all()
    return [RecordRef(MANIFEST, i) for i in rows]


register_kind(MANIFEST, _load, _collect)
