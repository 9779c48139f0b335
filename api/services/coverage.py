"""Traceability coverage of an area: how many lots are traced, anchored, inspected, monitored.

Per product, for the lots of the area's farms and facilities: lots, lots anchored and lots awaiting
confirmation (by the window of the lot's latest manifest: confirmed or final, or only in a block; the
same rule as the indicators' trace_lot_coverage, analytics.sources.lot_anchor_states), lots with an
inspection on themselves or an ancestor, and plot lots with a growth summary (monitored by sensors);
coverage = anchored / lots.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from analytics.sources import ANCHORED, lot_anchor_states
from core.models import Farm
from ledger.anchor_models import AnchorState, GrowthSummary
from ledger.models import Facility, Inspection, Lot, LotParent, LotSource, Product


def coverage(session: Session, villages: set[str]) -> dict[str, Any]:
    farms = select(Farm.id).where(col(Farm.village_code).in_(villages))
    facilities = select(Facility.id).where(col(Facility.village_code).in_(villages))
    lots = session.exec(
        select(Lot.id, Lot.product_id).where(col(Lot.farm_id).in_(farms) | col(Lot.facility_id).in_(facilities))
    ).all()  # columns, not objects: a county holds tens of thousands of lots
    ids = [x.id for x in lots]
    states = lot_anchor_states(session, [i for i in ids if i is not None])
    anchored = {lot for lot, state in states.items() if state in ANCHORED}
    awaiting = {lot for lot, state in states.items() if state == AnchorState.included}
    inspected_direct = set(session.exec(select(Inspection.lot_id)).all())
    parents: dict[int, list[int]] = {}
    for child, parent in session.exec(select(LotParent.child_lot_id, LotParent.parent_lot_id)).all():
        parents.setdefault(child, []).append(parent)

    def inspected(lot_id: int, seen: set[int] | None = None) -> bool:
        seen = seen or set()
        if lot_id in inspected_direct:
            return True
        seen.add(lot_id)
        return any(inspected(p, seen) for p in parents.get(lot_id, []) if p not in seen)

    plot_lots = set(session.exec(select(LotSource.lot_id).where(col(LotSource.plot_id).is_not(None))).all())
    monitored = set(session.exec(select(GrowthSummary.lot_id)).all())
    products = {p.id: p for p in session.exec(select(Product)).all()}
    by_product: dict[str, dict[str, Any]] = {}
    for x in lots:
        p = products.get(x.product_id)
        row = by_product.setdefault(
            p.code if p else "?",
            {"product": p.code if p else "?", "name_zh": p.name_zh if p else "", "name_en": p.name_en if p else "",
             "lots": 0, "anchored": 0, "awaiting": 0, "inspected": 0, "plot_lots": 0, "monitored": 0},
        )  # fmt: skip
        row["lots"] += 1
        row["anchored"] += x.id in anchored
        row["awaiting"] += x.id in awaiting
        row["inspected"] += inspected(x.id)  # type: ignore[arg-type]
        row["plot_lots"] += x.id in plot_lots
        row["monitored"] += x.id in monitored
    rows = sorted(by_product.values(), key=lambda r: r["product"])
    for r in rows:
        r["coverage_pct"] = round(100 * r["anchored"] / r["lots"], 1) if r["lots"] else None
    total = {
        k: sum(r[k] for r in rows) for k in ("lots", "anchored", "awaiting", "inspected", "plot_lots", "monitored")
    }
    total["coverage_pct"] = round(100 * total["anchored"] / total["lots"], 1) if total["lots"] else None
    return {"total": total, "by_product": rows}
