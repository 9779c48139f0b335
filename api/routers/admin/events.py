"""Field and processing events (EPCIS), and their corrections.

An event is recorded at a read point of your area (a plot the event's lot was grown on, or a
facility) about lots in your custody; its step, disposition and attributes are checked against the
vocabulary (ledger/data/vocab.yaml). Once recorded an event is never changed or deleted: a wrong one
is declared in error (`POST /events/{id}/corrections`, an EPCIS error declaration), optionally with
the corrective event that says what really happened; both are new, anchored records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from sqlmodel import Session, col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem, problem_responses
from api.schemas import Page
from api.schemas.trace import CorrectionCreate, CorrectionPublic, CorrectionSummary, EventCreate, EventPublic
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    RowId,
    VillageQ,
    lot_by_code,
    not_found,
    page,
    require_writer,
    trace_write,
    village_filter,
)
from core.models import Plot
from ledger.models import EventCorrection, Facility, Lot, TraceEvent, TraceEventLot
from ledger.records import rfc3339
from ledger.vocab import UnknownTerm, get_vocab

router = APIRouter()

IRRIGATION_EXAMPLE = {
    "irrigation": {
        "summary": "An irrigation of a plot's paddy lot",
        "value": {
            "action": "OBSERVE",
            "step": "irrigating",
            "time": "2026-07-20T06:00:00+08:00",
            "lot": "JFPD-18RS-DBW",
            "read_point": {"plot_no": "211122101201-001"},
            "attributes": {"water_mm": 40, "method": "intermittent"},
        },
    },
    "handover": {
        "summary": "Paddy shipped to the dryer of another village, which may then record its intake and drying",
        "value": {
            "action": "OBSERVE",
            "step": "shipping",
            "time": "2026-10-05T08:00:00+08:00",
            "lot": "88SP-GS5J-KRZ",
            "read_point": {"plot_no": "211122104201-001"},
            "attributes": {"to_facility": "PS-DRY-01"},
        },
    },
}


def event_publics(session: Session, events: Sequence[TraceEvent]) -> list[EventPublic]:
    """Events with their lots, read points and corrections, in a few queries for the whole page."""
    vocab = get_vocab()
    ids = [e.id for e in events]
    links = session.exec(select(TraceEventLot).where(col(TraceEventLot.trace_event_id).in_(ids))).all()
    lot_ids = {e.lot_id for e in events if e.lot_id} | {x.lot_id for x in links}
    codes = dict(session.exec(select(Lot.id, Lot.code).where(col(Lot.id).in_(lot_ids))).all())
    plots = dict(
        session.exec(
            select(Plot.id, Plot.plot_no).where(col(Plot.id).in_({e.read_point_plot_id for e in events}))
        ).all()
    )
    facilities = dict(
        session.exec(
            select(Facility.id, Facility.code).where(col(Facility.id).in_({e.read_point_facility_id for e in events}))
        ).all()
    )
    corrections = {
        c.event_id: c for c in session.exec(select(EventCorrection).where(col(EventCorrection.event_id).in_(ids)))
    }
    out = []
    for ev in events:
        mine = [x for x in links if x.trace_event_id == ev.id]
        if ev.read_point_plot_id is not None:
            rp: dict[str, str | None] = {"plot_no": plots.get(ev.read_point_plot_id)}
        else:
            rp = {"facility": facilities.get(ev.read_point_facility_id)}
        c = corrections.get(ev.id)
        out.append(
            EventPublic(
                id=ev.id or 0,
                event_id=ev.event_id,
                type=ev.event_type,
                action=ev.action,
                step=vocab.short_name(ev.biz_step),
                disposition=vocab.short_name(ev.disposition) if ev.disposition else None,
                time=rfc3339(ev.event_time, ev.event_time_zone_offset),
                lot=codes.get(ev.lot_id) if ev.lot_id else None,
                inputs=sorted(codes.get(x.lot_id, "") for x in mine if x.role == "input"),
                outputs=sorted(codes.get(x.lot_id, "") for x in mine if x.role == "output"),
                read_point=rp,
                biz_location=ev.biz_location,
                attributes=dict(ev.attributes),
                corrected=(
                    CorrectionSummary(
                        reason=c.reason,
                        declared_at=rfc3339(c.declared_at, c.declared_at_offset),
                        corrective_event=c.corrective_event_id,
                    )
                    if c
                    else None
                ),
            )
        )
    return out


@router.get("/events", response_model=Page[EventPublic], responses=problem_responses(400, 401, 403, 422))
def list_events(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    lot: Annotated[str | None, Query(max_length=20, description="A lot's trace code")] = None,
    step: Annotated[str | None, Query(max_length=200, description="A step name or URI")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[EventPublic]:
    """Events recorded in your area (by business location), newest first."""
    stmt = select(TraceEvent).where(col(TraceEvent.biz_location).in_(village_filter(actor, village)))
    if lot:
        stmt = stmt.where(TraceEvent.lot_id == lot_by_code(session, lot).id)
    if step:
        try:
            stmt = stmt.where(TraceEvent.biz_step == get_vocab().normalize_step(step))
        except UnknownTerm as e:
            raise Problem(422, "validation", f"step: {e}") from None
    stmt = stmt.order_by(col(TraceEvent.event_time).desc(), col(TraceEvent.id).desc())
    return page(session, stmt, limit, offset, convert_all=lambda rows: event_publics(session, rows))


def _event(session: Session, event_id: int) -> TraceEvent:
    ev = session.get(TraceEvent, event_id) if 0 < event_id < 2**63 else None
    if ev is None:
        raise not_found(f"event {event_id}")
    return ev


@router.get("/events/{event_id}", response_model=EventPublic, responses=READ)
def get_event(event_id: RowId, actor: ActorDep, session: SessionDep) -> EventPublic:
    ev = _event(session, event_id)
    actor.require_read_row(session, "event", ev, f"event {event_id}")
    return event_publics(session, [ev])[0]


def _record_event(request: Request, session: Session, actor: ActorDep, body: EventCreate, *, commit: bool) -> int:
    result = trace_write(
        request, session, actor, {"events": [body.model_dump(mode="json", exclude_unset=True)]}, commit=commit
    )
    if not result.event_ids:
        session.rollback()
        raise Problem(409, "conflict", "an identical event is already recorded")
    return result.event_ids[0]


@router.post("/events", response_model=EventPublic, status_code=201, responses=WRITE)
def create_event(
    request: Request,
    actor: ActorDep,
    session: SessionDep,
    body: Annotated[EventCreate, Body(openapi_examples=IRRIGATION_EXAMPLE)],
) -> EventPublic:
    """Record a field or processing event. Step, disposition and attributes are checked against the
    vocabulary (ledger/data/vocab.yaml); lots are named by trace code or `product:lot_no`; a `shipping`
    event with `to_facility` hands the lot over to that facility."""
    require_writer(actor, "event")
    return event_publics(session, [_event(session, _record_event(request, session, actor, body, commit=True))])[0]


def _correction_public(session: Session, c: EventCorrection) -> CorrectionPublic:
    wrong = _event(session, c.event_id)
    right = session.get(TraceEvent, c.corrective_event_id) if c.corrective_event_id else None
    return CorrectionPublic(
        id=c.id or 0,
        event=c.event_id,
        event_id=wrong.event_id or "",
        reason=c.reason,
        declared_at=rfc3339(c.declared_at, c.declared_at_offset),
        corrective_event=c.corrective_event_id,
        corrective_event_id=right.event_id if right else None,
    )


@router.post("/events/{event_id}/corrections", response_model=CorrectionPublic, status_code=201, responses=WRITE)
def correct_event(
    event_id: RowId, body: CorrectionCreate, request: Request, actor: ActorDep, session: SessionDep
) -> CorrectionPublic:
    """Declare an event in error (EPCIS errorDeclaration: `incorrect_data` with the corrective event, or
    `did_not_occur`). The event stays, marked as corrected on the trace page; the declaration and the
    corrective event are new records, anchored like any other."""
    require_writer(actor, "correction")
    wrong = _event(session, event_id)
    if session.exec(select(EventCorrection.id).where(EventCorrection.event_id == event_id)).first():
        raise Problem(409, "conflict", f"event {event_id} is already declared in error")
    row: dict[str, Any] = {
        "event": wrong.event_id,
        "reason": body.reason,
        "time": (body.time or datetime.now(UTC)).isoformat(),
    }
    if body.corrective is not None:
        corrective_id = _record_event(request, session, actor, body.corrective, commit=False)
        row["corrective"] = _event(session, corrective_id).event_id
    trace_write(request, session, actor, {"corrections": [row]})
    correction = session.exec(select(EventCorrection).where(EventCorrection.event_id == event_id)).one()
    return _correction_public(session, correction)
