"""Plots (fields and paddies) of farms."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from api.deps import ActorDep, SessionDep
from api.problems import Problem
from api.schemas import Page
from api.schemas.registry import PlotCreate, PlotPublic, PlotUpdate
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
from core.models import Farm, Plot

router = APIRouter()


def _public(row: tuple[Plot, str]) -> PlotPublic:
    plot, farm_code = row
    return PlotPublic(farm_code=farm_code, **plot.model_dump(exclude={"id", "farm_id"}))


def _with_farm() -> Any:
    return select(Plot, Farm.code).join(Farm, col(Farm.id) == Plot.farm_id)


def _plot(session: SessionDep, plot_no: str) -> tuple[Plot, str]:
    row = session.exec(_with_farm().where(Plot.plot_no == plot_no)).first()
    if row is None:
        raise not_found(f"plot {plot_no}")
    return row  # type: ignore[return-value]


@router.get("/plots", response_model=Page[PlotPublic], responses=READ)
def list_plots(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    farm: Annotated[str | None, Query(max_length=64)] = None,
    crop: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[PlotPublic]:
    stmt = _with_farm().where(col(Plot.village_code).in_(village_filter(actor, village))).order_by(Plot.plot_no)
    if farm:
        stmt = stmt.where(Farm.code == farm)
    if crop:
        stmt = stmt.where(Plot.crop == crop)
    return page(session, stmt, limit, offset, _public)


@router.get("/plots/{plot_no}", response_model=PlotPublic, responses=READ)
def get_plot(plot_no: str, actor: ActorDep, session: SessionDep) -> PlotPublic:
    row = _plot(session, plot_no)
    actor.require_read_row(session, "plot", row[0], f"plot {plot_no}")
    return _public(row)


@router.post("/plots", response_model=PlotPublic, status_code=201, responses=WRITE)
def create_plot(body: PlotCreate, actor: ActorDep, session: SessionDep) -> PlotPublic:
    require_writer(actor, "plot")
    if session.exec(select(Plot.id).where(Plot.plot_no == body.plot_no)).first() is not None:
        raise Problem(409, "conflict", f"plot {body.plot_no} exists; PATCH it to change it")
    registry_write(session, actor, "plots", [body])
    return _public(_plot(session, body.plot_no))


@router.patch("/plots/{plot_no}", response_model=PlotPublic, responses=WRITE)
def update_plot(plot_no: str, body: PlotUpdate, actor: ActorDep, session: SessionDep) -> PlotPublic:
    row = _plot(session, plot_no)
    require_owner(actor, session, "plot", row[0])
    registry_write(session, actor, "plots", [merged(_public(row).model_dump(), body)])
    return _public(_plot(session, plot_no))
