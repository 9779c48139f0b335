"""The trace entities in the reference declaration of core/scope.py: products, facilities, lots,
events, corrections and inspections; where each lies, every reference it holds and its rule.

A lot lies at its owner's village (its farm's or its facility's). It may also be referenced, by the
custody rule, from the village of every facility its custodian shipped it to: a `shipping` event
on the lot with the attribute `to_facility` hands it over, so the receiving dryer may record its
intake, its drying and the lots it makes from it, and nobody else may.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlmodel import Session, col, select

from core.scope import Entity, Reference, Rule, declare, farm_area, freeze
from ledger.models import EventCorrection, Facility, Inspection, Lot, LotSource, TraceEvent
from ledger.vocab import get_vocab

__all__ = ["custody_of", "lot_area"]

HANDOVER_ATTRIBUTE = "to_facility"


def lot_area(session: Session, lot: Lot) -> set[str]:
    """The village of the lot's owner (its farm, or its facility)."""
    if lot.farm_id is not None:
        return farm_area(session, lot.farm_id)
    facility = session.get(Facility, lot.facility_id) if lot.facility_id is not None else None
    return {facility.village_code} if facility else set()


def custody_of(session: Session, lot: Lot) -> set[str]:
    """Villages of the facilities the lot was shipped to (`shipping` events with `to_facility`)."""
    shipping = get_vocab().normalize_step("shipping")
    events = session.exec(
        select(TraceEvent.attributes).where(TraceEvent.lot_id == lot.id, TraceEvent.biz_step == shipping)
    ).all()
    codes = {a.get(HANDOVER_ATTRIBUTE) for a in events if isinstance(a, dict) and a.get(HANDOVER_ATTRIBUTE)}
    if not codes:
        return set()
    return set(session.exec(select(Facility.village_code).where(col(Facility.code).in_(codes))).all())


def _inspection_area(session: Session, insp: Inspection) -> set[str]:
    lot = session.get(Lot, insp.lot_id)
    return lot_area(session, lot) if lot else set()


def _correction_area(session: Session, c: EventCorrection) -> set[str]:
    event = session.get(TraceEvent, c.event_id)
    return {event.biz_location} if event else set()


declare(
    Entity(
        "product",
        "products",
        "code",
        "its county (a county's trade item)",
        lambda s, r: {r.county_code} if r.county_code else set(),
        (Reference("county_code", "county"),),
        writers="county_admin",
    ),
    Entity(
        "facility",
        "facilities",
        "code",
        "village_code",
        lambda s, r: {r.village_code},
        (Reference("village_code", "village"),),
    ),
    Entity(
        "lot",
        "lots",
        "code",
        "its farm's or facility's village",
        lot_area,
        (
            Reference("product", "product", integrity="a product of the actor's county"),
            Reference("farm", "farm", integrity="exactly one of farm and facility owns the lot"),
            Reference("facility", "facility", integrity="exactly one of farm and facility owns the lot"),
            Reference("sources[].plot_no", "plot", integrity="a plot of the lot's own farm"),
            Reference("sources[].herd_no", "herd", integrity="a herd of the lot's own farm"),
            Reference(
                "parents[].lot",
                "lot",
                Rule.custody,
                "the lot takes no more than its parents released, times the yield its relation allows",
            ),
        ),
        custody=custody_of,
    ),
    Entity(
        "event",
        "events",
        "id",
        "its business location (a village)",
        lambda s, r: {r.biz_location},
        (
            Reference("lot", "lot", Rule.custody),
            Reference("inputs[]", "lot", Rule.custody),
            Reference("outputs[]", "lot", integrity="a lot the actor's area owns"),
            Reference("read_point.plot_no", "plot", integrity="a source plot of the event's lot"),
            Reference("read_point.facility", "facility"),
            Reference("biz_location", "village", integrity="the village of the read point"),
            Reference("actor.farm", "farm"),
            Reference("actor.facility", "facility"),
            Reference("attributes.to_facility", "facility", Rule.county, "hands the lot over to that facility"),
        ),
    ),
    Entity(
        "correction",
        "corrections",
        "id",
        "the business location of the event it corrects",
        _correction_area,
        (Reference("event", "event", integrity="an event not already declared in error"),),
    ),
    Entity(
        "inspection",
        "inspections",
        "id",
        "its lot's owner village",
        _inspection_area,
        (Reference("lot", "lot", Rule.custody),),
    ),
)


def _named_by_records(what: str, column_of_source: str) -> Callable[[Session, Any], str | None]:
    def in_use(session: Session, row: Any) -> str | None:
        lots = session.exec(select(LotSource.lot_id).where(getattr(LotSource, column_of_source) == row.id)).all()
        events = []
        if what == "plot":
            events = session.exec(select(TraceEvent.id).where(TraceEvent.read_point_plot_id == row.id)).all()
        if not lots and not events:
            return None
        return f"{len(lots)} lot(s) and {len(events)} event(s) record the {what} with it"

    return in_use


freeze("plot", ("village_code",), _named_by_records("plot", "plot_id"))
freeze("herd", ("village_code",), _named_by_records("herd", "herd_id"))
