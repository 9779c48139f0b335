"""The indicator catalogue: which indicators the county analytics know and how composite indices are built.

The catalogue is data (`analytics/indicators.yaml`); this module loads it and checks that it is
consistent (unique ids, known dimensions, members that exist, log transforms only of positive
quantities), so that a typo in the YAML fails at load time rather than in the middle of a model.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGED_CATALOGUE = Path(__file__).with_name("indicators.yaml")

Direction = Literal["higher_is_better", "lower_is_better"]
Source = Literal["registry", "influx", "ledger", "statistics"]
ID = r"^[a-z][a-z0-9_]{0,63}$"
# The functions of analytics/compute.py that compute the registry, influx and ledger indicators (its
# FUNCTIONS maps each name to the method; it checks at import that the two agree). Every computed
# indicator names one in `computed_by`, and the catalogue does not load otherwise.
COMPUTE_FUNCTIONS = ("registry", "devices", "idle", "continuous", "risks", "fever", "nh3", "clearance", "ledger")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reference(_Model):
    """A published comparison value (RESEARCH.md), shown beside our own figure."""

    scope: str
    year: int
    value: float
    comparator: Literal["eq", "lt", "gt"] = "eq"
    note: str | None = None

    def label(self) -> str:
        sign = {"eq": "", "lt": "< ", "gt": "> "}[self.comparator]
        return f"{self.scope} {self.year}: {sign}{self.value:g}"


class Dimension(_Model):
    id: str = Field(pattern=ID)
    name_zh: str
    name_en: str


class Indicator(_Model):
    id: str = Field(pattern=ID)
    name_zh: str
    name_en: str
    dimension: str
    unit: str
    direction: Direction
    formula: str
    source: Source
    computed_by: str | None = None
    min: float | None = None
    max: float | None = None
    references: tuple[Reference, ...] = ()
    note: str | None = None

    @model_validator(mode="after")
    def _range(self) -> Indicator:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"indicator {self.id!r}: min {self.min} is not below max {self.max}")
        return self

    def check(self, value: float) -> str | None:
        """Why `value` is not acceptable for this indicator, or None."""
        if not math.isfinite(value):
            return f"value {value} is not finite"
        if self.min is not None and value < self.min:
            return f"value {value:g} below the minimum {self.min:g} {self.unit}".rstrip()
        if self.max is not None and value > self.max:
            return f"value {value:g} above the maximum {self.max:g} {self.unit}".rstrip()
        return None


class Member(_Model):
    indicator: str
    transform: Literal["none", "ln"] = "none"
    published_weight: float | None = Field(default=None, ge=0, le=1)

    @property
    def variable(self) -> str:
        """The column name of the member once transformed (`ln_<id>` for logs)."""
        return f"ln_{self.indicator}" if self.transform == "ln" else self.indicator


class IndexDimension(_Model):
    id: str
    members: tuple[Member, ...] = Field(min_length=1)


class Published(_Model):
    source: str
    note: str | None = None


class CompositeIndex(_Model):
    id: str = Field(pattern=ID)
    name_zh: str
    name_en: str
    unit: str
    method: Literal["entropy"] = "entropy"
    scope: Literal["county"] = "county"
    formula: str
    published: Published | None = None
    dimensions: tuple[IndexDimension, ...] = Field(min_length=1)

    @property
    def members(self) -> list[Member]:
        return [m for d in self.dimensions for m in d.members]

    def dimension_of(self) -> dict[str, str]:
        """Member indicator id -> the index's dimension id."""
        return {m.indicator: d.id for d in self.dimensions for m in d.members}

    def published_weights(self) -> dict[str, float]:
        return {m.indicator: m.published_weight for m in self.members if m.published_weight is not None}

    def published_weight_sum(self) -> float | None:
        """The sum of the published weights as printed (1.049 for the rural revitalization index)."""
        weights = self.published_weights()
        return round(sum(weights.values()), 9) if weights else None


class Catalogue(_Model):
    version: int
    dimensions: tuple[Dimension, ...]
    indicators: tuple[Indicator, ...]
    indices: tuple[CompositeIndex, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        problems: list[str] = []
        dims = [d.id for d in self.dimensions]
        ids = [i.id for i in self.indicators]
        index_ids = [x.id for x in self.indices]
        for what, values in (("dimension", dims), ("indicator", ids), ("index", index_ids)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                problems.append(f"duplicate {what} id(s): {', '.join(dupes)}")
        clash = sorted(set(ids) & set(index_ids))
        if clash:
            problems.append(f"index id(s) also used by indicators: {', '.join(clash)}")
        known_dims, by_id = set(dims), {i.id: i for i in self.indicators}
        for ind in self.indicators:
            if ind.dimension not in known_dims:
                problems.append(f"indicator {ind.id!r}: unknown dimension {ind.dimension!r}")
            if ind.source == "statistics":
                if ind.computed_by is not None:
                    problems.append(f"indicator {ind.id!r}: imported statistics are not computed (computed_by)")
            elif ind.computed_by is None:
                problems.append(
                    f"computed indicator {ind.id!r} (source {ind.source}) is mapped to no function: set computed_by "
                    f"to one of {', '.join(COMPUTE_FUNCTIONS)} (analytics/compute.py)"
                )
            elif ind.computed_by not in COMPUTE_FUNCTIONS:
                problems.append(
                    f"indicator {ind.id!r}: computed_by {ind.computed_by!r} is no function of analytics/compute.py "
                    f"({', '.join(COMPUTE_FUNCTIONS)})"
                )
        for index in self.indices:
            seen: set[str] = set()
            for dim in index.dimensions:
                if dim.id not in known_dims:
                    problems.append(f"index {index.id!r}: unknown dimension {dim.id!r}")
                for m in dim.members:
                    ind = by_id.get(m.indicator)
                    if ind is None:
                        problems.append(f"index {index.id!r}: unknown member indicator {m.indicator!r}")
                        continue
                    if m.indicator in seen:
                        problems.append(f"index {index.id!r}: member {m.indicator!r} listed twice")
                    seen.add(m.indicator)
                    if m.transform == "ln" and (ind.min is None or ind.min < 0):
                        problems.append(f"index {index.id!r}: ln of {m.indicator!r}, which may be negative")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        with open(path or PACKAGED_CATALOGUE, encoding="utf-8") as f:  # libyaml's loader where built: 10x faster
            return cls.model_validate(yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))

    def indicator(self, indicator_id: str) -> Indicator:
        for ind in self.indicators:
            if ind.id == indicator_id:
                return ind
        raise KeyError(f"unknown indicator {indicator_id!r}")

    def index(self, index_id: str) -> CompositeIndex:
        for index in self.indices:
            if index.id == index_id:
                return index
        known = ", ".join(x.id for x in self.indices)
        raise KeyError(f"unknown index {index_id!r}; the catalogue has {known}")

    def dimension(self, dimension_id: str) -> Dimension:
        for d in self.dimensions:
            if d.id == dimension_id:
                return d
        raise KeyError(f"unknown dimension {dimension_id!r}")

    @property
    def by_id(self) -> dict[str, Indicator]:
        return {i.id: i for i in self.indicators}

    def directions(self) -> dict[str, Direction]:
        return {i.id: i.direction for i in self.indicators}

    def of_source(self, source: Source) -> list[Indicator]:
        return [i for i in self.indicators if i.source == source]


@lru_cache
def get_catalogue(path: Path | None = None) -> Catalogue:
    return Catalogue.load(path)
