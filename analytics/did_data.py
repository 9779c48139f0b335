"""Panels for the staggered DID from the county's own data, and the illustrative demo panel.

Registry default (`village models did` without --csv, `GET /api/v1/models/did`):
- treatment: a village's first full calendar year (in the county's time zone) with a monitoring
  device, i.e. the year after its earliest device became active (provisioned, or created active),
  or that year itself when the device was active from 1 January 00:00; every device kind of the
  catalogue is a monitoring device; devices never provisioned and revoked ones without a known
  date do not count. Villages without a device are never treated.
- outcome: a county statistic or model variable (analytics.dataset: indicator ids, `dvi`, `rri`,
  `dei`, `lq_agri`, `ln_...`; default `rri`), which exists per county and year only. So the unit
  is the county, first treated in the first full year in which any of its villages had a monitoring
  device (the programme's start in that county: an intention-to-treat reading, diluted when few
  villages take part). Counties with statistics but not in the registry are left out: their devices
  are unknown, so they can be neither cohort nor control.
- When the registry cannot give a usable panel (no county with devices before the last year of
  statistics and a year of statistics before it, or no control county), `PanelTooShort` says what
  it has instead of estimating anything.

Demo (`--demo`, `source=demo`): the illustrative county panel of analytics/demo_data.py (synthesised,
anchored on RESEARCH.md's Liaoning figures) with each county's planted roll-out year as treatment:
first treated in the first full year after the roll-out midpoint (floor(tau) + 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from sqlmodel import Session, select

from analytics.did import ControlGroup, DidResult, PanelTooShort, callaway_santanna

DEFAULT_OUTCOME = "rri"
FIRST_TREATED = "first_treated"
TREATMENT_RULE = (
    "county first treated in the first full calendar year (local time) in which any of its villages had an active "
    "monitoring device (from the devices' provisioned_at); counties without devices never treated; counties "
    "not in the registry left out"
)
DEMO_RULE = (
    "illustrative: synthesised county panel (analytics/demo_data.py); first treated in the first full year after "
    "the county's planted roll-out midpoint"
)


def first_full_year(since: pd.Timestamp, tz: str) -> int:
    """The first calendar year throughout which a device active from `since` was active."""
    local = since.tz_convert(ZoneInfo(tz))
    at_new_year = (local.month, local.day, local.hour, local.minute, local.second, local.microsecond) == (
        1,
        1,
        0,
        0,
        0,
        0,
    )
    return local.year if at_new_year else local.year + 1


def village_treatment(session: Session, *, county: str | None = None, tz: str = "Asia/Shanghai") -> pd.DataFrame:
    """Per village of the registry: county, number of monitoring devices, the first active one, first full year."""
    from analytics.sources import Registry
    from core.models import County

    counties = [county] if county else list(session.exec(select(County.code).order_by(County.code)).all())
    rows = []
    for code in counties:
        reg = Registry.load(session, code)
        devices = reg.devices.dropna(subset=["since", "village"])
        first = devices.groupby("village")["since"].min()
        count = devices.groupby("village").size()
        for village in reg.villages:
            since = first.get(village)
            rows.append(
                {
                    "county_code": code,
                    "village_code": village,
                    "devices": int(count.get(village, 0)),
                    "first_device": None if since is None else since.isoformat(),
                    FIRST_TREATED: 0 if since is None else first_full_year(since, tz),
                }
            )
    return pd.DataFrame(rows, columns=["county_code", "village_code", "devices", "first_device", FIRST_TREATED])


def _variables(wide: pd.DataFrame, outcome: str, controls: Sequence[str]) -> pd.DataFrame:
    from analytics.dataset import build_variables

    return build_variables(wide, list(dict.fromkeys([outcome, *controls])))


def registry_panel(
    session: Session,
    *,
    outcome: str = DEFAULT_OUTCOME,
    controls: Sequence[str] = (),
    county: str | None = None,
    tz: str = "Asia/Shanghai",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """County-year panel: the statistics' `outcome` and `controls` with the registry's treatment years."""
    from analytics import statistics_io

    villages = village_treatment(session, county=county, tz=tz)
    long = statistics_io.load_statistics(session)
    treated = villages[villages[FIRST_TREATED] > 0]
    by_county = treated.groupby("county_code")[FIRST_TREATED].min().reindex(villages["county_code"].unique()).fillna(0)
    source: dict[str, Any] = {
        "source": "registry",
        "unit": "county",
        "treatment": TREATMENT_RULE,
        "villages": villages.to_dict(orient="records"),
        "county_first_treated": {str(k): int(v) for k, v in by_county.items()},
    }
    if long.empty:
        raise PanelTooShort(_registry_message("no county statistics are stored", source))
    wide = statistics_io.to_wide(long)
    years = wide.index.get_level_values("year")
    source["statistics_years"] = [int(years.min()), int(years.max())]
    data = _variables(wide, outcome, controls).reset_index()
    outside = sorted(set(data["county_code"]) - set(by_county.index))
    source["counties_not_in_registry"] = len(outside)
    data = data[data["county_code"].isin(by_county.index)].copy()
    if data.empty:
        raise PanelTooShort(_registry_message("no county of the registry has statistics", source))
    data[FIRST_TREATED] = data["county_code"].map(by_county).astype(int)
    return data, source


def _registry_message(reason: str, source: dict[str, Any]) -> str:
    cohorts = {k: v for k, v in source.get("county_first_treated", {}).items()}
    years = source.get("statistics_years")
    span = f"statistics {years[0]}-{years[1]}" if years else "no statistics"
    return (
        f"the registry cannot give a DID panel: {reason}. It has: counties and first full years with monitoring "
        f"devices {cohorts or 'none'} (0 = none); {span}; {source.get('counties_not_in_registry', 0)} counties with "
        "statistics but not in the registry (treatment unknown, left out). A cohort needs a year of statistics "
        "before and from its first treated year, and a control county. Nothing was estimated; give a panel with "
        "--csv instead."
    )


def did_from_registry(
    session: Session,
    *,
    outcome: str = DEFAULT_OUTCOME,
    controls: Sequence[str] = (),
    control_group: ControlGroup = "never",
    county: str | None = None,
    reps: int = 999,
    seed: int | None = 0,
    alpha: float = 0.05,
    tz: str = "Asia/Shanghai",
) -> DidResult:
    """The staggered DID of `outcome` on the registry's monitoring-device roll-out (see the module docstring)."""
    data, source = registry_panel(session, outcome=outcome, controls=controls, county=county, tz=tz)
    try:
        result = callaway_santanna(
            data,
            unit="county_code",
            time="year",
            first_treated=FIRST_TREATED,
            outcome=outcome,
            controls=[c for c in controls if c != outcome],
            control_group=control_group,
            reps=reps,
            seed=seed,
            alpha=alpha,
        )
    except PanelTooShort as e:
        raise PanelTooShort(_registry_message(str(e), source)) from None
    result.source = source
    return result


