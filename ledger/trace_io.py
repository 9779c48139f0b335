"""Trace data import from YAML: products, facilities, lots, events, corrections and inspections.

A YAML file is one document with the sections `products`, `facilities`, `lots`, `events`,
`corrections` and `inspections`, each a list of rows. Rows refer to registry rows by their natural
keys (farm codes, plot and herd numbers, village codes), to each other by product and facility
codes, to lots by a LOT REFERENCE (either `"{product code}:{lot_no}"` or the lot's trace code) and
to events by their EPCIS event ID (`ni:///sha-256;...`):

    products:    {code, gtin?, name_zh, name_en?, variety?, unit?, unit_kg?, county_code?}
    facilities:  {code, name, kind: dryer|mill|warehouse|packhouse, village_code}
    lots:        {product, lot_no, code?, quantity?, unit?, farm | facility, harvest_year?,
                  sources?: [{plot_no | herd_no, area_mu?}],
                  parents?: [{lot: REF, relation: merge|split|transform, quantity?}], salt?}
    events:      {type?: ObjectEvent|AggregationEvent|TransformationEvent, action?: ADD|OBSERVE|DELETE,
                  step, disposition?, time: RFC 3339 with offset,
                  lot?: REF | inputs?: [REF], outputs?: [REF], parent?: URI,
                  read_point: {plot_no | facility}, biz_location?: village code,
                  actor?: {farm | facility}, attributes?: {...}, salt?}
    corrections: {event: EVENT ID, reason: incorrect_data|did_not_occur, time: RFC 3339 with offset,
                  corrective?: EVENT ID, salt?}
    inspections: {lot: REF, lab, report_no, sampled_on, reported_on?,
                  certificate_sha256? | certificate_text?, salt?,
                  items: [{item, value, unit, limit, limit_kind?: max|min, method}]}

Who may reference what is declared once in core/scope.py and ledger/scope.py; every reference a
row makes is resolved here and checked against the acting user's area (`scope`; a file imported by
the operator of the server is unrestricted). Integrity holds for everyone: a lot belongs to exactly
one farm or facility, its sources are plots or herds of its own farm, its quantity balances against
its parents (ledger/lineage.py), an event at a plot concerns a lot grown there, its business
location is the village of its read point.

Trace data is a ledger, so import only ever ADDS: a row that is already stored identically is
left alone (importing the same file again changes nothing), a row whose key exists with other
content is an error (a recorded fact is never rewritten by an import); a wrong event is declared
in error by a correction, which is itself a new record. Events have no natural key; one identical
in every field to a stored event is the same event. Salts (and lot codes) are drawn at random
unless given, e.g. to move records whose leaves are already anchored.

Everything is checked before anything is kept: on any error the session is rolled back and
`ImportErrors` (core/importing.py) lists each problem with file, line and field.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, StringConstraints
from pydantic import Field as PField
from sqlmodel import Session, col, select

from core.importing import ImportErrors, Report, Row, RowError, RowModel, read_yaml, reporter, rows_from_data
from core.importing import validate_row as _validate
from core.models import County, Farm, Herd, Plot, Township, Village
from core.registry_io import load_demo
from core.scope import Scope, entity
from ledger import codes, lineage
from ledger.models import (
    INSPECTION_DECIMALS,
    EventCorrection,
    Facility,
    Inspection,
    InspectionItem,
    Lot,
    LotParent,
    LotSource,
    Product,
    TraceEvent,
    TraceEventLot,
    item_passes,
)
from ledger.records import event_lots
from ledger.scope import HANDOVER_ATTRIBUTE
from ledger.vocab import AttributeErrors, UnknownTerm, Vocabulary, get_vocab

__all__ = [
    "SECTIONS",
    "ActorRow",
    "CorrectionRow",
    "EventRow",
    "FacilityRow",
    "InspectionRow",
    "ItemRow",
    "LotNotFound",
    "LotRow",
    "ParentRow",
    "PlaceRow",
    "ProductRow",
    "SourceRow",
    "TraceImportResult",
    "event_counts",
    "fill_event_ids",
    "find_lot",
    "import_trace",
    "import_trace_data",
    "load_demo_trace",
]

log = logging.getLogger(__name__)

SECTIONS = ("products", "facilities", "lots", "events", "corrections", "inspections")
DEMO_TRACE_FILE = Path(__file__).with_name("data") / "demo_trace.yaml"
CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SALT = r"^[0-9a-f]{32}$"
EVENT_ID = r"^ni:///sha-256;[0-9a-f]{64}\?ver=CBV2\.0$"

Err = Report


# ---------------------------------------------------------------- row schemas


class ProductRow(RowModel):
    code: str = PField(pattern=CODE)
    gtin: str | None = None
    name_zh: str = PField(min_length=1)
    name_en: str = ""
    variety: str | None = None
    unit: str = "kg"
    unit_kg: float | None = PField(default=None, gt=0, description="mass of one unit (a bag's net content)")
    county_code: str | None = PField(default=None, pattern=r"^\d{6}$", description="the county whose item it is")


class FacilityRow(RowModel):
    code: str = PField(pattern=CODE)
    name: str = PField(min_length=1)
    kind: Literal["dryer", "mill", "warehouse", "packhouse"]
    village_code: str = PField(pattern=r"^\d{12}$")


class SourceRow(RowModel):
    plot_no: str | None = None
    herd_no: str | None = None
    area_mu: float | None = PField(default=None, gt=0)


class ParentRow(RowModel):
    lot: str = PField(min_length=1)
    relation: Literal["merge", "split", "transform"]
    quantity: float | None = PField(default=None, ge=0, description="how much of the parent, in its unit")


class LotRow(RowModel):
    product: str = PField(min_length=1)
    lot_no: str = PField(pattern=codes.LOT_NO_PATTERN)
    code: str | None = None
    quantity: float | None = PField(default=None, ge=0)
    unit: str | None = None
    farm: str | None = None
    facility: str | None = None
    harvest_year: int | None = PField(default=None, ge=1900, le=2200)
    sources: list[SourceRow] = PField(default_factory=list)
    parents: list[ParentRow] = PField(default_factory=list)
    salt: str | None = PField(default=None, pattern=SALT)


class PlaceRow(RowModel):
    plot_no: str | None = None
    facility: str | None = None


class ActorRow(RowModel):
    farm: str | None = None
    facility: str | None = None


class EventRow(RowModel):
    type: Literal["ObjectEvent", "AggregationEvent", "TransformationEvent"] = "ObjectEvent"
    action: Literal["ADD", "OBSERVE", "DELETE"] | None = None
    step: str = PField(min_length=1)
    disposition: str | None = None
    time: AwareDatetime
    lot: str | None = None
    inputs: list[str] = PField(default_factory=list)
    outputs: list[str] = PField(default_factory=list)
    parent: str | None = PField(default=None, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
    read_point: PlaceRow
    biz_location: str | None = PField(default=None, pattern=r"^\d{12}$")
    actor: ActorRow | None = None
    attributes: dict[str, Any] = PField(default_factory=dict)
    salt: str | None = PField(default=None, pattern=SALT)


class CorrectionRow(RowModel):
    event: str = PField(pattern=EVENT_ID, description="the EPCIS event ID of the event recorded in error")
    reason: Literal["incorrect_data", "did_not_occur"]
    time: AwareDatetime = PField(description="when the error was declared")
    corrective: str | None = PField(default=None, pattern=EVENT_ID, description="the event that replaces it")
    salt: str | None = PField(default=None, pattern=SALT)


class ItemRow(RowModel):
    item: str = PField(pattern=r"^[a-z][a-z0-9_]*$")
    value: float
    unit: str = PField(min_length=1)
    limit: float
    limit_kind: Literal["max", "min"] = "max"
    method: str = PField(min_length=1)


class InspectionRow(RowModel):
    lot: str = PField(min_length=1)
    lab: str = PField(min_length=1)
    report_no: str = PField(min_length=1)
    sampled_on: date
    reported_on: date | None = None
    certificate_sha256: str | None = PField(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    # hashed byte for byte (UTF-8), so never stripped
    certificate_text: Annotated[str, StringConstraints(strip_whitespace=False, min_length=1)] | None = None
    items: list[ItemRow] = PField(min_length=1)
    salt: str | None = PField(default=None, pattern=SALT)


ROW_MODELS: dict[str, type[RowModel]] = {
    "products": ProductRow,
    "facilities": FacilityRow,
    "lots": LotRow,
    "events": EventRow,
    "corrections": CorrectionRow,
    "inspections": InspectionRow,
}


# ---------------------------------------------------------------- results


@dataclass
class TraceImportResult:
    created: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    event_ids: list[int] = field(default_factory=list)  # ids of the events created
    correction_ids: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(sum(self.created.values()))

    def summary(self) -> str:
        parts = [
            f"{s}: {self.created[s]} new, {self.unchanged[s]} unchanged"
            for s in SECTIONS
            if self.created[s] or self.unchanged[s]
        ]
        return "; ".join(parts) or "nothing to import"


# ---------------------------------------------------------------- the importer


def _round(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(float(value), decimals) + 0.0


def _offset(dt: datetime) -> str:
    offset = dt.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _ms(dt: datetime) -> datetime:
    """UTC, truncated to whole milliseconds (what EPCIS times carry)."""
    utc = dt.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


class _Importer:
    """Validates and stages rows section by section; nothing is committed here."""

    def __init__(self, session: Session, source: str, scope: Scope) -> None:
        self.session = session
        self.source = source
        self.scope = scope
        self.vocab: Vocabulary = get_vocab()
        self.errors: list[RowError] = []
        self.result = TraceImportResult()
        self.failed_lots: set[str] = set()  # references of lot rows that failed (not reported again)
        self.failed: dict[str, set[str]] = {s: set() for s in SECTIONS}
        self.seen: dict[str, set[Any]] = {s: set() for s in (*SECTIONS, "codes")}  # keys met in this file
        self.event_keys: dict[tuple[Any, ...], int] = {}  # event key -> its row index in this file
        self.pending_origins: list[tuple[LotRow, Err, Lot, bool]] = []
        self.created_events: dict[int, tuple[int, Err]] = {}  # event id -> (row index, its error reporter)
        self.released: Counter[int] = Counter()  # parent lot id -> quantity taken by lots of this import
        self._cache: dict[tuple[str, str], Any] = {}

    # ---- lookups

    def _get(self, table: Any, column: str, key: str) -> Any:
        ck = (table.__name__, f"{column}={key}")
        if ck not in self._cache:
            self._cache[ck] = self.session.exec(select(table).where(getattr(table, column) == key)).first()
        return self._cache[ck]

    def _forget(self, table: Any, column: str, key: str) -> None:
        self._cache.pop((table.__name__, f"{column}={key}"), None)

    def allowed(self, owner: str, decl: str, target: Any, err: Err, fld: str) -> bool:
        """Check the declared reference `owner.decl` (core/scope.py) to `target` against the actor's area."""
        reason = self.scope.check(self.session, owner, decl, target)
        if reason:
            err(fld, reason, "forbidden")
        return reason is None

    def ref(self, owner: str, decl: str, key: str | None, err: Err, fld: str | None = None) -> Any:
        """The row named by reference `owner.decl` (`fld` where it sits in this row), checked against
        the actor's area: None after reporting it missing (unless its own row failed) or forbidden."""
        if key is None:
            return None
        fld = fld or decl
        target = entity(entity(owner).reference(decl).target)
        table, column = _TABLES[target.name]
        row = self._get(table, column, key)
        if row is None:
            if key not in self.failed.get(target.section, ()):
                err(fld, f"{target.name} {key!r} does not exist")
            return None
        return row if self.allowed(owner, decl, row, err, fld) else None

    def lot(self, reference: str, err: Err, fld: str, owner: str, decl: str) -> Lot | None:
        """A lot by "product:lot_no" or by trace code, checked as reference `owner.decl`; reports a
        missing one (unless its row failed) or a forbidden one."""
        found = self._find_lot(reference, err, fld)
        if found is None or not self.allowed(owner, decl, found, err, fld):
            return None
        return found

    def _find_lot(self, reference: str, err: Err, fld: str) -> Lot | None:
        if reference in self.failed_lots:
            return None
        if ":" in reference:
            product_code, lot_no = reference.split(":", 1)
            if product_code in self.failed["products"]:
                return None  # its product's row failed and was reported
            product = self._get(Product, "code", product_code)
            found = None
            if product is not None:
                found = self.session.exec(select(Lot).where(Lot.product_id == product.id, Lot.lot_no == lot_no)).first()
            if found is None:
                err(fld, f"lot {reference!r} does not exist")
            return found
        try:
            code = codes.normalize_code(reference)
        except codes.TraceCodeError as e:
            err(fld, f"{e}; a lot is referred to as 'product:lot_no' or by its trace code")
            return None
        if code in self.failed_lots:
            return None
        found = self.session.exec(select(Lot).where(Lot.code == code)).first()
        if found is None:
            err(fld, f"no lot has the trace code {codes.format_code(code)}")
        return found

    def event(self, event_id: str, err: Err, fld: str) -> TraceEvent | None:
        found = self.session.exec(select(TraceEvent).where(TraceEvent.event_id == event_id)).first()
        if found is None:
            err(fld, f"no event has the ID {event_id}")
            return None
        return found if self.allowed("correction", "event", found, err, fld) else None

    # ---- running a section

    def run(self, section: str, rows: list[Row], handler: Callable[[Any, Err, int], bool | None]) -> None:
        """Validate each row and hand it to `handler`; a handler returns False for a row it could not
        stage because something it refers to failed (so references to that row are not reported again)."""
        model = ROW_MODELS[section]
        name = entity(section[:-1] if section != "facilities" else "facility").name
        for i, raw in enumerate(rows):
            err = reporter(self.errors, self.source, section, i, raw)
            if "__invalid__" in raw.marked:
                continue  # not a mapping: already reported
            row = _validate(model, raw, err)
            if row is None:
                self._mark_failed(section, raw.values)
                continue
            if reason := self.scope.may_write(name):
                err(None, reason, "forbidden")
                self._mark_failed(section, raw.values)
                continue
            before = len(self.errors)
            staged = handler(row, err, i)
            if staged is False or len(self.errors) > before:
                self._mark_failed(section, raw.values)
        self.session.flush()

    def _mark_failed(self, section: str, values: dict[str, Any]) -> None:
        if section == "lots":
            self.failed_lots.add(f"{values.get('product')}:{values.get('lot_no')}")
            if isinstance(values.get("code"), str):
                with contextlib.suppress(codes.TraceCodeError):
                    self.failed_lots.add(codes.normalize_code(values["code"]))
        elif section in ("products", "facilities"):
            self.failed[section].add(str(values.get("code")))

    def _compare(self, what: str, stored: dict[str, Any], given: dict[str, Any], err: Err) -> bool:
        """True when `given` matches `stored`; otherwise reports each differing field."""
        same = True
        for name, value in given.items():
            if stored.get(name) != value:
                same = False
                err(
                    name,
                    f"{what} is already recorded with {name} {stored.get(name)!r}, not {value!r}; "
                    "recorded trace data is never rewritten by an import",
                    "conflict",
                )
        return same

    # ---- products and facilities

    def _county_of_product(self, row: ProductRow, err: Err) -> str | None:
        """The county a new product belongs to: given, or the actor's (or the registry's) only county."""
        if row.county_code is not None:
            county = self.ref("product", "county_code", row.county_code, err)
            return county.code if county is not None else None
        if self.scope.area is not None:
            choices = sorted(self.scope.area.counties)
        else:
            choices = sorted(self.session.exec(select(County.code)).all())
        if len(choices) == 1:
            return choices[0]
        err("county_code", "give the county whose trade item this is (there is more than one)")
        return None

    def products(self, row: ProductRow, err: Err, i: int) -> None:
        if row.code in self.seen["products"]:
            err("code", f"duplicate product code {row.code!r}")
            return
        self.seen["products"].add(row.code)
        gtin = None
        if row.gtin is not None:
            try:
                gtin = codes.normalize_gtin(row.gtin)
            except codes.DigitalLinkError as e:
                err("gtin", str(e))
                return
        try:
            self.vocab.unit(row.unit)
        except UnknownTerm as e:
            err("unit", str(e))
            return
        values = {
            "gtin": gtin,
            "name_zh": row.name_zh,
            "name_en": row.name_en,
            "variety": row.variety,
            "unit": row.unit,
        }
        existing = self._get(Product, "code", row.code)
        if existing is not None:
            if reason := self.scope.owns(self.session, "product", existing):
                err("code", reason, "forbidden")
                return
            given = dict(values)
            if row.county_code is not None:
                given["county_code"] = row.county_code
            if row.unit_kg is not None and existing.unit_kg is not None:
                given["unit_kg"] = row.unit_kg
            if self._compare(f"product {row.code}", existing.model_dump(), given, err):
                if row.unit_kg is not None and existing.unit_kg is None:
                    existing.unit_kg = row.unit_kg  # not hashed: may be declared later, never changed
                    self.session.add(existing)
                self.result.unchanged["products"] += 1
            return
        county = self._county_of_product(row, err)
        if county is None:
            return
        owner = self._get(Product, "gtin", gtin) if gtin is not None else None
        if owner is not None:
            err("gtin", f"GTIN {gtin} already belongs to product {owner.code!r}", "conflict")
            return
        product = Product(code=row.code, county_code=county, unit_kg=row.unit_kg, **values)
        self.session.add(product)
        self.session.flush()
        self._forget(Product, "code", row.code)
        self.result.created["products"] += 1

    def facilities(self, row: FacilityRow, err: Err, i: int) -> None:
        if row.code in self.seen["facilities"]:
            err("code", f"duplicate facility code {row.code!r}")
            return
        self.seen["facilities"].add(row.code)
        village = self.ref("facility", "village_code", row.village_code, err)
        if village is None:
            return
        values = {"name": row.name, "kind": row.kind, "village_code": row.village_code}
        existing = self._get(Facility, "code", row.code)
        if existing is not None:
            if reason := self.scope.owns(self.session, "facility", existing):
                err("code", reason, "forbidden")
            elif self._compare(f"facility {row.code}", existing.model_dump(), values, err):
                self.result.unchanged["facilities"] += 1
            return
        self.session.add(Facility(code=row.code, **values))
        self.session.flush()
        self._forget(Facility, "code", row.code)
        self.result.created["facilities"] += 1

    # ---- lots: the rows first (so parents may come later in the file), then origins and parents

    def lots(self, row: LotRow, err: Err, i: int) -> bool | None:
        key = f"{row.product}:{row.lot_no}"
        if key in self.seen["lots"]:
            err("lot_no", f"duplicate lot {key!r}")
            return None
        self.seen["lots"].add(key)
        product = self.ref("lot", "product", row.product, err)
        owned = (row.farm is None) != (row.facility is None)
        if not owned and row.product not in self.failed["products"]:
            err("farm", "a lot belongs to exactly one farm (that grew it) or facility (that made it)")
        farm = self.ref("lot", "farm", row.farm, err)
        facility = self.ref("lot", "facility", row.facility, err)
        code = None
        if row.code is not None:
            try:
                code = codes.normalize_code(row.code)
            except codes.TraceCodeError as e:
                err("code", str(e))
        if product is None or (row.farm and farm is None) or (row.facility and facility is None):
            return False
        if (row.code is not None and code is None) or not owned:
            return False
        unit_name = row.unit or product.unit
        try:
            unit = self.vocab.unit(unit_name)
        except UnknownTerm as e:
            err("unit", str(e))
            return None
        values: dict[str, Any] = {
            "quantity": _round(row.quantity, unit.decimals),
            "unit": unit_name,
            "farm_id": farm.id if farm else None,
            "facility_id": facility.id if facility else None,
            "harvest_year": row.harvest_year,
        }
        existing = self.session.exec(select(Lot).where(Lot.product_id == product.id, Lot.lot_no == row.lot_no)).first()
        if existing is not None:
            given = dict(values)
            if code is not None:
                given["code"] = code
            if row.salt is not None:
                given["salt"] = row.salt
            if self._compare(f"lot {key}", existing.model_dump(), given, err):
                self.pending_origins.append((row, err, existing, False))
            return None
        if code is not None:
            if code in self.seen["codes"] or self.session.exec(select(Lot).where(Lot.code == code)).first():
                err("code", f"trace code {codes.format_code(code)} is already used by another lot", "conflict")
                return None
        else:
            code = codes.new_code()
            while self.session.exec(select(Lot).where(Lot.code == code)).first() or code in self.seen["codes"]:
                code = codes.new_code()  # pragma: no cover  (50 random bits)
        self.seen["codes"].add(code)
        lot = Lot(code=code, product_id=product.id, lot_no=row.lot_no, **values)
        if row.salt is not None:
            lot.salt = row.salt
        self.session.add(lot)
        self.session.flush()
        self.pending_origins.append((row, err, lot, True))
        return None

    def _sources(self, row: LotRow, err: Err, lot: Lot) -> set[tuple[int | None, int | None, float | None]]:
        sources: set[tuple[int | None, int | None, float | None]] = set()
        for j, s in enumerate(row.sources):
            fld = f"sources[{j}]"
            if (s.plot_no is None) == (s.herd_no is None):
                err(fld, "a source is exactly one plot_no or herd_no")
                continue
            plot = self.ref("lot", "sources[].plot_no", s.plot_no, err, f"{fld}.plot_no")
            herd = self.ref("lot", "sources[].herd_no", s.herd_no, err, f"{fld}.herd_no")
            origin_row = plot or herd
            if origin_row is None:
                continue
            if origin_row.farm_id != lot.farm_id:
                what = f"plot {s.plot_no}" if plot else f"herd {s.herd_no}"
                whose = "a facility's lot has no fields: name its parent lots" if lot.farm_id is None else ""
                err(
                    f"{fld}.plot_no" if plot else f"{fld}.herd_no",
                    whose or f"{what} belongs to another farm: a lot is grown on its own farm's plots and herds",
                )
                continue
            origin = (plot.id if plot else None, herd.id if herd else None, _round(s.area_mu, 2))
            if any(o[:2] == origin[:2] for o in sources):
                err(fld, f"duplicate source {s.plot_no or s.herd_no!r}")
            sources.add(origin)
        return sources

    def _holding(self, lot: Lot) -> lineage.Holding:
        product = self.session.get(Product, lot.product_id)
        return lineage.Holding(lot.quantity, lot.unit, product.unit_kg if product else None)

    def _parents(self, row: LotRow, err: Err, lot: Lot, new: bool) -> tuple[set[tuple[int, str, float | None]], bool]:
        """The parent links of a lot and whether a parent's own row failed (reported there)."""
        parents: set[tuple[int, str, float | None]] = set()
        draws: list[lineage.Draw] = []
        quiet = False
        for j, p in enumerate(row.parents):
            fld = f"parents[{j}].lot"
            errors_before = len(self.errors)
            parent = self.lot(p.lot, err, fld, "lot", "parents[].lot")
            if parent is None:
                quiet = quiet or len(self.errors) == errors_before
                continue
            if parent.id == lot.id:
                err(fld, "a lot cannot be its own parent")
                continue
            if any(q[0] == parent.id for q in parents):
                err(fld, f"duplicate parent {p.lot!r}")
                continue
            decimals = self.vocab.units[parent.unit].decimals if parent.unit in self.vocab.units else 3
            quantity = _round(p.quantity, decimals)
            parents.add((parent.id, p.relation, quantity))  # type: ignore[arg-type]
            holding = self._holding(parent)
            draws.append(lineage.Draw(parent.code, holding, quantity, p.relation))
            if not new:
                continue
            if quantity is None and holding.quantity is not None:
                err(
                    f"parents[{j}].quantity",
                    f"say how much of lot {parent.code} this lot takes, in {parent.unit}: it holds "
                    f"{holding.quantity:g} {parent.unit}",
                )
                continue
            if quantity is not None:
                taken = self._taken(parent.id, lot.id) + self.released[parent.id]  # type: ignore[arg-type]
                if reason := lineage.over_release(parent.code, holding, taken, quantity):
                    err(f"parents[{j}].quantity", reason)
                    continue
                self.released[parent.id] += quantity  # type: ignore[index]
        if new and draws and len(draws) == len(row.parents):
            facility = self.session.get(Facility, lot.facility_id) if lot.facility_id else None
            reason = lineage.over_yield(self.vocab, self._holding(lot), draws, facility.kind if facility else None)
            if reason:
                err("quantity", reason)
        return parents, quiet

    def _taken(self, parent_id: int, child_id: int) -> float:
        """What the stored children of a parent (other than `child_id`) take of it."""
        rows = self.session.exec(
            select(LotParent.quantity).where(LotParent.parent_lot_id == parent_id, LotParent.child_lot_id != child_id)
        ).all()
        return float(sum(q for q in rows if q is not None))

    def origins(self) -> None:
        """Sources and parents of the lots just read (new lots get them, stored lots must match)."""
        for row, err, lot, new in self.pending_origins:
            before = len(self.errors)
            sources = self._sources(row, err, lot)
            parents, quiet = self._parents(row, err, lot, new)
            if quiet or len(self.errors) > before:
                self.failed_lots.update({f"{row.product}:{row.lot_no}", lot.code})
                continue
            if not new:
                stored_sources = {
                    (s.plot_id, s.herd_id, s.area_mu)
                    for s in self.session.exec(select(LotSource).where(LotSource.lot_id == lot.id))
                }
                stored_parents = {
                    (p.parent_lot_id, p.relation, p.quantity)
                    for p in self.session.exec(select(LotParent).where(LotParent.child_lot_id == lot.id))
                }
                if stored_sources != sources:
                    err("sources", f"lot {row.product}:{row.lot_no} is already recorded with other sources", "conflict")
                elif stored_parents != parents:
                    err("parents", f"lot {row.product}:{row.lot_no} is already recorded with other parents", "conflict")
                else:
                    self.result.unchanged["lots"] += 1
                continue
            for plot_id, herd_id, area in sorted(sources, key=str):
                self.session.add(LotSource(lot_id=lot.id, plot_id=plot_id, herd_id=herd_id, area_mu=area))  # type: ignore[arg-type]
            for parent_id, relation, quantity in sorted(parents, key=str):
                self.session.add(
                    LotParent(child_lot_id=lot.id, parent_lot_id=parent_id, relation=relation, quantity=quantity)  # type: ignore[arg-type]
                )
            self.result.created["lots"] += 1
        self.session.flush()
        self._check_cycles()

    def _check_cycles(self) -> None:
        edges: dict[int, set[int]] = {}
        for child, parent in self.session.exec(select(LotParent.child_lot_id, LotParent.parent_lot_id)):
            edges.setdefault(child, set()).add(parent)
        for row, err, lot, new in self.pending_origins:
            if not new:
                continue
            stack, seen = list(edges.get(lot.id, ())), set()  # type: ignore[arg-type]
            while stack:
                node = stack.pop()
                if node == lot.id:
                    err("parents", f"lot {row.product}:{row.lot_no} would be its own ancestor")
                    break
                if node not in seen:
                    seen.add(node)
                    stack.extend(edges.get(node, ()))

    # ---- events

    def _event_lots(self, row: EventRow, err: Err) -> tuple[Lot | None, list[Lot], list[Lot]]:
        lot = None
        inputs: list[Lot] = []
        outputs: list[Lot] = []
        if row.type == "TransformationEvent":
            if row.action is not None:
                err("action", "a TransformationEvent has no action")
            if row.lot is not None:
                err("lot", "a TransformationEvent names its lots in inputs and outputs")
            if row.parent is not None:
                err("parent", "only an AggregationEvent has a parent")
            if not row.inputs and not row.outputs:
                err("inputs", "a TransformationEvent needs inputs, outputs or both")
            for name, refs, out in (("inputs", row.inputs, inputs), ("outputs", row.outputs, outputs)):
                for j, reference in enumerate(refs):
                    found = self.lot(reference, err, f"{name}[{j}]", "event", f"{name}[]")
                    if found is not None:
                        if any(x.id == found.id for x in out):
                            err(f"{name}[{j}]", f"lot {reference!r} is listed twice")
                        out.append(found)
            if {x.id for x in inputs} & {x.id for x in outputs}:
                err("outputs", "a lot cannot be both an input and an output")
        else:
            if row.action is None:
                err("action", f"an {row.type} needs an action: ADD, OBSERVE or DELETE")
            if row.inputs or row.outputs:
                err("inputs" if row.inputs else "outputs", f"an {row.type} names one lot (lot), not inputs/outputs")
            if row.parent is not None and row.type != "AggregationEvent":
                err("parent", "only an AggregationEvent has a parent")
            if row.lot is None:
                err("lot", f"an {row.type} needs the lot it concerns")
            else:
                lot = self.lot(row.lot, err, "lot", "event", "lot")
        return lot, inputs, outputs

    def _grown_on(self, plot: Plot, lots: list[Lot]) -> bool:
        ids = [x.id for x in lots]
        return (
            self.session.exec(
                select(LotSource.id).where(col(LotSource.lot_id).in_(ids), LotSource.plot_id == plot.id)
            ).first()
            is not None
        )

    def events(self, row: EventRow, err: Err, i: int) -> None:
        vocab = self.vocab
        try:
            step = vocab.step(row.step)
        except UnknownTerm as e:
            err("step", str(e))
            return
        if row.type not in step.event_types:
            err("type", f"step {step.name} is recorded as {' or '.join(step.event_types)}, not {row.type}")
        disposition = None
        if row.disposition is not None:
            try:
                disposition = vocab.normalize_disposition(row.disposition)
            except UnknownTerm as e:
                err("disposition", str(e))
        lot, inputs, outputs = self._event_lots(row, err)
        # where, and who
        rp = row.read_point
        plot = facility = None
        if (rp.plot_no is None) == (rp.facility is None):
            err("read_point", "a read point is exactly one plot_no or facility")
        else:
            plot = self.ref("event", "read_point.plot_no", rp.plot_no, err)
            facility = self.ref("event", "read_point.facility", rp.facility, err)
            kind = "plot" if rp.plot_no is not None else "facility"
            if step.read_point not in ("any", kind):
                err("read_point", f"step {step.name} happens at a {step.read_point}, not at a {kind}")
        concerned = [x for x in (lot, *inputs, *outputs) if x is not None]
        if plot is not None and concerned and not self._grown_on(plot, concerned):
            err("read_point.plot_no", f"plot {plot.plot_no} is not where the event's lot was grown (not a source)")
        place_village = plot.village_code if plot else facility.village_code if facility else None
        village = row.biz_location or place_village
        if row.biz_location is not None:
            self.ref("event", "biz_location", row.biz_location, err)
            if place_village is not None and row.biz_location != place_village:
                err("biz_location", f"the business location is the read point's village {place_village}")
        for j, out in enumerate(outputs):
            self.allowed("event", "outputs[]", out, err, f"outputs[{j}]")
        actor_farm = actor_facility = None
        if row.actor is not None:
            if (row.actor.farm is None) == (row.actor.facility is None):
                err("actor", "an actor is exactly one farm or facility (never a person)")
            actor_farm = self.ref("event", "actor.farm", row.actor.farm, err)
            actor_facility = self.ref("event", "actor.facility", row.actor.facility, err)
        elif plot is not None:
            actor_farm = self.session.get(Farm, plot.farm_id)
        else:
            actor_facility = facility
        try:
            attributes = vocab.validate_attributes(step.uri, row.attributes)
        except AttributeErrors as e:
            for name, message in e.errors:
                err(f"attributes.{name}" if name else "attributes", message)
            return
        if HANDOVER_ATTRIBUTE in attributes:
            self.ref("event", f"attributes.{HANDOVER_ATTRIBUTE}", attributes[HANDOVER_ATTRIBUTE], err)
        if village is None or (plot is None and facility is None) or (actor_farm is None and actor_facility is None):
            return
        if row.type != "TransformationEvent" and lot is None:
            return
        event = TraceEvent(
            event_type=row.type,
            action=row.action,
            biz_step=step.uri,
            disposition=disposition,
            event_time=_ms(row.time),
            event_time_zone_offset=_offset(row.time),
            lot_id=lot.id if lot else None,
            parent_uri=row.parent,
            read_point_plot_id=plot.id if plot else None,
            read_point_facility_id=facility.id if facility else None,
            biz_location=village,
            attributes=attributes,
            actor_farm_id=actor_farm.id if actor_farm else None,
            actor_facility_id=actor_facility.id if actor_facility else None,
        )
        if row.salt is not None:
            event.salt = row.salt
        key = self._event_key(event, [x.id for x in inputs], [x.id for x in outputs])  # type: ignore[misc]
        if key in self.event_keys:
            err(None, f"the same event as events[{self.event_keys[key]}]")
            return
        self.event_keys[key] = i
        if any(key == self._stored_key(e) for e in self._events_at(event.event_time)):
            self.result.unchanged["events"] += 1
            return
        if len(self.errors):
            return  # nothing more is staged once anything failed
        self.session.add(event)
        self.session.flush()
        for role, lots in (("input", inputs), ("output", outputs)):
            for x in lots:
                self.session.add(TraceEventLot(trace_event_id=event.id, lot_id=x.id, role=role))  # type: ignore[arg-type]
        self.result.created["events"] += 1
        self.result.event_ids.append(event.id)  # type: ignore[arg-type]
        self.created_events[event.id] = (i, err)  # type: ignore[index]

    @staticmethod
    def _event_key(e: TraceEvent, inputs: list[int], outputs: list[int]) -> tuple[Any, ...]:
        return (
            e.event_type,
            e.action,
            e.biz_step,
            e.disposition,
            e.event_time.astimezone(UTC),
            e.event_time_zone_offset,
            e.lot_id,
            e.parent_uri,
            tuple(sorted(inputs)),
            tuple(sorted(outputs)),
            e.read_point_plot_id,
            e.read_point_facility_id,
            e.biz_location,
            tuple(sorted((k, repr(v)) for k, v in e.attributes.items())),
            e.actor_farm_id,
            e.actor_facility_id,
        )

    def _stored_key(self, e: TraceEvent) -> tuple[Any, ...]:
        inputs, outputs = event_lots(self.session, e.id)  # type: ignore[arg-type]
        return self._event_key(e, inputs, outputs)

    def _events_at(self, when: datetime) -> list[TraceEvent]:
        return list(self.session.exec(select(TraceEvent).where(TraceEvent.event_time == when)))

    # ---- corrections (after the events, so a file may add an event and declare an earlier one in error)

    def corrections(self, row: CorrectionRow, err: Err, i: int) -> None:
        if row.event in self.seen["corrections"]:
            err("event", f"event {row.event} is declared in error twice")
            return
        self.seen["corrections"].add(row.event)
        wrong = self.event(row.event, err, "event")
        corrective = None
        if row.corrective is not None:
            corrective = self.session.exec(select(TraceEvent).where(TraceEvent.event_id == row.corrective)).first()
            if corrective is None:
                # an event added by this very import gets its ID only once the import is checked
                err("corrective", f"no event has the ID {row.corrective} (record the corrective event first)")
            elif corrective.id == (wrong.id if wrong else None):
                err("corrective", "an event cannot correct itself")
            elif not self.allowed("correction", "event", corrective, err, "corrective"):
                corrective = None
        if row.reason == "did_not_occur" and row.corrective is not None:
            err("corrective", "an event that did not occur has no corrective event")
        if wrong is None or (row.corrective is not None and corrective is None):
            return
        values = {
            "corrective_event_id": corrective.id if corrective else None,
            "reason": row.reason,
            "declared_at": _ms(row.time),
            "declared_at_offset": _offset(row.time),
        }
        existing = self.session.exec(select(EventCorrection).where(EventCorrection.event_id == wrong.id)).first()
        if existing is not None:
            stored = existing.model_dump()
            when = existing.declared_at
            stored["declared_at"] = when.replace(tzinfo=UTC) if when.tzinfo is None else when
            if self._compare(f"the error declaration of {row.event}", stored, values, err):
                self.result.unchanged["corrections"] += 1
            return
        if len(self.errors):
            return
        correction = EventCorrection(event_id=wrong.id, **values)  # type: ignore[arg-type]
        if row.salt is not None:
            correction.salt = row.salt
        self.session.add(correction)
        self.session.flush()
        self.result.created["corrections"] += 1
        self.result.correction_ids.append(correction.id)  # type: ignore[arg-type]

    # ---- inspections

    def inspections(self, row: InspectionRow, err: Err, i: int) -> None:
        before = len(self.errors)
        key = (row.lab, row.report_no)
        if key in self.seen["inspections"]:
            err("report_no", f"duplicate report {row.report_no!r} of {row.lab!r}")
            return
        self.seen["inspections"].add(key)
        lot = self.lot(row.lot, err, "lot", "inspection", "lot")
        if row.certificate_sha256 is not None and row.certificate_text is not None:
            err("certificate_text", "give certificate_sha256 or certificate_text, not both")
        if row.reported_on is not None and row.reported_on < row.sampled_on:
            err("reported_on", f"the report ({row.reported_on}) cannot precede the sampling ({row.sampled_on})")
        names = [i.item for i in row.items]
        for j, name in enumerate(names):
            if name in names[:j]:
                err(f"items[{j}].item", f"duplicate item {name!r}")
        if lot is None or len(self.errors) > before:
            return
        digest = row.certificate_sha256.lower() if row.certificate_sha256 else None
        if row.certificate_text is not None:
            digest = hashlib.sha256(row.certificate_text.encode("utf-8")).hexdigest()
        items = []
        for i in row.items:
            value, limit = _round(i.value, INSPECTION_DECIMALS), _round(i.limit, INSPECTION_DECIMALS)
            assert value is not None and limit is not None
            items.append(
                {
                    "item": i.item,
                    "value": value,
                    "unit": i.unit,
                    "limit_value": limit,
                    "limit_kind": i.limit_kind,
                    "method": i.method,
                    "passed": item_passes(value, limit, i.limit_kind),
                }
            )
        values = {
            "lot_id": lot.id,
            "sampled_on": row.sampled_on,
            "reported_on": row.reported_on,
            "certificate_sha256": digest,
            "passed": all(i["passed"] for i in items),
        }
        existing = self.session.exec(
            select(Inspection).where(Inspection.lab == row.lab, Inspection.report_no == row.report_no)
        ).first()
        if existing is not None:
            what = f"inspection {row.report_no} of {row.lab}"
            given = {**values, **({"salt": row.salt} if row.salt else {})}
            if not self._compare(what, existing.model_dump(), given, err):
                return
            stored_items = sorted(
                (i.model_dump(exclude={"id", "inspection_id"}) for i in self._items_of(existing.id)),  # type: ignore[arg-type]
                key=lambda i: i["item"],
            )
            if stored_items != sorted(items, key=lambda i: i["item"]):
                err(
                    "items",
                    f"{what} is already recorded with other items; recorded trace data is never rewritten",
                    "conflict",
                )
                return
            self.result.unchanged["inspections"] += 1
            return
        inspection = Inspection(lab=row.lab, report_no=row.report_no, **values)
        if row.salt is not None:
            inspection.salt = row.salt
        self.session.add(inspection)
        self.session.flush()
        for item in items:
            self.session.add(InspectionItem(inspection_id=inspection.id, **item))  # type: ignore[arg-type]
        self.result.created["inspections"] += 1

    def _items_of(self, inspection_id: int) -> list[InspectionItem]:
        return list(self.session.exec(select(InspectionItem).where(InspectionItem.inspection_id == inspection_id)))


