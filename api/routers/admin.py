"""Registry administration under `/api/v1/admin`: divisions, farms, plots, herds, animals, devices,
products, facilities, lots, events and inspections.

Every route checks the caller's role and area (api/deps.py): reading needs the row's village in the
caller's area, changing it also a role that may write (not an analyst); townships and villages are
changed by county administrators only. Farm contact fields are personal data: they are returned only
to the county administrator and the farm's own village operator.

Writes go through the same validating importers as the YAML files (core.registry_io for the
registry, ledger.trace_io for lots, events and inspections, which checks vocabulary, attributes and
references), so the API and the files accept exactly the same data. A rejected write is a 422
problem listing every field at fault. Trace data is a ledger: lots, events and inspections are
only ever added, never changed. Lists are paginated (`limit`, `offset`, with `total`) and filtered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, create_model
from sqlalchemy import func
from sqlmodel import Session, col, select

from api.deps import Actor, ActorDep, SessionDep, county_of_village
from api.models import Role
from api.problems import Problem, problem_responses
from api.schemas import (
    AnimalIn,
    EventIn,
    FacilityIn,
    FarmIn,
    HerdIn,
    InspectionIn,
    LotIn,
    PlotIn,
    ProductIn,
    TownshipIn,
    VillageIn,
)
from core import provisioning
from core.models import Animal, County, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from core.registry_io import (
    AnimalRow,
    FarmRow,
    HerdRow,
    ImportErrors,
    PlotRow,
    TownshipRow,
    VillageRow,
    import_data,
)
from ledger import trace_io
from ledger.codes import TraceCodeError, normalize_code
from ledger.models import Facility, Inspection, InspectionItem, Lot, Product, TraceEvent
from ledger.records import event_lots, rfc3339
from ledger.vocab import UnknownTerm, get_vocab

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
READ = problem_responses(401, 403, 404, 422)
WRITE = problem_responses(401, 403, 404, 409, 422)
T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=500, description="Items per page")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip")]
VillageQ = Annotated[str | None, Query(pattern=r"^\d{12}$", description="Only rows of this village")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------- output models


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class CountyOut(_Out):
    code: str
    name_zh: str
    name_en: str
    timezone: str


class TownshipOut(_Out):
    code: str
    county_code: str
    name_zh: str
    name_en: str


class VillageOut(_Out):
    code: str
    township_code: str
    name_zh: str
    name_en: str


class FarmOut(_Out):
    code: str
    name: str
    kind: str
    village_code: str
    contact_name: str | None = None  # personal data: only for the roles that may see it
    contact_phone: str | None = None


class PlotOut(_Out):
    plot_no: str
    farm_code: str
    village_code: str
    area_mu: float
    crop: str
    lat: float | None = None
    lon: float | None = None


class HerdOut(_Out):
    herd_no: str
    farm_code: str
    village_code: str
    species: str
    head_count: int


class AnimalOut(_Out):
    ear_tag: str
    herd_no: str
    village_code: str
    species: str
    sex: str | None = None
    birth_date: str | None = None


class DeviceOut(_Out):
    id: str
    kind: str
    status: DeviceStatus
    village_code: str | None
    plot_no: str | None = None
    herd_no: str | None = None
    ear_tag: str | None = None
    created_at: datetime
    provisioned_at: datetime | None = None
    revoked_at: datetime | None = None


class DeviceSecretOut(DeviceOut):
    secret: str


class ProductOut(_Out):
    code: str
    gtin: str | None = None
    name_zh: str
    name_en: str
    variety: str | None = None
    unit: str


class FacilityOut(_Out):
    code: str
    name: str
    kind: str
    village_code: str


class LotAdminOut(_Out):
    code: str
    lot_no: str
    product: str
    quantity: float | None = None
    unit: str
    farm: str | None = None
    facility: str | None = None
    harvest_year: int | None = None
    village_code: str | None = None
    created_at: datetime


class EventOut(_Out):
    id: int
    event_id: str | None = None
    type: str
    action: str | None = None
    step: str
    disposition: str | None = None
    time: str
    lot: str | None = None
    inputs: list[str] = []
    outputs: list[str] = []
    read_point: dict[str, str | None]
    biz_location: str
    attributes: dict[str, Any]


class ItemOut(_Out):
    item: str
    value: float
    unit: str
    limit_value: float
    limit_kind: str
    method: str
    passed: bool


class InspectionOut(_Out):
    id: int
    lot: str
    lab: str
    report_no: str
    sampled_on: date
    reported_on: date | None = None
    certificate_sha256: str | None = None
    passed: bool
    items: list[ItemOut]


# ---------------------------------------------------------------- helpers


def _page(session: Session, stmt: Any, limit: int, offset: int, convert: Callable[[Any], T]) -> Page[T]:
    total = session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one()
    rows = session.exec(stmt.limit(limit).offset(offset)).all()
    return Page[T](items=[convert(r) for r in rows], total=total, limit=limit, offset=offset)


def _not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"no {what}")


def _import_errors(e: ImportErrors) -> Problem:
    errors = [{"field": x.field, "message": x.message} for x in e.errors]
    first = e.errors[0] if e.errors else None
    detail = f"{first.field or first.entity}: {first.message}" if first else "invalid data"
    if len(e.errors) > 1:
        detail += f" (and {len(e.errors) - 1} more)"
    return Problem(422, "validation", detail, errors=errors)


def _registry_write(session: Session, section: str, row: BaseModel) -> None:
    try:
        import_data(session, {section: [row.model_dump(mode="json", exclude_none=False)]}, source="api")
    except ImportErrors as e:
        raise _import_errors(e) from None
    session.commit()


def _partial(model: type[BaseModel], key: str) -> type[BaseModel]:
    """A PATCH body: every field of `model` but its key, all optional."""
    fields: dict[str, Any] = {
        name: (f.annotation | None, None) for name, f in model.model_fields.items() if name != key
    }
    return create_model(f"{model.__name__}Patch", __config__=ConfigDict(extra="forbid"), **fields)


def _patched(model: type[BaseModel], current: dict[str, Any], patch: BaseModel) -> BaseModel:
    merged = {**current, **patch.model_dump(exclude_unset=True)}
    try:
        return model.model_validate(merged)
    except Exception as e:  # pydantic ValidationError: report like a request body error
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            errors = [{"field": ".".join(map(str, x["loc"])), "message": x["msg"]} for x in e.errors()]
            raise Problem(422, "validation", f"{errors[0]['field']}: {errors[0]['message']}", errors=errors) from None
        raise


def _village_filter(actor: Actor, village: str | None) -> set[str]:
    if village is None:
        return actor.area.villages
    actor.require_read(village, f"village {village}")
    return {village}


# ---------------------------------------------------------------- divisions


@router.get("/counties", response_model=Page[CountyOut], responses=READ)
def list_counties(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[CountyOut]:
    stmt = select(County).where(col(County.code).in_(actor.area.counties)).order_by(County.code)
    return _page(session, stmt, limit, offset, CountyOut.model_validate)


@router.get("/counties/{code}", response_model=CountyOut, responses=READ)
def get_county(code: str, actor: ActorDep, session: SessionDep) -> CountyOut:
    county = session.get(County, code)
    if county is None:
        raise _not_found(f"county {code}")
    if code not in actor.area.counties:
        raise Problem(403, "outside-scope", f"county {code} is outside your area")
    return CountyOut.model_validate(county)


CountyPatch = create_model(
    "CountyPatch",
    __config__=ConfigDict(extra="forbid"),
    name_zh=(str | None, None),
    name_en=(str | None, None),
    timezone=(str | None, None),
)


@router.patch("/counties/{code}", response_model=CountyOut, responses=WRITE)
def patch_county(code: str, body: CountyPatch, actor: ActorDep, session: SessionDep) -> CountyOut:  # type: ignore[valid-type]
    county = session.get(County, code)
    if county is None:
        raise _not_found(f"county {code}")
    actor.require_county_admin(code, f"county {code}")
    from core.registry_io import CountyRow

    row = _patched(CountyRow, county.model_dump(), body)  # type: ignore[arg-type]
    _registry_write(session, "counties", row)
    return CountyOut.model_validate(session.get(County, code))


@router.get("/townships", response_model=Page[TownshipOut], responses=READ)
def list_townships(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[TownshipOut]:
    stmt = select(Township).where(col(Township.code).in_(actor.area.townships)).order_by(Township.code)
    return _page(session, stmt, limit, offset, TownshipOut.model_validate)


@router.get("/townships/{code}", response_model=TownshipOut, responses=READ)
def get_township(code: str, actor: ActorDep, session: SessionDep) -> TownshipOut:
    t = session.get(Township, code)
    if t is None:
        raise _not_found(f"township {code}")
    if code not in actor.area.townships:
        raise Problem(403, "outside-scope", f"township {code} is outside your area")
    return TownshipOut.model_validate(t)


@router.post("/townships", response_model=TownshipOut, status_code=201, responses=WRITE)
def create_township(body: TownshipIn, actor: ActorDep, session: SessionDep) -> TownshipOut:
    actor.require_county_admin(body.county_code, f"county {body.county_code}")
    if session.get(Township, body.code) is not None:
        raise Problem(409, "conflict", f"township {body.code} exists; PATCH it to change it")
    _registry_write(session, "townships", body)
    return TownshipOut.model_validate(session.get(Township, body.code))


TownshipPatch = _partial(TownshipIn, "code")


@router.patch("/townships/{code}", response_model=TownshipOut, responses=WRITE)
def patch_township(code: str, body: TownshipPatch, actor: ActorDep, session: SessionDep) -> TownshipOut:  # type: ignore[valid-type]
    t = session.get(Township, code)
    if t is None:
        raise _not_found(f"township {code}")
    actor.require_county_admin(t.county_code, f"township {code}")
    row = _patched(TownshipRow, t.model_dump(), body)  # type: ignore[arg-type]
    actor.require_county_admin(row.county_code, f"county {row.county_code}")  # type: ignore[attr-defined]
    _registry_write(session, "townships", row)
    return TownshipOut.model_validate(session.get(Township, code))


@router.get("/villages", response_model=Page[VillageOut], responses=READ)
def list_villages(
    actor: ActorDep,
    session: SessionDep,
    township: Annotated[str | None, Query(pattern=r"^\d{9}$")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[VillageOut]:
    stmt = select(Village).where(col(Village.code).in_(actor.area.villages)).order_by(Village.code)
    if township:
        stmt = stmt.where(Village.township_code == township)
    return _page(session, stmt, limit, offset, VillageOut.model_validate)


@router.get("/villages/{code}", response_model=VillageOut, responses=READ)
def get_village(code: str, actor: ActorDep, session: SessionDep) -> VillageOut:
    v = session.get(Village, code)
    if v is None:
        raise _not_found(f"village {code}")
    actor.require_read(code, f"village {code}")
    return VillageOut.model_validate(v)


@router.post("/villages", response_model=VillageOut, status_code=201, responses=WRITE)
def create_village(body: VillageIn, actor: ActorDep, session: SessionDep) -> VillageOut:
    t = session.get(Township, body.township_code)
    actor.require_county_admin(t.county_code if t else None, f"township {body.township_code}")
    if session.get(Village, body.code) is not None:
        raise Problem(409, "conflict", f"village {body.code} exists; PATCH it to change it")
    _registry_write(session, "villages", body)
    return VillageOut.model_validate(session.get(Village, body.code))


VillagePatch = _partial(VillageIn, "code")


@router.patch("/villages/{code}", response_model=VillageOut, responses=WRITE)
def patch_village(code: str, body: VillagePatch, actor: ActorDep, session: SessionDep) -> VillageOut:  # type: ignore[valid-type]
    v = session.get(Village, code)
    if v is None:
        raise _not_found(f"village {code}")
    actor.require_county_admin(county_of_village(session, code), f"village {code}")
    row = _patched(VillageRow, v.model_dump(), body)  # type: ignore[arg-type]
    if row.township_code not in actor.area.townships:  # type: ignore[attr-defined]
        raise Problem(403, "outside-scope", f"township {row.township_code} is outside your county")  # type: ignore[attr-defined]
    _registry_write(session, "villages", row)
    return VillageOut.model_validate(session.get(Village, code))


# ---------------------------------------------------------------- farms, plots, herds, animals


def _farm_out(actor: Actor, farm: Farm) -> FarmOut:
    data: dict[str, Any] = {"code": farm.code, "name": farm.name, "kind": farm.kind, "village_code": farm.village_code}
    if actor.sees_personal_data(farm.village_code):
        data |= {"contact_name": farm.contact_name, "contact_phone": farm.contact_phone}
    return FarmOut(**data)


def _farm_row(farm: Farm) -> dict[str, Any]:
    return {k: getattr(farm, k) for k in ("code", "name", "kind", "village_code", "contact_name", "contact_phone")}


@router.get("/farms", response_model=Page[FarmOut], response_model_exclude_unset=True, responses=READ)
def list_farms(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[FarmOut]:
    """Farms in your area; contact fields only for a county administrator or the farm's village operator."""
    stmt = select(Farm).where(col(Farm.village_code).in_(_village_filter(actor, village))).order_by(Farm.code)
    if kind:
        stmt = stmt.where(Farm.kind == kind)
    return _page(session, stmt, limit, offset, lambda f: _farm_out(actor, f))


