"""County statistics: one value per county, year and catalogue indicator, imported from CSV files.

Values are kept in the catalogue's unit; `source_note` says where a value came from (a yearbook,
a bureau's file, or "illustrative" for synthesised demo values). The county code is not a foreign
key: statistics may be imported for counties the registry does not (yet) hold, and province or
prefecture totals use their own division codes (ending in 0000 or 00).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class CountyStatistic(SQLModel, table=True):
    __tablename__ = "county_statistic"
    __table_args__ = (UniqueConstraint("county_code", "year", "indicator_id", name="uq_county_statistic"),)

    id: int | None = Field(default=None, primary_key=True)
    county_code: str = Field(min_length=6, max_length=6, index=True)
    year: int = Field(index=True)
    indicator_id: str = Field(max_length=64, index=True)
    value: float
    unit: str
    source_note: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