# How each entity named by a reference is looked up: (table, key column).
_TABLES: dict[str, tuple[Any, str]] = {
    "county": (County, "code"),
    "township": (Township, "code"),
    "village": (Village, "code"),
    "farm": (Farm, "code"),
    "plot": (Plot, "plot_no"),
    "herd": (Herd, "herd_no"),
    "product": (Product, "code"),
    "facility": (Facility, "code"),
}


# ---------------------------------------------------------------- entry points


def _import(
    session: Session, sections: dict[str, list[Row]], source: str, errors: list[RowError], scope: Scope | None
) -> TraceImportResult:
    importer = _Importer(session, source, scope or Scope.system())
    importer.errors.extend(errors)
    try:
        with session.no_autoflush:
            importer.run("products", sections.get("products", []), importer.products)
            importer.run("facilities", sections.get("facilities", []), importer.facilities)
            importer.run("lots", sections.get("lots", []), importer.lots)
            importer.origins()
            importer.run("events", sections.get("events", []), importer.events)
            importer.run("inspections", sections.get("inspections", []), importer.inspections)
    except BaseException:
        session.rollback()
        raise
    if importer.errors:
        session.rollback()
        raise ImportErrors(importer.errors)
    try:
        duplicates = fill_event_ids(session, importer.result.event_ids)
    except BaseException:
        session.rollback()
        raise
    for event_id, other in duplicates.items():
        _, err = importer.created_events[event_id]
        twin = importer.created_events.get(other)
        where = f"events[{twin[0]}] of this file" if twin is not None else f"stored event {other}"
        err(None, f"the same EPCIS event (same GS1 event hash) as {where}")
    if not importer.errors and sections.get("corrections"):
        try:
            with session.no_autoflush:
                importer.run("corrections", sections["corrections"], importer.corrections)
        except BaseException:
            session.rollback()
            raise
    if importer.errors:
        session.rollback()
        raise ImportErrors(importer.errors)
    log.info("trace import from %s: %s", source, importer.result.summary())
    return importer.result


