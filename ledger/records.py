"""Canonical trace records: the exact bytes a ledger leaf is computed from.

A record is `{"schema": "<kind>/<version>", "content": {...}, "salt": "<32 hex>"}` serialized as
RFC 8785 (JCS) canonical JSON by the `rfc8785` package (DESIGN "Ledger"); its leaf is
`keccak256(keccak256(canonical_bytes(record)))` (ledger/merkle.py). Kinds are looked up in a
registry (`register_kind`), so other modules add theirs ("growth/1", "digest/1", "manifest/1")
without touching this file. This module defines "lot/1", "event/1", "inspection/1" and
"correction/1" (an EPCIS error declaration: an anchored event is corrected, never edited).

Fixed forms, so that the same fact never hashes two ways:
- keys are snake_case; every key of a kind's content is always present (null when unknown);
- lots are named by `ledger.codes.canonical_lot_uri` (GS1 canonical Digital Link for GTIN lots,
  the project identifier base otherwise), never by a deployment's URL; products by their
  Digital Link product URI `https://id.gs1.org/01/{gtin14}` (null without GTIN) and their code;
- steps and dispositions are full URIs (ledger/vocab.py);
- event times are RFC 3339 in the event's own offset ("2026-05-26T08:30:00+08:00"; milliseconds
  only when there are any); dates are YYYY-MM-DD;
- numbers are JSON numbers. Decimals are rounded to their declared precision when they are
  stored (units and attributes in vocab.yaml, inspection values to 6 places), and are written
  here exactly as stored: a stored double always serializes to the same shortest round-trip
  text under JCS (0.1 is "0.1", 5.0 is "5"), so there is no float drift between runs or machines;
- lists whose order carries no meaning (sources, parents, inputs, outputs, items) are sorted;
- plots by plot_no and village code, farms and facilities by their registry codes. Nothing
  personal ever enters a record: no contact names or phones, no farm names, no coordinates.
- database ids, `created_at`/`recorded_at` and the EPCIS `event_id` (derived from the event)
  are not content: a record means the same in any database it is loaded into.

Which records belong to a lot (`records_of_lot`): the lot itself, its events and its inspections,
AND those of all its ancestors through LotParent (recursively). A consumer scanning a bag of
milled rice wants the paddy's field events and inspections too; siblings and descendants are
not included.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson
import rfc8785
import sqlalchemy as sa
from sqlmodel import Session, col, select

from core.models import Farm, Herd, Plot
from ledger.codes import GS1_CANONICAL_BASE, canonical_lot_uri
from ledger.models import (
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
)
from ledger.vocab import get_vocab

LOT = "lot/1"
EVENT = "event/1"
INSPECTION = "inspection/1"
CORRECTION = "correction/1"
CBV_ERROR_REASON = "https://ref.gs1.org/cbv/ER-"
_KIND = re.compile(r"^[a-z][a-z0-9_]*/[1-9][0-9]*$")


class RecordRef(NamedTuple):
    """A record by kind (its schema id, e.g. "lot/1") and the id of the row it is made from.
    A named tuple: hashed in C, which matters when manifests gather a million of them."""

    kind: str
    id: int


class UnknownKind(KeyError):
    """A record kind nobody registered."""


class RecordNotFound(LookupError):
    """The row a record would be made from does not exist."""


Loader = Callable[[Session, int], tuple[dict[str, Any], str]]
"""(session, id) -> (content, salt hex) of one record."""
BulkLoader = Callable[[Session, Sequence[int]], dict[int, tuple[dict[str, Any], str]]]
"""(session, ids) -> {id: (content, salt hex)} for the ids whose row exists: the same records as
`Loader`, in a few queries for many rows (the anchoring worker hashes a million records a pass)."""
Collector = Callable[[Session, list[int]], Iterable[RecordRef]]
"""(session, ids of a lot and its ancestors) -> the records of this kind that belong to that trace."""
ManyCollector = Callable[[Session, Mapping[int, list[int]]], dict[int, set[RecordRef]]]
"""(session, {lot id: its lineage as `lot_lineage` gives it}) -> {lot id: the records `Collector` gives
for that lineage}: the same sets, for many lots at once (lot manifests, ledger/manifest.py)."""

_LOADERS: dict[str, Loader] = {}
_BULK: dict[str, BulkLoader] = {}
_COLLECTORS: dict[str, Collector] = {}
_MANY: dict[str, ManyCollector] = {}


def register_kind(
    kind: str,
    loader: Loader,
    collector: Collector | None = None,
    *,
    bulk: BulkLoader | None = None,
    collect_many: ManyCollector | None = None,
) -> None:
    """Make `record(session, kind, id)` work for `kind` ("name/version"); with `collector`,
    `records_of_lot` also lists this kind's records of a lot (e.g. per-plot growth digests).
    `bulk` and `collect_many` are set-based twins of `loader` and `collector` (tests hold them equal);
    without them `records_many` and `records_of_lots` call the others once per row or lot."""
    if not _KIND.match(kind):
        raise ValueError(f"record kind {kind!r}: expected 'name/version', e.g. 'growth/1'")
    _LOADERS[kind] = loader
    for table, value in ((_BULK, bulk), (_COLLECTORS, collector), (_MANY, collect_many)):
        if value is not None:
            table[kind] = value  # type: ignore[index]
        else:
            table.pop(kind, None)  # type: ignore[attr-defined]


def kinds() -> list[str]:
    """The registered record kinds."""
    return sorted(_LOADERS)


def record(session: Session, kind: str, id: int) -> dict[str, Any]:
    """The record of row `id` of `kind`: {"schema", "content", "salt"}."""
    loader = _LOADERS.get(kind)
    if loader is None:
        raise UnknownKind(f"unknown record kind {kind!r}; registered: {', '.join(kinds())}")
    content, salt = loader(session, id)
    if not re.fullmatch(r"[0-9a-f]{32}", salt):
        raise ValueError(f"{kind} {id}: the salt must be 16 bytes as 32 lower-case hex digits")
    return {"schema": kind, "content": content, "salt": salt}


def records_many(session: Session, kind: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The records of rows `ids` of `kind`, in that order, as `record` makes them: a few queries per
    `BULK_CHUNK` rows where the kind has a bulk loader. A missing row raises RecordNotFound."""
    bulk = _BULK.get(kind)
    if bulk is None:
        return [record(session, kind, i) for i in ids]
    found = bulk(session, ids)
    out = []
    for i in ids:
        if i not in found:
            raise RecordNotFound(f"{kind} {i} does not exist")
        content, salt = found[i]
        if not _SALT.fullmatch(salt):
            raise ValueError(f"{kind} {i}: the salt must be 16 bytes as 32 lower-case hex digits")
        out.append({"schema": kind, "content": content, "salt": salt})
    return out


