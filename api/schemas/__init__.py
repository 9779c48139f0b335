"""Request and response models of the admin API, one set per resource (the FastAPI full-stack
template's layout): `XCreate` (a POST body), `XUpdate` (a PATCH body: every field optional),
`XPublic` (what is answered) and `Page[XPublic]` (a list).

Create models are the importers' row schemas (core.registry_io, ledger.trace_io), so the API and the
files accept the same data, but strict about types: the importers turn numbers into strings (YAML
writes `code: 211122` as a number); a JSON client sends what the OpenAPI schema says, and a number
where a string belongs is refused with a 422 rather than silently converted.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict

__all__ = ["STRICT", "Page", "Public", "TimeText", "Update"]

T = TypeVar("T")
STRICT = ConfigDict(extra="forbid", coerce_numbers_to_str=False, str_strip_whitespace=True, allow_inf_nan=False)


def _text_only(value: Any) -> Any:
    """A moment is RFC 3339 text in JSON, as the schema says: not a number of seconds (pydantic's lax
    mode would read 0 as 1970-01-01)."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or isinstance(value, bool):
        raise ValueError("a date-time is RFC 3339 text with its offset, e.g. 2026-09-28T08:00:00+08:00")
    return value


TimeText = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class Page(BaseModel, Generic[T]):
    """A page of a list: `total` rows match, `items` are those from `offset`, at most `limit`."""

    items: list[T]
    total: int
    limit: int
    offset: int


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Update(BaseModel):
    """A PATCH body: only the fields given are changed."""

    model_config = STRICT
