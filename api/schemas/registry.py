"""Models of the registry resources: divisions, farms, plots, herds, animals and devices."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from api.schemas import STRICT, Public, Update
from core import registry_io
from core.models import DeviceStatus

__all__ = [
    "AnimalCreate",
    "AnimalPublic",
    "AnimalUpdate",
    "CountyPublic",
    "CountyUpdate",
    "DeviceCreate",
    "DevicePublic",
    "DeviceSecretPublic",
    "FarmCreate",
    "FarmPublic",
    "FarmUpdate",
    "HerdCreate",
    "HerdPublic",
    "HerdUpdate",
    "PlotCreate",
    "PlotPublic",
    "PlotUpdate",
    "TownshipCreate",
    "TownshipPublic",
    "TownshipUpdate",
    "VillageCreate",
    "VillagePublic",
    "VillageUpdate",
]

# ---------------------------------------------------------------- divisions


class CountyUpdate(Update):
    name_zh: str | None = Field(default=None, min_length=1)
    name_en: str | None = None
    timezone: str | None = None


class CountyPublic(Public):
    code: str
    name_zh: str
    name_en: str
    timezone: str


class TownshipCreate(registry_io.TownshipRow):
    model_config = STRICT


class TownshipUpdate(Update):
    county_code: str | None = Field(default=None, pattern=r"^\d{6}$")
    name_zh: str | None = Field(default=None, min_length=1)
    name_en: str | None = None


class TownshipPublic(Public):
    code: str
    county_code: str
    name_zh: str
    name_en: str


class VillageCreate(registry_io.VillageRow):
    model_config = STRICT


class VillageUpdate(Update):
    township_code: str | None = Field(default=None, pattern=r"^\d{9}$")
    name_zh: str | None = Field(default=None, min_length=1)
    name_en: str | None = None


class VillagePublic(Public):
    code: str
    township_code: str
    name_zh: str
    name_en: str


# ---------------------------------------------------------------- farms, plots, herds, animals


class FarmCreate(registry_io.FarmRow):
    model_config = STRICT


class FarmUpdate(Update):
    name: str | None = Field(default=None, min_length=1)
    kind: Literal["cooperative", "family_farm", "enterprise", "smallholder"] | None = None
    village_code: str | None = Field(default=None, pattern=r"^\d{12}$")
    contact_name: str | None = None
    contact_phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 -]{4,19}$")


class FarmPublic(Public):
    code: str
    name: str
    kind: str
    village_code: str
    contact_name: str | None = None  # personal data: only for the roles that may see it
    contact_phone: str | None = None


class PlotCreate(registry_io.PlotRow):
    model_config = STRICT


class PlotUpdate(Update):
    farm_code: str | None = Field(default=None, min_length=1)
    village_code: str | None = Field(default=None, pattern=r"^\d{12}$")
    area_mu: float | None = Field(default=None, gt=0)
    crop: str | None = Field(default=None, min_length=1)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class PlotPublic(Public):
    plot_no: str
    farm_code: str
    village_code: str
    area_mu: float
    crop: str
    lat: float | None = None
    lon: float | None = None


class HerdCreate(registry_io.HerdRow):
    model_config = STRICT


class HerdUpdate(Update):
    farm_code: str | None = Field(default=None, min_length=1)
    village_code: str | None = Field(default=None, pattern=r"^\d{12}$")
    species: str | None = None
    head_count: int | None = Field(default=None, ge=0)


class HerdPublic(Public):
    herd_no: str
    farm_code: str
    village_code: str
    species: str
    head_count: int


class AnimalCreate(registry_io.AnimalRow):
    model_config = STRICT


class AnimalUpdate(Update):
    herd_no: str | None = Field(default=None, min_length=1)
    species: str | None = None
    sex: Literal["female", "male"] | None = None
    birth_date: date | None = None


class AnimalPublic(Public):
    ear_tag: str
    herd_no: str
    village_code: str
    species: str
    sex: str | None = None
    birth_date: str | None = None


# ---------------------------------------------------------------- devices


class DeviceCreate(registry_io.DeviceRow):
    """A device: attached to a plot, herd or animal as its kind says (core/catalogue.yaml)."""

    model_config = STRICT


class DevicePublic(Public):
    id: str
    kind: str
    status: DeviceStatus
    village_code: str | None
    plot_no: str | None = None
    herd_no: str | None = None
    ear_tag: str | None = None
    created_at: datetime
    provisioned_at: datetime | None = None
    revoked_at: datetime | None = None


class DeviceSecretPublic(DevicePublic):
    secret: str