def canonical_bytes(rec: dict[str, Any]) -> bytes:
    """RFC 8785 (JCS) canonical JSON of a record: the bytes its leaf is computed from.

    Exactly `rfc8785.dumps(rec)`, ten times faster: orjson writes what JCS and orjson write alike
    (sorted keys below U+E000, strings, integers within ±(2**53 - 1), finite non-integral numbers
    from 1e-4 to 1e16, whose shortest round-trip form both print in plain decimals), after
    integral numbers become integers ("5", not "5.0"). Anything else (another number, key or
    type, a lone surrogate) goes to `rfc8785` itself, which also raises its errors.
    tests/test_trace_domain.py holds the two equal on generated JSON and on every record."""
    try:
        return orjson.dumps(_jcs_dict(rec), option=orjson.OPT_SORT_KEYS)
    except (_NotPlain, TypeError):  # orjson.JSONEncodeError is a TypeError
        return rfc8785.dumps(rec)


class _NotPlain(Exception):
    """A value the orjson path of `canonical_bytes` does not provably write as JCS does."""


_SAFE_INT = 2**53 - 1
_SALT = re.compile(r"[0-9a-f]{32}")


def _jcs_float(v: float) -> float | int:
    if v.is_integer():
        if -_SAFE_INT <= v <= _SAFE_INT:
            return int(v)  # -0.0 too: JCS writes "0"
    elif 1e-4 <= abs(v) < 1e16:
        return v
    raise _NotPlain


def _jcs_list(items: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    """`items`, or a copy with its numbers in JCS form; raises _NotPlain (see `canonical_bytes`)."""
    if set(map(type, items)) <= _STRINGS:  # a manifest's leaves
        return items
    out: list[Any] | None = None
    for k, x in enumerate(items):
        y = _jcs_value(x)
        if y is not x:
            if out is None:
                out = list(items)
            out[k] = y
    return items if out is None else out


def _jcs_dict(d: dict[str, Any]) -> dict[str, Any]:
    """`d`, or a copy with its numbers in JCS form; raises _NotPlain (see `canonical_bytes`)."""
    keys = "".join(d)  # TypeError for a key that is not a string
    if not keys.isascii() and max(keys) >= "\ue000":  # where UTF-16 order differs from code points
        raise _NotPlain
    out: dict[str, Any] | None = None
    for k, x in d.items():
        t = type(x)
        if t is str or x is None or t is bool:  # most values: no call
            continue
        if t is int and -_SAFE_INT <= x <= _SAFE_INT:
            continue
        y = _jcs_value(x)
        if y is not x:
            if out is None:
                out = dict(d)
            out[k] = y
    return d if out is None else out


def _jcs_value(x: Any) -> Any:
    t = type(x)
    if t is str or x is None or t is bool:
        return x
    if t is int:
        if -_SAFE_INT <= x <= _SAFE_INT:
            return x
        raise _NotPlain
    if t is float:
        return _jcs_float(x)
    if t is dict:
        return _jcs_dict(x)
    if t is list or t is tuple:
        return _jcs_list(x)
    raise _NotPlain


_STRINGS = {str}


# ---------------------------------------------------------------- fixed forms


def rfc3339(utc: datetime, offset: str) -> str:
    """An instant in the given "+hh:mm" offset; milliseconds only when there are any."""
    local = utc.astimezone(_zone(offset))
    return local.isoformat(timespec="milliseconds" if local.microsecond else "seconds")


@lru_cache(maxsize=64)
def _zone(offset: str) -> timezone:
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))


def product_uri(gtin: str | None) -> str | None:
    """The Digital Link URI of a product (no lot), or None without a GTIN."""
    return f"{GS1_CANONICAL_BASE}/01/{gtin}" if gtin else None


def _lot_or_missing(session: Session, lot_id: int) -> Lot:
    lot = session.get(Lot, lot_id)
    if lot is None:
        raise RecordNotFound(f"lot {lot_id} does not exist")
    return lot


