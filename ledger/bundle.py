"""Proof bundles: everything needed to check a lot's trace, or a season's production record,
with only an Ethereum RPC endpoint (`ledger.bundle_verify`, or any OpenZeppelin-compatible
Merkle library and any Ethereum client, following the README's steps).

Format "village-proof/1" (JSON):

    {"format": "village-proof/1",
     "hash_scheme": {...},                    # how leaves and nodes are hashed (fixed for this format)
     "chain": {"chain_id": 31337, "contract": "0x..."},
     "subject": {...},                        # the lot, or the farm and season of a production record
     "records": [{"kind": "inspection/1",
                  "canonical": "{\"content\":...}",   # the RFC 8785 bytes as UTF-8 text
                  "leaf": "0x...", "proof": ["0x...", ...],
                  "window": {"id", "root", "prev_root", "leaf_count", "state",
                             "tx_hash", "block_number", "block_hash", "log_index"}}, ...],
     "pending": [{"kind", "canonical", "leaf", "note"?}]}  # not yet provable: shown only

`chain` and the windows are claims: a verifier takes the chain id and contract from its caller and
checks the subject against its anchored manifests (ledger/bundle_verify.py). So a record anchored
before any anchored manifest of the subject lists it goes under `pending` (with a note) until then.

Records are rebuilt from the data as it is now (not copied from the ledger), so a record changed
after anchoring fails the offline check exactly as it fails `village verify`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from core.influx import InfluxV1
from core.models import Farm, Plot
from core.settings import Settings
from ledger.anchor_models import ON_CHAIN, AnchorWindow, GrowthSummary, LedgerLeaf, LotManifest
from ledger.anchoring import hex32
from ledger.chain import Chain
from ledger.codes import canonical_lot_uri
from ledger.manifest import MANIFEST
from ledger.merkle import leaf_hash
from ledger.models import Inspection, Lot, LotSource
from ledger.proofs import proof_of
from ledger.records import RecordRef, canonical_bytes, records_of_lot
from ledger.verify import Recomputed, current_record

FORMAT = "village-proof/1"
HASH_SCHEME = {
    "version": "village-merkle/1",
    "record": "RFC 8785 (JCS) canonical JSON of {schema, content, salt}, UTF-8",
    "leaf": "keccak256(keccak256(record bytes))",
    "node": "keccak256(min(a, b) || max(a, b)), OpenZeppelin MerkleProof (commutative, sorted pairs)",
    "tree": "OpenZeppelin SimpleMerkleTree over the window's leaves (sortLeaves: true)",
    "contract": "TraceAnchor.anchors(root) -> (timestamp, blockNumber, leafCount, prevRoot); event Anchored",
}


def _window_json(w: AnchorWindow) -> dict[str, Any]:
    return {
        "id": w.window_id,
        "root": w.root,
        "prev_root": w.prev_root,
        "leaf_count": w.leaf_count,
        "state": str(w.state),
        "tx_hash": w.tx_hash,
        "block_number": w.block_number,
        "block_hash": w.block_hash,
        "log_index": w.log_index,
        "anchored_at": w.block_time.isoformat() if w.block_time else None,
    }


def _listed_on_chain(session: Session, lot_ids: list[int]) -> set[str]:
    """Leaves listed by the anchored (on-chain) manifests of these lots."""
    rows = session.exec(
        select(LotManifest.content)
        .join(LedgerLeaf, (LedgerLeaf.kind == MANIFEST) & (LedgerLeaf.record_id == LotManifest.id))
        .join(AnchorWindow, col(AnchorWindow.seq) == LedgerLeaf.window_seq)
        .where(col(LotManifest.lot_id).in_(lot_ids), col(AnchorWindow.state).in_(list(ON_CHAIN)))
    ).all()
    return {leaf for content in rows for leaf in content["leaves"]}


def _entries(
    session: Session, refs: list[RecordRef], influx: InfluxV1 | None, settings: Settings, lot_ids: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records with proofs, pending records). A record anchored before any anchored manifest of the
    subject lists it stays pending: a verifier accepts only records the subject's manifests list."""
    records, pending = [], []
    recomputed = Recomputed(session, influx, settings, refs) if influx is not None else None
    listed = _listed_on_chain(session, lot_ids)
    for ref in refs:
        canonical = canonical_bytes(current_record(session, ref, influx, settings, recomputed))
        entry: dict[str, Any] = {"kind": ref.kind, "canonical": canonical.decode(), "leaf": hex32(leaf_hash(canonical))}
        row = session.exec(
            select(LedgerLeaf).where(LedgerLeaf.kind == ref.kind, LedgerLeaf.record_id == ref.id)
        ).first()
        window = session.get(AnchorWindow, row.window_seq) if row and row.window_seq else None
        if row is None or window is None or window.state not in ON_CHAIN:
            pending.append(entry)
            continue
        if ref.kind != MANIFEST and row.leaf not in listed:  # the anchored leaf, not a recomputed one
            pending.append({**entry, "note": f"anchored in {window.window_id}; the lot's next manifest is not yet"})
            continue
        records.append({**entry, "proof": proof_of(session, row), "window": _window_json(window)})
    return records, pending


