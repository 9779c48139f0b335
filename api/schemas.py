"""Request bodies of the admin API: the importers' row schemas (core.registry_io, ledger.trace_io), so the API
and the YAML files accept the same data, but strict about types. The importers turn numbers into strings
(YAML writes `code: 211122` as a number); a JSON client sends what the OpenAPI schema says, and a number
where a string belongs is refused with a 422 rather than silently converted."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from core import registry_io
from ledger import trace_io

STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=False, str_strip_whitespace=True, allow_inf_nan=False)


class CountyIn(registry_io.CountyRow):
    model_config = STRICT


class TownshipIn(registry_io.TownshipRow):
    model_config = STRICT


class VillageIn(registry_io.VillageRow):
    model_config = STRICT


class FarmIn(registry_io.FarmRow):
    model_config = STRICT


class PlotIn(registry_io.PlotRow):
    model_config = STRICT


class HerdIn(registry_io.HerdRow):
    model_config = STRICT


class AnimalIn(registry_io.AnimalRow):
    model_config = STRICT


class ProductIn(trace_io.ProductRow):
    model_config = STRICT


class FacilityIn(trace_io.FacilityRow):
    model_config = STRICT


class SourceIn(trace_io.SourceRow):
    model_config = STRICT


class ParentIn(trace_io.ParentRow):
    model_config = STRICT


class LotIn(trace_io.LotRow):
    model_config = STRICT
    sources: list[SourceIn] = Field(default_factory=list)
    parents: list[ParentIn] = Field(default_factory=list)


class PlaceIn(trace_io.PlaceRow):
    model_config = STRICT


class ActorIn(trace_io.ActorRow):
    model_config = STRICT


class EventIn(trace_io.EventRow):
    model_config = STRICT
    read_point: PlaceIn
    actor: ActorIn | None = None


class ItemIn(trace_io.ItemRow):
    model_config = STRICT


class InspectionIn(trace_io.InspectionRow):
    model_config = STRICT
    items: list[ItemIn]