def _lot_uri(session: Session, lot_id: int | None) -> str | None:
    return None if lot_id is None else canonical_lot_uri(_lot_or_missing(session, lot_id))


def _place(session: Session, plot_id: int | None, facility_id: int | None) -> dict[str, str]:
    if plot_id is not None:
        plot = session.get(Plot, plot_id)
        assert plot is not None
        return {"plot": plot.plot_no, "village": plot.village_code}
    facility = session.get(Facility, facility_id)
    assert facility is not None
    return {"facility": facility.code, "village": facility.village_code}


def _code_of(session: Session, table: type[Farm] | type[Facility], id: int | None) -> str | None:
    if id is None:
        return None
    row = session.get(table, id)
    assert row is not None
    return row.code


def _sorted(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda d: rfc8785.dumps(d))


# ---------------------------------------------------------------- the three kinds


def lot_content(session: Session, lot_id: int) -> tuple[dict[str, Any], str]:
    lot = _lot_or_missing(session, lot_id)
    product = lot.product
    assert product is not None
    sources = []
    for s in session.exec(select(LotSource).where(LotSource.lot_id == lot_id)):
        if s.plot_id is not None:
            plot = session.get(Plot, s.plot_id)
            assert plot is not None
            origin = {"plot": plot.plot_no, "village": plot.village_code}
        else:
            herd = session.get(Herd, s.herd_id)
            assert herd is not None
            origin = {"herd": herd.herd_no, "village": herd.village_code}
        sources.append({**origin, "area_mu": s.area_mu})
    parents = [
        {"lot": _lot_uri(session, p.parent_lot_id), "relation": p.relation, "quantity": p.quantity}
        for p in session.exec(select(LotParent).where(LotParent.child_lot_id == lot_id))
    ]
    content = {
        "lot": canonical_lot_uri(lot),
        "code": lot.code,
        "lot_no": lot.lot_no,
        "product": {
            "uri": product_uri(product.gtin),
            "code": product.code,
            "gtin": product.gtin,
            "name_zh": product.name_zh,
            "name_en": product.name_en,
            "variety": product.variety,
        },
        "quantity": lot.quantity,
        "unit": lot.unit,
        "harvest_year": lot.harvest_year,
        "farm": _code_of(session, Farm, lot.farm_id),
        "facility": _code_of(session, Facility, lot.facility_id),
        "sources": _sorted(sources),
        "parents": _sorted(parents),
    }
    return content, lot.salt


def event_lots(session: Session, event_id: int) -> tuple[list[int], list[int]]:
    """(input lot ids, output lot ids) of a transformation event, sorted."""
    rows = session.exec(select(TraceEventLot).where(TraceEventLot.trace_event_id == event_id)).all()
    return (
        sorted(r.lot_id for r in rows if r.role == "input"),
        sorted(r.lot_id for r in rows if r.role == "output"),
    )


def event_content(session: Session, event_id: int) -> tuple[dict[str, Any], str]:
    ev = session.get(TraceEvent, event_id)
    if ev is None:
        raise RecordNotFound(f"trace event {event_id} does not exist")
    inputs, outputs = event_lots(session, event_id)
    content = {
        "event_type": ev.event_type,
        "action": ev.action,
        "biz_step": ev.biz_step,
        "disposition": ev.disposition,
        "event_time": rfc3339(ev.event_time, ev.event_time_zone_offset),
        "event_time_zone_offset": ev.event_time_zone_offset,
        "lot": _lot_uri(session, ev.lot_id),
        "inputs": sorted(_lot_uri(session, i) or "" for i in inputs),
        "outputs": sorted(_lot_uri(session, o) or "" for o in outputs),
        "parent": ev.parent_uri,
        "read_point": _place(session, ev.read_point_plot_id, ev.read_point_facility_id),
        "biz_location": ev.biz_location,
        "attributes": dict(ev.attributes),
        "actor": (
            {"farm": _code_of(session, Farm, ev.actor_farm_id)}
            if ev.actor_farm_id is not None
            else {"facility": _code_of(session, Facility, ev.actor_facility_id)}
        ),
    }
    return content, ev.salt


def inspection_content(session: Session, inspection_id: int) -> tuple[dict[str, Any], str]:
    insp = session.get(Inspection, inspection_id)
    if insp is None:
        raise RecordNotFound(f"inspection {inspection_id} does not exist")
    items = session.exec(select(InspectionItem).where(InspectionItem.inspection_id == inspection_id)).all()
    content = {
        "lot": _lot_uri(session, insp.lot_id),
        "lab": insp.lab,
        "report_no": insp.report_no,
        "sampled_on": insp.sampled_on.isoformat(),
        "reported_on": insp.reported_on.isoformat() if insp.reported_on else None,
        "certificate_sha256": insp.certificate_sha256,
        "passed": insp.passed,
        "items": [
            {
                "item": i.item,
                "value": i.value,
                "unit": i.unit,
                "limit_value": i.limit_value,
                "limit_kind": i.limit_kind,
                "method": i.method,
                "passed": i.passed,
            }
            for i in sorted(items, key=lambda i: i.item)
        ],
    }
    return content, insp.salt


