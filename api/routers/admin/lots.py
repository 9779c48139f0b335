"""Lots: a farm's harvest of a plot, a facility's dried, milled or packed batch. A lot names its
product (of your county), its owner (a farm or facility of your area), the plots or herds it was
grown on (its farm's) and its parent lots (yours, or shipped to you), and balances against them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlmodel import Session, col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem, problem_responses
from api.schemas import Page
from api.schemas.trace import LotCreate, LotPublic
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    VillageQ,
    lot_by_code,
    lots_in,
    page,
    require_writer,
    trace_write,
    village_filter,
)
from core.models import Farm
from ledger.models import Facility, Lot, Product

router = APIRouter()


def lot_publics(session: Session, lots: Sequence[Lot]) -> list[LotPublic]:
    """Lots with their product, owner and village, in three queries for the whole page."""
    products = dict(
        session.exec(select(Product.id, Product.code).where(col(Product.id).in_({x.product_id for x in lots}))).all()
    )
    farms = {
        f.id: f for f in session.exec(select(Farm).where(col(Farm.id).in_({x.farm_id for x in lots if x.farm_id})))
    }
    facilities = {
        f.id: f
        for f in session.exec(
            select(Facility).where(col(Facility.id).in_({x.facility_id for x in lots if x.facility_id}))
        )
    }
    out = []
    for lot in lots:
        farm = farms.get(lot.farm_id) if lot.farm_id else None
        fac = facilities.get(lot.facility_id) if lot.facility_id else None
        owner = farm or fac
        out.append(
            LotPublic(
                code=lot.code,
                lot_no=lot.lot_no,
                product=products.get(lot.product_id, ""),
                quantity=lot.quantity,
                unit=lot.unit,
                farm=farm.code if farm else None,
                facility=fac.code if fac else None,
                harvest_year=lot.harvest_year,
                village_code=owner.village_code if owner else None,
                created_at=lot.created_at,
            )
        )
    return out


@router.get("/lots", response_model=Page[LotPublic], responses=READ)
def list_lots(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    year: Annotated[int | None, Query(ge=1900, le=2200)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[LotPublic]:
    """Lots of farms and facilities in your area."""
    stmt = lots_in(village_filter(actor, village)).order_by(Lot.id)
    if product:
        stmt = stmt.join(Product, col(Product.id) == Lot.product_id).where(Product.code == product)
    if year:
        stmt = stmt.where(Lot.harvest_year == year)
    return page(session, stmt, limit, offset, convert_all=lambda rows: lot_publics(session, rows))


@router.get("/lots/{code}", response_model=LotPublic, responses=problem_responses(400, 401, 403, 404, 422))
def get_lot(code: str, actor: ActorDep, session: SessionDep) -> LotPublic:
    lot = lot_by_code(session, code)
    actor.require_read_row(session, "lot", lot, f"lot {lot.code}")
    return lot_publics(session, [lot])[0]


@router.post("/lots", response_model=LotPublic, status_code=201, responses=WRITE)
def create_lot(body: LotCreate, request: Request, actor: ActorDep, session: SessionDep) -> LotPublic:
    """Add a lot (with its plots or herds, or its parent lots and what it takes of each). Its trace code is
    drawn unless given."""
    require_writer(actor, "lot")
    result = trace_write(request, session, actor, {"lots": [body.model_dump(mode="json", exclude_unset=True)]})
    if not result.created["lots"]:
        raise Problem(409, "conflict", f"lot {body.product}:{body.lot_no} is already recorded")
    lot = session.exec(
        select(Lot).join(Product).where(Product.code == body.product, Lot.lot_no == body.lot_no)  # type: ignore[arg-type]
    ).one()
    return lot_publics(session, [lot])[0]
