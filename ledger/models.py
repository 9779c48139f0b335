"""Trace domain models: products, processing facilities, lots and their origins, trace events, inspections.

The tables share `SQLModel.metadata` with the registry (core.models); migration 0002 creates them.
Each hashed record (lot, event, inspection) keeps a random 16-byte salt (hex) drawn when it is
created, so a published proof cannot be used to guess low-entropy contents (ledger/records.py).

Trace data holds no personal data: who did something is a farm (by its registry code) or a
facility, never a person; farm contact fields stay in the registry and never enter a record.
Decimal quantities are stored already rounded to their declared precision (units and step
attributes in ledger/data/vocab.yaml; inspection values to INSPECTION_DECIMALS places), so the
stored number and the hashed number are always the same.
"""

# No `from __future__ import annotations`: SQLModel resolves the Relationship types at class creation.

import secrets
from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Column, UniqueConstraint
from sqlmodel import Field, Relationship, SQLModel

import core.models  # noqa: F401  (the registry tables these refer to)
from core.models import utcnow

INSPECTION_DECIMALS = 6
EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransformationEvent")
ACTIONS = ("ADD", "OBSERVE", "DELETE")
RELATIONS = ("merge", "split", "transform")
LIMIT_KINDS = ("max", "min")


def new_salt() -> str:
    """16 random bytes as 32 lower-case hex digits."""
    return secrets.token_hex(16)


class Product(SQLModel, table=True):
    """A trade item: paddy rice, milled rice in 5 kg bags. `gtin` is stored as GTIN-14."""

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, index=True)  # natural key used by imports, e.g. "paddy-yf47"
    gtin: str | None = Field(default=None, unique=True, index=True, min_length=14, max_length=14)
    name_zh: str
    name_en: str = ""
    variety: str | None = None
    unit: str = "kg"  # a unit of ledger/data/vocab.yaml
    # Not part of any hashed record (a lot's record names the product by code and GTIN):
    county_code: str | None = Field(default=None, foreign_key="county.code", index=True)  # whose trade item
    unit_kg: float | None = Field(default=None, gt=0)  # mass of one unit (a bag's net content), for lineage


class Facility(SQLModel, table=True):
    """A processing or storage site (dryer, rice mill, warehouse) where events are read."""

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, index=True)
    name: str
    kind: str = Field(index=True)  # dryer | mill | warehouse | packhouse
    village_code: str = Field(foreign_key="village.code", index=True)


class Lot(SQLModel, table=True):
    """A batch of one product: a plot's paddy of one season, a dried or milled batch, packed bags.

    `code` is its short trace code (ledger/codes.py); `lot_no` its GS1 batch/lot number.
    """

    __table_args__ = (UniqueConstraint("product_id", "lot_no", name="uq_lot_product_lot_no"),)

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, index=True, min_length=11, max_length=11)
    product_id: int = Field(foreign_key="product.id", index=True)
    lot_no: str = Field(max_length=20)
    quantity: float | None = Field(default=None, ge=0)
    unit: str = "kg"
    farm_id: int | None = Field(default=None, foreign_key="farm.id", index=True)
    facility_id: int | None = Field(default=None, foreign_key="facility.id", index=True)
    harvest_year: int | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)

    product: Product | None = Relationship()


class LotSource(SQLModel, table=True):
    """Where a lot was grown or raised: exactly one plot or herd."""

    __tablename__ = "lot_source"
    __table_args__ = (CheckConstraint("(plot_id IS NULL) <> (herd_id IS NULL)", name="ck_lot_source_one_origin"),)

    id: int | None = Field(default=None, primary_key=True)
    lot_id: int = Field(foreign_key="lot.id", index=True)
    plot_id: int | None = Field(default=None, foreign_key="plot.id", index=True)
    herd_id: int | None = Field(default=None, foreign_key="herd.id", index=True)
    area_mu: float | None = Field(default=None, gt=0)


class LotParent(SQLModel, table=True):
    """A lot made from another: paddy lots merged at the dryer, a milled lot, bags packed from it."""

    __tablename__ = "lot_parent"
    __table_args__ = (
        UniqueConstraint("child_lot_id", "parent_lot_id", name="uq_lot_parent"),
        CheckConstraint("child_lot_id <> parent_lot_id", name="ck_lot_parent_not_self"),
        CheckConstraint("relation IN ('merge', 'split', 'transform')", name="ck_lot_parent_relation"),
    )

    id: int | None = Field(default=None, primary_key=True)
    child_lot_id: int = Field(foreign_key="lot.id", index=True)
    parent_lot_id: int = Field(foreign_key="lot.id", index=True)
    relation: str  # merge | split | transform
    quantity: float | None = Field(default=None, ge=0)  # of the parent, in the parent's unit


