"""Who may reference what: the area a role covers, and ONE declaration per entity of its key, where
it lies and every reference it holds with the rule that reference must satisfy for the acting user.

Every write, from the API or from a file, goes through the importers (core.registry_io for the
registry, ledger.trace_io for trace data). They resolve each reference a row makes through
`Scope.check`, which looks the reference up here and applies its rule; a reference nobody declared
is a programming error (KeyError), so no write path can add a reference without its rule. The API
routers read the same declaration to find the area of a row they show or change.

Rules:
- `area`: the referenced row lies in the actor's area. Rows lie at a division: a village (farms,
  plots, herds, facilities, lots...), a township, or a county (products are a county's trade items),
  so a village operator may name its own village's rows and its county's products, nothing else.
- `county`: the referenced row lies in a county of the actor's area (a shipping destination: a lot
  may be shipped to any facility of the county).
- `custody`: a lot in the actor's area, or one its custodian shipped to a facility in the actor's
  area (a `shipping` event with `to_facility`): how the dryer of one village takes in the paddy of
  another and names it as the input and parent of its own lots.

Roles: an analyst, a city officer and a province officer never write; divisions are written by
county administrators only; everyone else writes rows that lie in their area. A role's area follows
the tiers: a province officer (scope 210000) covers every county whose code starts with 21, a city
officer (scope 211100) every county starting with 2111, a county administrator and an analyst their
county, a township officer their township, a village operator their village. The officers above
the county read only: the registry and the ledger are kept by the counties, which answer for them,
and a province that publishes a comparison must not be able to change what it compares.
`Scope.system()` is the operator of the server (CLI imports without `--as`): unrestricted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlmodel import Session, col, select

from core.models import Animal, County, Device, Farm, Herd, Plot, Township, Village

__all__ = [
    "ENTITIES",
    "Area",
    "Entity",
    "Reference",
    "Rule",
    "Scope",
    "area_of",
    "declare",
    "entity",
    "freeze",
    "frozen_change",
    "locate",
]


class Rule(StrEnum):
    area = "area"
    county = "county"
    custody = "custody"


@dataclass(frozen=True)
class Reference:
    """A reference a row holds: its field as in files and request bodies (`[]` marks each element
    of a list), the entity it names, the area rule, and what else must hold (checked by the importer)."""

    field: str
    target: str
    rule: Rule = Rule.area
    integrity: str = ""


Locator = Callable[[Session, Any], set[str]]
"""(session, row) -> the division codes the row lies at (one, or several for a lot in custody)."""


@dataclass(frozen=True)
class Entity:
    """One entity: its natural key, where it lies, its references, and who writes it."""

    name: str
    section: str  # its section in import files and its collection in the API
    key: str
    lies_at: str  # in words: how its division is found (documentation; `locate` computes it)
    locate: Locator
    references: tuple[Reference, ...] = ()
    writers: str = "area"  # "area": a writing role whose area covers the row; "county_admin"
    custody: Locator | None = None  # where else the row may be referenced from (lots)
    named_at: Locator | None = None  # where a reference to the row points, when not where it lies (divisions)

    def reference(self, fld: str) -> Reference:
        for r in self.references:
            if r.field == fld:
                return r
        raise KeyError(f"{self.name}.{fld} is not a declared reference (core/scope.py)")


ENTITIES: dict[str, Entity] = {}


def declare(*entities: Entity) -> None:
    for e in entities:
        ENTITIES[e.name] = e


def entity(name: str) -> Entity:
    return ENTITIES[name]


def locate(session: Session, name: str, row: Any) -> set[str]:
    """The division codes where `row` (of entity `name`) lies."""
    return {c for c in ENTITIES[name].locate(session, row) if c}


# ---------------------------------------------------------------- areas


@dataclass
class Area:
    """The division codes a role covers."""

    counties: set[str] = field(default_factory=set)
    townships: set[str] = field(default_factory=set)
    villages: set[str] = field(default_factory=set)

    def covers(self, code: str | None) -> bool:
        """Whether a row lying at division `code` (6, 9 or 12 digits) is inside the area."""
        if not code:
            return False
        if len(code) == 12:
            return code in self.villages
        if len(code) == 9:
            return code in self.townships
        return code in self.counties

    def covers_county_of(self, code: str | None) -> bool:
        return bool(code) and code[:6] in self.counties  # type: ignore[index]


READ_ONLY_ROLES = {
    "analyst": "an analyst may read but not change the registry",
    "city_officer": "a city officer may read but not change the registry: each county keeps its own",
    "province_officer": "a province officer may read but not change the registry: each county keeps its own",
}


def division_prefix(code: str) -> str:
    """The prefix a 6-digit province (210000 -> 21) or city (211100 -> 2111) code covers; a county's own code."""
    if len(code) == 6 and code.endswith("0000"):
        return code[:2]
    if len(code) == 6 and code.endswith("00"):
        return code[:4]
    return code