def _chain_json(chain: Chain | None, records: list[dict[str, Any]], session: Session) -> dict[str, Any]:
    if chain is not None:
        return {"chain_id": chain.chain_id, "contract": chain.address}
    w = session.exec(select(AnchorWindow).where(col(AnchorWindow.contract).is_not(None))).first()
    return {"chain_id": w.chain_id if w else None, "contract": w.contract if w else None}


def lot_bundle(
    session: Session, lot: Lot, chain: Chain | None, influx: InfluxV1 | None, settings: Settings
) -> dict[str, Any]:
    assert lot.id is not None
    records, pending = _entries(session, records_of_lot(session, lot.id), influx, settings, [lot.id])
    return {
        "format": FORMAT,
        "hash_scheme": HASH_SCHEME,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "chain": _chain_json(chain, records, session),
        "subject": {"type": "lot", "code": lot.code, "uri": canonical_lot_uri(lot)},
        "records": records,
        "pending": pending,
    }


def production_bundle(
    session: Session, farm: Farm, season: int, chain: Chain | None, influx: InfluxV1 | None, settings: Settings
) -> dict[str, Any]:
    """A cooperative's season as evidence for a lender or insurer: plots and area, monitored days,
    yields by lot, inspections and anchoring status, with the proofs of every record behind them."""
    lots = session.exec(select(Lot).where(Lot.farm_id == farm.id, Lot.harvest_year == season).order_by(Lot.id)).all()
    refs: list[RecordRef] = []
    for lot in lots:
        assert lot.id is not None
        refs += [r for r in records_of_lot(session, lot.id) if r not in refs]
    lot_ids = [lot.id for lot in lots if lot.id is not None]
    records, pending = _entries(session, refs, influx, settings, lot_ids)
    plots = session.exec(
        select(Plot).join(LotSource, col(LotSource.plot_id) == Plot.id).where(col(LotSource.lot_id).in_(lot_ids))
    ).all()
    plots = sorted({p.id: p for p in plots}.values(), key=lambda p: p.plot_no)
    summaries = session.exec(select(GrowthSummary).where(col(GrowthSummary.lot_id).in_(lot_ids))).all()
    inspections = session.exec(select(Inspection).where(col(Inspection.lot_id).in_(lot_ids))).all()
    summary = {
        "farm": farm.code,
        "season": season,
        "plots": [{"plot_no": p.plot_no, "area_mu": p.area_mu, "crop": p.crop} for p in plots],
        "area_mu": round(sum(p.area_mu for p in plots), 2),
        "lots": [
            {"code": lot.code, "uri": canonical_lot_uri(lot), "quantity": lot.quantity, "unit": lot.unit}
            for lot in lots
        ],
        "monitored_days": sum(int(g.content.get("days_monitored", 0)) for g in summaries),
        "inspections": {"total": len(inspections), "passed": sum(i.passed for i in inspections)},
        "anchoring": dict(Counter("anchored" for _ in records) + Counter("pending" for _ in pending)),
    }
    return {
        "format": FORMAT,
        "hash_scheme": HASH_SCHEME,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "chain": _chain_json(chain, records, session),
        "subject": {"type": "production_record", **summary},
        "records": records,
        "pending": pending,
    }
