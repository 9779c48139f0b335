"""Registry models: the administrative hierarchy, farms, plots, herds, animals and devices.

County > township > village follow the statistical division codes (统计用区划代码):
6 digits for a county, 9 for a township, 12 for a village. Personal data (a farm's
contact name and phone) lives only on `Farm` and never leaves through public endpoints,
logs or the chain. Schema changes go through Alembic (`core/migrations`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class County(SQLModel, table=True):
    code: str = Field(primary_key=True, min_length=6, max_length=6, regex=r"^\d{6}$")
    name_zh: str
    name_en: str = ""
    timezone: str = "Asia/Shanghai"


class Township(SQLModel, table=True):
    code: str = Field(primary_key=True, min_length=9, max_length=9, regex=r"^\d{9}$")
    county_code: str = Field(foreign_key="county.code", index=True)
    name_zh: str
    name_en: str = ""


class Village(SQLModel, table=True):
    code: str = Field(primary_key=True, min_length=12, max_length=12, regex=r"^\d{12}$")
    township_code: str = Field(foreign_key="township.code", index=True)
    name_zh: str
    name_en: str = ""


class Farm(SQLModel, table=True):
    """A farm, cooperative or enterprise. `contact_*` is personal data."""

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, index=True)
    name: str
    kind: str = "cooperative"  # cooperative | family_farm | enterprise | smallholder
    village_code: str = Field(foreign_key="village.code", index=True)
    contact_name: str | None = None
    contact_phone: str | None = None


class Plot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    plot_no: str = Field(unique=True, index=True)
    farm_id: int = Field(foreign_key="farm.id", index=True)
    village_code: str = Field(foreign_key="village.code", index=True)
    area_mu: float = Field(gt=0)
    crop: str
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class Herd(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    herd_no: str = Field(unique=True, index=True)
    farm_id: int = Field(foreign_key="farm.id", index=True)
    village_code: str = Field(foreign_key="village.code", index=True)
    species: str = "cattle"
    head_count: int = Field(default=0, ge=0)


class Animal(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ear_tag: str = Field(unique=True, index=True)
    herd_id: int = Field(foreign_key="herd.id", index=True)
    species: str = "cattle"
    sex: str | None = None
    birth_date: str | None = None


class DeviceStatus(StrEnum):
    active = "active"
    inactive = "inactive"  # registered but not yet provisioned
    revoked = "revoked"


class Device(SQLModel, table=True):
    """A sensor device. `secret_hash` is the PBKDF2 hash of its broker secret, never the secret."""

    id: str = Field(primary_key=True, regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: str = Field(index=True)
    plot_id: int | None = Field(default=None, foreign_key="plot.id", index=True)
    herd_id: int | None = Field(default=None, foreign_key="herd.id", index=True)
    animal_id: int | None = Field(default=None, foreign_key="animal.id", index=True)
    status: DeviceStatus = DeviceStatus.inactive
    secret_hash: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    provisioned_at: datetime | None = None
    revoked_at: datetime | None = None


class DeadLetterPayload(SQLModel, table=True):
    """The raw bytes of a message with rejections, stored once however many of its readings failed."""

    __tablename__ = "dead_letter_payload"

    id: int | None = Field(default=None, primary_key=True)
    size: int  # bytes of the message as received
    sha256: str = Field(index=True)  # hex digest of the whole message
    payload: bytes  # the whole message, or only its first bytes when `truncated` (payload_too_large)
    truncated: bool = False


class DeadLetter(SQLModel, table=True):
    """A rejected reading or message; its raw bytes are in `dead_letter_payload`, so it can be replayed.

    A message gets at most INGEST_DEADLETTER_ROWS_PER_MESSAGE rows of one rejection each; its further
    rejections are counted per reason on one more row each (the first of them, with `more` > 0).
    """

    __tablename__ = "dead_letter"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(default_factory=utcnow, index=True)
    topic: str
    device_id: str | None = Field(default=None, index=True)
    reason: str = Field(index=True)  # a stable code, e.g. "out_of_range"
    detail: str  # the precise human-readable reason
    payload_id: int | None = Field(default=None, foreign_key="dead_letter_payload.id", index=True)
    index: int | None = None  # which reading of an array payload, when the message was an array
    more: int = 0  # further readings of the message rejected for this reason, without rows of their own
    replayed_at: datetime | None = None
    replay_result: str | None = None


class ServiceAccount(SQLModel, table=True):
    """A broker account for a service (the ingest service reads every device topic)."""

    __tablename__ = "service_account"

    username: str = Field(primary_key=True, regex=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
    role: str = "ingest"  # ingest: may read v1/devices/+/telemetry
    secret_hash: str
    created_at: datetime = Field(default_factory=utcnow)


class Boundary(SQLModel, table=True):
    """An administrative boundary drawn on the dashboard's map: a division's GeoJSON geometry (Polygon or
    MultiPolygon, WGS 84 longitude/latitude), imported by `village registry import-boundaries`."""

    code: str = Field(primary_key=True, max_length=12, regex=r"^(\d{2}|\d{4}|\d{6}|\d{9}|\d{12})$")
    level: str = Field(index=True)  # province | city | county | township | village
    name: str
    geometry: str  # the GeoJSON geometry object, as JSON text
    source: str = ""  # the file it came from
    illustrative: bool = False  # drawn for a demo, not surveyed
    imported_at: datetime = Field(default_factory=utcnow)
