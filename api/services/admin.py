"""What the admin routers share: pagination, writes through the importers as the acting user, and
the answers to rejected writes.

Every write goes through the same validating importer as the files (core.registry_io for the
registry, ledger.trace_io for trace data) with the caller's scope (core/scope.py), so the API and
the files accept exactly the same data and every reference is checked against the caller's area.
A rejected write answers with a problem listing every field at fault: 403 when a reference is
outside the caller's area, 409 when a recorded fact would be rewritten, 422 when the data is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query, Request
from sqlalchemy import func
from sqlmodel import Session, col, select

from api.deps import Actor
from api.models import READ_ONLY
from api.problems import Problem, problem_responses
from api.schemas import Page
from core.importing import ImportErrors
from core.models import Farm
from core.registry_io import import_data
from ledger import trace_io
from ledger.codes import TraceCodeError, normalize_code
from ledger.models import Facility, Lot, Product

__all__ = [
    "READ",
    "WRITE",
    "Limit",
    "Offset",
    "VillageQ",
    "import_problem",
    "lot_by_code",
    "lot_by_ref",
    "lots_in",
    "merged",
    "not_found",
    "page",
    "registry_write",
    "require_owner",
    "require_writer",
    "trace_write",
    "village_filter",
]

T = TypeVar("T")
READ = problem_responses(401, 403, 404, 422)
WRITE = problem_responses(401, 403, 404, 409, 422)

Limit = Annotated[int, Query(ge=1, le=500, description="Items per page")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip")]
VillageQ = Annotated[str | None, Query(pattern=r"^\d{12}$", description="Only rows of this village")]
# a row's number in a path: a database integer (a larger one is a 422, not an overflow in the driver)
RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The row's number")]

_STATUS = {"forbidden": (403, "outside-scope"), "conflict": (409, "conflict"), "invalid": (422, "validation")}


def page(
    session: Session,
    stmt: Any,
    limit: int,
    offset: int,
    convert: Callable[[Any], T] | None = None,
    convert_all: Callable[[Sequence[Any]], list[T]] | None = None,
) -> Page[T]:
    """One page of `stmt` (total counted without its ordering), each row through `convert`, or the
    whole page through `convert_all` (which loads what the rows refer to in a few queries)."""
    total = session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one()
    rows = session.exec(stmt.limit(limit).offset(offset)).all()
    items = convert_all(rows) if convert_all is not None else [convert(r) for r in rows]  # type: ignore[misc]
    return Page[T](items=items, total=total, limit=limit, offset=offset)


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"no {what}")


def import_problem(e: ImportErrors) -> Problem:
    """The problem answering a rejected write: every error of the gravest kind, by field."""
    status, slug = _STATUS[e.kind]
    errors = [x for x in e.errors if x.kind == e.kind]
    detail = f"{errors[0].field or errors[0].entity}: {errors[0].message}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    listed = [
        {"field": x.field, "message": x.message} | ({"line": x.line} if x.line is not None else {}) for x in errors
    ]
    return Problem(status, slug, detail, errors=listed)


def registry_write(session: Session, actor: Actor, section: str, rows: Sequence[Any]) -> None:
    """Import registry rows as `actor` and commit, or answer the problem."""
    data = [r if isinstance(r, dict) else r.model_dump(mode="json") for r in rows]
    try:
        import_data(session, {section: data}, source="api", scope=actor.scope)
    except ImportErrors as e:
        raise import_problem(e) from None
    session.commit()


def trace_write(
    request: Request, session: Session, actor: Actor, data: dict[str, list[dict[str, Any]]], *, commit: bool = True
) -> trace_io.TraceImportResult:
    """Import trace rows as `actor` (and commit, forgetting this worker's cached trace views)."""
    try:
        result = trace_io.import_trace_data(session, data, source="api", scope=actor.scope)
    except ImportErrors as e:
        raise import_problem(e) from None
    if commit:
        session.commit()
        request.app.state.trace.forget()
    return result


def village_filter(actor: Actor, village: str | None) -> set[str]:
    """The villages a list shows: the caller's area, or the one asked for (403 outside it)."""
    if village is None:
        return actor.area.villages
    actor.require_read(village, f"village {village}")
    return {village}


def lot_by_code(session: Session, code: str) -> Lot:
    try:
        stored = normalize_code(code)
    except TraceCodeError as e:
        raise Problem(400, "bad-trace-code", str(e)) from None
    lot = session.exec(select(Lot).where(Lot.code == stored)).first()
    if lot is None:
        raise not_found(f"lot {stored}")
    return lot


def lots_in(villages: set[str]) -> Any:
    """The lots owned by farms or facilities of `villages`."""
    farms = select(Farm.id).where(col(Farm.village_code).in_(villages))
    facilities = select(Facility.id).where(col(Facility.village_code).in_(villages))
    return select(Lot).where(col(Lot.farm_id).in_(farms) | col(Lot.facility_id).in_(facilities))


def lot_by_ref(session: Session, reference: str) -> Lot:
    """A lot by trace code or "product:lot_no", as a 422 problem on `lot` when there is none."""
    if ":" in reference:
        product, lot_no = reference.split(":", 1)
        lot = session.exec(
            select(Lot).join(Product).where(Product.code == product, Lot.lot_no == lot_no)  # type: ignore[arg-type]
        ).first()
        if lot is None:
            raise Problem(422, "validation", f"lot: lot {reference!r} does not exist")
        return lot
    try:
        return lot_by_code(session, reference)
    except Problem as e:
        raise Problem(422, "validation", f"lot: {e.detail}") from None


def require_writer(actor: Actor, entity: str) -> None:
    """403 unless the caller's role may write rows of `entity` at all (core/scope.py `writers`)."""
    reason = actor.scope.may_write(entity)
    if reason:
        raise Problem(403, "read-only-role" if actor.role in READ_ONLY else "forbidden-role", reason)


def require_owner(actor: Actor, session: Session, entity: str, row: Any) -> None:
    """403 unless the caller may change the existing `row` of `entity`."""
    require_writer(actor, entity)
    reason = actor.scope.owns(session, entity, row)
    if reason:
        raise Problem(403, "outside-scope", reason)


def merged(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """A row as stored with the fields of a PATCH body that were given."""
    return {**current, **patch.model_dump(mode="json", exclude_unset=True)}
