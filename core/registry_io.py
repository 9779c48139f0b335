"""Registry import from YAML and CSV: validated, idempotent upserts in one transaction.

A YAML file is one document with the sections `counties`, `townships`, `villages`,
`farms`, `plots`, `herds`, `animals` and `devices`, each a list of rows; a CSV file holds
one entity type with the same column names. Rows refer to each other by their natural
keys (division codes, farm codes, plot and herd numbers, ear tags), never by database ids:

    plots:   {plot_no, farm_code, village_code, area_mu, crop, lat?, lon?}
    herds:   {herd_no, farm_code, village_code, species?, head_count?}
    animals: {ear_tag, herd_no, species?, sex?, birth_date?}
    devices: {id, kind, plot_no | herd_no | ear_tag}   (as the catalogue's `attach` says)

Every reference is checked against the actor's area by the rules of core/scope.py (a file
imported by the operator of the server is unrestricted; `village registry import --as USER` and
the API import as that user). Everything is checked before anything is kept: when any row is
wrong or forbidden the session is rolled back and `ImportErrors` (core/importing.py) lists every
problem with its file, line and field. Importing the same data again changes nothing. Farm contact names and phones are
personal data: they are never echoed in errors or logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from sqlmodel import Session, SQLModel, func, select

from core import divisions
from core.broker_auth import device_id_not_reserved
from core.catalogue import Catalogue, get_catalogue
from core.importing import (
    ImportErrors,
    ImportResult,
    Report,
    Row,
    RowError,
    RowModel,
    read_csv,
    read_yaml,
    reporter,
    rows_from_data,
    validate_row,
)
from core.models import Animal, County, Device, Farm, Herd, Plot, Township, Village
from core.scope import Scope, entity, frozen_change

log = logging.getLogger(__name__)

ENTITIES = ("counties", "townships", "villages", "farms", "plots", "herds", "animals", "devices")
SINGULAR = {
    "county": "counties",
    "township": "townships",
    "village": "villages",
    "farm": "farms",
    "plot": "plots",
    "herd": "herds",
    "animal": "animals",
    "device": "devices",
}
PERSONAL_FIELDS = frozenset({"contact_name", "contact_phone"})
DEMO_FILE = Path(__file__).with_name("data") / "demo_county.yaml"


# ---------------------------------------------------------------- row schemas


# Plot, herd and ear-tag numbers become InfluxDB tag values: printable text without backslashes,
# which line protocol cannot carry unchanged (a trailing backslash or a control character is altered).
TAG_SAFE = r"^[^\x00-\x1f\x7f\\]{1,64}$"


class CountyRow(RowModel):
    code: str = Field(pattern=r"^\d{6}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""
    timezone: str = "Asia/Shanghai"


class TownshipRow(RowModel):
    code: str = Field(pattern=r"^\d{9}$")
    county_code: str = Field(pattern=r"^\d{6}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""


class VillageRow(RowModel):
    code: str = Field(pattern=r"^\d{12}$")
    township_code: str = Field(pattern=r"^\d{9}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""


class FarmRow(RowModel):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1)
    kind: Literal["cooperative", "family_farm", "enterprise", "smallholder"] = "cooperative"
    village_code: str = Field(pattern=r"^\d{12}$")
    contact_name: str | None = None
    contact_phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 -]{4,19}$")


class PlotRow(RowModel):
    plot_no: str = Field(pattern=TAG_SAFE)
    farm_code: str = Field(min_length=1)
    village_code: str = Field(pattern=r"^\d{12}$")
    area_mu: float = Field(gt=0)
    crop: str = Field(min_length=1)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class HerdRow(RowModel):
    herd_no: str = Field(pattern=TAG_SAFE)
    farm_code: str = Field(min_length=1)
    village_code: str = Field(pattern=r"^\d{12}$")
    species: str = "cattle"
    head_count: int = Field(default=0, ge=0)


class AnimalRow(RowModel):
    ear_tag: str = Field(pattern=TAG_SAFE)
    herd_no: str = Field(min_length=1)
    species: str = "cattle"
    sex: Literal["female", "male"] | None = None
    birth_date: date | None = None


class DeviceRow(RowModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    _id_not_reserved = device_id_not_reserved
    kind: str = Field(min_length=1)
    plot_no: str | None = None
    herd_no: str | None = None
    ear_tag: str | None = None


ROW_MODELS: dict[str, type[RowModel]] = {
    "counties": CountyRow,
    "townships": TownshipRow,
    "villages": VillageRow,
    "farms": FarmRow,
    "plots": PlotRow,
    "herds": HerdRow,
    "animals": AnimalRow,
    "devices": DeviceRow,
}
KEY_FIELD = {
    "counties": "code",
    "townships": "code",
    "villages": "code",
    "farms": "code",
    "plots": "plot_no",
    "herds": "herd_no",
    "animals": "ear_tag",
    "devices": "id",
}
TABLES: dict[str, type[SQLModel]] = {
    "counties": County,
    "townships": Township,
    "villages": Village,
    "farms": Farm,
    "plots": Plot,
    "herds": Herd,
    "animals": Animal,
    "devices": Device,
}
ATTACH_FIELD = {"plot": "plot_no", "herd": "herd_no", "animal": "ear_tag"}
ENTITY_OF = {section: name for name, section in SINGULAR.items()}  # "plots" -> "plot" (core/scope.py)


# ---------------------------------------------------------------- the importer


class _Importer:
    """Validates and stages rows section by section; nothing is committed here."""

    def __init__(self, session: Session, catalogue: Catalogue, scope: Scope, source: str) -> None:
        self.session = session
        self.catalogue = catalogue
        self.scope = scope
        self.source = source
        self.errors: list[RowError] = []
        self.result = ImportResult()
        self._cache: dict[str, dict[str, Any]] = {}
        # keys of rows that failed: references to them are not reported again
        self._failed: dict[str, set[str]] = {e: set() for e in ENTITIES}
        self._missing_ref = False

    def existing(self, section: str) -> dict[str, Any]:
        if section not in self._cache:
            table, key = TABLES[section], KEY_FIELD[section]
            self._cache[section] = {getattr(o, key): o for o in self.session.exec(select(table))}
        return self._cache[section]

    def run(self, section: str, rows: list[Row]) -> None:
        handler: Callable[[Any, Report], dict[str, Any] | None] = getattr(self, f"_{section}")
        model, key_field, name = ROW_MODELS[section], KEY_FIELD[section], ENTITY_OF[section]
        seen: dict[str, int | None] = {}
        for i, raw in enumerate(rows):
            errors_before = len(self.errors)
            err = reporter(self.errors, self.source, section, i, raw)
            key = str(raw.values.get(key_field, ""))
            if "__invalid__" in raw.marked:
                continue  # not a mapping: already reported
            row = validate_row(model, raw, err, PERSONAL_FIELDS)
            if row is None:
                self._failed[section].add(key)
                continue
            key = getattr(row, key_field)
            if key in seen:
                first = f" (first at line {seen[key]})" if seen[key] else ""
                err(key_field, f"duplicate {key_field} {key!r}{first}")
                continue
            seen[key] = raw.line
            if reason := self.scope.may_write(name):
                err(None, reason, "forbidden")
                continue
            self._missing_ref = False
            values = handler(row, err)
            if values is None or self._missing_ref or len(self.errors) > errors_before:
                self._failed[section].add(key)
                continue
            current = self.existing(section).get(key)
            if current is not None and (reason := self.scope.owns(self.session, name, current)):
                err(key_field, f"{reason}: it cannot be changed", "forbidden")
                self._failed[section].add(key)
                continue
            if current is not None and (reason := frozen_change(self.session, name, current, values)):
                err(None, reason, "conflict")
                self._failed[section].add(key)
                continue
            self._upsert(section, key, values)
        self.session.flush()

    def _upsert(self, section: str, key: str, values: dict[str, Any]) -> None:
        existing = self.existing(section)
        obj = existing.get(key)
        if obj is None:
            obj = TABLES[section](**{KEY_FIELD[section]: key, **values})
            self.session.add(obj)
            existing[key] = obj
            self.result.created[section] += 1
            return
        changed = False
        for name, value in values.items():
            if getattr(obj, name) != value:
                setattr(obj, name, value)
                changed = True
        (self.result.updated if changed else self.result.unchanged)[section] += 1

    def ref(self, owner: str, fld: str, key: str | None, err: Report) -> Any:
        """The row named by reference `owner.fld` (declared in core/scope.py) and checked against the
        actor's area; None after reporting it missing (unless its own row failed) or forbidden."""
        if key is None:
            return None
        target = entity(owner).reference(fld).target
        obj = self.existing(entity(target).section).get(key)
        if obj is None:
            self._missing_ref = True
            if key not in self._failed[entity(target).section]:
                err(fld, f"{target} {key!r} does not exist")
            return None
        if reason := self.scope.check(self.session, owner, fld, obj):
            self._missing_ref = True
            err(fld, reason, "forbidden")
            return None
        return obj

    def official(self, code: str, name_zh: str) -> None:
        """A warning (not an error) when the national division list has another name or no such code."""
        if warning := divisions.check(code, name_zh):
            self.result.warnings.append(warning)

    # one handler per section: checks references, returns the column values to store

    def _counties(self, row: CountyRow, err: Report) -> dict[str, Any]:
        if self.scope.area is not None and not self.scope.area.covers(row.code):
            err("code", f"county {row.code} is outside your area ({self.scope.label})", "forbidden")
        self.official(row.code, row.name_zh)
        return {"name_zh": row.name_zh, "name_en": row.name_en, "timezone": row.timezone}

    def _townships(self, row: TownshipRow, err: Report) -> dict[str, Any]:
        if not row.code.startswith(row.county_code):
            err("code", f"township code {row.code} does not start with its county code {row.county_code}")
        self.ref("township", "county_code", row.county_code, err)
        self.official(row.code, row.name_zh)
        return {"county_code": row.county_code, "name_zh": row.name_zh, "name_en": row.name_en}

    def _villages(self, row: VillageRow, err: Report) -> dict[str, Any]:
        if not row.code.startswith(row.township_code):
            err("code", f"village code {row.code} does not start with its township code {row.township_code}")
        self.ref("village", "township_code", row.township_code, err)
        self.official(row.code, row.name_zh)
        return {"township_code": row.township_code, "name_zh": row.name_zh, "name_en": row.name_en}

    def _farms(self, row: FarmRow, err: Report) -> dict[str, Any]:
        self.ref("farm", "village_code", row.village_code, err)
        return row.model_dump(exclude={"code"})

    def _plots(self, row: PlotRow, err: Report) -> dict[str, Any] | None:
        farm = self.ref("plot", "farm_code", row.farm_code, err)
        self.ref("plot", "village_code", row.village_code, err)
        if farm is None:
            return None
        values = row.model_dump(exclude={"plot_no", "farm_code"})
        return {**values, "farm_id": farm.id}

    def _herds(self, row: HerdRow, err: Report) -> dict[str, Any] | None:
        farm = self.ref("herd", "farm_code", row.farm_code, err)
        self.ref("herd", "village_code", row.village_code, err)
        if farm is None:
            return None
        return {**row.model_dump(exclude={"herd_no", "farm_code"}), "farm_id": farm.id}

    def _animals(self, row: AnimalRow, err: Report) -> dict[str, Any] | None:
        herd = self.ref("animal", "herd_no", row.herd_no, err)
        if herd is None:
            return None
        birth = row.birth_date.isoformat() if row.birth_date else None
        return {"herd_id": herd.id, "species": row.species, "sex": row.sex, "birth_date": birth}

    def _devices(self, row: DeviceRow, err: Report) -> dict[str, Any] | None:
        kind = self.catalogue.kinds.get(row.kind)
        if kind is None:
            known = ", ".join(sorted(self.catalogue.kinds))
            err("kind", f"unknown device kind {row.kind!r}; the catalogue has {known}")
            return None
        want = ATTACH_FIELD[kind.attach]
        target_name = f"{'an' if kind.attach[0] in 'aeiou' else 'a'} {kind.attach}"
        given = [f for f in ATTACH_FIELD.values() if getattr(row, f) is not None]
        for other in given:
            if other != want:
                err(other, f"a {row.kind} device attaches to {target_name}: give {want}, not {other}")
        if not given:
            err(want, f"a {row.kind} device attaches to {target_name}: {want} is required")
        if given != [want]:
            return None
        target = self.ref("device", want, getattr(row, want), err)
        if target is None:
            return None
        ids = {"plot_id": None, "herd_id": None, "animal_id": None}
        ids[f"{kind.attach}_id"] = target.id
        return {"kind": row.kind, **ids}


