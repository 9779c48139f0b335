"""Registry import from YAML and CSV: validated, idempotent upserts in one transaction.

A YAML file is one document with the sections `counties`, `townships`, `villages`,
`farms`, `plots`, `herds`, `animals` and `devices`, each a list of rows; a CSV file holds
one entity type with the same column names. Rows refer to each other by their natural
keys (division codes, farm codes, plot and herd numbers, ear tags), never by database ids:

    plots:   {plot_no, farm_code, village_code, area_mu, crop, lat?, lon?}
    herds:   {herd_no, farm_code, village_code, species?, head_count?}
    animals: {ear_tag, herd_no, species?, sex?, birth_date?}
    devices: {id, kind, plot_no | herd_no | ear_tag}   (as the catalogue's `attach` says)

Everything is checked before anything is kept: when any row is wrong the session is
rolled back and `ImportErrors` lists every problem with its file, line and field.
Importing the same data again changes nothing. Farm contact names and phones are
personal data: they are never echoed in errors or logs.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, SQLModel, func, select

from core.broker_auth import device_id_not_reserved
from core.catalogue import Catalogue, get_catalogue
from core.models import Animal, County, Device, Farm, Herd, Plot, Township, Village

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


class _Row(BaseModel):
    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True, allow_inf_nan=False
    )


# Plot, herd and ear-tag numbers become InfluxDB tag values: printable text without backslashes,
# which line protocol cannot carry unchanged (a trailing backslash or a control character is altered).
TAG_SAFE = r"^[^\x00-\x1f\x7f\\]{1,64}$"


class CountyRow(_Row):
    code: str = Field(pattern=r"^\d{6}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""
    timezone: str = "Asia/Shanghai"


class TownshipRow(_Row):
    code: str = Field(pattern=r"^\d{9}$")
    county_code: str = Field(pattern=r"^\d{6}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""


class VillageRow(_Row):
    code: str = Field(pattern=r"^\d{12}$")
    township_code: str = Field(pattern=r"^\d{9}$")
    name_zh: str = Field(min_length=1)
    name_en: str = ""


class FarmRow(_Row):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1)
    kind: Literal["cooperative", "family_farm", "enterprise", "smallholder"] = "cooperative"
    village_code: str = Field(pattern=r"^\d{12}$")
    contact_name: str | None = None
    contact_phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 -]{4,19}$")


class PlotRow(_Row):
    plot_no: str = Field(pattern=TAG_SAFE)
    farm_code: str = Field(min_length=1)
    village_code: str = Field(pattern=r"^\d{12}$")
    area_mu: float = Field(gt=0)
    crop: str = Field(min_length=1)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class HerdRow(_Row):
    herd_no: str = Field(pattern=TAG_SAFE)
    farm_code: str = Field(min_length=1)
    village_code: str = Field(pattern=r"^\d{12}$")
    species: str = "cattle"
    head_count: int = Field(default=0, ge=0)


class AnimalRow(_Row):
    ear_tag: str = Field(pattern=TAG_SAFE)
    herd_no: str = Field(min_length=1)
    species: str = "cattle"
    sex: Literal["female", "male"] | None = None
    birth_date: date | None = None


class DeviceRow(_Row):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    _id_not_reserved = device_id_not_reserved
    kind: str = Field(min_length=1)
    plot_no: str | None = None
    herd_no: str | None = None
    ear_tag: str | None = None


ROW_MODELS: dict[str, type[_Row]] = {
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


# ---------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class RowError:
    """One problem: where (file, line, section, row index, field) and what."""

    source: str
    line: int | None
    entity: str
    index: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        row = f"{self.entity}[{self.index}]" if self.index is not None else self.entity
        fld = f" field '{self.field}'" if self.field else ""
        return f"{where}: {row}{fld}: {self.message}"


class ImportErrors(ValueError):
    """The data was rejected; nothing was imported. `errors` lists every problem found."""

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}" if errors else "invalid data")


@dataclass
class ImportResult:
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return bool(sum(self.created.values()) + sum(self.updated.values()))

    def summary(self) -> str:
        parts = []
        for entity in ENTITIES:
            c, u, s = self.created[entity], self.updated[entity], self.unchanged[entity]
            if c or u or s:
                parts.append(f"{entity}: {c} new, {u} updated, {s} unchanged")
        return "; ".join(parts) or "nothing to import"


# ---------------------------------------------------------------- reading files


@dataclass
class _Raw:
    """One row as read: its values, its line and the line of each field (YAML)."""

    values: dict[str, Any]
    line: int | None
    field_lines: dict[str, int] = field(default_factory=dict)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping and of each of its keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        mapping["__lines__"] = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
        return mapping


def strip_lines(value: Any) -> Any:
    """A parsed YAML value without the line bookkeeping of the line-keeping loader."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k not in ("__line__", "__lines__")}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def yaml_sections(path: Path, allowed: Sequence[str]) -> tuple[list[tuple[str, int | None, list[Any]]], list[RowError]]:
    """The sections of a YAML import file as (name, line, rows), rows still carrying their line
    numbers (`__line__`/`__lines__`, from the line-keeping loader); unknown or malformed sections
    are errors. Unreadable files and bad YAML raise ImportErrors."""
    src = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=_LineLoader)  # a SafeLoader subclass
    except OSError as e:
        raise ImportErrors([RowError(src, None, "file", None, None, f"cannot read: {e.strerror}")]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ImportErrors([RowError(src, line, "file", None, None, f"not valid YAML: {problem}")]) from e
    if doc is None:
        return [], []
    if not isinstance(doc, dict):
        raise ImportErrors([RowError(src, 1, "file", None, None, "expected a mapping of sections at the top")])
    errors: list[RowError] = []
    sections = []
    lines = doc.get("__lines__", {})
    for name, rows in doc.items():
        if name in ("__line__", "__lines__"):
            continue
        line = lines.get(str(name))
        if name not in allowed:
            errors.append(RowError(src, line, str(name), None, None, f"unknown section; expected one of {allowed}"))
        elif rows is not None and not isinstance(rows, list):
            errors.append(RowError(src, line, name, None, None, "expected a list of rows"))
        elif rows is not None:
            sections.append((name, line, rows))
    return sections, errors


def read_yaml(path: Path) -> tuple[dict[str, list[_Raw]], list[RowError]]:
    """Sections of a registry YAML file, each row with its line numbers."""
    found, errors = yaml_sections(path, ENTITIES)
    sections: dict[str, list[_Raw]] = {}
    for name, line, rows in found:
        out: list[_Raw] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append(RowError(str(path), line, name, i, None, "expected a mapping (one row)"))
                continue
            out.append(_Raw(strip_lines(row), row.get("__line__"), dict(row.get("__lines__", {}))))
        sections[name] = out
    return sections, errors


def entity_name(entity: str) -> str:
    """The section name for `entity` (plural or singular); ValueError when unknown."""
    name = SINGULAR.get(entity, entity)
    if name not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ENTITIES)}")
    return name


