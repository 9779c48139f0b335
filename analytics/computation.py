"""Typed parameters of the computed indicators (analytics/data/computation.yaml), as pydantic models.

The file is validated at load, as core/catalogue.py validates the device catalogue: an unknown
key, a missing section, a percentage outside 0-100 or a season day that is not MM-DD fails with
the field's path instead of a KeyError deep inside a computation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

PARAMS_FILE = Path(__file__).with_name("data") / "computation.yaml"
MonthDay = Annotated[str, StringConstraints(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
Percent = Annotated[float, Field(ge=0, le=100)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Online(_Section):
    intervals: int = Field(gt=0)


class Idle(_Section):
    days: int = Field(gt=0)


class ContinuousMonitoring(_Section):
    day_completeness_pct: Percent
    days_share_pct: Percent


class Fever(_Section):
    metric: str
    above_c: float
    min_hours: int = Field(ge=1, le=24)
    per_head_days: int = Field(gt=0)


class Nh3(_Section):
    metric: str
    above_ppm: float = Field(gt=0)


class Paddy(_Section):
    metric: str
    season: tuple[tuple[MonthDay, MonthDay], ...]

    @model_validator(mode="after")
    def _ordered(self) -> Paddy:
        for a, b in self.season:
            if a > b:
                raise ValueError(f"paddy season window {a}..{b} ends before it starts")
        return self


class Drought(_Section):
    metric: str


class Informatization(_Section):
    weights: dict[str, float]

    @model_validator(mode="after")
    def _positive(self) -> Informatization:
        if not self.weights or any(w <= 0 for w in self.weights.values()):
            raise ValueError("informatization weights must be positive")
        return self


class Trace(_Section):
    kg_per_unit: dict[str, float]


class ComputationParams(_Section):
    version: int
    online: Online
    idle: Idle
    continuous_monitoring: ContinuousMonitoring
    fever: Fever
    nh3: Nh3
    paddy: Paddy
    drought: Drought
    informatization: Informatization
    trace: Trace

    @classmethod
    def load(cls, path: Path = PARAMS_FILE) -> ComputationParams:
        with open(path, encoding="utf-8") as f:
            return cls.model_validate(yaml.safe_load(f))


@lru_cache
def load_params(path: Path = PARAMS_FILE) -> ComputationParams:
    """The computation parameters (the packaged file unless `path` is given), validated, loaded once."""
    return ComputationParams.load(path)
