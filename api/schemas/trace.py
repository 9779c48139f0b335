"""Models of the trace resources: products, facilities, lots, events, corrections and inspections.

Trace data is a ledger: these are created, never updated (a product's names and a facility's
village are part of hashed records), and a wrong event is declared in error by a correction."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas import STRICT, Public, TimeText
from ledger import trace_io

__all__ = [
    "CorrectionCreate",
    "CorrectionPublic",
    "EventCreate",
    "EventPublic",
    "FacilityCreate",
    "FacilityPublic",
    "InspectionCreate",
    "InspectionPublic",
    "ItemPublic",
    "LotCreate",
    "LotPublic",
    "ProductCreate",
    "ProductPublic",
]


class ProductCreate(trace_io.ProductRow):
    model_config = STRICT


class ProductPublic(Public):
    code: str
    gtin: str | None = None
    name_zh: str
    name_en: str
    variety: str | None = None
    unit: str
    unit_kg: float | None = None
    county_code: str | None = None


class FacilityCreate(trace_io.FacilityRow):
    model_config = STRICT


class FacilityPublic(Public):
    code: str
    name: str
    kind: str
    village_code: str


class SourceCreate(trace_io.SourceRow):
    model_config = STRICT


class ParentCreate(trace_io.ParentRow):
    model_config = STRICT


class LotCreate(trace_io.LotRow):
    model_config = STRICT
    sources: list[SourceCreate] = Field(default_factory=list)
    parents: list[ParentCreate] = Field(default_factory=list)


class LotPublic(Public):
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


class PlaceCreate(trace_io.PlaceRow):
    model_config = STRICT


class ActorCreate(trace_io.ActorRow):
    model_config = STRICT


class EventCreate(trace_io.EventRow):
    model_config = STRICT
    read_point: PlaceCreate
    actor: ActorCreate | None = None


class CorrectionSummary(Public):
    reason: str
    declared_at: str
    corrective_event: int | None = None


class EventPublic(Public):
    id: int
    event_id: str | None = None
    type: str
    action: str | None = None
    step: str
    disposition: str | None = None
    time: str
    lot: str | None = None
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    read_point: dict[str, str | None]
    biz_location: str
    attributes: dict[str, Any]
    corrected: CorrectionSummary | None = None  # set when the event was declared in error


class CorrectionCreate(BaseModel):
    """Declare an event in error (EPCIS errorDeclaration). With `corrective`, the event that says what
    really happened is recorded in the same transaction; an event that did not occur has none."""

    model_config = STRICT
    reason: Literal["incorrect_data", "did_not_occur"]
    time: TimeText | None = Field(default=None, description="when the error was declared; now by default")
    corrective: EventCreate | None = None


class CorrectionPublic(Public):
    id: int
    event: int
    event_id: str
    reason: str
    declared_at: str
    corrective_event: int | None = None
    corrective_event_id: str | None = None


class ItemCreate(trace_io.ItemRow):
    model_config = STRICT


class InspectionCreate(trace_io.InspectionRow):
    model_config = STRICT
    items: list[ItemCreate] = Field(min_length=1)


class ItemPublic(Public):
    item: str
    value: float
    unit: str
    limit_value: float
    limit_kind: str
    method: str
    passed: bool


class InspectionPublic(Public):
    id: int
    lot: str
    lab: str
    report_no: str
    sampled_on: date
    reported_on: date | None = None
    certificate_sha256: str | None = None
    passed: bool
    items: list[ItemPublic]
