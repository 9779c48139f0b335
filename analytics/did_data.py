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

Demo panels (`--demo villages|counties`, `source=demo`), both synthesised and marked illustrative:
- `villages` (`data/demo_did_villages.csv`, written by `python -m analytics.did_data`): 48 villages of
  the demo county, 2016-2025, cohorts 2019, 2021 and 2023 and never treated, planted effects on rice
  yield that differ by cohort and grow with exposure, and selection on irrigated land;
- `counties`: the county statistics of analytics/demo_data.py with each county's planted roll-out
  year as treatment (first full year after the roll-out midpoint, floor(tau) + 1). Every county is
  treated by 2022 and the roll-outs are gradual and overlap, so it shows little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
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


def county_demo_panel(outcome: str = DEFAULT_OUTCOME, controls: Sequence[str] = ()) -> pd.DataFrame:
    """The demo county statistics (no database) with each county's planted roll-out as its first-treated year."""
    from analytics import statistics_io
    from analytics.demo_data import COUNTIES

    wide = statistics_io.to_wide(statistics_io.read_statistics_frame(statistics_io.DEMO_FILE))
    data = _variables(wide, outcome, controls).reset_index()
    rollout = {c[0]: math.floor(c[6]) + 1 for c in COUNTIES}
    data[FIRST_TREATED] = data["county_code"].map(rollout).fillna(0).astype(int)
    return data


# ---------------------------------------------------------------- the village demo panel

DEMO_VILLAGES_FILE = Path(__file__).with_name("data") / "demo_did_villages.csv"
DEMO_VILLAGE_OUTCOME = "rice_yield_kg_mu"
DEMO_VILLAGE_COHORTS = {2019: (15.0, 8.0), 2021: (10.0, 5.0), 2023: (6.0, 3.0)}  # g: (effect at e=0, per year)
DEMO_VILLAGE_RULE = (
    "illustrative: synthesised village panel (analytics/did_data.py, seed 2026); planted effects on rice yield "
    "tau(g, t) = a_g + b_g (t - g) kg/mu with (a, b) = (15, 8) for 2019, (10, 5) for 2021, (6, 3) for 2023; "
    "villages with more irrigated land adopt earlier and trend up faster (control for irrigated_share)"
)


def simulate_villages(seed: int = 2026) -> pd.DataFrame:
    """48 villages of the demo county, 2016-2025: 12 per cohort (first full year with monitoring devices 2019,
    2021, 2023) and 12 never treated. Yield trends up faster where more land is irrigated, and those villages
    adopt earlier, so the unconditional comparison is biased and the doubly robust one is not."""
    rng = np.random.default_rng(seed)
    years = np.arange(2016, 2026)
    weather = rng.normal(0, 10, len(years))
    rows = []
    groups = [2019, 2021, 2023, 0]
    for k, g in enumerate(groups):
        for j in range(12):
            code = f"211122{101 + k:03d}{201 + j:03d}"
            share = float(np.clip(rng.normal(0.68 - 0.06 * k, 0.12), 0.2, 0.98))
            level = 520 + rng.normal(0, 25)
            for i, t in enumerate(years):
                effect = 0.0
                if g and t >= g:
                    a, b = DEMO_VILLAGE_COHORTS[g]
                    effect = a + b * (t - g)
                y = level + weather[i] + (4 + 12 * share) * (t - 2016) + effect + rng.normal(0, 6)
                rows.append((code, int(t), g, round(float(y), 1), round(share, 3)))
    return pd.DataFrame(rows, columns=["village_code", "year", FIRST_TREATED, DEMO_VILLAGE_OUTCOME, "irrigated_share"])


def write_demo_villages(path: Path = DEMO_VILLAGES_FILE) -> Path:
    simulate_villages().to_csv(path, index=False, lineterminator="\n")
    return path


def did_demo(
    *,
    panel: str = "villages",
    outcome: str | None = None,
    controls: Sequence[str] = (),
    control_group: ControlGroup = "never",
    reps: int = 999,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> DidResult:
    """The DID on a demo panel: `villages` (the synthesised village panel with planted effects) or `counties`
    (the demo county statistics with their planted roll-out years; every county is treated by 2022, so only
    not-yet-treated controls exist)."""
    if panel == "villages":
        data = pd.read_csv(DEMO_VILLAGES_FILE, dtype={"village_code": str})
        unit, outcome, rule = "village_code", outcome or DEMO_VILLAGE_OUTCOME, DEMO_VILLAGE_RULE
    elif panel == "counties":
        outcome = outcome or DEFAULT_OUTCOME
        data, unit, rule = county_demo_panel(outcome, controls), "county_code", DEMO_RULE
    else:
        raise ValueError(f"demo panel {panel!r}: use villages or counties")
    result = callaway_santanna(
        data,
        unit=unit,
        time="year",
        first_treated=FIRST_TREATED,
        outcome=outcome,
        controls=[c for c in controls if c != outcome],
        control_group=control_group,
        reps=reps,
        seed=seed,
        alpha=alpha,
    )
    result.source = {"source": "demo", "panel": panel, "unit": unit.removesuffix("_code"), "treatment": rule}
    return result


if __name__ == "__main__":
    print(write_demo_villages())