def area_of(session: Session, role: str, scope: str) -> Area:
    """The area of a role (`province_officer`, `city_officer`, `county_admin`, `analyst`,
    `township_officer`, `village_operator`) at `scope`."""
    area = Area()
    if role in ("province_officer", "city_officer"):
        prefix = division_prefix(scope)
        area.counties = set(session.exec(select(County.code).where(col(County.code).startswith(prefix))).all())
        area.townships = set(
            session.exec(select(Township.code).where(col(Township.county_code).in_(area.counties))).all()
        )
    elif role in ("county_admin", "analyst"):
        area.counties = {scope} if session.get(County, scope) else set()
        area.townships = set(session.exec(select(Township.code).where(Township.county_code == scope)).all())
    elif role == "township_officer":
        t = session.get(Township, scope)
        area.townships = {scope} if t else set()
        area.counties = {t.county_code} if t else set()
    else:
        v = session.get(Village, scope)
        t = session.get(Township, v.township_code) if v else None
        area.townships = {t.code} if t else set()
        area.counties = {t.county_code} if t else set()
        area.villages = {scope} if v else set()
        return area
    area.villages = set(session.exec(select(Village.code).where(col(Village.township_code).in_(area.townships))).all())
    return area


# ---------------------------------------------------------------- the acting user


@dataclass(frozen=True)
class Scope:
    """The acting user of a write, as the importers see it. `area=None` is unrestricted."""

    area: Area | None
    role: str = "system"
    label: str = "the system"

    @classmethod
    def system(cls) -> Scope:
        return cls(None)

    @classmethod
    def of(cls, session: Session, role: str, scope: str) -> Scope:
        return cls(area_of(session, role, scope), role, f"{role} of {scope}")

    @property
    def unrestricted(self) -> bool:
        return self.area is None

    def may_write(self, name: str) -> str | None:
        """Why this actor may not write rows of entity `name` at all, or None."""
        if self.area is None:
            return None
        if self.role in READ_ONLY_ROLES:
            return READ_ONLY_ROLES[self.role]
        if ENTITIES[name].writers == "county_admin" and self.role != "county_admin":
            return f"only a county administrator may change {ENTITIES[name].section}"
        return None

    def owns(self, session: Session, name: str, row: Any) -> str | None:
        """Why this actor may not change the existing row `row` of entity `name`, or None."""
        if self.area is None:
            return None
        if reason := self.may_write(name):
            return reason
        if any(self.area.covers(c) for c in locate(session, name, row)):
            return None
        key = getattr(row, ENTITIES[name].key, None)
        return f"{name} {key} lies outside your area ({self.label})"

    def check(self, session: Session, owner: str, fld: str, target: Any) -> str | None:
        """Why the reference `owner.fld` to the (existing) row `target` is outside this actor's area,
        or None when it is allowed. Raises KeyError for a reference that is not declared."""
        ref = ENTITIES[owner].reference(fld)
        if self.area is None:
            return None
        spec = ENTITIES[ref.target]
        key = getattr(target, spec.key, None)
        # a division is named by its own code (a farm in village V points at V, not at V's township)
        where = spec.named_at(session, target) if spec.named_at else locate(session, ref.target, target)
        if ref.rule == Rule.county:
            if any(self.area.covers_county_of(c) for c in where):
                return None
            return f"{ref.target} {key} is outside your county ({self.label})"
        if any(self.area.covers(c) for c in where):
            return None
        if ref.rule == Rule.custody and spec.custody is not None:
            if any(self.area.covers(c) for c in spec.custody(session, target)):
                return None
            return f"{ref.target} {key} lies outside your area ({self.label}) and was not shipped to a facility in it"
        return f"{ref.target} {key} lies outside your area ({self.label})"