class TraceEvent(SQLModel, table=True):
    """An EPCIS-shaped event. Steps and dispositions are full URIs (ledger/vocab.py).

    Object and aggregation events concern `lot_id`; a transformation's inputs and outputs are
    rows of `trace_event_lot`. `event_id` is the GS1 EPCIS event hash once computed (ledger.epcis);
    it is derived from the event, so it is not part of the hashed record.
    """

    __tablename__ = "trace_event"
    __table_args__ = (
        CheckConstraint(
            "(read_point_plot_id IS NULL) <> (read_point_facility_id IS NULL)", name="ck_trace_event_one_read_point"
        ),
        CheckConstraint("(actor_farm_id IS NULL) <> (actor_facility_id IS NULL)", name="ck_trace_event_one_actor"),
        CheckConstraint(
            "event_type IN ('ObjectEvent', 'AggregationEvent', 'TransformationEvent')", name="ck_trace_event_type"
        ),
        CheckConstraint(
            "(event_type = 'TransformationEvent' AND action IS NULL)"
            " OR (event_type <> 'TransformationEvent' AND action IN ('ADD', 'OBSERVE', 'DELETE'))",
            name="ck_trace_event_action",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str | None = Field(default=None, unique=True, index=True)
    event_type: str = Field(index=True)
    action: str | None = None
    biz_step: str = Field(index=True)
    disposition: str | None = None
    event_time: datetime = Field(index=True)  # UTC
    event_time_zone_offset: str = Field(default="+08:00", regex=r"^[+-]\d{2}:\d{2}$")
    lot_id: int | None = Field(default=None, foreign_key="lot.id", index=True)
    parent_uri: str | None = None  # an AggregationEvent's parentID (a pallet or container), when any
    read_point_plot_id: int | None = Field(default=None, foreign_key="plot.id", index=True)
    read_point_facility_id: int | None = Field(default=None, foreign_key="facility.id", index=True)
    biz_location: str = Field(foreign_key="village.code", index=True)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    actor_farm_id: int | None = Field(default=None, foreign_key="farm.id", index=True)
    actor_facility_id: int | None = Field(default=None, foreign_key="facility.id", index=True)
    recorded_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)


ERROR_REASONS = ("did_not_occur", "incorrect_data")  # CBV 2.0 error reasons


class EventCorrection(SQLModel, table=True):
    """An EPCIS error declaration: event `event_id` was recorded in error, for `reason`; the event
    `corrective_event_id` (when any) says what really happened. Record kind "correction/1": an
    anchored event is never edited or deleted, it is declared in error by a new, anchored record."""

    __tablename__ = "event_correction"
    __table_args__ = (
        CheckConstraint("reason IN ('did_not_occur', 'incorrect_data')", name="ck_event_correction_reason"),
        CheckConstraint("event_id <> corrective_event_id", name="ck_event_correction_not_self"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="trace_event.id", unique=True, index=True)
    corrective_event_id: int | None = Field(default=None, foreign_key="trace_event.id", index=True)
    reason: str
    declared_at: datetime  # UTC
    declared_at_offset: str = Field(default="+08:00", regex=r"^[+-]\d{2}:\d{2}$")
    recorded_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)


class TraceEventLot(SQLModel, table=True):
    """An input or output lot of a transformation event."""

    __tablename__ = "trace_event_lot"
    __table_args__ = (CheckConstraint("role IN ('input', 'output')", name="ck_trace_event_lot_role"),)

    trace_event_id: int = Field(foreign_key="trace_event.id", primary_key=True)
    lot_id: int = Field(foreign_key="lot.id", primary_key=True, index=True)
    role: str = Field(primary_key=True)  # input | output


class Inspection(SQLModel, table=True):
    """A laboratory report on a lot. `passed` is computed from its items, never entered."""

    __table_args__ = (UniqueConstraint("lab", "report_no", name="uq_inspection_report"),)

    id: int | None = Field(default=None, primary_key=True)
    lot_id: int = Field(foreign_key="lot.id", index=True)
    lab: str  # the laboratory (an organisation)
    report_no: str
    sampled_on: date
    reported_on: date | None = None
    certificate_sha256: str | None = Field(default=None, regex=r"^[0-9a-f]{64}$")
    passed: bool = Field(index=True)
    recorded_at: datetime = Field(default_factory=utcnow)
    salt: str = Field(default_factory=new_salt, min_length=32, max_length=32)


class InspectionItem(SQLModel, table=True):
    """One measured item of an inspection against its limit (e.g. cadmium <= 0.2 mg/kg, GB 2762-2022)."""

    __tablename__ = "inspection_item"
    __table_args__ = (
        UniqueConstraint("inspection_id", "item", name="uq_inspection_item"),
        CheckConstraint("limit_kind IN ('max', 'min')", name="ck_inspection_item_limit_kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    inspection_id: int = Field(foreign_key="inspection.id", index=True)
    item: str  # e.g. cadmium, chlorpyrifos, moisture
    value: float
    unit: str  # e.g. mg/kg, %
    limit_value: float
    limit_kind: str = "max"  # max: value <= limit; min: value >= limit
    method: str  # the standard or method, e.g. GB 2762-2022
    passed: bool


def item_passes(value: float, limit_value: float, limit_kind: str) -> bool:
    """Whether a measured value meets its limit (limits are inclusive)."""
    return value <= limit_value if limit_kind == "max" else value >= limit_value
