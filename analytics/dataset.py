"""Model variables from county statistics: indicators, composite indices, location quotients and logs.

A variable name is one of
  - a catalogue indicator id (`fiscal_agri_support`),
  - a composite index id (`dvi`, `rri`, `dei`): the pooled entropy score over all the county-years
    of the panel, so that scores compare across years,
  - `lq_agri`: the location quotient of primary-industry employment (region = the panel's counties),
  - `ln_<variable>`: the natural log of any of the above.
The models themselves (analytics.panel) never read the database; this module turns stored
statistics into the DataFrame they take.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analytics.agglomeration import location_quotient
from analytics.catalogue import Catalogue, get_catalogue
from analytics.entropy import DEFAULT_SHIFT, composite_index

LQ = "lq_agri"


def variable_names(catalogue: Catalogue | None = None) -> list[str]:
    """The base names a model can use (each also with an `ln_` prefix)."""
    catalogue = catalogue or get_catalogue()
    return [i.id for i in catalogue.indicators] + [x.id for x in catalogue.indices] + [LQ]


def build_variables(
    wide: pd.DataFrame,
    names: Sequence[str],
    *,
    catalogue: Catalogue | None = None,
    shift: float = DEFAULT_SHIFT,
    method: str = "flat",
) -> pd.DataFrame:
    """A (county_code, year)-indexed frame with one column per requested variable.

    `wide` is the output of `statistics_io.to_wide`. Raises KeyError for an unknown name and
    ValueError when data are missing or a log is taken of a non-positive value.
    """
    catalogue = catalogue or get_catalogue()
    indicator_ids = {i.id for i in catalogue.indicators}
    index_ids = {x.id for x in catalogue.indices}
    cache: dict[str, pd.Series] = {}

    def base(name: str) -> pd.Series:
        if name in cache:
            return cache[name]
        if name in index_ids:
            result = composite_index(wide, name, catalogue=catalogue, shift=shift, method=method)  # type: ignore[arg-type]
            series = result.scores
        elif name == LQ:
            series = location_quotient(wide).lq
        elif name in indicator_ids:
            if name not in wide.columns:
                raise KeyError(f"no statistics for indicator {name!r}")
            series = wide[name].astype(float)
        else:
            known = ", ".join(sorted(index_ids | {LQ}))
            raise KeyError(f"unknown variable {name!r}: use an indicator id, {known}, or ln_ before any of them")
        cache[name] = series.rename(name)
        return cache[name]

    def resolve(name: str) -> pd.Series:
        if name.startswith("ln_") and name not in indicator_ids:
            inner = resolve(name[3:])
            bad = inner[inner <= 0]
            if len(bad):
                where = ", ".join("/".join(map(str, k)) for k in bad.index[:5])
                raise ValueError(f"{name}: {name[3:]} must be > 0 to take its log (not at {where})")
            return np.log(inner).rename(name)
        return base(name)

    out = pd.DataFrame({n: resolve(n) for n in dict.fromkeys(names)}, index=wide.index)
    out.index.names = ["county_code", "year"]
    return out