def correction_content(session: Session, correction_id: int) -> tuple[dict[str, Any], str]:
    """An EPCIS error declaration: which event (by its EPCIS event ID), when, why, and what replaces it."""
    c = session.get(EventCorrection, correction_id)
    if c is None:
        raise RecordNotFound(f"event correction {correction_id} does not exist")
    wrong = session.get(TraceEvent, c.event_id)
    corrective = session.get(TraceEvent, c.corrective_event_id) if c.corrective_event_id is not None else None
    assert wrong is not None and wrong.event_id is not None
    content = {
        "event": wrong.event_id,
        "declaration_time": rfc3339(c.declared_at, c.declared_at_offset),
        "reason": CBV_ERROR_REASON + c.reason,
        "corrective_events": [corrective.event_id] if corrective is not None and corrective.event_id else [],
    }
    return content, c.salt


# ---------------------------------------------------------------- the same records, many at a time

BULK_CHUNK = 5000  # ids per IN (...) list: well under SQLite's 32,766 bound parameters


def chunks(ids: Sequence[int], size: int = BULK_CHUNK) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def rows_where_in(session: Session, columns: Sequence[Any], key: Any, ids: Iterable[Any], *where: Any) -> list[Any]:
    """Rows (named tuples) of `columns` (columns or whole tables, which include `key`) where `key` is
    one of `ids` and the conditions `where` hold: the values the ORM would give, at a fraction of its
    cost. Integer ids come in runs (records are made in order): a run is one `BETWEEN` and its rows
    are filtered here, since SQLAlchemy spends ~3 µs on each bound parameter of an `IN` list; and
    values are read raw and converted here (`_reader`), since SQLAlchemy's result processing of a
    row of a trace event (two TypeDecorators, JSON) costs ~25 µs, six times the database's work."""
    wanted = sorted(set(ids))
    cols = [c for x in columns for c in (x.c if isinstance(x, sa.Table) else [x])]
    position = next((i for i, c in enumerate(cols) if c is key or (c.key == key.key and c.table is key.table)), None)
    if position is None:
        raise ValueError(f"rows_where_in: {key} must be one of the selected columns")
    make = _reader(session, tuple(cols))
    q = sa.select(*(sa.type_coerce(c, sa.types.NullType()).label(c.key) for c in cols))
    out: list[Any] = []
    loose: list[Any] = []
    runs = _runs(wanted) if wanted and type(wanted[0]) is int else [wanted]  # other keys: IN lists only
    for run in runs:
        if len(run) < _RUN or type(run[0]) is not int:
            loose += run
            continue
        members = set(run)
        rows = raw_rows(session, q.where(key.between(run[0], run[-1]), *where))
        out += [make(r) for r in rows if r[position] in members]
    for part in chunks(loose):
        out += [make(r) for r in raw_rows(session, q.where(key.in_(part), *where))]
    return out


def raw_rows(session: Session, query: Any) -> list[tuple[Any, ...]]:
    """The rows of `query` as the driver gives them (tuples): its columns carry no types, so
    SQLAlchemy would hand the same values on, only wrapped in a Row each (~1 µs a row)."""
    result = session.connection().execute(query)
    try:
        return result.cursor.fetchall()  # type: ignore[no-any-return]
    finally:
        result.close()


def _reader(session: Session, columns: tuple[Any, ...]) -> Callable[[Any], Any]:
    """Raw row -> named tuple of the values SQLAlchemy's result processing gives (tests compare)."""
    dialect = session.get_bind().dialect.name
    cache_key = (dialect, tuple(map(id, columns)))  # columns of module-level tables: ids are stable
    if cache_key not in _READERS:
        _READERS[cache_key] = _reader_for(dialect, columns)
    return _READERS[cache_key]


_READERS: dict[tuple[str, tuple[int, ...]], Callable[[Any], Any]] = {}


def _python_type(t: Any) -> type | None:
    if isinstance(t, sa.types.TypeDecorator):
        t = t.impl_instance
    try:
        return t.python_type  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def _reader_for(dialect: str, columns: tuple[Any, ...]) -> Callable[[Any], Any]:
    import collections

    sqlite = dialect == "sqlite"
    converters: list[tuple[int, Callable[[Any], Any]]] = []
    for i, c in enumerate(columns):
        t = c.type
        kind = _python_type(t)
        if kind is datetime:
            if isinstance(t, sa.types.TypeDecorator) and type(t).__name__ == "UTCDateTime":
                converters.append((i, _utc_sqlite if sqlite else _utc))
            elif sqlite:
                converters.append((i, datetime.fromisoformat))
        elif kind is date and sqlite:
            converters.append((i, date.fromisoformat))
        elif kind is bool and sqlite:
            converters.append((i, bool))
        elif isinstance(t, sa.JSON) and sqlite:
            converters.append((i, _json_loads))
    shape = collections.namedtuple("Row", [c.key for c in columns], rename=True)  # type: ignore[misc]
    if not converters:
        return shape._make

    def make(row: Any) -> Any:
        values = list(row)
        for i, convert in converters:
            if values[i] is not None:
                values[i] = convert(values[i])
        return shape._make(values)

    return make


def _json_loads(text: str | bytes) -> Any:
    """`json.loads` (SQLAlchemy's JSON result processing on SQLite), through orjson where it can:
    both give the same values for standard JSON (orjson refuses NaN, Infinity and integers beyond
    64 bits, which `json` then reads)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _utc_sqlite(text: str) -> datetime:
    return _utc(datetime.fromisoformat(text))


def _utc(value: datetime) -> datetime:
    """sqlmodel's UTCDateTime.process_result_value."""
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


