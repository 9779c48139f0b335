"""Laboratory reports on lots in your custody; whether one passed is computed from its items."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlmodel import Session, col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem, problem_responses
from api.schemas import Page
from api.schemas.trace import InspectionCreate, InspectionPublic, ItemPublic
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    RowId,
    VillageQ,
    lot_by_code,
    lots_in,
    not_found,
    page,
    require_writer,
    trace_write,
    village_filter,
)
from ledger.models import Inspection, InspectionItem, Lot

router = APIRouter()


def inspection_publics(session: Session, inspections: Sequence[Inspection]) -> list[InspectionPublic]:
    ids = [i.id for i in inspections]
    codes = dict(session.exec(select(Lot.id, Lot.code).where(col(Lot.id).in_({i.lot_id for i in inspections}))).all())
    items = session.exec(
        select(InspectionItem).where(col(InspectionItem.inspection_id).in_(ids)).order_by(InspectionItem.item)
    ).all()
    return [
        InspectionPublic(
            id=i.id or 0,
            lot=codes.get(i.lot_id, ""),
            lab=i.lab,
            report_no=i.report_no,
            sampled_on=i.sampled_on,
            reported_on=i.reported_on,
            certificate_sha256=i.certificate_sha256,
            passed=i.passed,
            items=[ItemPublic.model_validate(x) for x in items if x.inspection_id == i.id],
        )
        for i in inspections
    ]


@router.get("/inspections", response_model=Page[InspectionPublic], responses=problem_responses(400, 401, 403, 422))
def list_inspections(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    lot: Annotated[str | None, Query(max_length=20)] = None,
    passed: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[InspectionPublic]:
    lots = lots_in(village_filter(actor, village)).with_only_columns(col(Lot.id))
    stmt = select(Inspection).where(col(Inspection.lot_id).in_(lots))
    if lot:
        stmt = stmt.where(Inspection.lot_id == lot_by_code(session, lot).id)
    if passed is not None:
        stmt = stmt.where(Inspection.passed == passed)
    stmt = stmt.order_by(col(Inspection.sampled_on).desc(), col(Inspection.id).desc())
    return page(session, stmt, limit, offset, convert_all=lambda rows: inspection_publics(session, rows))


@router.get("/inspections/{inspection_id}", response_model=InspectionPublic, responses=READ)
def get_inspection(inspection_id: RowId, actor: ActorDep, session: SessionDep) -> InspectionPublic:
    insp = session.get(Inspection, inspection_id) if 0 < inspection_id < 2**63 else None
    if insp is None:
        raise not_found(f"inspection {inspection_id}")
    actor.require_read_row(session, "inspection", insp, f"inspection {inspection_id}")
    return inspection_publics(session, [insp])[0]


@router.post("/inspections", response_model=InspectionPublic, status_code=201, responses=WRITE)
def create_inspection(
    body: InspectionCreate, request: Request, actor: ActorDep, session: SessionDep
) -> InspectionPublic:
    """Record a laboratory report on a lot; whether it passed is computed from its items and limits."""
    require_writer(actor, "inspection")
    if session.exec(
        select(Inspection.id).where(Inspection.lab == body.lab, Inspection.report_no == body.report_no)
    ).first():
        raise Problem(409, "conflict", f"report {body.report_no} of {body.lab} is already recorded")
    trace_write(request, session, actor, {"inspections": [body.model_dump(mode="json", exclude_unset=True)]})
    insp = session.exec(
        select(Inspection).where(Inspection.lab == body.lab, Inspection.report_no == body.report_no)
    ).one()
    return inspection_publics(session, [insp])[0]