def _import(
    session: Session, sections: dict[str, list[Row]], source: str, errors: list[RowError], scope: Scope | None
) -> ImportResult:
    importer = _Importer(session, get_catalogue(), scope or Scope.system(), source)
    importer.errors.extend(errors)
    try:
        for section in ENTITIES:
            if section in sections:
                importer.run(section, sections[section])
    except BaseException:
        session.rollback()
        raise
    if importer.errors:
        session.rollback()
        raise ImportErrors(importer.errors)
    log.info("registry import from %s: %s", source, importer.result.summary(ENTITIES))
    return importer.result


def import_yaml(session: Session, path: Path | str, scope: Scope | None = None) -> ImportResult:
    """Import a registry YAML file as `scope` (unrestricted by default). Staged in `session` (the
    caller commits); on any error the session is rolled back and `ImportErrors` lists every problem."""
    path = Path(path)
    sections, errors = read_yaml(path, ENTITIES)
    return _import(session, sections, str(path), errors, scope)


def import_csv(session: Session, entity: str, path: Path | str, scope: Scope | None = None) -> ImportResult:
    """Import one entity type (`plots` or `plot`, ...) from a CSV file with the YAML field names as columns."""
    path = Path(path)
    name = entity_name(entity)
    rows, errors = read_csv(path, name, ROW_MODELS[name].model_fields)
    return _import(session, {name: rows}, str(path), errors, scope)