_RUN = 32  # ids worth a BETWEEN
_GAP = 16  # the largest gap between two ids of one run


def _runs(ordered: list[int]) -> Iterable[list[int]]:
    """`ordered` cut where two ids are more than `_GAP` apart."""
    start = 0
    for k in range(1, len(ordered)):
        if ordered[k] - ordered[k - 1] > _GAP:
            yield ordered[start:k]
            start = k
    yield ordered[start:]


class _Refs:
    """What records say about the rows they name (lot URIs, plot and facility places, farm codes),
    loaded per batch of records with one query per table."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.lot_uri: dict[int, str] = {}
        self.plot: dict[int, Any] = {}
        self.herd: dict[int, Any] = {}
        self.farm: dict[int, str] = {}
        self.facility: dict[int, Any] = {}

    def load(
        self,
        lots: Iterable[int | None] = (),
        plots: Iterable[int | None] = (),
        herds: Iterable[int | None] = (),
        farms: Iterable[int | None] = (),
        facilities: Iterable[int | None] = (),
    ) -> None:
        lot, product = Lot.__table__.c, Product.__table__.c  # type: ignore[attr-defined]
        need = {i for i in lots if i is not None and i not in self.lot_uri}
        if need:
            cols = (lot.id, lot.lot_no, lot.code, product.gtin)
            q = sa.select(*cols).join_from(Lot.__table__, Product.__table__, lot.product_id == product.id)  # type: ignore[attr-defined]
            for part in chunks(sorted(need)):
                for r in self.session.execute(q.where(lot.id.in_(part))):
                    view = SimpleNamespace(lot_no=r.lot_no, code=r.code, product=SimpleNamespace(gtin=r.gtin))
                    self.lot_uri[r.id] = canonical_lot_uri(view)  # type: ignore[arg-type]
        for ids, table, cols, into in (
            (plots, Plot, ("id", "plot_no", "village_code"), self.plot),
            (herds, Herd, ("id", "herd_no", "village_code"), self.herd),
            (facilities, Facility, ("id", "code", "village_code"), self.facility),
        ):
            c = table.__table__.c  # type: ignore[attr-defined]
            missing = {i for i in ids if i is not None and i not in into}
            into.update({r.id: r for r in rows_where_in(self.session, [c[n] for n in cols], c.id, missing)})
        c = Farm.__table__.c  # type: ignore[attr-defined]
        missing = {i for i in farms if i is not None and i not in self.farm}
        self.farm.update(dict(rows_where_in(self.session, [c.id, c.code], c.id, missing)))  # type: ignore[arg-type]

    def uri(self, lot_id: int | None) -> str | None:
        if lot_id is None:
            return None
        if lot_id not in self.lot_uri:
            raise RecordNotFound(f"lot {lot_id} does not exist")
        return self.lot_uri[lot_id]

    def place(self, plot_id: int | None, facility_id: int | None) -> dict[str, str]:
        if plot_id is not None:
            p = self.plot[plot_id]
            return {"plot": p.plot_no, "village": p.village_code}
        f = self.facility[facility_id]  # type: ignore[index]
        return {"facility": f.code, "village": f.village_code}

    def facility_code(self, facility_id: int | None) -> str | None:
        return None if facility_id is None else self.facility[facility_id].code


def _columns(table: Any, *leave_out: str) -> list[Any]:
    """A table's columns but those no record contains (each costs result processing a row)."""
    return [c for c in table.c if c.key not in leave_out]


def _grouped(rows: Iterable[Any], key: str) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        out[getattr(r, key)].append(r)
    return out


