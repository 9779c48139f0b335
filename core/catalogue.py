"""The device catalogue: which kinds of device exist and what each may report.

The catalogue is data (`core/catalogue.yaml`, or the file named by `CATALOGUE_FILE`);
this module only loads and checks it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, model_validator

PACKAGED_CATALOGUE = Path(__file__).with_name("catalogue.yaml")


class Metric(BaseModel):
    unit: str
    type: Literal["number", "bool", "string"] = "number"
    min: float | None = None
    max: float | None = None
    fiware: str | None = None

    def check(self, value: object) -> tuple[str, str] | None:
        """Return (reason code, detail) when `value` is not acceptable for this metric, else None."""
        if self.type == "bool":
            return None if isinstance(value, bool) else ("wrong_type", f"expected a boolean, got {_kind(value)}")
        if self.type == "string":
            if not isinstance(value, str):
                return "wrong_type", f"expected a string, got {_kind(value)}"
            return None if len(value) <= 256 else ("out_of_range", "string longer than 256 characters")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "wrong_type", f"expected a number, got {_kind(value)}"
        if not math.isfinite(value):
            return "not_finite", f"value {value} is not finite"
        if self.min is not None and value < self.min:
            return "out_of_range", f"value {value} below minimum {self.min:g} {self.unit}"
        if self.max is not None and value > self.max:
            return "out_of_range", f"value {value} above maximum {self.max:g} {self.unit}"
        return None


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class Kind(BaseModel):
    name: dict[str, str]
    attach: Literal["plot", "herd", "animal"]
    fiware: str | None = None
    interval_s: int = Field(gt=0)
    metrics: dict[str, Metric]


class Catalogue(BaseModel):
    version: int
    kinds: dict[str, Kind]

    @model_validator(mode="after")
    def _non_empty(self) -> Catalogue:
        for name, kind in self.kinds.items():
            if not kind.metrics:
                raise ValueError(f"kind {name!r} has no metrics")
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        with open(path or PACKAGED_CATALOGUE, encoding="utf-8") as f:
            return cls.model_validate(yaml.safe_load(f))


@lru_cache
def get_catalogue(path: Path | None = None) -> Catalogue:
    return Catalogue.load(path)