def import_data(
    session: Session,
    data: dict[str, Iterable[dict[str, Any]]],
    source: str = "<data>",
    scope: Scope | None = None,
) -> ImportResult:
    """Import already-parsed sections (as in the YAML file); rows are numbered, not lined."""
    sections, errors = rows_from_data(data, ENTITIES, source)
    return _import(session, sections, source, errors, scope)


def load_demo(session: Session) -> ImportResult:
    """Import the demo county (Panshan County, Panjin, Liaoning)."""
    return import_yaml(session, DEMO_FILE)


def entity_name(entity: str) -> str:
    """The section name for `entity` (plural or singular); ValueError when unknown."""
    name = SINGULAR.get(entity, entity)
    if name not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ENTITIES)}")
    return name


# ---------------------------------------------------------------- summaries


def counts(session: Session) -> dict[str, int]:
    """Number of rows per registry entity."""
    return {e: session.exec(select(func.count()).select_from(TABLES[e])).one() for e in ENTITIES}


def device_villages(session: Session) -> dict[str, str | None]:
    """The village code of every device, through its plot, herd or animal."""
    plots = dict(session.exec(select(Plot.id, Plot.village_code)).all())
    herds = dict(session.exec(select(Herd.id, Herd.village_code)).all())
    animals = {a: herds.get(h) for a, h in session.exec(select(Animal.id, Animal.herd_id)).all()}
    out: dict[str, str | None] = {}
    for d in session.exec(select(Device)):
        if d.plot_id is not None:
            out[d.id] = plots.get(d.plot_id)
        elif d.herd_id is not None:
            out[d.id] = herds.get(d.herd_id)
        elif d.animal_id is not None:
            out[d.id] = animals.get(d.animal_id)
        else:
            out[d.id] = None
    return out