def lots_content(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    """`lot_content` of many lots."""
    lot_t, src_t, par_t = Lot.__table__, LotSource.__table__, LotParent.__table__  # type: ignore[attr-defined]
    lots = rows_where_in(session, _columns(lot_t, "created_at"), lot_t.c.id, ids)
    sources = _grouped(rows_where_in(session, [src_t], src_t.c.lot_id, ids), "lot_id")
    parents = _grouped(rows_where_in(session, [par_t], par_t.c.child_lot_id, ids), "child_lot_id")
    products = {
        r.id: r
        for r in rows_where_in(session, [Product.__table__], Product.__table__.c.id, {r.product_id for r in lots})
    }  # type: ignore[attr-defined]
    refs = _Refs(session)
    refs.load(
        lots=[*ids, *(p.parent_lot_id for ps in parents.values() for p in ps)],
        plots=[x.plot_id for xs in sources.values() for x in xs],
        herds=[x.herd_id for xs in sources.values() for x in xs],
        farms=[r.farm_id for r in lots],
        facilities=[r.facility_id for r in lots],
    )
    out = {}
    for lot in lots:
        product = products[lot.product_id]
        origins = []
        for x in sources.get(lot.id, []):
            if x.plot_id is not None:
                p = refs.plot[x.plot_id]
                origin = {"plot": p.plot_no, "village": p.village_code}
            else:
                h = refs.herd[x.herd_id]
                origin = {"herd": h.herd_no, "village": h.village_code}
            origins.append({**origin, "area_mu": x.area_mu})
        content = {
            "lot": refs.uri(lot.id),
            "code": lot.code,
            "lot_no": lot.lot_no,
            "product": {
                "uri": product_uri(product.gtin),
                "code": product.code,
                "gtin": product.gtin,
                "name_zh": product.name_zh,
                "name_en": product.name_en,
                "variety": product.variety,
            },
            "quantity": lot.quantity,
            "unit": lot.unit,
            "harvest_year": lot.harvest_year,
            "farm": None if lot.farm_id is None else refs.farm[lot.farm_id],
            "facility": refs.facility_code(lot.facility_id),
            "sources": _sorted(origins),
            "parents": _sorted(
                {"lot": refs.uri(p.parent_lot_id), "relation": p.relation, "quantity": p.quantity}
                for p in parents.get(lot.id, [])
            ),
        }
        out[lot.id] = (content, lot.salt)
    return out


def events_content(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    """`event_content` of many events."""
    ev_t, link_t = TraceEvent.__table__, TraceEventLot.__table__  # type: ignore[attr-defined]
    events = rows_where_in(session, _columns(ev_t, "event_id", "recorded_at"), ev_t.c.id, ids)
    links = _grouped(rows_where_in(session, [link_t], link_t.c.trace_event_id, ids), "trace_event_id")
    refs = _Refs(session)
    refs.load(
        lots=[*(e.lot_id for e in events), *(x.lot_id for xs in links.values() for x in xs)],
        plots=[e.read_point_plot_id for e in events],
        farms=[e.actor_farm_id for e in events],
        facilities=[*(e.read_point_facility_id for e in events), *(e.actor_facility_id for e in events)],
    )
    out = {}
    for ev in events:
        lots = links.get(ev.id, [])
        content = {
            "event_type": ev.event_type,
            "action": ev.action,
            "biz_step": ev.biz_step,
            "disposition": ev.disposition,
            "event_time": rfc3339(ev.event_time, ev.event_time_zone_offset),
            "event_time_zone_offset": ev.event_time_zone_offset,
            "lot": refs.uri(ev.lot_id),
            "inputs": sorted(refs.uri(x.lot_id) or "" for x in lots if x.role == "input"),
            "outputs": sorted(refs.uri(x.lot_id) or "" for x in lots if x.role == "output"),
            "parent": ev.parent_uri,
            "read_point": refs.place(ev.read_point_plot_id, ev.read_point_facility_id),
            "biz_location": ev.biz_location,
            "attributes": dict(ev.attributes),
            "actor": (
                {"farm": refs.farm[ev.actor_farm_id]}
                if ev.actor_farm_id is not None
                else {"facility": refs.facility_code(ev.actor_facility_id)}
            ),
        }
        out[ev.id] = (content, ev.salt)
    return out


def inspections_content(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    """`inspection_content` of many inspections."""
    insp_t, item_t = Inspection.__table__, InspectionItem.__table__  # type: ignore[attr-defined]
    rows = rows_where_in(session, _columns(insp_t, "recorded_at"), insp_t.c.id, ids)
    items = _grouped(rows_where_in(session, [item_t], item_t.c.inspection_id, ids), "inspection_id")
    refs = _Refs(session)
    refs.load(lots=[r.lot_id for r in rows])
    out = {}
    for insp in rows:
        content = {
            "lot": refs.uri(insp.lot_id),
            "lab": insp.lab,
            "report_no": insp.report_no,
            "sampled_on": insp.sampled_on.isoformat(),
            "reported_on": insp.reported_on.isoformat() if insp.reported_on else None,
            "certificate_sha256": insp.certificate_sha256,
            "passed": insp.passed,
            "items": [
                {
                    "item": i.item,
                    "value": i.value,
                    "unit": i.unit,
                    "limit_value": i.limit_value,
                    "limit_kind": i.limit_kind,
                    "method": i.method,
                    "passed": i.passed,
                }
                for i in sorted(items.get(insp.id, []), key=lambda i: i.item)
            ],
        }
        out[insp.id] = (content, insp.salt)
    return out


def corrections_content(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    """`correction_content` of many error declarations."""
    cor_t, ev_t = EventCorrection.__table__, TraceEvent.__table__  # type: ignore[attr-defined]
    rows = rows_where_in(session, _columns(cor_t, "recorded_at"), cor_t.c.id, ids)
    named = {r.event_id for r in rows} | {r.corrective_event_id for r in rows if r.corrective_event_id is not None}
    event_ids = dict(rows_where_in(session, [ev_t.c.id, ev_t.c.event_id], ev_t.c.id, named))  # type: ignore[arg-type]
    out = {}
    for c in rows:
        wrong = event_ids.get(c.event_id)
        assert wrong is not None
        corrective = event_ids.get(c.corrective_event_id) if c.corrective_event_id is not None else None
        content = {
            "event": wrong,
            "declaration_time": rfc3339(c.declared_at, c.declared_at_offset),
            "reason": CBV_ERROR_REASON + c.reason,
            "corrective_events": [corrective] if corrective else [],
        }
        out[c.id] = (content, c.salt)
    return out


# ---------------------------------------------------------------- the records of a lot


def lot_lineage(session: Session, lot_id: int) -> list[int]:
    """The lot and all its ancestors (through LotParent), the lot first, then ancestors by id."""
    _lot_or_missing(session, lot_id)
    seen = {lot_id}
    frontier = [lot_id]
    while frontier:
        parents = session.exec(select(LotParent.parent_lot_id).where(col(LotParent.child_lot_id).in_(frontier))).all()
        frontier = [p for p in set(parents) if p not in seen]
        seen.update(frontier)
    return [lot_id, *sorted(seen - {lot_id})]


def _events_of(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    direct = select(TraceEvent.id).where(col(TraceEvent.lot_id).in_(lot_ids))
    linked = select(TraceEventLot.trace_event_id).where(col(TraceEventLot.lot_id).in_(lot_ids))
    ids = set(session.exec(direct).all()) | set(session.exec(linked).all())
    events = session.exec(select(TraceEvent).where(col(TraceEvent.id).in_(ids))).all()
    return [RecordRef(EVENT, e.id) for e in sorted(events, key=lambda e: (e.event_time, e.id)) if e.id]


def _inspections_of(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    rows = session.exec(select(Inspection).where(col(Inspection.lot_id).in_(lot_ids))).all()
    return [RecordRef(INSPECTION, i.id) for i in sorted(rows, key=lambda i: (i.sampled_on, i.id)) if i.id]


def _corrections_of(session: Session, events: list[RecordRef]) -> list[RecordRef]:
    ids = [e.id for e in events]
    rows = session.exec(select(EventCorrection.id).where(col(EventCorrection.event_id).in_(ids))).all()
    return [RecordRef(CORRECTION, i) for i in sorted(rows) if i is not None]


def records_of_lot(session: Session, lot_id: int) -> list[RecordRef]:
    """Every record of a lot's trace: the lot and its ancestors (lot first), then their events in
    time order, then their inspections by sampling date, then the error declarations of those
    events, then records of registered collectors (by id where the kind has `collect_many`, which
    takes a few queries whatever the lineage, where its collector may take some per lot and origin)."""
    lineage = lot_lineage(session, lot_id)
    refs = [RecordRef(LOT, i) for i in lineage]
    events = _events_of(session, lineage)
    refs += events
    refs += _inspections_of(session, lineage)
    refs += _corrections_of(session, events)
    for kind, collect in _COLLECTORS.items():
        if kind in (LOT, EVENT, INSPECTION, CORRECTION):
            continue
        many = _MANY.get(kind)
        if many is not None:
            refs += sorted(many(session, {lot_id: lineage}).get(lot_id, set()), key=lambda r: r.id)
        else:
            refs += list(collect(session, lineage))
    return refs


def lot_lineages(session: Session, lot_ids: Iterable[int]) -> dict[int, list[int]]:
    """`lot_lineage` of many lots (lots that do not exist are left out)."""
    lp = LotParent.__table__.c  # type: ignore[attr-defined]
    wanted = set(lot_ids)
    existing = {r[0] for r in rows_where_in(session, [Lot.__table__.c.id], Lot.__table__.c.id, wanted)}  # type: ignore[attr-defined]
    parents: dict[int, set[int]] = defaultdict(set)
    seen, frontier = set(existing), set(existing)
    while frontier:
        edges = rows_where_in(session, [lp.child_lot_id, lp.parent_lot_id], lp.child_lot_id, frontier)
        for child, parent in edges:
            parents[child].add(parent)
        frontier = {parent for _, parent in edges} - seen
        seen |= frontier
    ancestors: dict[int, frozenset[int]] = {}

    def up(lot: int) -> frozenset[int]:  # iterative: lineages can be deep
        stack = [lot]
        while stack:
            top = stack[-1]
            todo = [p for p in parents.get(top, ()) if p not in ancestors]
            if todo:
                stack += todo
                continue
            stack.pop()
            acc: set[int] = set()
            for p in parents.get(top, ()):
                acc.add(p)
                acc |= ancestors[p]
            ancestors[top] = frozenset(acc)
        return ancestors[lot]

    return {lot: [lot, *sorted(up(lot) - {lot})] for lot in existing}


def records_of_lots(session: Session, lot_ids: Iterable[int], exclude: Iterable[str] = ()) -> dict[int, set[RecordRef]]:
    """The set of `records_of_lot` of many lots, without the kinds in `exclude`, in a few queries per
    table (collectors without `collect_many` are called once per lot)."""
    skip = set(exclude)
    lineages = lot_lineages(session, lot_ids)
    every = {lot for lineage in lineages.values() for lot in lineage}
    ev, link = TraceEvent.__table__.c, TraceEventLot.__table__.c  # type: ignore[attr-defined]
    insp, cor = Inspection.__table__.c, EventCorrection.__table__.c  # type: ignore[attr-defined]
    events: dict[int, set[int]] = defaultdict(set)
    for event_id, lot in [
        *rows_where_in(session, [ev.id, ev.lot_id], ev.lot_id, every),
        *rows_where_in(session, [link.trace_event_id, link.lot_id], link.lot_id, every),
    ]:
        events[lot].add(event_id)
    inspections: dict[int, set[int]] = defaultdict(set)
    for inspection_id, lot in rows_where_in(session, [insp.id, insp.lot_id], insp.lot_id, every):
        inspections[lot].add(inspection_id)
    corrections: dict[int, set[int]] = defaultdict(set)
    all_events = {e for es in events.values() for e in es}
    for correction_id, event_id in rows_where_in(session, [cor.id, cor.event_id], cor.event_id, all_events):
        corrections[event_id].add(correction_id)
    own: dict[int, set[RecordRef]] = {}  # each lot's own records: a lineage's are the union of its lots'
    for member in every:
        mine = events.get(member, ())
        refs: set[RecordRef] = set()
        for kind, ids in (
            (LOT, (member,)),
            (EVENT, mine),
            (INSPECTION, inspections.get(member, ())),
            (CORRECTION, [c for e in mine for c in corrections.get(e, ())]),
        ):
            if kind not in skip:
                refs.update(RecordRef(kind, i) for i in ids)
        own[member] = refs
    out = {lot: set().union(*(own[m] for m in lineage)) for lot, lineage in lineages.items()}
    for kind, collect in _COLLECTORS.items():
        if kind in (LOT, EVENT, INSPECTION, CORRECTION) or kind in skip:
            continue
        many = _MANY.get(kind)
        if many is not None:
            found = many(session, lineages)
            for lot in out:
                out[lot] |= found.get(lot, set())
        else:
            for lot, lineage in lineages.items():
                out[lot].update(collect(session, lineage))
    return out


register_kind(LOT, lot_content, bulk=lots_content)
register_kind(EVENT, event_content, bulk=events_content)
register_kind(INSPECTION, inspection_content, bulk=inspections_content)
register_kind(CORRECTION, correction_content, bulk=corrections_content)


# ---------------------------------------------------------------- EPCIS view of an event


def id_iri(kind: str, key: str) -> str:
    """The project IRI of a plot, facility, village or farm (used as EPCIS read point and location)."""
    return f"{get_vocab().id_base}/{kind}/{quote(key, safe='')}"


def epcis_event(session: Session, event_id: int) -> dict[str, Any]:
    """A plain EPCIS 2.0 JSON-LD event (no @context, no eventID) for ledger.epcis.

    Lots are class-level identifiers in quantity lists (epcClass = canonical lot URI, uom from
    vocab units; no uom for counted items). Step attributes and the actor are extension fields
    in the project namespace, written with its prefix (vt:dose), which documents declare in
    their @context.
    """
    vocab = get_vocab()
    ev = session.get(TraceEvent, event_id)
    if ev is None:
        raise RecordNotFound(f"trace event {event_id} does not exist")

    def quantity(lot_id: int, amount: float | None = None) -> dict[str, Any]:
        lot = _lot_or_missing(session, lot_id)
        element: dict[str, Any] = {"epcClass": canonical_lot_uri(lot)}
        amount = lot.quantity if amount is None else amount
        if amount is not None:
            unit = vocab.units.get(lot.unit)
            element["quantity"] = round(amount, unit.decimals) + 0.0 if unit else amount
            if unit is not None and unit.uom:
                element["uom"] = unit.uom
        return element

    out: dict[str, Any] = {
        "type": ev.event_type,
        "eventTime": rfc3339(ev.event_time, ev.event_time_zone_offset),
        "eventTimeZoneOffset": ev.event_time_zone_offset,
    }
    if ev.event_type == "TransformationEvent":
        inputs, outputs = event_lots(session, event_id)
        # what each input gave to the outputs: the sum over its LotParent rows, when all are known
        used: dict[int, float | None] = {}
        for p in session.exec(select(LotParent).where(col(LotParent.child_lot_id).in_(outputs))):
            before = used.get(p.parent_lot_id, 0.0)
            used[p.parent_lot_id] = None if before is None or p.quantity is None else before + p.quantity
        if inputs:
            out["inputQuantityList"] = [quantity(i, used.get(i)) for i in inputs]
        if outputs:
            out["outputQuantityList"] = [quantity(o) for o in outputs]
    else:
        out["action"] = ev.action
        if ev.event_type == "AggregationEvent":
            if ev.parent_uri:
                out["parentID"] = ev.parent_uri
            if ev.lot_id is not None:
                out["childQuantityList"] = [quantity(ev.lot_id)]
        elif ev.lot_id is not None:
            out["quantityList"] = [quantity(ev.lot_id)]
    out["bizStep"] = ev.biz_step
    if ev.disposition:
        out["disposition"] = ev.disposition
    place = _place(session, ev.read_point_plot_id, ev.read_point_facility_id)
    out["readPoint"] = {
        "id": id_iri("plot", place["plot"]) if "plot" in place else id_iri("facility", place["facility"])
    }
    out["bizLocation"] = {"id": id_iri("village", ev.biz_location)}
    for name, value in ev.attributes.items():
        out[f"{vocab.prefix}:{name}"] = value
    if ev.actor_farm_id is not None:
        out[f"{vocab.prefix}:actor"] = id_iri("farm", _code_of(session, Farm, ev.actor_farm_id) or "")
    else:
        out[f"{vocab.prefix}:actor"] = id_iri("facility", _code_of(session, Facility, ev.actor_facility_id) or "")
    correction = session.exec(select(EventCorrection).where(EventCorrection.event_id == event_id)).first()
    if correction is not None:  # not part of the event hash (GS1 excludes errorDeclaration)
        corrective = session.get(TraceEvent, correction.corrective_event_id) if correction.corrective_event_id else None
        out["errorDeclaration"] = {
            "declarationTime": rfc3339(correction.declared_at, correction.declared_at_offset),
            "reason": correction.reason,
            **({"correctiveEventIDs": [corrective.event_id]} if corrective and corrective.event_id else {}),
        }
    return out