# ---------------------------------------------------------------- the registry's entities


def _one(value: str | None) -> set[str]:
    return {value} if value else set()


def _of_farm(session: Session, farm_id: int | None) -> set[str]:
    farm = session.get(Farm, farm_id) if farm_id is not None else None
    return _one(farm.village_code if farm else None)


def _of_herd(session: Session, herd_id: int | None) -> set[str]:
    herd = session.get(Herd, herd_id) if herd_id is not None else None
    return _one(herd.village_code if herd else None)


def _device_at(session: Session, d: Device) -> set[str]:
    if d.plot_id is not None:
        plot = session.get(Plot, d.plot_id)
        return _one(plot.village_code if plot else None)
    if d.herd_id is not None:
        return _of_herd(session, d.herd_id)
    animal = session.get(Animal, d.animal_id) if d.animal_id is not None else None
    return _of_herd(session, animal.herd_id) if animal else set()


declare(
    Entity(
        "county",
        "counties",
        "code",
        "its own code",
        lambda s, r: _one(r.code),
        writers="county_admin",
        named_at=lambda s, r: _one(r.code),
    ),
    Entity(
        "township",
        "townships",
        "code",
        "its county",
        lambda s, r: _one(r.county_code),
        (Reference("county_code", "county"),),
        writers="county_admin",
        named_at=lambda s, r: _one(r.code),
    ),
    Entity(
        "village",
        "villages",
        "code",
        "its township",
        lambda s, r: _one(r.township_code),
        (Reference("township_code", "township"),),
        writers="county_admin",
        named_at=lambda s, r: _one(r.code),
    ),
    Entity(
        "farm",
        "farms",
        "code",
        "village_code",
        lambda s, r: _one(r.village_code),
        (Reference("village_code", "village"),),
    ),
    Entity(
        "plot",
        "plots",
        "plot_no",
        "village_code",
        lambda s, r: _one(r.village_code),
        (Reference("farm_code", "farm"), Reference("village_code", "village")),
    ),
    Entity(
        "herd",
        "herds",
        "herd_no",
        "village_code",
        lambda s, r: _one(r.village_code),
        (Reference("farm_code", "farm"), Reference("village_code", "village")),
    ),
    Entity(
        "animal",
        "animals",
        "ear_tag",
        "its herd's village",
        lambda s, r: _of_herd(s, r.herd_id),
        (Reference("herd_no", "herd"),),
    ),
    Entity(
        "device",
        "devices",
        "id",
        "the village of its plot, herd or animal",
        _device_at,
        (
            Reference("plot_no", "plot", integrity="the device kind attaches to a plot"),
            Reference("herd_no", "herd", integrity="the device kind attaches to a herd"),
            Reference("ear_tag", "animal", integrity="the device kind attaches to an animal"),
        ),
    ),
)


# ---------------------------------------------------------------- facts that records repeat

InUse = Callable[[Session, Any], str | None]
_FROZEN: dict[str, tuple[tuple[str, ...], InUse]] = {}


def freeze(name: str, fields: tuple[str, ...], in_use: InUse) -> None:
    """Fields of entity `name` that hashed records repeat (a plot's village is in every record of a
    lot grown on it): once `in_use` says a record names the row, they never change."""
    _FROZEN[name] = (fields, in_use)


def frozen_change(session: Session, name: str, row: Any, values: dict[str, Any]) -> str | None:
    """Why `values` may not be written over the existing `row`, or None."""
    if name not in _FROZEN:
        return None
    fields, in_use = _FROZEN[name]
    changed = [f for f in fields if f in values and getattr(row, f) != values[f]]
    if not changed:
        return None
    why = in_use(session, row)
    if why is None:
        return None
    key = getattr(row, ENTITIES[name].key, None)
    return f"{' and '.join(changed)} of {name} {key} cannot change: {why}, which are anchored as they are"


def farm_area(session: Session, farm_id: int | None) -> set[str]:
    """The village of a farm by id (for other packages' locators)."""
    return _of_farm(session, farm_id)


def describe() -> Iterable[tuple[str, str, str, str, str]]:
    """(entity, field, target, rule, integrity) for every declared reference: the README's table."""
    for e in ENTITIES.values():
        for r in e.references:
            yield e.name, r.field, r.target, r.rule.value, r.integrity