def demo_panel(outcome: str = DEFAULT_OUTCOME, controls: Sequence[str] = ()) -> pd.DataFrame:
    """The demo statistics (no database) with each county's planted roll-out as its first-treated year."""
    from analytics import statistics_io
    from analytics.demo_data import COUNTIES

    wide = statistics_io.to_wide(statistics_io.read_statistics_frame(statistics_io.DEMO_FILE))
    data = _variables(wide, outcome, controls).reset_index()
    rollout = {c[0]: math.floor(c[6]) + 1 for c in COUNTIES}
    data[FIRST_TREATED] = data["county_code"].map(rollout).fillna(0).astype(int)
    return data


def did_demo(
    *,
    outcome: str = DEFAULT_OUTCOME,
    controls: Sequence[str] = (),
    control_group: ControlGroup = "notyet",
    reps: int = 999,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> DidResult:
    """The DID on the illustrative demo panel (every demo county is treated by 2022: not-yet-treated controls)."""
    result = callaway_santanna(
        demo_panel(outcome, controls),
        unit="county_code",
        time="year",
        first_treated=FIRST_TREATED,
        outcome=outcome,
        controls=[c for c in controls if c != outcome],
        control_group=control_group,
        reps=reps,
        seed=seed,
        alpha=alpha,
    )
    result.source = {"source": "demo", "unit": "county", "treatment": DEMO_RULE}
    return result
