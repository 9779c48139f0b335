"""Herds of livestock farms."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import HerdCreate, HerdPublic, HerdUpdate
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
from core.models import Farm, Herd

router = APIRouter()


def _public(row: tuple[Herd, str]) -> HerdPublic:
    herd, farm_code = row
    return HerdPublic(farm_code=farm_code, **herd.model_dump(exclude={"id", "farm_id"}))


def _with_farm() -> Any:
    return select(Herd, Farm.code).join(Farm, col(Farm.id) == Herd.farm_id)


def _herd(session: SessionDep, herd_no: str) -> tuple[Herd, str]:
    row = session.exec(_with_farm().where(Herd.herd_no == herd_no)).first()
    if row is None:
        raise not_found(f"herd {herd_no}")
    return row  # type: ignore[return-value]


@router.get("/herds", response_model=Page[HerdPublic], responses=READ)
def list_herds(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    farm: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[HerdPublic]:
    stmt = _with_farm().where(col(Herd.village_code).in_(village_filter(actor, village))).order_by(Herd.herd_no)
    if farm:
        stmt = stmt.where(Farm.code == farm)
    return page(session, stmt, limit, offset, _public)


@router.get("/herds/{herd_no}", response_model=HerdPublic, responses=READ)
def get_herd(herd_no: str, actor: ActorDep, session: SessionDep) -> HerdPublic:
    row = _herd(session, herd_no)
    actor.require_read_row(session, "herd", row[0], f"herd {herd_no}")
    return _public(row)


@router.post("/herds", response_model=HerdPublic, status_code=201, responses=WRITE)
def create_herd(body: HerdCreate, actor: ActorDep, session: SessionDep) -> HerdPublic:
    require_writer(actor, "herd")
    if session.exec(select(Herd.id).where(Herd.herd_no == body.herd_no)).first() is not None:
        raise Problem(409, "conflict", f"herd {body.herd_no} exists; PATCH it to change it")
    registry_write(session, actor, "herds", [body])
    return _public(_herd(session, body.herd_no))


@router.patch("/herds/{herd_no}", response_model=HerdPublic, responses=WRITE)
def update_herd(herd_no: str, body: HerdUpdate, actor: ActorDep, session: SessionDep) -> HerdPublic:
    row = _herd(session, herd_no)
    require_owner(actor, session, "herd", row[0])
    registry_write(session, actor, "herds", [merged(_public(row).model_dump(), body)])
    return _public(_herd(session, herd_no))
