"""Animals of herds, by ear tag."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import AnimalCreate, AnimalPublic, AnimalUpdate
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
from core.models import Animal, Herd

router = APIRouter()


def _public(row: tuple[Animal, str, str]) -> AnimalPublic:
    animal, herd_no, village = row
    return AnimalPublic(herd_no=herd_no, village_code=village, **animal.model_dump(exclude={"id", "herd_id"}))


def _with_herd() -> Any:
    return select(Animal, Herd.herd_no, Herd.village_code).join(Herd, col(Herd.id) == Animal.herd_id)


def _animal(session: SessionDep, ear_tag: str) -> tuple[Animal, str, str]:
    row = session.exec(_with_herd().where(Animal.ear_tag == ear_tag)).first()
    if row is None:
        raise not_found(f"animal {ear_tag}")
    return row  # type: ignore[return-value]


@router.get("/animals", response_model=Page[AnimalPublic], responses=READ)
def list_animals(
    actor: ActorDep,
    session: SessionDep,
    herd: Annotated[str | None, Query(max_length=64)] = None,
    village: VillageQ = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AnimalPublic]:
    stmt = _with_herd().where(col(Herd.village_code).in_(village_filter(actor, village))).order_by(Animal.ear_tag)
    if herd:
        stmt = stmt.where(Herd.herd_no == herd)
    return page(session, stmt, limit, offset, _public)


@router.get("/animals/{ear_tag}", response_model=AnimalPublic, responses=READ)
def get_animal(ear_tag: str, actor: ActorDep, session: SessionDep) -> AnimalPublic:
    row = _animal(session, ear_tag)
    actor.require_read_row(session, "animal", row[0], f"animal {ear_tag}")
    return _public(row)


@router.post("/animals", response_model=AnimalPublic, status_code=201, responses=WRITE)
def create_animal(body: AnimalCreate, actor: ActorDep, session: SessionDep) -> AnimalPublic:
    require_writer(actor, "animal")
    if session.exec(select(Animal.id).where(Animal.ear_tag == body.ear_tag)).first() is not None:
        raise Problem(409, "conflict", f"animal {body.ear_tag} exists; PATCH it to change it")
    registry_write(session, actor, "animals", [body])
    return _public(_animal(session, body.ear_tag))


@router.patch("/animals/{ear_tag}", response_model=AnimalPublic, responses=WRITE)
def update_animal(ear_tag: str, body: AnimalUpdate, actor: ActorDep, session: SessionDep) -> AnimalPublic:
    row = _animal(session, ear_tag)
    require_owner(actor, session, "animal", row[0])
    current = _public(row).model_dump(exclude={"village_code"})
    registry_write(session, actor, "animals", [merged(current, body)])
    return _public(_animal(session, ear_tag))