def import_trace(session: Session, path: Path | str, scope: Scope | None = None) -> TraceImportResult:
    """Import a trace YAML file as `scope` (unrestricted by default). Staged in `session` (the caller
    commits); on any error the session is rolled back and `ImportErrors` lists every problem with its
    file, line and field."""
    path = Path(path)
    sections, errors = read_yaml(path, SECTIONS)
    return _import(session, sections, str(path), errors, scope)


def import_trace_data(
    session: Session, data: dict[str, list[dict[str, Any]]], source: str = "<data>", scope: Scope | None = None
) -> TraceImportResult:
    """Import already-parsed sections (as in the YAML file); rows are numbered, not lined."""
    sections, errors = rows_from_data(data, SECTIONS, source)
    return _import(session, sections, source, errors, scope)


def load_demo_trace(session: Session) -> TraceImportResult:
    """The demo county (registry_io.load_demo, unchanged when present) and its 2026 rice season."""
    load_demo(session)
    session.flush()
    return import_trace(session, DEMO_TRACE_FILE)


def fill_event_ids(session: Session, event_ids: list[int]) -> dict[int, int]:
    """Set `event_id`, the GS1 EPCIS event hash (ledger.epcis), of the given events that have none.

    Returns {event id: id of the other event with the same hash} for events that are the same EPCIS
    event as another one; those are left without `event_id`.
    """
    from ledger.epcis import event_hash  # imported here: it loads the JSON-LD machinery
    from ledger.records import epcis_event

    duplicates: dict[int, int] = {}
    taken: dict[str, int] = {}
    for event_id in event_ids:
        event = session.get(TraceEvent, event_id)
        if event is None or event.event_id is not None:
            continue
        digest = event_hash(epcis_event(session, event_id))
        other = taken.get(digest) or session.exec(select(TraceEvent.id).where(TraceEvent.event_id == digest)).first()
        if other is not None:
            duplicates[event_id] = other
            continue
        event.event_id = digest
        taken[digest] = event_id
    session.flush()
    return duplicates