def read_csv(entity: str, path: Path) -> tuple[list[_Raw], list[RowError]]:
    """Rows of a CSV file for one entity type; empty cells count as absent."""
    src = str(path)
    allowed = set(ROW_MODELS[entity].model_fields)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            errors = [
                RowError(src, 1, entity, None, h or "(empty)", f"unknown column; expected some of {sorted(allowed)}")
                for h in header
                if h not in allowed
            ]
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:  # more cells than header columns
                    errors.append(RowError(src, reader.line_num, entity, None, None, "more cells than columns"))
                    continue
                values = {k: v.strip() for k, v in row.items() if v is not None and v.strip() != ""}
                if values:
                    rows.append(_Raw(values, reader.line_num))
    except OSError as e:
        raise ImportErrors([RowError(src, None, "file", None, None, f"cannot read: {e.strerror}")]) from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise ImportErrors([RowError(src, None, "file", None, None, f"not valid UTF-8 CSV: {e}")]) from e
    if not header:
        errors.append(RowError(src, 1, entity, None, None, "missing header row"))
    return rows, errors


# ---------------------------------------------------------------- the importer


class _Importer:
    """Validates and stages rows section by section; nothing is committed here."""

    def __init__(self, session: Session, catalogue: Catalogue) -> None:
        self.session = session
        self.catalogue = catalogue
        self.errors: list[RowError] = []
        self.result = ImportResult()
        self._cache: dict[str, dict[str, Any]] = {}
        # keys of rows that failed: references to them are not reported again
        self._failed: dict[str, set[str]] = {e: set() for e in ENTITIES}
        self._missing_ref = False

    def existing(self, entity: str) -> dict[str, Any]:
        if entity not in self._cache:
            table, key = TABLES[entity], KEY_FIELD[entity]
            self._cache[entity] = {getattr(o, key): o for o in self.session.exec(select(table))}
        return self._cache[entity]

    def run(self, entity: str, rows: list[_Raw], source: str) -> None:
        handler: Callable[[Any, Callable[[str, str], None]], dict[str, Any] | None] = getattr(self, f"_{entity}")
        model, key_field = ROW_MODELS[entity], KEY_FIELD[entity]
        seen: dict[str, int | None] = {}
        for i, raw in enumerate(rows):
            errors_before = len(self.errors)

            def err(fld: str | None, msg: str, raw: _Raw = raw, i: int = i) -> None:
                line = raw.field_lines.get(fld, raw.line) if fld else raw.line
                self.errors.append(RowError(source, line, entity, i, fld, msg))

            key = str(raw.values.get(key_field, ""))
            try:
                row = model.model_validate(raw.values)
            except ValidationError as e:
                for problem in e.errors():
                    fld = ".".join(str(p) for p in problem["loc"]) or None
                    msg = problem["msg"]
                    if fld not in PERSONAL_FIELDS and problem["type"] != "extra_forbidden" and "input" in problem:
                        msg += f" (got {problem['input']!r})"
                    err(fld, msg)
                self._failed[entity].add(key)
                continue
            key = getattr(row, key_field)
            if key in seen:
                first = f" (first at line {seen[key]})" if seen[key] else ""
                err(key_field, f"duplicate {key_field} {key!r}{first}")
                continue
            seen[key] = raw.line
            self._missing_ref = False
            values = handler(row, err)
            if values is None or self._missing_ref or len(self.errors) > errors_before:
                self._failed[entity].add(key)
                continue
            self._upsert(entity, key, values)
        self.session.flush()

    def _upsert(self, entity: str, key: str, values: dict[str, Any]) -> None:
        existing = self.existing(entity)
        obj = existing.get(key)
        if obj is None:
            obj = TABLES[entity](**{KEY_FIELD[entity]: key, **values})
            self.session.add(obj)
            existing[key] = obj
            self.result.created[entity] += 1
            return
        changed = False
        for name, value in values.items():
            if getattr(obj, name) != value:
                setattr(obj, name, value)
                changed = True
        (self.result.updated if changed else self.result.unchanged)[entity] += 1

    def ref(self, entity: str, key: str | None, err: Callable[[str, str], None], fld: str, what: str) -> Any:
        """The row `key` of `entity`, or None after reporting it missing (unless it failed itself)."""
        if key is None:
            return None
        obj = self.existing(entity).get(key)
        if obj is None:
            self._missing_ref = True
            if key not in self._failed[entity]:
                err(fld, f"{what} {key!r} does not exist")
        return obj

    # one handler per entity: checks references, returns the column values to store

    def _counties(self, row: CountyRow, err: Callable[[str, str], None]) -> dict[str, Any]:
        return {"name_zh": row.name_zh, "name_en": row.name_en, "timezone": row.timezone}

    def _townships(self, row: TownshipRow, err: Callable[[str, str], None]) -> dict[str, Any]:
        if not row.code.startswith(row.county_code):
            err("code", f"township code {row.code} does not start with its county code {row.county_code}")
        self.ref("counties", row.county_code, err, "county_code", "county")
        return {"county_code": row.county_code, "name_zh": row.name_zh, "name_en": row.name_en}

    def _villages(self, row: VillageRow, err: Callable[[str, str], None]) -> dict[str, Any]:
        if not row.code.startswith(row.township_code):
            err("code", f"village code {row.code} does not start with its township code {row.township_code}")
        self.ref("townships", row.township_code, err, "township_code", "township")
        return {"township_code": row.township_code, "name_zh": row.name_zh, "name_en": row.name_en}

    def _farms(self, row: FarmRow, err: Callable[[str, str], None]) -> dict[str, Any]:
        self.ref("villages", row.village_code, err, "village_code", "village")
        return row.model_dump(exclude={"code"})

    def _plots(self, row: PlotRow, err: Callable[[str, str], None]) -> dict[str, Any] | None:
        farm = self.ref("farms", row.farm_code, err, "farm_code", "farm")
        self.ref("villages", row.village_code, err, "village_code", "village")
        if farm is None:
            return None
        values = row.model_dump(exclude={"plot_no", "farm_code"})
        return {**values, "farm_id": farm.id}

    def _herds(self, row: HerdRow, err: Callable[[str, str], None]) -> dict[str, Any] | None:
        farm = self.ref("farms", row.farm_code, err, "farm_code", "farm")
        self.ref("villages", row.village_code, err, "village_code", "village")
        if farm is None:
            return None
        return {**row.model_dump(exclude={"herd_no", "farm_code"}), "farm_id": farm.id}

    def _animals(self, row: AnimalRow, err: Callable[[str, str], None]) -> dict[str, Any] | None:
        herd = self.ref("herds", row.herd_no, err, "herd_no", "herd")
        if herd is None:
            return None
        birth = row.birth_date.isoformat() if row.birth_date else None
        return {"herd_id": herd.id, "species": row.species, "sex": row.sex, "birth_date": birth}

    def _devices(self, row: DeviceRow, err: Callable[[str, str], None]) -> dict[str, Any] | None:
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
        entity = {"plot": "plots", "herd": "herds", "animal": "animals"}[kind.attach]
        target = self.ref(entity, getattr(row, want), err, want, kind.attach)
        if target is None:
            return None
        ids = {"plot_id": None, "herd_id": None, "animal_id": None}
        ids[f"{kind.attach}_id"] = target.id
        return {"kind": row.kind, **ids}


