"""Industrial agglomeration: the location quotient of agricultural (primary-industry) employment.

    LQ_it = (E_agri,it / E_total,it) / (E_agri,Rt / E_total,Rt)

where R is the reference region. By default the region is the set of counties in the data
(their sums per year); pass `region` to compare with other totals, e.g. the province's own
statistics. LQ > 1 means farming employs a larger share of the county's workers than of the
region's: agriculture is concentrated there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from analytics.results import Result, Table, jsonable

AGRI = "employment_primary"
TOTAL = "employment_total"


@dataclass
class LocationQuotientResult(Result):
    """Per county (and year): agricultural share, the region's share and the location quotient."""

    table: pd.DataFrame  # columns agri, total, share, region_share, lq
    agri: str
    total: str
    region_label: str

    @property
    def lq(self) -> pd.Series:
        return self.table["lq"]

    def tables(self) -> list[Table]:
        rows = [
            ["/".join(str(k) for k in key) if isinstance(key, tuple) else str(key), *r.tolist()]
            for key, r in self.table.sort_values("lq", ascending=False).iterrows()
        ]
        return [
            Table(
                ["County", self.agri, self.total, "Share", "Region share", "LQ"],
                rows,
                title="Location quotient of agricultural employment",
                notes=[f"region: {self.region_label}; LQ = (agri/total in the county) / (agri/total in the region)"],
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "location_quotient",
                "agri": self.agri,
                "total": self.total,
                "region": self.region_label,
                "rows": self.table,
            }
        )


def location_quotient(
    data: pd.DataFrame,
    agri: str = AGRI,
    total: str = TOTAL,
    *,
    region: pd.DataFrame | None = None,
    year_level: str = "year",
) -> LocationQuotientResult:
    """Location quotients of `agri` employment in `total` employment for every row of `data`.

    `data` is indexed by county or by (county, year). The region's shares are computed per year
    when the index has a `year_level` level. `region`, when given, holds the region's `agri` and
    `total` (indexed by year for panels, or a single row); otherwise the region is the sum of the
    rows of `data`.
    """
    for c in (agri, total):
        if c not in data.columns:
            raise KeyError(f"no column {c!r} in the data")
    frame = data[[agri, total]].astype(float)
    bad = frame[(frame[total] <= 0) | frame.isna().any(axis=1) | (frame[agri] < 0) | (frame[agri] > frame[total])]
    if len(bad):
        keys = ", ".join(str(k) for k in bad.index[:5])
        raise ValueError(f"{agri} must be between 0 and {total} > 0 (not at {keys})")
    by_year = year_level in (frame.index.names or [])
    if region is None:
        sums = frame.groupby(level=year_level).sum() if by_year else frame.sum().to_frame().T
        label = "sum of the counties in the data"
    else:
        sums = region[[agri, total]].astype(float)
        label = "given region totals"
    region_share = sums[agri] / sums[total]
    if by_year:
        years = frame.index.get_level_values(year_level)
        missing = sorted(set(years) - set(region_share.index))
        if missing:
            raise KeyError(f"no region totals for year(s) {', '.join(map(str, missing))}")
        rs = region_share.reindex(years).to_numpy()
    else:
        rs = float(region_share.iloc[0])
    share = frame[agri] / frame[total]
    table = pd.DataFrame(
        {"agri": frame[agri], "total": frame[total], "share": share, "region_share": rs, "lq": share / rs},
        index=frame.index,
    )
    return LocationQuotientResult(table=table, agri=agri, total=total, region_label=label)
