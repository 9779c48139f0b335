"""Farms, cooperatives and enterprises. Contact fields are personal data: only the county
administrator and the farm's own village operator see them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import Actor, ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import FarmCreate, FarmPublic, FarmUpdate
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    VillageQ,
    merged,
    not_found,
    page,
    registry_write,
    require_owner,
    require_writer,
    village_filter,
)
from core.models import Farm

router = APIRouter()
FIELDS = ("code", "name", "kind", "village_code", "contact_name", "contact_phone")


def farm_public(actor: Actor, farm: Farm) -> FarmPublic:
    data: dict[str, Any] = {"code": farm.code, "name": farm.name, "kind": farm.kind, "village_code": farm.village_code}
    if actor.sees_personal_data(farm.village_code):
        data |= {"contact_name": farm.contact_name, "contact_phone": farm.contact_phone}
    return FarmPublic(**data)


def _farm(session: SessionDep, code: str) -> Farm:
    farm = session.exec(select(Farm).where(Farm.code == code)).first()
    if farm is None:
        raise not_found(f"farm {code}")
    return farm


@router.get("/farms", response_model=Page[FarmPublic], response_model_exclude_unset=True, responses=READ)
def list_farms(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[FarmPublic]:
    """Farms in your area; contact fields only for a county administrator or the farm's village operator."""
    stmt = select(Farm).where(col(Farm.village_code).in_(village_filter(actor, village))).order_by(Farm.code)
    if kind:
        stmt = stmt.where(Farm.kind == kind)
    return page(session, stmt, limit, offset, lambda f: farm_public(actor, f))


@router.get("/farms/{code}", response_model=FarmPublic, response_model_exclude_unset=True, responses=READ)
def get_farm(code: str, actor: ActorDep, session: SessionDep) -> FarmPublic:
    farm = _farm(session, code)
    actor.require_read_row(session, "farm", farm, f"farm {code}")
    return farm_public(actor, farm)


@router.post("/farms", response_model=FarmPublic, status_code=201, response_model_exclude_unset=True, responses=WRITE)
def create_farm(body: FarmCreate, actor: ActorDep, session: SessionDep) -> FarmPublic:
    require_writer(actor, "farm")
    if session.exec(select(Farm.id).where(Farm.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"farm {body.code} exists; PATCH it to change it")
    registry_write(session, actor, "farms", [body])
    return farm_public(actor, _farm(session, body.code))


@router.patch("/farms/{code}", response_model=FarmPublic, response_model_exclude_unset=True, responses=WRITE)
def update_farm(code: str, body: FarmUpdate, actor: ActorDep, session: SessionDep) -> FarmPublic:
    farm = _farm(session, code)
    require_owner(actor, session, "farm", farm)
    registry_write(session, actor, "farms", [merged({k: getattr(farm, k) for k in FIELDS}, body)])
    return farm_public(actor, _farm(session, code))