def event_counts(session: Session) -> Counter[int]:
    """Number of events per lot id (about the lot, or with it as a transformation input or output)."""
    counts: Counter[int] = Counter()
    counts.update(session.exec(select(TraceEvent.lot_id).where(col(TraceEvent.lot_id).is_not(None))).all())
    counts.update(session.exec(select(TraceEventLot.lot_id)).all())
    return counts


# ---------------------------------------------------------------- finding lots


class LotNotFound(LookupError):
    """No lot answers to the code, URI or reference."""


def find_lot(session: Session, text: str) -> Lot:
    """A lot by trace code (any typed form), trace URI (Digital Link or /t/ code) or "product:lot_no".

    Raises LotNotFound, or the codes module's TraceCodeError / GtinCheckDigitError / DigitalLinkError
    (all ValueError) with the reason when `text` is malformed.
    """
    text = text.strip()
    if "://" in text:
        named = codes.parse_uri(text)
        if isinstance(named, str):
            lot = session.exec(select(Lot).where(Lot.code == named)).first()
        else:
            gtin, lot_no = named
            if lot_no is None:
                raise codes.DigitalLinkError(f"{text!r} names a product (GTIN {gtin}), not a lot: add /10/{{lot}}")
            lot = session.exec(
                select(Lot).join(Product).where(Product.gtin == gtin, Lot.lot_no == lot_no)  # type: ignore[arg-type]
            ).first()
    elif ":" in text:
        product_code, lot_no = text.split(":", 1)
        lot = session.exec(
            select(Lot).join(Product).where(Product.code == product_code, Lot.lot_no == lot_no)  # type: ignore[arg-type]
        ).first()
    else:
        lot = session.exec(select(Lot).where(Lot.code == codes.normalize_code(text))).first()
    if lot is None:
        raise LotNotFound(f"no lot {text!r}")
    return lot
