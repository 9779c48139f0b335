"""Agronomic thresholds per crop (core/data/crops.yaml): data shared by the ledger and analytics.

The file is loaded through the pydantic models below (as core/catalogue.py loads the device
catalogue): a misspelt key or a non-numeric threshold fails at load with the field's path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

CROPS_FILE = Path(__file__).parent / "data" / "crops.yaml"


class Thresholds(BaseModel):
    """soil_moisture_min (%VWC, daily mean), paddy_water_min_cm (daily minimum), gdd_base_c (°C)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gdd_base_c: int | float | None = None  # an int stays an int, so messages print 30, not 30.0
    soil_moisture_min: int | float | None = None
    paddy_water_min_cm: int | float | None = None

    def given(self) -> dict[str, float]:
        """The thresholds this entry sets."""
        return {k: getattr(self, k) for k in Thresholds.model_fields if getattr(self, k) is not None}


class CropName(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    zh: str
    en: str


class Crop(Thresholds):
    name: CropName


class CropsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    crops: dict[str, Crop]
    default: Thresholds

    @classmethod
    def load(cls, path: Path = CROPS_FILE) -> CropsFile:
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@functools.cache
def get_crops() -> CropsFile:
    return CropsFile.load()


def thresholds(crop: str | None) -> dict[str, float]:
    """The crop's thresholds, falling back to the defaults for anything it does not set."""
    data = get_crops()
    own = data.crops.get((crop or "").lower())
    return {**data.default.given(), **(own.given() if own else {})}