def village_summary(session: Session) -> list[dict[str, Any]]:
    """Per village: names, farms, plots and their area, herds, animals and devices by status."""
    villages = session.exec(select(Village).order_by(Village.code)).all()
    rows = {
        v.code: {
            "code": v.code,
            "name_zh": v.name_zh,
            "name_en": v.name_en,
            "farms": 0,
            "plots": 0,
            "area_mu": 0.0,
            "herds": 0,
            "animals": 0,
            "devices": 0,
            "active": 0,
        }
        for v in villages
    }
    for f in session.exec(select(Farm)):
        if f.village_code in rows:
            rows[f.village_code]["farms"] += 1
    for p in session.exec(select(Plot)):
        if p.village_code in rows:
            rows[p.village_code]["plots"] += 1
            rows[p.village_code]["area_mu"] += p.area_mu
    herd_village = {}
    for h in session.exec(select(Herd)):
        herd_village[h.id] = h.village_code
        if h.village_code in rows:
            rows[h.village_code]["herds"] += 1
    for a in session.exec(select(Animal)):
        code = herd_village.get(a.herd_id)
        if code in rows:
            rows[code]["animals"] += 1
    status = dict(session.exec(select(Device.id, Device.status)).all())
    for device_id, code in device_villages(session).items():
        if code in rows:
            rows[code]["devices"] += 1
            rows[code]["active"] += status[device_id] == "active"
    for r in rows.values():
        r["area_mu"] = round(r["area_mu"], 1)
    return list(rows.values())
