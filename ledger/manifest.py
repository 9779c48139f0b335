"""Lot manifests: record kind "manifest/1", the completeness half of a lot's proof.

A manifest lists the leaves of every record of a lot's trace (ledger.records.records_of_lot,
manifests excluded) with counts per kind. A new version is made whenever that list grows, and
it never shrinks: each version holds every leaf of the one before. Verification checks that
every leaf named by any anchored manifest version still belongs to a record of the lot with
that exact content, so a record deleted after anchoring (a failed inspection, say) shows as
tampered, not as absent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from core.models import Herd, Plot, utcnow
from ledger import digests, growth, late
from ledger.anchor_models import GrowthSummary, LateDigest, LedgerLeaf, LotManifest, TelemetryDigest
from ledger.codes import canonical_lot_uri
from ledger.models import (
    EventCorrection,
    Inspection,
    Lot,
    LotParent,
    LotSource,
    Product,
    TraceEvent,
    TraceEventLot,
    new_salt,
)
from ledger.records import (
    CORRECTION,
    EVENT,
    INSPECTION,
    LOT,
    RecordNotFound,
    RecordRef,
    chunks,
    records_of_lots,
    register_kind,
    rows_where_in,
)

MANIFEST = "manifest/1"

#: the record kinds a lot's manifest may list (manifests aside), as the anchoring worker's SOURCES
_SOURCES = (LOT, EVENT, INSPECTION, CORRECTION, growth.GROWTH, digests.DIGEST, late.LATE_DIGEST, MANIFEST)


MANIFEST_LOTS = 10_000  # lots whose manifests are made at a time: bounds the memory of a first pass

#: receives the records of new manifest versions: (kind, their row ids, their records), in id order
NewRecords = Callable[[str, list[int], list[dict[str, Any]]], None]


def ensure_manifests(
    session: Session,
    lot_ids: Iterable[int] | None = None,
    known: dict[str, dict[int, str]] | None = None,
    new_records: NewRecords | None = None,
    plans: Iterable[Plan] | None = None,
) -> int:
    """Add a manifest version for every lot (of `lot_ids`; default: all) whose leaf list grew;
    returns how many were added. Set-based (`records_of_lots`): a few queries per table for each
    `MANIFEST_LOTS` lots, so the first pass over a million records takes seconds, not hours. `known`:
    kind -> record id -> leaf of leaves the caller has just stored (the anchoring pass's own), which
    are then not read back; the others are read from the database. `new_records`: called with the
    records of the versions added (as `records_many` would build them from their rows, without
    reading them back), e.g. to make their leaves. `plans`: `plan(session, lot_ids)` made before
    (e.g. while the leaves were being made: it does not need them), instead of making it here."""
    added = 0
    for batch in plan(session, lot_ids) if plans is None else plans:
        added += _ensure_batch(session, batch, known or {}, new_records)
    return added


@dataclass
class Plan:
    """What the manifests of a batch of lots are made from, but the leaves: each lot's records, its
    newest manifest (if any) and its URI."""

    ids: list[int]
    refs: dict[int, tuple[RecordRef, ...]]
    latest: dict[int, Any]
    uris: dict[int, str]


def plan(session: Session, lot_ids: Iterable[int] | None = None) -> Iterator[Plan]:
    """The `Plan` of every `MANIFEST_LOTS` lots (of `lot_ids`; default: all), one batch at a time."""
    lot_t = Lot.__table__.c  # type: ignore[attr-defined]
    ids = sorted(session.execute(sa.select(lot_t.id)).scalars() if lot_ids is None else set(lot_ids))
    for part in chunks(ids, MANIFEST_LOTS):
        batch = list(part)
        refs = {lot: tuple(found) for lot, found in records_of_lots(session, batch, exclude=[MANIFEST]).items()}
        yield Plan(batch, refs, _latest(session, batch), _lot_uris(session, batch))


def _ensure_batch(
    session: Session, batch: Plan, known: dict[str, dict[int, str]], new_records: NewRecords | None
) -> int:
    ids, refs, latest, uris = batch.ids, batch.refs, batch.latest, batch.uris
    by_kind: dict[str, set[int]] = defaultdict(set)
    for found in refs.values():
        for r in found:
            by_kind[r.kind].add(r.id)
    leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
    stored: dict[str, dict[int, str]] = {}  # kind -> record id -> leaf, of the leaves not `known`
    for kind, record_ids in by_kind.items():
        have = known.get(kind, {})
        if missing := [rid for rid in record_ids if rid not in have]:
            rows = rows_where_in(session, [leaf.record_id, leaf.leaf], leaf.record_id, missing, leaf.kind == kind)
            stored[kind] = dict(rows)
    del by_kind

    def leaf_of(r: RecordRef) -> str | None:
        return known.get(r.kind, {}).get(r.id) or stored.get(r.kind, {}).get(r.id)

    now, new = utcnow(), []
    for lot_id in ids:
        if lot_id not in refs:
            continue
        current = {value: r.kind for r in refs.pop(lot_id) if (value := leaf_of(r)) is not None}
        if not current:
            continue
        prev = latest.get(lot_id)
        if prev is not None:
            old = prev.content["leaves"]
            if set(current) <= set(old):
                continue  # nothing new (a record gone missing is for verification to report)
            current = {**dict(zip(old, _kinds_of(session, old), strict=True)), **current}
        content = {
            "lot": uris[lot_id],
            "counts": dict(sorted(Counter(current.values()).items())),
            "leaves": sorted(current),
        }
        version = (prev.version + 1) if prev is not None else 1
        new.append({"lot_id": lot_id, "version": version, "content": content, "created_at": now, "salt": new_salt()})
    if new:
        session.execute(sa.insert(LotManifest.__table__), new)  # type: ignore[attr-defined]
        if new_records is not None:
            m = LotManifest.__table__.c  # type: ignore[attr-defined]
            made = {
                (r.lot_id, r.version): r.id
                for r in rows_where_in(session, [m.id, m.lot_id, m.version], m.lot_id, [n["lot_id"] for n in new])
            }
            rows = sorted((made[(n["lot_id"], n["version"])], n) for n in new)
            records = [{"schema": MANIFEST, "content": n["content"], "salt": n["salt"]} for _, n in rows]
            new_records(MANIFEST, [i for i, _ in rows], records)
    return len(new)


def _latest(session: Session, lot_ids: list[int]) -> dict[int, Any]:
    """The newest manifest row (lot_id, version, content) of each of these lots that has one."""
    m = LotManifest.__table__.c  # type: ignore[attr-defined]
    out: dict[int, Any] = {}
    for part in chunks(lot_ids):
        newest = sa.select(m.lot_id, sa.func.max(m.version).label("v")).where(m.lot_id.in_(part)).group_by(m.lot_id)
        newest = newest.subquery()
        q = sa.select(m.lot_id, m.version, m.content).join(
            newest, (m.lot_id == newest.c.lot_id) & (m.version == newest.c.v)
        )
        out.update({r.lot_id: r for r in session.execute(q)})
    return out


def _lot_uris(session: Session, lot_ids: list[int]) -> dict[int, str]:
    lot, product = Lot.__table__.c, Product.__table__.c  # type: ignore[attr-defined]
    q = sa.select(lot.id, lot.lot_no, lot.code, product.gtin).join_from(
        Lot.__table__,  # type: ignore[attr-defined]
        Product.__table__,  # type: ignore[attr-defined]
        lot.product_id == product.id,
    )
    out = {}
    for part in chunks(lot_ids):
        for r in session.execute(q.where(lot.id.in_(part))):
            view = SimpleNamespace(lot_no=r.lot_no, code=r.code, product=SimpleNamespace(gtin=r.gtin))
            out[r.id] = canonical_lot_uri(view)  # type: ignore[arg-type]
    return out


def lots_to_check(session: Session, since_leaf: int | None) -> set[int] | None:
    """Lots whose manifest may have to grow because of the leaves made after leaf id `since_leaf`
    (manifest leaves aside), or, with None, because of the records that have no leaf yet (asked
    before a pass stores any): the lots those records may belong to, and their descendants, whose
    lineage includes them. A superset: `ensure_manifests` adds nothing for a lot that did not
    change. None when a new leaf is of a kind this function cannot place (then: every lot)."""
    leaf = LedgerLeaf.__table__.c  # type: ignore[attr-defined]
    leaf_t = LedgerLeaf.__table__  # type: ignore[attr-defined]
    if since_leaf is None:
        kinds = set(_SOURCES) - {MANIFEST}
    else:
        new = leaf.id > since_leaf
        kinds = set(session.execute(sa.select(leaf.kind).where(new).distinct()).scalars()) - {MANIFEST}
    if not kinds:
        return set()
    ev, link = TraceEvent.__table__.c, TraceEventLot.__table__.c  # type: ignore[attr-defined]
    src, plot, herd = LotSource.__table__.c, Plot.__table__.c, Herd.__table__.c  # type: ignore[attr-defined]

    def made(q: Any, kind: str, id_col: Any) -> Any:
        """`q` narrowed to the records of `kind` (`id_col`: their id) made after since_leaf, or without a leaf."""
        if since_leaf is None:
            return q.where(~sa.exists().where(leaf.kind == kind, leaf.record_id == id_col))
        return q.join(leaf_t, sa.and_(leaf.kind == kind, leaf.record_id == id_col, new))

    insp, grow = Inspection.__table__.c, GrowthSummary.__table__.c  # type: ignore[attr-defined]
    queries: dict[str, list[Any]] = {
        LOT: [
            sa.select(leaf.record_id).where(leaf.kind == LOT, new)
            if since_leaf is not None
            else made(sa.select(Lot.__table__.c.id), LOT, Lot.__table__.c.id)  # type: ignore[attr-defined]
        ],
        EVENT: [made(sa.select(ev.lot_id), EVENT, ev.id), made(sa.select(link.lot_id), EVENT, link.trace_event_id)],
        INSPECTION: [made(sa.select(insp.lot_id), INSPECTION, insp.id)],
        growth.GROWTH: [made(sa.select(grow.lot_id), growth.GROWTH, grow.id)],
    }
    cor = EventCorrection.__table__.c  # type: ignore[attr-defined]
    corrected = made(sa.select(cor.event_id), CORRECTION, cor.id)
    queries[CORRECTION] = [
        sa.select(ev.lot_id).where(ev.id.in_(corrected)),
        sa.select(link.lot_id).where(link.trace_event_id.in_(corrected)),
    ]
    for kind, table in ((digests.DIGEST, TelemetryDigest), (late.LATE_DIGEST, LateDigest)):
        d = table.__table__.c  # type: ignore[attr-defined]
        plots = made(sa.select(d.value), kind, d.id).where(d.tag == "plot")
        herds = made(sa.select(d.value), kind, d.id).where(d.tag == "herd")
        queries[kind] = [
            sa.select(src.lot_id).join(Plot.__table__, src.plot_id == plot.id).where(plot.plot_no.in_(plots)),  # type: ignore[attr-defined]
            sa.select(src.lot_id).join(Herd.__table__, src.herd_id == herd.id).where(herd.herd_no.in_(herds)),  # type: ignore[attr-defined]
        ]
    if kinds - set(queries):
        return None
    lots: set[int] = set()
    for kind in kinds:
        for q in queries[kind]:
            lots.update(x for x in session.execute(q.distinct()).scalars() if x is not None)
    lp = LotParent.__table__.c  # type: ignore[attr-defined]
    children: dict[int, list[int]] = defaultdict(list)
    for child, parent in session.execute(sa.select(lp.child_lot_id, lp.parent_lot_id)):
        children[parent].append(child)
    frontier = list(lots)
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, ()) if c not in lots]
        lots.update(frontier)
    return lots


def _kinds_of(session: Session, leaves: list[str]) -> list[str]:
    rows = dict(session.exec(select(LedgerLeaf.leaf, LedgerLeaf.kind).where(col(LedgerLeaf.leaf).in_(leaves))).all())
    return [rows.get(leaf, "unknown") for leaf in leaves]


def _load_many(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    t = LotManifest.__table__  # type: ignore[attr-defined]
    return {r.id: (r.content, r.salt) for r in rows_where_in(session, [t.c.id, t.c.content, t.c.salt], t.c.id, ids)}


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


register_kind(MANIFEST, _load, _collect, bulk=_load_many)
