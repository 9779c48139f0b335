"""Processing and storage facilities (dryers, mills, warehouses, packhouses) of a village."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.trace import FacilityCreate, FacilityPublic
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    VillageQ,
    not_found,
    page,
    require_writer,
    trace_write,
    village_filter,
)
from ledger.models import Facility

router = APIRouter()


def _facility(session: SessionDep, code: str) -> Facility:
    facility = session.exec(select(Facility).where(Facility.code == code)).first()
    if facility is None:
        raise not_found(f"facility {code}")
    return facility


@router.get("/facilities", response_model=Page[FacilityPublic], responses=READ)
def list_facilities(
    actor: ActorDep, session: SessionDep, village: VillageQ = None, limit: Limit = 50, offset: Offset = 0
) -> Page[FacilityPublic]:
    stmt = select(Facility).where(col(Facility.village_code).in_(village_filter(actor, village)))
    return page(session, stmt.order_by(Facility.code), limit, offset, FacilityPublic.model_validate)


@router.get("/facilities/{code}", response_model=FacilityPublic, responses=READ)
def get_facility(code: str, actor: ActorDep, session: SessionDep) -> FacilityPublic:
    facility = _facility(session, code)
    actor.require_read_row(session, "facility", facility, f"facility {code}")
    return FacilityPublic.model_validate(facility)


@router.post("/facilities", response_model=FacilityPublic, status_code=201, responses=WRITE)
def create_facility(body: FacilityCreate, request: Request, actor: ActorDep, session: SessionDep) -> FacilityPublic:
    require_writer(actor, "facility")
    if session.exec(select(Facility.id).where(Facility.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"facility {body.code} exists")
    trace_write(request, session, actor, {"facilities": [body.model_dump(mode="json", exclude_unset=True)]})
    return FacilityPublic.model_validate(_facility(session, body.code))
