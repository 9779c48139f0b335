"""Counties, townships and villages: read in your area, changed by county administrators only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import (
    CountyPublic,
    CountyUpdate,
    TownshipCreate,
    TownshipPublic,
    TownshipUpdate,
    VillageCreate,
    VillagePublic,
    VillageUpdate,
)
from api.services.admin import (
    READ,
    WRITE,
    Limit,
    Offset,
    merged,
    not_found,
    page,
    registry_write,
    require_owner,
    require_writer,
)
from core.models import County, Township, Village

router = APIRouter()


@router.get("/counties", response_model=Page[CountyPublic], responses=READ)
def list_counties(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[CountyPublic]:
    stmt = select(County).where(col(County.code).in_(actor.area.counties)).order_by(County.code)
    return page(session, stmt, limit, offset, CountyPublic.model_validate)


def _county(session: SessionDep, code: str) -> County:
    county = session.get(County, code)
    if county is None:
        raise not_found(f"county {code}")
    return county


@router.get("/counties/{code}", response_model=CountyPublic, responses=READ)
def get_county(code: str, actor: ActorDep, session: SessionDep) -> CountyPublic:
    county = _county(session, code)
    actor.require_read_row(session, "county", county, f"county {code}")
    return CountyPublic.model_validate(county)


@router.patch("/counties/{code}", response_model=CountyPublic, responses=WRITE)
def update_county(code: str, body: CountyUpdate, actor: ActorDep, session: SessionDep) -> CountyPublic:
    county = _county(session, code)
    require_owner(actor, session, "county", county)
    registry_write(session, actor, "counties", [merged(county.model_dump(), body)])
    return CountyPublic.model_validate(_county(session, code))


@router.get("/townships", response_model=Page[TownshipPublic], responses=READ)
def list_townships(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[TownshipPublic]:
    stmt = select(Township).where(col(Township.code).in_(actor.area.townships)).order_by(Township.code)
    return page(session, stmt, limit, offset, TownshipPublic.model_validate)


def _township(session: SessionDep, code: str) -> Township:
    t = session.get(Township, code)
    if t is None:
        raise not_found(f"township {code}")
    return t


@router.get("/townships/{code}", response_model=TownshipPublic, responses=READ)
def get_township(code: str, actor: ActorDep, session: SessionDep) -> TownshipPublic:
    t = _township(session, code)
    if code not in actor.area.townships:
        raise Problem(403, "outside-scope", f"township {code} is outside your area")
    return TownshipPublic.model_validate(t)


@router.post("/townships", response_model=TownshipPublic, status_code=201, responses=WRITE)
def create_township(body: TownshipCreate, actor: ActorDep, session: SessionDep) -> TownshipPublic:
    require_writer(actor, "township")
    if session.get(Township, body.code) is not None:
        raise Problem(409, "conflict", f"township {body.code} exists; PATCH it to change it")
    registry_write(session, actor, "townships", [body])
    return TownshipPublic.model_validate(_township(session, body.code))


@router.patch("/townships/{code}", response_model=TownshipPublic, responses=WRITE)
def update_township(code: str, body: TownshipUpdate, actor: ActorDep, session: SessionDep) -> TownshipPublic:
    t = _township(session, code)
    require_owner(actor, session, "township", t)
    registry_write(session, actor, "townships", [merged(t.model_dump(), body)])
    return TownshipPublic.model_validate(_township(session, code))


@router.get("/villages", response_model=Page[VillagePublic], responses=READ)
def list_villages(
    actor: ActorDep,
    session: SessionDep,
    township: Annotated[str | None, Query(pattern=r"^\d{9}$")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[VillagePublic]:
    stmt = select(Village).where(col(Village.code).in_(actor.area.villages)).order_by(Village.code)
    if township:
        stmt = stmt.where(Village.township_code == township)
    return page(session, stmt, limit, offset, VillagePublic.model_validate)


def _village(session: SessionDep, code: str) -> Village:
    v = session.get(Village, code)
    if v is None:
        raise not_found(f"village {code}")
    return v


@router.get("/villages/{code}", response_model=VillagePublic, responses=READ)
def get_village(code: str, actor: ActorDep, session: SessionDep) -> VillagePublic:
    v = _village(session, code)
    actor.require_read(code, f"village {code}")
    return VillagePublic.model_validate(v)


@router.post("/villages", response_model=VillagePublic, status_code=201, responses=WRITE)
def create_village(body: VillageCreate, actor: ActorDep, session: SessionDep) -> VillagePublic:
    require_writer(actor, "village")
    if session.get(Village, body.code) is not None:
        raise Problem(409, "conflict", f"village {body.code} exists; PATCH it to change it")
    registry_write(session, actor, "villages", [body])
    return VillagePublic.model_validate(_village(session, body.code))


@router.patch("/villages/{code}", response_model=VillagePublic, responses=WRITE)
def update_village(code: str, body: VillageUpdate, actor: ActorDep, session: SessionDep) -> VillagePublic:
    v = _village(session, code)
    require_owner(actor, session, "village", v)
    registry_write(session, actor, "villages", [merged(v.model_dump(), body)])
    return VillagePublic.model_validate(_village(session, code))