def _farm(session: Session, code: str) -> Farm:
    farm = session.exec(select(Farm).where(Farm.code == code)).first()
    if farm is None:
        raise _not_found(f"farm {code}")
    return farm


@router.get("/farms/{code}", response_model=FarmOut, response_model_exclude_unset=True, responses=READ)
def get_farm(code: str, actor: ActorDep, session: SessionDep) -> FarmOut:
    farm = _farm(session, code)
    actor.require_read(farm.village_code, f"farm {code}")
    return _farm_out(actor, farm)


@router.post("/farms", response_model=FarmOut, status_code=201, response_model_exclude_unset=True, responses=WRITE)
def create_farm(body: FarmIn, actor: ActorDep, session: SessionDep) -> FarmOut:
    actor.require_write(body.village_code, f"village {body.village_code}")
    if session.exec(select(Farm.id).where(Farm.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"farm {body.code} exists; PATCH it to change it")
    _registry_write(session, "farms", body)
    return _farm_out(actor, _farm(session, body.code))


FarmPatch = _partial(FarmIn, "code")


@router.patch("/farms/{code}", response_model=FarmOut, response_model_exclude_unset=True, responses=WRITE)
def patch_farm(code: str, body: FarmPatch, actor: ActorDep, session: SessionDep) -> FarmOut:  # type: ignore[valid-type]
    farm = _farm(session, code)
    actor.require_write(farm.village_code, f"farm {code}")
    row = _patched(FarmRow, _farm_row(farm), body)  # type: ignore[arg-type]
    actor.require_write(row.village_code, f"village {row.village_code}")  # type: ignore[attr-defined]
    _registry_write(session, "farms", row)
    return _farm_out(actor, _farm(session, code))


def _farm_codes(session: Session, ids: Sequence[int]) -> dict[int, str]:
    return dict(session.exec(select(Farm.id, Farm.code).where(col(Farm.id).in_(ids))).all())  # type: ignore[arg-type]


def _plot_out(session: Session, p: Plot) -> PlotOut:
    farm = session.get(Farm, p.farm_id)
    return PlotOut(farm_code=farm.code if farm else "", **p.model_dump(exclude={"id", "farm_id"}))


@router.get("/plots", response_model=Page[PlotOut], responses=READ)
def list_plots(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    farm: Annotated[str | None, Query(max_length=64)] = None,
    crop: Annotated[str | None, Query(max_length=40)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[PlotOut]:
    stmt = select(Plot).where(col(Plot.village_code).in_(_village_filter(actor, village))).order_by(Plot.plot_no)
    if farm:
        stmt = stmt.join(Farm, col(Farm.id) == Plot.farm_id).where(Farm.code == farm)
    if crop:
        stmt = stmt.where(Plot.crop == crop)
    return _page(session, stmt, limit, offset, lambda p: _plot_out(session, p))


def _plot(session: Session, plot_no: str) -> Plot:
    plot = session.exec(select(Plot).where(Plot.plot_no == plot_no)).first()
    if plot is None:
        raise _not_found(f"plot {plot_no}")
    return plot


@router.get("/plots/{plot_no}", response_model=PlotOut, responses=READ)
def get_plot(plot_no: str, actor: ActorDep, session: SessionDep) -> PlotOut:
    plot = _plot(session, plot_no)
    actor.require_read(plot.village_code, f"plot {plot_no}")
    return _plot_out(session, plot)


@router.post("/plots", response_model=PlotOut, status_code=201, responses=WRITE)
def create_plot(body: PlotIn, actor: ActorDep, session: SessionDep) -> PlotOut:
    actor.require_write(body.village_code, f"village {body.village_code}")
    if session.exec(select(Plot.id).where(Plot.plot_no == body.plot_no)).first() is not None:
        raise Problem(409, "conflict", f"plot {body.plot_no} exists; PATCH it to change it")
    _registry_write(session, "plots", body)
    return _plot_out(session, _plot(session, body.plot_no))


PlotPatch = _partial(PlotIn, "plot_no")


@router.patch("/plots/{plot_no}", response_model=PlotOut, responses=WRITE)
def patch_plot(plot_no: str, body: PlotPatch, actor: ActorDep, session: SessionDep) -> PlotOut:  # type: ignore[valid-type]
    plot = _plot(session, plot_no)
    actor.require_write(plot.village_code, f"plot {plot_no}")
    current = _plot_out(session, plot).model_dump()
    row = _patched(PlotRow, current, body)  # type: ignore[arg-type]
    actor.require_write(row.village_code, f"village {row.village_code}")  # type: ignore[attr-defined]
    _registry_write(session, "plots", row)
    return _plot_out(session, _plot(session, plot_no))


def _herd_out(session: Session, h: Herd) -> HerdOut:
    farm = session.get(Farm, h.farm_id)
    return HerdOut(farm_code=farm.code if farm else "", **h.model_dump(exclude={"id", "farm_id"}))


@router.get("/herds", response_model=Page[HerdOut], responses=READ)
def list_herds(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    farm: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[HerdOut]:
    stmt = select(Herd).where(col(Herd.village_code).in_(_village_filter(actor, village))).order_by(Herd.herd_no)
    if farm:
        stmt = stmt.join(Farm, col(Farm.id) == Herd.farm_id).where(Farm.code == farm)
    return _page(session, stmt, limit, offset, lambda h: _herd_out(session, h))


def _herd(session: Session, herd_no: str) -> Herd:
    herd = session.exec(select(Herd).where(Herd.herd_no == herd_no)).first()
    if herd is None:
        raise _not_found(f"herd {herd_no}")
    return herd


@router.get("/herds/{herd_no}", response_model=HerdOut, responses=READ)
def get_herd(herd_no: str, actor: ActorDep, session: SessionDep) -> HerdOut:
    herd = _herd(session, herd_no)
    actor.require_read(herd.village_code, f"herd {herd_no}")
    return _herd_out(session, herd)


@router.post("/herds", response_model=HerdOut, status_code=201, responses=WRITE)
def create_herd(body: HerdIn, actor: ActorDep, session: SessionDep) -> HerdOut:
    actor.require_write(body.village_code, f"village {body.village_code}")
    if session.exec(select(Herd.id).where(Herd.herd_no == body.herd_no)).first() is not None:
        raise Problem(409, "conflict", f"herd {body.herd_no} exists; PATCH it to change it")
    _registry_write(session, "herds", body)
    return _herd_out(session, _herd(session, body.herd_no))


HerdPatch = _partial(HerdIn, "herd_no")


@router.patch("/herds/{herd_no}", response_model=HerdOut, responses=WRITE)
def patch_herd(herd_no: str, body: HerdPatch, actor: ActorDep, session: SessionDep) -> HerdOut:  # type: ignore[valid-type]
    herd = _herd(session, herd_no)
    actor.require_write(herd.village_code, f"herd {herd_no}")
    row = _patched(HerdRow, _herd_out(session, herd).model_dump(), body)  # type: ignore[arg-type]
    actor.require_write(row.village_code, f"village {row.village_code}")  # type: ignore[attr-defined]
    _registry_write(session, "herds", row)
    return _herd_out(session, _herd(session, herd_no))


def _animal_out(session: Session, a: Animal) -> AnimalOut:
    herd = session.get(Herd, a.herd_id)
    return AnimalOut(
        herd_no=herd.herd_no if herd else "",
        village_code=herd.village_code if herd else "",
        **a.model_dump(exclude={"id", "herd_id"}),
    )


@router.get("/animals", response_model=Page[AnimalOut], responses=READ)
def list_animals(
    actor: ActorDep,
    session: SessionDep,
    herd: Annotated[str | None, Query(max_length=64)] = None,
    village: VillageQ = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AnimalOut]:
    stmt = (
        select(Animal)
        .join(Herd, col(Herd.id) == Animal.herd_id)
        .where(col(Herd.village_code).in_(_village_filter(actor, village)))
        .order_by(Animal.ear_tag)
    )
    if herd:
        stmt = stmt.where(Herd.herd_no == herd)
    return _page(session, stmt, limit, offset, lambda a: _animal_out(session, a))


def _animal(session: Session, ear_tag: str) -> Animal:
    animal = session.exec(select(Animal).where(Animal.ear_tag == ear_tag)).first()
    if animal is None:
        raise _not_found(f"animal {ear_tag}")
    return animal


@router.get("/animals/{ear_tag}", response_model=AnimalOut, responses=READ)
def get_animal(ear_tag: str, actor: ActorDep, session: SessionDep) -> AnimalOut:
    out = _animal_out(session, _animal(session, ear_tag))
    actor.require_read(out.village_code, f"animal {ear_tag}")
    return out


@router.post("/animals", response_model=AnimalOut, status_code=201, responses=WRITE)
def create_animal(body: AnimalIn, actor: ActorDep, session: SessionDep) -> AnimalOut:
    herd = session.exec(select(Herd).where(Herd.herd_no == body.herd_no)).first()
    if herd is None:
        raise Problem(422, "validation", f"herd_no: herd {body.herd_no!r} does not exist")
    actor.require_write(herd.village_code, f"herd {body.herd_no}")
    if session.exec(select(Animal.id).where(Animal.ear_tag == body.ear_tag)).first() is not None:
        raise Problem(409, "conflict", f"animal {body.ear_tag} exists; PATCH it to change it")
    _registry_write(session, "animals", body)
    return _animal_out(session, _animal(session, body.ear_tag))


AnimalPatch = _partial(AnimalIn, "ear_tag")


@router.patch("/animals/{ear_tag}", response_model=AnimalOut, responses=WRITE)
def patch_animal(ear_tag: str, body: AnimalPatch, actor: ActorDep, session: SessionDep) -> AnimalOut:  # type: ignore[valid-type]
    current = _animal_out(session, _animal(session, ear_tag))
    actor.require_write(current.village_code, f"animal {ear_tag}")
    row = _patched(AnimalRow, current.model_dump(exclude={"village_code"}), body)  # type: ignore[arg-type]
    herd = session.exec(select(Herd).where(Herd.herd_no == row.herd_no)).first()  # type: ignore[attr-defined]
    if herd is not None:
        actor.require_write(herd.village_code, f"herd {herd.herd_no}")
    _registry_write(session, "animals", row)
    return _animal_out(session, _animal(session, ear_tag))


# ---------------------------------------------------------------- devices


class DeviceIn(BaseModel):
    """A device: attached to a plot, herd or animal as its kind says (core/catalogue.yaml)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    kind: str
    plot_no: str | None = None
    herd_no: str | None = None
    ear_tag: str | None = None


def _device_village(session: Session, d: Device) -> tuple[str | None, dict[str, str | None]]:
    where: dict[str, str | None] = {"plot_no": None, "herd_no": None, "ear_tag": None}
    if d.plot_id is not None:
        p = session.get(Plot, d.plot_id)
        where["plot_no"] = p.plot_no if p else None
        return (p.village_code if p else None), where
    if d.herd_id is not None:
        h = session.get(Herd, d.herd_id)
        where["herd_no"] = h.herd_no if h else None
        return (h.village_code if h else None), where
    if d.animal_id is not None:
        a = session.get(Animal, d.animal_id)
        h = session.get(Herd, a.herd_id) if a else None
        where["ear_tag"] = a.ear_tag if a else None
        return (h.village_code if h else None), where
    return None, where


def _device_out(session: Session, d: Device) -> DeviceOut:
    village, where = _device_village(session, d)
    return DeviceOut(
        id=d.id,
        kind=d.kind,
        status=d.status,
        village_code=village,
        created_at=d.created_at,
        provisioned_at=d.provisioned_at,
        revoked_at=d.revoked_at,
        **where,
    )


def _devices_in(session: Session, villages: set[str]) -> Any:
    plots = select(Plot.id).where(col(Plot.village_code).in_(villages))
    herds = select(Herd.id).where(col(Herd.village_code).in_(villages))
    animals = select(Animal.id).where(col(Animal.herd_id).in_(herds))
    return select(Device).where(
        col(Device.plot_id).in_(plots) | col(Device.herd_id).in_(herds) | col(Device.animal_id).in_(animals)
    )


@router.get("/devices", response_model=Page[DeviceOut], responses=READ)
def list_devices(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
    status: DeviceStatus | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DeviceOut]:
    stmt = _devices_in(session, _village_filter(actor, village)).order_by(Device.id)
    if kind:
        stmt = stmt.where(Device.kind == kind)
    if status:
        stmt = stmt.where(Device.status == status)
    return _page(session, stmt, limit, offset, lambda d: _device_out(session, d))


def _device(session: Session, device_id: str) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise _not_found(f"device {device_id}")
    return d


@router.get("/devices/{device_id}", response_model=DeviceOut, responses=READ)
def get_device(device_id: str, actor: ActorDep, session: SessionDep) -> DeviceOut:
    out = _device_out(session, _device(session, device_id))
    actor.require_read(out.village_code, f"device {device_id}")
    return out


def _provision(session: Session, actor: Actor, device_id: str) -> DeviceSecretOut:
    secret = provisioning.provision(session, device_id)
    session.commit()
    log.info("device %s provisioned by %s", device_id, actor.principal.username)
    return DeviceSecretOut(secret=secret, **_device_out(session, _device(session, device_id)).model_dump())


@router.post("/devices", response_model=DeviceSecretOut, status_code=201, responses=WRITE)
def create_device(body: DeviceIn, actor: ActorDep, session: SessionDep) -> DeviceSecretOut:
    """Register a device and provision it: the answer carries its broker secret, the only time it is shown
    (only its hash is stored). The broker picks it up at the next `village broker sync`."""
    from core.registry_io import DeviceRow

    try:
        row = DeviceRow.model_validate(body.model_dump())
    except Exception as e:
        raise Problem(422, "validation", str(e).splitlines()[0]) from None
    target = None
    if row.plot_no:
        target = session.exec(select(Plot.village_code).where(Plot.plot_no == row.plot_no)).first()
    elif row.herd_no:
        target = session.exec(select(Herd.village_code).where(Herd.herd_no == row.herd_no)).first()
    elif row.ear_tag:
        target = session.exec(
            select(Herd.village_code).join(Animal, col(Animal.herd_id) == Herd.id).where(Animal.ear_tag == row.ear_tag)
        ).first()
    if target is not None:
        actor.require_write(target, f"village {target}")
    elif actor.role == Role.analyst:
        actor.require_write(None, "devices")
    if session.get(Device, row.id) is not None:
        raise Problem(409, "conflict", f"device {row.id} exists; provision it again to rotate its secret")
    _registry_write(session, "devices", row)
    return _provision(session, actor, row.id)


@router.post("/devices/{device_id}/provision", response_model=DeviceSecretOut, responses=WRITE)
def provision_device(device_id: str, actor: ActorDep, session: SessionDep) -> DeviceSecretOut:
    """Issue a new secret (rotation; also reinstates a revoked device). Shown once."""
    out = _device_out(session, _device(session, device_id))
    actor.require_write(out.village_code, f"device {device_id}")
    return _provision(session, actor, device_id)


@router.post("/devices/{device_id}/revoke", response_model=DeviceOut, responses=WRITE)
def revoke_device(device_id: str, actor: ActorDep, session: SessionDep) -> DeviceOut:
    """Revoke: the secret hash is forgotten; the broker refuses the device after the next sync."""
    out = _device_out(session, _device(session, device_id))
    actor.require_write(out.village_code, f"device {device_id}")
    provisioning.revoke(session, device_id)
    session.commit()
    log.info("device %s revoked by %s", device_id, actor.principal.username)
    return _device_out(session, _device(session, device_id))


# ---------------------------------------------------------------- products and facilities


@router.get("/products", response_model=Page[ProductOut], responses=READ)
def list_products(actor: ActorDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[ProductOut]:
    """Products are county-wide trade items: every signed-in role reads them."""
    return _page(session, select(Product).order_by(Product.code), limit, offset, ProductOut.model_validate)


def _trace_write(request: Request, session: Session, section: str, row: BaseModel) -> trace_io.TraceImportResult:
    data = row.model_dump(mode="json", exclude_unset=True)
    try:
        result = trace_io.import_trace_data(session, {section: [data]}, source="api")
    except ImportErrors as e:
        raise _import_errors(e) from None
    session.commit()
    request.app.state.trace.forget()
    return result


@router.post("/products", response_model=ProductOut, status_code=201, responses=WRITE)
def create_product(body: ProductIn, request: Request, actor: ActorDep, session: SessionDep) -> ProductOut:
    actor.require_county_admin(actor.principal.scope, "products")
    if session.exec(select(Product.id).where(Product.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"product {body.code} exists")
    _trace_write(request, session, "products", body)
    return ProductOut.model_validate(session.exec(select(Product).where(Product.code == body.code)).one())


@router.get("/facilities", response_model=Page[FacilityOut], responses=READ)
def list_facilities(
    actor: ActorDep, session: SessionDep, village: VillageQ = None, limit: Limit = 50, offset: Offset = 0
) -> Page[FacilityOut]:
    stmt = select(Facility).where(col(Facility.village_code).in_(_village_filter(actor, village)))
    return _page(session, stmt.order_by(Facility.code), limit, offset, FacilityOut.model_validate)


@router.post("/facilities", response_model=FacilityOut, status_code=201, responses=WRITE)
def create_facility(body: FacilityIn, request: Request, actor: ActorDep, session: SessionDep) -> FacilityOut:
    actor.require_write(body.village_code, f"village {body.village_code}")
    if session.exec(select(Facility.id).where(Facility.code == body.code)).first() is not None:
        raise Problem(409, "conflict", f"facility {body.code} exists")
    _trace_write(request, session, "facilities", body)
    return FacilityOut.model_validate(session.exec(select(Facility).where(Facility.code == body.code)).one())


# ---------------------------------------------------------------- lots, events, inspections


def _lot_village(session: Session, lot: Lot) -> str | None:
    if lot.farm_id is not None:
        farm = session.get(Farm, lot.farm_id)
        return farm.village_code if farm else None
    if lot.facility_id is not None:
        fac = session.get(Facility, lot.facility_id)
        return fac.village_code if fac else None
    return None


def _lot_out(session: Session, lot: Lot) -> LotAdminOut:
    product = session.get(Product, lot.product_id)
    farm = session.get(Farm, lot.farm_id) if lot.farm_id else None
    fac = session.get(Facility, lot.facility_id) if lot.facility_id else None
    return LotAdminOut(
        code=lot.code,
        lot_no=lot.lot_no,
        product=product.code if product else "",
        quantity=lot.quantity,
        unit=lot.unit,
        farm=farm.code if farm else None,
        facility=fac.code if fac else None,
        harvest_year=lot.harvest_year,
        village_code=_lot_village(session, lot),
        created_at=lot.created_at,
    )


def _lots_in(villages: set[str]) -> Any:
    farms = select(Farm.id).where(col(Farm.village_code).in_(villages))
    facilities = select(Facility.id).where(col(Facility.village_code).in_(villages))
    return select(Lot).where(col(Lot.farm_id).in_(farms) | col(Lot.facility_id).in_(facilities))


@router.get("/lots", response_model=Page[LotAdminOut], responses=READ)
def list_lots(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    year: Annotated[int | None, Query(ge=1900, le=2200)] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[LotAdminOut]:
    """Lots of farms and facilities in your area."""
    stmt = _lots_in(_village_filter(actor, village)).order_by(Lot.id)
    if product:
        stmt = stmt.join(Product, col(Product.id) == Lot.product_id).where(Product.code == product)
    if year:
        stmt = stmt.where(Lot.harvest_year == year)
    return _page(session, stmt, limit, offset, lambda x: _lot_out(session, x))


def _lot_by_code(session: Session, code: str) -> Lot:
    try:
        stored = normalize_code(code)
    except TraceCodeError as e:
        raise Problem(400, "bad-trace-code", str(e)) from None
    lot = session.exec(select(Lot).where(Lot.code == stored)).first()
    if lot is None:
        raise _not_found(f"lot {stored}")
    return lot


@router.get("/lots/{code}", response_model=LotAdminOut, responses=problem_responses(400, 401, 403, 404, 422))
def get_lot(code: str, actor: ActorDep, session: SessionDep) -> LotAdminOut:
    lot = _lot_by_code(session, code)
    out = _lot_out(session, lot)
    actor.require_read(out.village_code, f"lot {lot.code}")
    return out


@router.post("/lots", response_model=LotAdminOut, status_code=201, responses=WRITE)
def create_lot(body: LotIn, request: Request, actor: ActorDep, session: SessionDep) -> LotAdminOut:
    """Add a lot (with its plots or herds, or its parent lots). Its trace code is drawn unless given."""
    village = None
    if body.farm:
        village = session.exec(select(Farm.village_code).where(Farm.code == body.farm)).first()
    elif body.facility:
        village = session.exec(select(Facility.village_code).where(Facility.code == body.facility)).first()
    if village is None:
        raise Problem(422, "validation", "farm or facility: a lot belongs to an existing farm or facility")
    actor.require_write(village, f"village {village}")
    result = _trace_write(request, session, "lots", body)
    if not result.created["lots"]:
        raise Problem(409, "conflict", f"lot {body.product}:{body.lot_no} is already recorded")
    lot = session.exec(
        select(Lot).join(Product).where(Product.code == body.product, Lot.lot_no == body.lot_no)  # type: ignore[arg-type]
    ).one()
    return _lot_out(session, lot)


def _event_out(session: Session, ev: TraceEvent) -> EventOut:
    vocab = get_vocab()
    lot = session.get(Lot, ev.lot_id) if ev.lot_id else None
    inputs, outputs = event_lots(session, ev.id) if ev.id and ev.event_type == "TransformationEvent" else ([], [])

    def code(i: int) -> str:
        x = session.get(Lot, i)
        return x.code if x else ""

    if ev.read_point_plot_id is not None:
        p = session.get(Plot, ev.read_point_plot_id)
        rp: dict[str, str | None] = {"plot_no": p.plot_no if p else None}
    else:
        f = session.get(Facility, ev.read_point_facility_id)
        rp = {"facility": f.code if f else None}
    return EventOut(
        id=ev.id or 0,
        event_id=ev.event_id,
        type=ev.event_type,
        action=ev.action,
        step=vocab.short_name(ev.biz_step),
        disposition=vocab.short_name(ev.disposition) if ev.disposition else None,
        time=rfc3339(ev.event_time, ev.event_time_zone_offset),
        lot=lot.code if lot else None,
        inputs=[code(i) for i in inputs],
        outputs=[code(o) for o in outputs],
        read_point=rp,
        biz_location=ev.biz_location,
        attributes=dict(ev.attributes),
    )


@router.get("/events", response_model=Page[EventOut], responses=problem_responses(400, 401, 403, 422))
def list_events(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    lot: Annotated[str | None, Query(max_length=20, description="A lot's trace code")] = None,
    step: Annotated[str | None, Query(max_length=200, description="A step name or URI")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[EventOut]:
    """Events recorded in your area (by business location), newest first."""
    stmt = select(TraceEvent).where(col(TraceEvent.biz_location).in_(_village_filter(actor, village)))
    if lot:
        stmt = stmt.where(TraceEvent.lot_id == _lot_by_code(session, lot).id)
    if step:
        try:
            stmt = stmt.where(TraceEvent.biz_step == get_vocab().normalize_step(step))
        except UnknownTerm as e:
            raise Problem(422, "validation", f"step: {e}") from None
    stmt = stmt.order_by(col(TraceEvent.event_time).desc(), col(TraceEvent.id).desc())
    return _page(session, stmt, limit, offset, lambda e: _event_out(session, e))


@router.get("/events/{event_id}", response_model=EventOut, responses=READ)
def get_event(event_id: int, actor: ActorDep, session: SessionDep) -> EventOut:
    ev = session.get(TraceEvent, event_id) if 0 < event_id < 2**63 else None
    if ev is None:
        raise _not_found(f"event {event_id}")
    actor.require_read(ev.biz_location, f"event {event_id}")
    return _event_out(session, ev)


def _event_village(session: Session, body: EventIn) -> str | None:
    if body.biz_location:
        return body.biz_location
    if body.read_point.plot_no:
        return session.exec(select(Plot.village_code).where(Plot.plot_no == body.read_point.plot_no)).first()
    if body.read_point.facility:
        return session.exec(select(Facility.village_code).where(Facility.code == body.read_point.facility)).first()
    return None


@router.post("/events", response_model=EventOut, status_code=201, responses=WRITE)
def create_event(
    request: Request,
    actor: ActorDep,
    session: SessionDep,
    body: Annotated[
        EventIn,
        Body(
            openapi_examples={
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
                }
            }
        ),
    ],
) -> EventOut:
    """Record a field or processing event. Step, disposition and attributes are checked against the
    vocabulary (ledger/data/vocab.yaml); lots are named by trace code or `product:lot_no`."""
    village = _event_village(session, body)
    if village is None:
        raise Problem(422, "validation", "read_point: no such plot or facility")
    actor.require_write(village, f"village {village}")
    result = _trace_write(request, session, "events", body)
    if not result.event_ids:
        raise Problem(409, "conflict", "an identical event is already recorded")
    ev = session.get(TraceEvent, result.event_ids[0])
    assert ev is not None
    return _event_out(session, ev)


def _inspection_out(session: Session, insp: Inspection) -> InspectionOut:
    lot = session.get(Lot, insp.lot_id)
    items = session.exec(
        select(InspectionItem).where(InspectionItem.inspection_id == insp.id).order_by(InspectionItem.item)
    ).all()
    return InspectionOut(
        id=insp.id or 0,
        lot=lot.code if lot else "",
        lab=insp.lab,
        report_no=insp.report_no,
        sampled_on=insp.sampled_on,
        reported_on=insp.reported_on,
        certificate_sha256=insp.certificate_sha256,
        passed=insp.passed,
        items=[ItemOut.model_validate(i) for i in items],
    )


@router.get("/inspections", response_model=Page[InspectionOut], responses=problem_responses(400, 401, 403, 422))
def list_inspections(
    actor: ActorDep,
    session: SessionDep,
    village: VillageQ = None,
    lot: Annotated[str | None, Query(max_length=20)] = None,
    passed: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[InspectionOut]:
    lots = _lots_in(_village_filter(actor, village)).with_only_columns(col(Lot.id))
    stmt = select(Inspection).where(col(Inspection.lot_id).in_(lots))
    if lot:
        stmt = stmt.where(Inspection.lot_id == _lot_by_code(session, lot).id)
    if passed is not None:
        stmt = stmt.where(Inspection.passed == passed)
    stmt = stmt.order_by(col(Inspection.sampled_on).desc(), col(Inspection.id).desc())
    return _page(session, stmt, limit, offset, lambda i: _inspection_out(session, i))


@router.get("/inspections/{inspection_id}", response_model=InspectionOut, responses=READ)
def get_inspection(inspection_id: int, actor: ActorDep, session: SessionDep) -> InspectionOut:
    insp = session.get(Inspection, inspection_id) if 0 < inspection_id < 2**63 else None
    if insp is None:
        raise _not_found(f"inspection {inspection_id}")
    lot = session.get(Lot, insp.lot_id)
    actor.require_read(_lot_village(session, lot) if lot else None, f"inspection {inspection_id}")
    return _inspection_out(session, insp)


@router.post("/inspections", response_model=InspectionOut, status_code=201, responses=WRITE)
def create_inspection(body: InspectionIn, request: Request, actor: ActorDep, session: SessionDep) -> InspectionOut:
    """Record a laboratory report on a lot; whether it passed is computed from its items and limits."""
    lot = _lot_by_ref(session, body.lot)
    actor.require_write(_lot_village(session, lot), f"lot {lot.code}")
    if session.exec(
        select(Inspection.id).where(Inspection.lab == body.lab, Inspection.report_no == body.report_no)
    ).first():
        raise Problem(409, "conflict", f"report {body.report_no} of {body.lab} is already recorded")
    _trace_write(request, session, "inspections", body)
    insp = session.exec(
        select(Inspection).where(Inspection.lab == body.lab, Inspection.report_no == body.report_no)
    ).one()
    return _inspection_out(session, insp)


def _lot_by_ref(session: Session, reference: str) -> Lot:
    if ":" in reference:
        product, lot_no = reference.split(":", 1)
        lot = session.exec(
            select(Lot).join(Product).where(Product.code == product, Lot.lot_no == lot_no)  # type: ignore[arg-type]
        ).first()
        if lot is None:
            raise Problem(422, "validation", f"lot: lot {reference!r} does not exist")
        return lot
    try:
        return _lot_by_code(session, reference)
    except Problem as e:
        raise Problem(422, "validation", f"lot: {e.detail}") from None
