"""Trace data import from YAML: products, facilities, lots, events and inspections; the demo season.

A YAML file is one document with the sections `products`, `facilities`, `lots`, `events` and
`inspections`, each a list of rows. Rows refer to registry rows by their natural keys (farm codes,
plot and herd numbers, village codes), to each other by product and facility codes, and to lots
by a LOT REFERENCE: either `"{product code}:{lot_no}"` or the lot's trace code.

    products:    {code, gtin?, name_zh, name_en?, variety?, unit?}
    facilities:  {code, name, kind: dryer|mill|warehouse|packhouse, village_code}
    lots:        {product, lot_no, code?, quantity?, unit?, farm?, facility?, harvest_year?,
                  sources?: [{plot_no | herd_no, area_mu?}],
                  parents?: [{lot: REF, relation: merge|split|transform, quantity?}], salt?}
    events:      {type?: ObjectEvent|AggregationEvent|TransformationEvent, action?: ADD|OBSERVE|DELETE,
                  step, disposition?, time: RFC 3339 with offset,
                  lot?: REF | inputs?: [REF], outputs?: [REF], parent?: URI,
                  read_point: {plot_no | facility}, biz_location?: village code,
                  actor?: {farm | facility}, attributes?: {...}, salt?}
    inspections: {lot: REF, lab, report_no, sampled_on, reported_on?,
                  certificate_sha256? | certificate_text?, salt?,
                  items: [{item, value, unit, limit, limit_kind?: max|min, method}]}

Trace data is a ledger, so import only ever ADDS: a row that is already stored identically is
left alone (importing the same file again changes nothing), a row whose key exists with other
content is an error (a recorded fact is never rewritten by an import). Events have no natural
key; one identical in every field to a stored event is the same event. Salts (and lot codes)
are drawn at random unless given, e.g. to move records whose leaves are already anchored.

Everything is checked before anything is kept: on any error the session is rolled back and
`ImportErrors` (shared with the registry importer) lists each problem with file, line and field.
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

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic import Field as PField
from sqlmodel import Session, col, select

from core.models import Farm, Herd, Plot, Village
from core.registry_io import ImportErrors, RowError, load_demo, strip_lines, yaml_sections
from ledger import codes
from ledger.models import (
    INSPECTION_DECIMALS,
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
from ledger.vocab import AttributeErrors, UnknownTerm, Vocabulary, get_vocab

log = logging.getLogger(__name__)

SECTIONS = ("products", "facilities", "lots", "events", "inspections")
DEMO_TRACE_FILE = Path(__file__).with_name("data") / "demo_trace.yaml"
CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SALT = r"^[0-9a-f]{32}$"

Err = Callable[[str | None, str], None]


# ---------------------------------------------------------------- row schemas


class _Row(BaseModel):
    model_config = ConfigDict(
        extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True, allow_inf_nan=False
    )


class ProductRow(_Row):
    code: str = PField(pattern=CODE)
    gtin: str | None = None
    name_zh: str = PField(min_length=1)
    name_en: str = ""
    variety: str | None = None
    unit: str = "kg"


class FacilityRow(_Row):
    code: str = PField(pattern=CODE)
    name: str = PField(min_length=1)
    kind: Literal["dryer", "mill", "warehouse", "packhouse"]
    village_code: str = PField(pattern=r"^\d{12}$")


class SourceRow(_Row):
    plot_no: str | None = None
    herd_no: str | None = None
    area_mu: float | None = PField(default=None, gt=0)


class ParentRow(_Row):
    lot: str = PField(min_length=1)
    relation: Literal["merge", "split", "transform"]
    quantity: float | None = PField(default=None, ge=0)


class LotRow(_Row):
    product: str = PField(min_length=1)
    lot_no: str = PField(pattern=codes.LOT_NO_PATTERN)
    code: str | None = None
    quantity: float | None = PField(default=None, ge=0)
    unit: str | None = None
    farm: str | None = None
    facility: str | None = None
    harvest_year: int | None = PField(default=None, ge=1900, le=2200)
    sources: list[SourceRow] = []
    parents: list[ParentRow] = []
    salt: str | None = PField(default=None, pattern=SALT)


class PlaceRow(_Row):
    plot_no: str | None = None
    facility: str | None = None


class ActorRow(_Row):
    farm: str | None = None
    facility: str | None = None


class EventRow(_Row):
    type: Literal["ObjectEvent", "AggregationEvent", "TransformationEvent"] = "ObjectEvent"
    action: Literal["ADD", "OBSERVE", "DELETE"] | None = None
    step: str = PField(min_length=1)
    disposition: str | None = None
    time: AwareDatetime
    lot: str | None = None
    inputs: list[str] = []
    outputs: list[str] = []
    parent: str | None = PField(default=None, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
    read_point: PlaceRow
    biz_location: str | None = PField(default=None, pattern=r"^\d{12}$")
    actor: ActorRow | None = None
    attributes: dict[str, Any] = {}
    salt: str | None = PField(default=None, pattern=SALT)


class ItemRow(_Row):
    item: str = PField(pattern=r"^[a-z][a-z0-9_]*$")
    value: float
    unit: str = PField(min_length=1)
    limit: float
    limit_kind: Literal["max", "min"] = "max"
    method: str = PField(min_length=1)


class InspectionRow(_Row):
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


ROW_MODELS: dict[str, type[_Row]] = {
    "products": ProductRow,
    "facilities": FacilityRow,
    "lots": LotRow,
    "events": EventRow,
    "inspections": InspectionRow,
}


# ---------------------------------------------------------------- results


@dataclass
class TraceImportResult:
    created: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    event_ids: list[int] = field(default_factory=list)  # ids of the events created

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


# ---------------------------------------------------------------- reading


@dataclass
class _Raw:
    """One row as read, with the line markers of every nested mapping kept for error lines."""

    values: dict[str, Any]
    marked: dict[str, Any]
    line: int | None

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        node: Any = self.marked
        line = self.line
        for part in loc:
            if isinstance(node, dict):
                line = node.get("__lines__", {}).get(str(part), line)
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, dict):
                    line = node.get("__line__", line)
            else:
                break
        return line


def _field_name(loc: tuple[Any, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def read_trace_yaml(path: Path) -> tuple[dict[str, list[_Raw]], list[RowError]]:
    """Sections of a trace YAML file, each row with its line numbers."""
    found, errors = yaml_sections(path, SECTIONS)
    sections: dict[str, list[_Raw]] = {}
    for name, line, rows in found:
        out: list[_Raw] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append(RowError(str(path), line, name, i, None, "expected a mapping (one row)"))
                out.append(_Raw({}, {}, line))  # keeps row indexes aligned; fails validation quietly
                continue
            out.append(_Raw(strip_lines(row), row, row.get("__line__")))
        sections[name] = out
    return sections, errors


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

    def __init__(self, session: Session, source: str) -> None:
        self.session = session
        self.source = source
        self.vocab: Vocabulary = get_vocab()
        self.errors: list[RowError] = []
        self.result = TraceImportResult()
        self.failed_lots: set[str] = set()  # references of lot rows that failed (not reported again)
        self.failed: dict[str, set[str]] = {s: set() for s in SECTIONS}
        self.seen: dict[str, set[Any]] = {s: set() for s in (*SECTIONS, "codes")}  # keys met in this file
        self.event_keys: dict[tuple[Any, ...], int] = {}  # event key -> its row index in this file
        self.pending_origins: list[tuple[LotRow, Err, Lot, bool]] = []
        self.created_events: dict[int, tuple[int, Err]] = {}  # event id -> (row index, its error reporter)
        self._cache: dict[tuple[str, str], Any] = {}

    # ---- lookups

    def _get(self, table: Any, column: str, key: str) -> Any:
        ck = (table.__name__, f"{column}={key}")
        if ck not in self._cache:
            self._cache[ck] = self.session.exec(select(table).where(getattr(table, column) == key)).first()
        return self._cache[ck]

    def _forget(self, table: Any, column: str, key: str) -> None:
        self._cache.pop((table.__name__, f"{column}={key}"), None)

    def ref(self, table: Any, column: str, key: str | None, err: Err, fld: str, what: str, section: str = "") -> Any:
        if key is None:
            return None
        row = self._get(table, column, key)
        if row is None and not (section and key in self.failed[section]):
            err(fld, f"{what} {key!r} does not exist")
        return row

    def lot(self, reference: str, err: Err, fld: str) -> Lot | None:
        """A lot by "product:lot_no" or by trace code; reports a missing one (unless its row failed)."""
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

    # ---- running a section

    def run(self, section: str, rows: list[_Raw], handler: Callable[[Any, Err, int], bool | None]) -> None:
        """Validate each row and hand it to `handler`; a handler returns False for a row it could not
        stage because something it refers to failed (so references to that row are not reported again)."""
        model = ROW_MODELS[section]
        for i, raw in enumerate(rows):

            def err(fld: str | None, msg: str, raw: _Raw = raw, i: int = i) -> None:
                loc = tuple(_loc_parts(fld)) if fld else ()
                self.errors.append(RowError(self.source, raw.line_of(loc), section, i, fld, msg))

            if not raw.values and not raw.marked:
                continue  # not a mapping: already reported
            try:
                row = model.model_validate(raw.values)
            except ValidationError as e:
                for problem in e.errors():
                    msg = problem["msg"]
                    if problem["type"] != "extra_forbidden" and "input" in problem and problem["loc"]:
                        msg += f" (got {problem['input']!r})"
                    err(_field_name(problem["loc"]), msg)
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
                )
        return same

    # ---- products and facilities

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
            if self._compare(f"product {row.code}", existing.model_dump(), values, err):
                self.result.unchanged["products"] += 1
            return
        owner = self._get(Product, "gtin", gtin) if gtin is not None else None
        if owner is not None:
            err("gtin", f"GTIN {gtin} already belongs to product {owner.code!r}")
            return
        product = Product(code=row.code, **values)
        self.session.add(product)
        self.session.flush()
        self._forget(Product, "code", row.code)
        self.result.created["products"] += 1

    def facilities(self, row: FacilityRow, err: Err, i: int) -> None:
        if row.code in self.seen["facilities"]:
            err("code", f"duplicate facility code {row.code!r}")
            return
        self.seen["facilities"].add(row.code)
        village = self.ref(Village, "code", row.village_code, err, "village_code", "village")
        if village is None:
            return
        values = {"name": row.name, "kind": row.kind, "village_code": row.village_code}
        existing = self._get(Facility, "code", row.code)
        if existing is not None:
            if self._compare(f"facility {row.code}", existing.model_dump(), values, err):
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
            return
        self.seen["lots"].add(key)
        product = self.ref(Product, "code", row.product, err, "product", "product", "products")
        farm = self.ref(Farm, "code", row.farm, err, "farm", "farm")
        facility = self.ref(Facility, "code", row.facility, err, "facility", "facility", "facilities")
        code = None
        if row.code is not None:
            try:
                code = codes.normalize_code(row.code)
            except codes.TraceCodeError as e:
                err("code", str(e))
        if product is None or (row.farm and farm is None) or (row.facility and facility is None):
            return False
        if row.code is not None and code is None:
            return False
        unit_name = row.unit or product.unit
        try:
            unit = self.vocab.unit(unit_name)
        except UnknownTerm as e:
            err("unit", str(e))
            return
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
            return
        if code is not None:
            if code in self.seen["codes"] or self.session.exec(select(Lot).where(Lot.code == code)).first():
                err("code", f"trace code {codes.format_code(code)} is already used by another lot")
                return
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

    def origins(self) -> None:
        """Sources and parents of the lots just read (new lots get them, stored lots must match)."""
        for row, err, lot, new in self.pending_origins:
            before = len(self.errors)
            sources: set[tuple[int | None, int | None, float | None]] = set()
            for j, s in enumerate(row.sources):
                fld = f"sources[{j}]"
                if (s.plot_no is None) == (s.herd_no is None):
                    err(fld, "a source is exactly one plot_no or herd_no")
                    continue
                plot = self.ref(Plot, "plot_no", s.plot_no, err, f"{fld}.plot_no", "plot")
                herd = self.ref(Herd, "herd_no", s.herd_no, err, f"{fld}.herd_no", "herd")
                if plot is None and herd is None:
                    continue
                origin = (plot.id if plot else None, herd.id if herd else None, _round(s.area_mu, 2))
                if any(o[:2] == origin[:2] for o in sources):
                    err(fld, f"duplicate source {s.plot_no or s.herd_no!r}")
                sources.add(origin)
            parents: set[tuple[int, str, float | None]] = set()
            quiet = False  # a parent whose own row failed: reported there, not again
            for j, p in enumerate(row.parents):
                fld = f"parents[{j}].lot"
                errors_before = len(self.errors)
                parent = self.lot(p.lot, err, fld)
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
                parents.add((parent.id, p.relation, _round(p.quantity, decimals)))  # type: ignore[arg-type]
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
                    err("sources", f"lot {row.product}:{row.lot_no} is already recorded with other sources")
                elif stored_parents != parents:
                    err("parents", f"lot {row.product}:{row.lot_no} is already recorded with other parents")
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
                    found = self.lot(reference, err, f"{name}[{j}]")
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
                lot = self.lot(row.lot, err, "lot")
        # where, and who
        rp = row.read_point
        plot = facility = None
        if (rp.plot_no is None) == (rp.facility is None):
            err("read_point", "a read point is exactly one plot_no or facility")
        else:
            plot = self.ref(Plot, "plot_no", rp.plot_no, err, "read_point.plot_no", "plot")
            facility = self.ref(Facility, "code", rp.facility, err, "read_point.facility", "facility", "facilities")
            kind = "plot" if rp.plot_no is not None else "facility"
            if step.read_point not in ("any", kind):
                err("read_point", f"step {step.name} happens at a {step.read_point}, not at a {kind}")
        village = row.biz_location or (plot.village_code if plot else facility.village_code if facility else None)
        if row.biz_location is not None:
            self.ref(Village, "code", row.biz_location, err, "biz_location", "village")
        actor_farm = actor_facility = None
        if row.actor is not None:
            if (row.actor.farm is None) == (row.actor.facility is None):
                err("actor", "an actor is exactly one farm or facility (never a person)")
            actor_farm = self.ref(Farm, "code", row.actor.farm, err, "actor.farm", "farm")
            actor_facility = self.ref(
                Facility, "code", row.actor.facility, err, "actor.facility", "facility", "facilities"
            )
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

    # ---- inspections

    def inspections(self, row: InspectionRow, err: Err, i: int) -> None:
        before = len(self.errors)
        key = (row.lab, row.report_no)
        if key in self.seen["inspections"]:
            err("report_no", f"duplicate report {row.report_no!r} of {row.lab!r}")
            return
        self.seen["inspections"].add(key)
        lot = self.lot(row.lot, err, "lot")
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
                err("items", f"{what} is already recorded with other items; recorded trace data is never rewritten")
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


def _loc_parts(fld: str) -> list[Any]:
    """ "sources[0].plot_no" -> ["sources", 0, "plot_no"]."""
    parts: list[Any] = []
    for piece in fld.split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            parts.append(int(index))
            rest = rest.removeprefix("[")
    return parts


# ---------------------------------------------------------------- entry points


def _import(
    session: Session, sections: dict[str, list[_Raw]], source: str, errors: list[RowError]
) -> TraceImportResult:
    importer = _Importer(session, source)
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
    if importer.errors:
        session.rollback()
        raise ImportErrors(importer.errors)
    log.info("trace import from %s: %s", source, importer.result.summary())
    return importer.result


def import_trace(session: Session, path: Path | str) -> TraceImportResult:
    """Import a trace YAML file. Staged in `session` (the caller commits); on any error the session
    is rolled back and `ImportErrors` lists every problem with its file, line and field."""
    path = Path(path)
    sections, errors = read_trace_yaml(path)
    return _import(session, sections, str(path), errors)


def import_trace_data(
    session: Session, data: dict[str, list[dict[str, Any]]], source: str = "<data>"
) -> TraceImportResult:
    """Import already-parsed sections (as in the YAML file); rows are numbered, not lined."""
    sections: dict[str, list[_Raw]] = {}
    errors: list[RowError] = []
    for name, rows in data.items():
        if name not in SECTIONS:
            errors.append(RowError(source, None, name, None, None, f"unknown section; expected one of {SECTIONS}"))
            continue
        sections[name] = [_Raw(dict(r), dict(r), None) for r in rows]
    return _import(session, sections, source, errors)


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