def _import(session: Session, sections: dict[str, list[_Raw]], source: str, errors: list[RowError]) -> ImportResult:
    importer = _Importer(session, get_catalogue())
    importer.errors.extend(errors)
    try:
        for entity in ENTITIES:
            if entity in sections:
                importer.run(entity, sections[entity], source)
    except BaseException:
        session.rollback()
        raise
    if importer.errors:
        session.rollback()
        raise ImportErrors(importer.errors)
    log.info("registry import from %s: %s", source, importer.result.summary())
    return importer.result


def import_yaml(session: Session, path: Path | str) -> ImportResult:
    """Import a registry YAML file. Staged in `session` (the caller commits); on any error the
    session is rolled back and `ImportErrors` lists every problem."""
    path = Path(path)
    sections, errors = read_yaml(path)
    return _import(session, sections, str(path), errors)


def import_csv(session: Session, entity: str, path: Path | str) -> ImportResult:
    """Import one entity type (`plots` or `plot`, ...) from a CSV file with the YAML field names as columns."""
    path = Path(path)
    name = entity_name(entity)
    rows, errors = read_csv(name, path)
    return _import(session, {name: rows}, str(path), errors)


def import_data(session: Session, data: dict[str, Iterable[dict[str, Any]]], source: str = "<data>") -> ImportResult:
    """Import already-parsed sections (as in the YAML file); rows are numbered, not lined."""
    sections: dict[str, list[_Raw]] = {}
    errors: list[RowError] = []
    for name, rows in data.items():
        if name not in ENTITIES:
            errors.append(RowError(source, None, name, None, None, f"unknown section; expected one of {ENTITIES}"))
            continue
        sections[name] = [_Raw(dict(r), None) for r in rows]
    return _import(session, sections, source, errors)


def load_demo(session: Session) -> ImportResult:
    """Import the demo county (Panshan County, Panjin, Liaoning)."""
    return import_yaml(session, DEMO_FILE)


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
