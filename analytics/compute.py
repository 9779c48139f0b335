"""The county digitalisation indicators computed from our own data: registry, InfluxDB rollups, ledger.

`compute_indicators(session, influx, county, period)` computes every catalogue indicator whose
source is registry, influx or ledger (and picks up the imported statistics) for the county, each
of its villages, the period and the periods before it (the trend), and returns an
`IndicatorReport`: values with their inputs (numerators, denominators, counts) so the API can show
how each one was computed, trends, village rankings and the composite index of the county.

Data volume. Telemetry is read only from the rollups (analytics/rollups.py), never as raw points:
one query per device kind over the daily rollups (one row per device-day), one per alert kind over
the hourly rollups with the alert condition in the WHERE clause (only alert-days come back), and for
the current period one `last()` per device. Registry and ledger rows are read once (the snapshots of
analytics/sources.py). Every period is then cut from those arrays for all villages at once (sums per
village with np.bincount; the county is their total), so villages and trends cost little more.

Definitions (parameters in analytics/data/computation.yaml, crop thresholds in core/data/crops.yaml):
- Days. A period's days are local days in the county's time zone; only closed days (before today)
  count, the ones daily rollups exist for. Registry figures are taken at the period's end (or now).
- Active device. Provisioned (or created active) and not revoked at the time; on a day: during the
  whole local day, so that a device installed at noon does not count as half silent.
- Readings of a device-day: the largest count of any of its kind's metrics. Expected readings: the
  day's seconds / the kind's catalogue interval_s. Completeness caps a device-day at 100 %.
- Device online rate: in the current period, active devices with a reading within `online.intervals`
  catalogue intervals (a `last()` per device on the raw series, bounded to that window); in past
  periods, device-days with a reading / active device-days.
- Continuous monitoring, drought and paddy plot-days, fever and ammonia alerts, alert clearance:
  see the catalogue formulas and computation.yaml.
- Verified trace (traced_output_share): by the anchor states of the lot's leaves (its latest manifest
  and every leaf that manifest lists in confirmed or final windows), not by recomputing each record;
  a full recomputation per lot (ledger.verify.verify_lot against the chain) is what
  `village verify` does, and `compute_indicators(..., chain=...)` uses it when a chain is given.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlmodel import Session

from analytics.catalogue import COMPUTE_FUNCTIONS, Catalogue, get_catalogue
from analytics.computation import ComputationParams, load_params
from analytics.periods import Period, local_midnight
from analytics.rollups import Rollups
from analytics.sources import LedgerData, Registry, Telemetry, load_ledger, load_telemetry
from core import crops
from core.influx import InfluxV1

COMPUTED_SOURCES = ("registry", "influx", "ledger")
Scope = Literal["county", "village"]


# ---------------------------------------------------------------- results


@dataclass
class Value:
    """One indicator for one scope and period, with the inputs it was computed from."""

    indicator: str
    value: float | None
    inputs: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"indicator": self.indicator, "value": self.value, "inputs": self.inputs, "note": self.note}


@dataclass
class ScopeValues:
    scope: Scope
    code: str
    name: str
    period: Period
    values: dict[str, Value]


@dataclass
class IndicatorReport:
    """Indicators of a county and its villages for a period and the periods before it."""

    county: str
    county_name: str
    period: Period
    periods: list[Period]  # oldest first; the last one is `period`
    villages: dict[str, str]  # code -> name
    results: dict[str, dict[str, ScopeValues]]  # period label -> scope code -> values
    catalogue: Catalogue
    computed_at: datetime
    seconds: float = 0.0
    composite: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def scope(self, code: str | None = None, period: Period | None = None) -> ScopeValues:
        return self.results[(period or self.period).label][code or self.county]

    def value(self, indicator: str, code: str | None = None, period: Period | None = None) -> float | None:
        v = self.scope(code, period).values.get(indicator)
        return v.value if v else None

    def previous(self, indicator: str, code: str | None = None) -> float | None:
        return self.value(indicator, code, self.periods[-2]) if len(self.periods) > 1 else None

    def trend(self, indicator: str, code: str | None = None) -> list[tuple[str, float | None]]:
        return [(p.label, self.value(indicator, code, p)) for p in self.periods]

    def indicator_ids(self) -> list[str]:
        """Indicators with a value for the county in some period, in catalogue order."""
        present = {i for sv in (r[self.county] for r in self.results.values()) for i in sv.values}
        order = {d.id: n for n, d in enumerate(self.catalogue.dimensions)}
        ids = [i for i in self.catalogue.indicators if i.id in present]
        return [i.id for i in sorted(ids, key=lambda i: order.get(i.dimension, len(order)))]  # stable: catalogue order

    def ranking(self, indicator: str, period: Period | None = None) -> list[dict[str, Any]]:
        """Villages ordered best first by the indicator's direction; villages without a value last."""
        ind = self.catalogue.indicator(indicator)
        rows = [
            {"village": code, "name": name, "value": self.value(indicator, code, period)}
            for code, name in self.villages.items()
        ]
        known = [r for r in rows if r["value"] is not None]
        known.sort(key=lambda r: r["value"], reverse=ind.direction == "higher_is_better")
        rank, last = 0, None
        for i, r in enumerate(known):
            if r["value"] != last:
                rank, last = i + 1, r["value"]
            r["rank"] = rank
        return known + [{**r, "rank": None} for r in rows if r["value"] is None]

    def rows(self, code: str | None = None) -> list[dict[str, Any]]:
        """One row per indicator for a scope: definition, value, previous value, change, inputs."""
        sv = self.scope(code)
        out = []
        for ind_id in self.indicator_ids():
            ind = self.catalogue.indicator(ind_id)
            v = sv.values.get(ind_id)
            prev = self.previous(ind_id, code)
            value = v.value if v else None
            out.append(
                {
                    "scope": sv.scope,
                    "code": sv.code,
                    "name": sv.name,
                    "period": self.period.label,
                    "indicator": ind_id,
                    "name_zh": ind.name_zh,
                    "name_en": ind.name_en,
                    "dimension": ind.dimension,
                    "source": ind.source,
                    "unit": ind.unit,
                    "direction": ind.direction,
                    "value": value,
                    "previous_period": self.periods[-2].label if len(self.periods) > 1 else None,
                    "previous": prev,
                    "change": None if value is None or prev is None else value - prev,
                    "inputs": v.inputs if v else {},
                    "note": v.note if v else None,
                }
            )
        return out

    def to_dict(self, code: str | None = None) -> dict[str, Any]:
        """What the API returns for a scope: values with inputs and trend, village rankings, the index."""
        sv = self.scope(code)
        indicators = []
        for row in self.rows(code):
            row["trend"] = [{"period": p, "value": v} for p, v in self.trend(row["indicator"], code)]
            indicators.append(row)
        out: dict[str, Any] = {
            "county": self.county,
            "county_name": self.county_name,
            "scope": sv.scope,
            "code": sv.code,
            "name": sv.name,
            "period": _period_dict(self.period),
            "periods": [p.label for p in self.periods],
            "computed_at": self.computed_at.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "indicators": indicators,
        }
        if sv.scope == "county":
            out["rankings"] = {
                i: self.ranking(i) for i in self.indicator_ids() if self.catalogue.indicator(i).source != "statistics"
            }
            out["composite"] = self.composite
        return out


def _period_dict(p: Period) -> dict[str, Any]:
    return {"label": p.label, "kind": p.kind, "start": p.start.isoformat(), "end": p.end.isoformat(), "tz": p.tz}


def _pct(num: float, den: float) -> float | None:
    return None if den <= 0 else 100.0 * num / den


def _awaiting_note(n: int, what: str) -> str | None:
    """Why a traceability share is lower than the lots on chain: anchors in a block, not yet confirmed."""
    if n <= 0:
        return None
    return f"{n} {what} in a block awaiting confirmation (counted once confirmed or final)"


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


# ---------------------------------------------------------------- computing all scopes of one period

Parts = dict[str, np.ndarray]


class _Cut:
    """One period, every village at once: each indicator's inputs are summed per village with
    np.bincount over village indices (the county is the sum over its villages, medians are taken
    over the pooled rows), so a county of hundreds of villages costs little more than one village."""

    def __init__(self, ctx: _Context, period: Period, scopes: list[int | None]) -> None:
        self.ctx, self.period, self.scopes = ctx, period, scopes
        reg, tel = ctx.registry, ctx.telemetry
        self.V = len(ctx.village_codes)
        end = period.closed_end(ctx.now)
        self.a, self.b = tel.day_index(period.start), tel.day_index(end)
        if period.start >= end:
            self.a = self.b
        self.ndays = self.b - self.a
        self.t_end = min(period.end_dt(), ctx.now)
        self.dev_v = ctx.dev_v
        self.active_end = reg.active_at(self.t_end) & (self.dev_v >= 0)
        d = tel.daily
        day = d["day"].to_numpy()
        self.daily = d[(day >= self.a) & (day < self.b)]
        self.current = period.contains(ctx.now)
        self.values: dict[int | None, dict[str, Value]] = {s: {} for s in scopes}

    # -------------------------------------------------------- helpers

    def vsum(self, v: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Per-village sums (counts without weights) of rows whose village index is `v`."""
        v = np.asarray(v, dtype=int)
        ok = v >= 0
        w = None if weights is None else np.asarray(weights, dtype=float)[ok]
        return np.bincount(v[ok], weights=w, minlength=self.V).astype(float)

    def emit(self, parts: Parts, make: Callable[[dict[str, float], int | None], Value]) -> None:
        """make(inputs, village index or None for the county) for every scope asked for."""
        for s in self.scopes:
            row = {k: float(a.sum()) if s is None else float(a[s]) for k, a in parts.items()}
            v = make(row, s)
            self.values[s][v.indicator] = v

    def dev_of_rows(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["dev"].to_numpy(dtype=int)

    # -------------------------------------------------------- registry

    def registry(self) -> None:
        ctx, reg = self.ctx, self.ctx.registry
        plot_v = ctx.plot_v
        with_device = set(reg.devices.loc[self.active_end, "plot_id"].dropna().astype(int))
        covered = reg.plots["id"].isin(with_device).to_numpy()
        area = reg.plots["area_mu"].to_numpy(dtype=float)
        parts = {
            "plots": self.vsum(plot_v),
            "covered": self.vsum(plot_v, covered),
            "area": self.vsum(plot_v, area),
            "area_with": self.vsum(plot_v, area * covered),
        }
        as_of = _iso(self.t_end)
        self.emit(
            parts,
            lambda x, _s: Value(
                "plot_device_share",
                _r(_pct(x["covered"], x["plots"])),
                {"plots_with_active_device": int(x["covered"]), "plots": int(x["plots"]), "as_of": as_of},
            ),
        )
        self.emit(
            parts,
            lambda x, _s: Value(
                "device_coverage",
                _r(_pct(x["area_with"], x["area"])),
                {"area_mu_with_active_device": _r(x["area_with"], 2), "area_mu": _r(x["area"], 2), "as_of": as_of},
            ),
        )
        dev = reg.devices
        collar = self.active_end & (dev["kind"] == "collar").to_numpy() & dev["animal_id"].notna().to_numpy()
        animals = dev.loc[collar, ["animal_id"]].assign(v=self.dev_v[collar]).drop_duplicates("animal_id")
        herd_v = ctx.herd_v
        lparts = {
            "monitored": self.vsum(animals["v"].to_numpy()),
            "head": self.vsum(herd_v, reg.herds["head"].to_numpy()),
            "herds": self.vsum(herd_v),
        }
        self.emit(
            lparts,
            lambda x, _s: Value(
                "livestock_monitoring_share",
                _r(_pct(min(x["monitored"], x["head"]), x["head"])),
                {
                    "head_with_active_collar": int(x["monitored"]),
                    "head": int(x["head"]),
                    "herds": int(x["herds"]),
                    "as_of": as_of,
                },
            ),
        )
        weights = ctx.params.informatization.weights

        def informatization(x: dict[str, float], _s: int | None) -> Value:
            parts = {}
            if x["area"]:
                parts["crop"] = _r(_pct(x["area_with"], x["area"]))
            if x["head"]:
                parts["livestock"] = _r(_pct(min(x["monitored"], x["head"]), x["head"]))
            total = sum(weights[s] for s in parts)
            used = {s: weights[s] / total for s in parts} if total else {}
            value = sum(used[s] * (parts[s] or 0.0) for s in parts) if parts else None
            return Value(
                "production_informatization_rate",
                _r(value),
                {
                    "crop_area_coverage": parts.get("crop"),
                    "livestock_head_coverage": parts.get("livestock"),
                    "weights": used,
                },
            )

        self.emit({**parts, **lparts}, informatization)

    # -------------------------------------------------------- telemetry: devices

    def devices(self) -> None:
        ctx, tel, reg = self.ctx, self.ctx.telemetry, self.ctx.registry
        active = tel.active[:, self.a : self.b] & (self.dev_v >= 0)[:, None]
        interval = reg.devices["interval_s"].to_numpy(dtype=float)
        per_day = np.divide(1.0, interval, out=np.zeros_like(interval), where=interval > 0)
        expected_cells = np.where(active, tel.day_s[None, self.a : self.b] * per_day[:, None], 0.0)
        d = self.daily
        devs, days = self.dev_of_rows(d), d["day"].to_numpy(dtype=int) - self.a
        counted = active[devs, days] if len(d) else np.zeros(0, dtype=bool)
        exp_rows = expected_cells[devs, days] if len(d) else np.zeros(0)
        got = np.minimum(d["readings"].to_numpy(dtype=float), exp_rows)
        self.row_completeness = np.divide(got, exp_rows, out=np.zeros_like(got), where=exp_rows > 0)
        self.row_counted = counted
        row_v = self.dev_v[devs]
        parts = {
            "active_days": self.vsum(self.dev_v, active.sum(axis=1)),
            "reporting": self.vsum(row_v, counted),
            "got": self.vsum(row_v, got * counted),
            "expected": self.vsum(self.dev_v, expected_cells.sum(axis=1)),
            "stored": self.vsum(row_v, d["readings"].to_numpy(dtype=float)),
        }
        ndays = self.ndays
        if self.current and tel.online is not None:
            active_now = reg.active_at(ctx.now) & (self.dev_v >= 0)
            parts["online"] = self.vsum(self.dev_v, tel.online & active_now)
            parts["active_now"] = self.vsum(self.dev_v, active_now)
            window = f"{ctx.params.online.intervals} catalogue intervals"
            as_of = _iso(ctx.now)
            self.emit(
                parts,
                lambda x, _s: Value(
                    "device_online_rate",
                    _r(_pct(x["online"], x["active_now"])),
                    {
                        "devices_online": int(x["online"]),
                        "active_devices": int(x["active_now"]),
                        "window": window,
                        "as_of": as_of,
                        "device_days_reporting": int(x["reporting"]),
                        "active_device_days": int(x["active_days"]),
                    },
                ),
            )
        else:
            self.emit(
                parts,
                lambda x, _s: Value(
                    "device_online_rate",
                    _r(_pct(x["reporting"], x["active_days"])),
                    {
                        "device_days_reporting": int(x["reporting"]),
                        "active_device_days": int(x["active_days"]),
                        "days": ndays,
                    },
                ),
            )
        self.emit(
            parts,
            lambda x, _s: Value(
                "data_completeness",
                _r(_pct(x["got"], x["expected"])),
                {
                    "readings_counted": round(x["got"]),
                    "readings_expected": round(x["expected"]),
                    "active_device_days": int(x["active_days"]),
                    "days": ndays,
                },
                note="each device-day capped at its expected readings",
            ),
        )
        self._idle()
        dead = tel.dead
        n_dead = np.zeros(self.V)
        if self.ndays:
            lo = int(local_midnight(tel.days[self.a], self.period.tz).timestamp() * 1000)
            hi = int(local_midnight(tel.days[self.b - 1] + timedelta(days=1), self.period.tz).timestamp() * 1000)
            t = dead["ms"].to_numpy()
            inside = (t >= lo) & (t < hi)
            n_dead = self.vsum(self.dev_v[self.dev_of_rows(dead)][inside], dead["n"].to_numpy()[inside])
        self.emit(
            {"dead": n_dead, "stored": parts["stored"]},
            lambda x, _s: Value(
                "rejected_reading_rate",
                _r(_pct(x["dead"], x["stored"] + x["dead"])),
                {"dead_letters": int(x["dead"]), "stored_readings": int(x["stored"])},
                note="readings rejected from registered devices (a row's counted rest included)",
            ),
        )
        self._continuous()

    def _idle(self) -> None:
        tel, reg = self.ctx.telemetry, self.ctx.registry
        n_idle_days = self.ctx.params.idle.days
        end_day = tel.day_index(self.period.closed_end(self.ctx.now))
        start_day = end_day - n_idle_days
        if start_day < 0 or end_day <= 0:
            self.emit({}, lambda _x, _s: Value("idle_device_rate", None, {"reason": "no closed days before the end"}))
            return
        cutoff = pd.Timestamp(local_midnight(tel.days[start_day], self.period.tz)).tz_convert("UTC")
        eligible = self.active_end & (reg.devices["since"] <= cutoff).to_numpy()
        d = tel.daily
        day = d["day"].to_numpy()
        recent = d[(day >= start_day) & (day < end_day) & (d["readings"].to_numpy() > 0)]
        heard = np.zeros(len(reg.devices), dtype=bool)
        heard[self.dev_of_rows(recent)] = True
        parts = {"idle": self.vsum(self.dev_v, eligible & ~heard), "eligible": self.vsum(self.dev_v, eligible)}
        self.emit(
            parts,
            lambda x, _s: Value(
                "idle_device_rate",
                _r(_pct(x["idle"], x["eligible"])),
                {"idle_devices": int(x["idle"]), "active_devices": int(x["eligible"]), "silent_days": n_idle_days},
            ),
        )

    def _continuous(self) -> None:
        ctx, reg, p = self.ctx, self.ctx.registry, self.ctx.params.continuous_monitoring
        area = reg.plots["area_mu"].to_numpy(dtype=float)
        plot_id = reg.devices["plot_id"].to_numpy()
        continuous = np.zeros(len(reg.plots), dtype=bool)
        if self.ndays and len(self.daily):
            devs = self.dev_of_rows(self.daily)
            good = self.row_counted & (self.row_completeness >= p.day_completeness_pct / 100.0)
            plots = plot_id[devs[good]]
            days = self.daily["day"].to_numpy()[good]
            keep = pd.notna(plots)
            pairs = pd.DataFrame({"plot": plots[keep].astype(int), "day": days[keep]}).drop_duplicates()
            good_days = pairs.groupby("plot").size()
            need = p.days_share_pct / 100.0 * self.ndays
            ok = set(good_days[good_days >= need - 1e-9].index)
            continuous = reg.plots["id"].isin(ok).to_numpy()
        parts = {
            "area": self.vsum(ctx.plot_v, area),
            "area_ok": self.vsum(ctx.plot_v, area * continuous),
            "plots": self.vsum(ctx.plot_v),
            "plots_ok": self.vsum(ctx.plot_v, continuous),
        }
        ndays = self.ndays
        rule = f">= {p.day_completeness_pct} % of expected readings on >= {p.days_share_pct} % of days"
        self.emit(
            parts,
            lambda x, _s: Value(
                "continuous_monitoring_share",
                _r(_pct(x["area_ok"], x["area"])) if ndays else None,
                {
                    "area_mu_continuous": _r(x["area_ok"], 2),
                    "area_mu": _r(x["area"], 2),
                    "plots_continuous": int(x["plots_ok"]),
                    "plots": int(x["plots"]),
                    "days": ndays,
                    "rule": rule,
                },
            ),
        )

    # -------------------------------------------------------- telemetry: risks

    def _plot_days(self, column: str, how: str) -> pd.DataFrame:
        """Per plot and day: the daily mean (how='mean', from sums and counts) or min of a metric,
        with the plot's crop and village index."""
        ctx, reg = self.ctx, self.ctx.registry
        d = self.daily[self.daily[column].notna()]
        plot_of = reg.devices["plot_id"].to_numpy()
        d = d.assign(plot=plot_of[self.dev_of_rows(d)])
        d = d[pd.notna(d["plot"])]
        if how == "mean":
            g = d.groupby(["plot", "day"])[["soil_sum", "soil_count"]].sum()
            g = g[g["soil_count"] > 0]
            out = (g["soil_sum"] / g["soil_count"]).rename("value").reset_index()
        else:
            out = d.groupby(["plot", "day"])[column].min().rename("value").reset_index()
        out["plot"] = out["plot"].astype(int)
        out["crop"] = out["plot"].map(ctx.plot_crop)
        out["v"] = out["plot"].map(ctx.plot_vidx).fillna(-1).astype(int)
        return out

    def _crop_thresholds(self, frame: pd.DataFrame, key: str) -> list[dict[str, float]]:
        """Per village index, then the county last: {crop: threshold} for the crops observed there."""
        by_v: list[dict[str, float]] = [{} for _ in range(self.V + 1)]
        for v, crop in frame[["v", "crop"]].drop_duplicates().itertuples(index=False):
            if isinstance(crop, str):
                t = crops.thresholds(crop)[key]
                by_v[self.V][crop] = t
                if v >= 0:
                    by_v[v][crop] = t
        return [dict(sorted(x.items())) for x in by_v]

    def risks(self) -> None:
        ctx, V = self.ctx, self.V
        soil = self._plot_days("soil_sum", "mean")
        thresholds = {c: crops.thresholds(c)["soil_moisture_min"] for c in set(soil["crop"].dropna())}
        soil["alert"] = soil["value"] < soil["crop"].map(thresholds)
        by_crop = self._crop_thresholds(soil, "soil_moisture_min")
        plots_observed = soil[["plot", "v"]].drop_duplicates()
        self.emit(
            {
                "below": self.vsum(soil["v"].to_numpy(), soil["alert"].to_numpy()),
                "observed": self.vsum(soil["v"].to_numpy()),
                "plots": self.vsum(plots_observed["v"].to_numpy()),
            },
            lambda x, s: Value(
                "drought_plot_days",
                x["below"] if x["observed"] else None,
                {
                    "plot_days_below_threshold": int(x["below"]),
                    "plot_days_observed": int(x["observed"]),
                    "plots_observed": int(x["plots"]),
                    "soil_moisture_min_by_crop": by_crop[V if s is None else s],
                },
            ),
        )
        paddy = self._plot_days("paddy_min", "min")
        days, windows = ctx.telemetry.days, ctx.season
        paddy = paddy[np.array([_in_season(days[int(i)], windows) for i in paddy["day"]], dtype=bool)]
        thresholds = {c: crops.thresholds(c)["paddy_water_min_cm"] for c in set(paddy["crop"].dropna())}
        paddy = paddy.assign(alert=paddy["value"] < paddy["crop"].map(thresholds))
        by_crop_p = self._crop_thresholds(paddy, "paddy_water_min_cm")
        season = [f"{a}..{b}" for a, b in ctx.params.paddy.season]
        self.emit(
            {
                "below": self.vsum(paddy["v"].to_numpy(), paddy["alert"].to_numpy()),
                "observed": self.vsum(paddy["v"].to_numpy()),
            },
            lambda x, s: Value(
                "paddy_dry_plot_days",
                x["below"] if x["observed"] else None,
                {
                    "plot_days_below_threshold": int(x["below"]),
                    "plot_days_observed_in_season": int(x["observed"]),
                    "paddy_water_min_cm_by_crop": by_crop_p[V if s is None else s],
                    "season": season,
                },
            ),
        )
        fever = self._fever()
        self._nh3()
        self._clearance(
            {
                "drought": soil.rename(columns={"plot": "unit"}),
                "paddy": paddy.rename(columns={"plot": "unit"}),
                "fever": fever,
            }
        )

    def _fever(self) -> pd.DataFrame:
        reg, tel, p = self.ctx.registry, self.ctx.telemetry, self.ctx.params.fever
        animal_of = reg.devices["animal_id"].to_numpy()
        collar = (reg.devices["kind"] == "collar").to_numpy()
        d = self.daily[self.daily["readings"].to_numpy() > 0]
        devs = self.dev_of_rows(d)
        keep = collar[devs] & pd.notna(animal_of[devs])
        monitored = pd.DataFrame(
            {"unit": animal_of[devs][keep], "day": d["day"].to_numpy()[keep], "v": self.dev_v[devs][keep]}
        )
        monitored = monitored.drop_duplicates(["unit", "day"])
        f = tel.fever
        fday = f["day"].to_numpy()
        f = f[(fday >= self.a) & (fday < self.b) & (f["hours"].to_numpy() >= p.min_hours)]
        fdev = self.dev_of_rows(f)
        fever_days = pd.DataFrame({"unit": animal_of[fdev], "day": f["day"].to_numpy(), "alert": True})
        fever_days = fever_days[pd.notna(fever_days["unit"])].drop_duplicates(["unit", "day"])
        monitored = monitored.merge(fever_days, on=["unit", "day"], how="left")
        monitored["alert"] = monitored["alert"].fillna(False).astype(bool)
        per = p.per_head_days
        rule = f"hourly mean {p.metric} > {p.above_c} for >= {p.min_hours} h"
        self.emit(
            {
                "fever": self.vsum(monitored["v"].to_numpy(), monitored["alert"].to_numpy()),
                "days": self.vsum(monitored["v"].to_numpy()),
            },
            lambda x, _s: Value(
                "fever_alerts",
                _r(per * x["fever"] / x["days"]) if x["days"] else None,
                {
                    "fever_animal_days": int(x["fever"]),
                    "monitored_animal_days": int(x["days"]),
                    "per_head_days": per,
                    "rule": rule,
                },
            ),
        )
        return monitored

    def _nh3(self) -> None:
        ctx, tel, reg = self.ctx, self.ctx.telemetry, self.ctx.registry
        barn = (reg.devices["kind"] == "barn").to_numpy()
        d = self.daily
        obs = d[barn[self.dev_of_rows(d)] & (d["readings"].to_numpy() > 0)]
        n = tel.nh3
        nday = n["day"].to_numpy()
        n = n[barn[self.dev_of_rows(n)] & (nday >= self.a) & (nday < self.b)]
        rule = f"hourly mean nh3_ppm > {ctx.params.nh3.above_ppm}"
        self.emit(
            {
                "hours": self.vsum(self.dev_v[self.dev_of_rows(n)], n["hours"].to_numpy()),
                "observed": self.vsum(self.dev_v[self.dev_of_rows(obs)]),
            },
            lambda x, _s: Value(
                "barn_nh3_exceedance_hours",
                x["hours"] if x["observed"] else None,
                {"hours_above": int(x["hours"]), "barn_days_observed": int(x["observed"]), "rule": rule},
            ),
        )

    def _clearance(self, series: dict[str, pd.DataFrame]) -> None:
        """Episodes per plot or animal: days from the first alert day to the next normal day."""
        rows: list[tuple[int, str, int | None]] = []  # village, type, duration (None: still open)
        for name, frame in series.items():
            f = frame.sort_values(["unit", "day"])
            units, days, alerts, vs = (f[c].to_numpy() for c in ("unit", "day", "alert", "v"))
            start = None
            for i in range(len(f)):
                if i and units[i] != units[i - 1]:
                    if start is not None:
                        rows.append((int(vs[i - 1]), name, None))
                    start = None
                if alerts[i] and start is None:
                    start = days[i]
                elif not alerts[i] and start is not None:
                    rows.append((int(vs[i]), name, int(days[i] - start)))
                    start = None
            if start is not None:
                rows.append((int(vs[len(f) - 1]), name, None))
        names = list(series)
        durations: dict[int | None, list[int]] = defaultdict(list)
        tally: dict[int | None, dict[str, dict[str, int]]] = defaultdict(
            lambda: {n: {"cleared": 0, "open": 0} for n in names}
        )
        for v, name, days_ in rows:
            for key in (v, None):
                tally[key][name]["open" if days_ is None else "cleared"] += 1
                if days_ is not None:
                    durations[key].append(days_)

        def make(_x: dict[str, float], s: int | None) -> Value:
            cleared, by_type = durations.get(s, []), tally[s]
            return Value(
                "alert_clearance_days",
                float(statistics.median(cleared)) if cleared else None,
                {
                    "episodes_cleared": len(cleared),
                    "episodes_open": sum(x["open"] for x in by_type.values()),
                    "by_type": by_type,
                },
                note="episodes still open at the period's end are left out",
            )

        self.emit({}, make)

    # -------------------------------------------------------- ledger

    def ledger(self) -> None:
        ledger = self.ctx.ledger
        lots = ledger.lots
        years = set(self.period.years())
        lo, hi = self.period.start_ms(), self.period.end_ms()
        by_year = lots["harvest_year"].isin(years)
        by_created = lots["harvest_year"].isna() & (lots["created_ms"] >= lo) & (lots["created_ms"] < hi)
        lots = lots[(by_year | by_created) & (lots["v"] >= 0)]
        v = lots["v"].to_numpy()
        anchored, verified = lots["anchored"].to_numpy(), lots["verified"].to_numpy()
        awaiting = lots["awaiting"].to_numpy() if "awaiting" in lots else np.zeros(len(lots), dtype=bool)
        harvest, kg = lots["harvest"].to_numpy(dtype=bool), lots["kg"].to_numpy(dtype=float)
        weighed = harvest & ~np.isnan(kg)
        kg0 = np.nan_to_num(kg)
        year_list = self.period.years()
        self.emit(
            {"anchored": self.vsum(v, anchored), "awaiting": self.vsum(v, awaiting), "lots": self.vsum(v)},
            lambda x, _s: Value(
                "trace_lot_coverage",
                _r(_pct(x["anchored"], x["lots"])),
                {
                    "lots_anchored": int(x["anchored"]),
                    "lots_awaiting_confirmation": int(x["awaiting"]),
                    "lots": int(x["lots"]),
                    "years": year_list,
                },
                note=_awaiting_note(int(x["awaiting"]), "lots"),
            ),
        )
        check = "anchor states" if self.ctx.chain is None else "full verification against the chain"
        self.emit(
            {
                "kg": self.vsum(v, kg0 * weighed),
                "kg_ok": self.vsum(v, kg0 * (weighed & verified)),
                "lots_ok": self.vsum(v, harvest & verified),
                "lots_awaiting": self.vsum(v, harvest & awaiting),
                "lots": self.vsum(v, harvest),
                "no_weight": self.vsum(v, harvest & np.isnan(kg)),
            },
            lambda x, _s: Value(
                "traced_output_share",
                _r(_pct(x["kg_ok"], x["kg"])),
                {
                    "kg_verified": _r(x["kg_ok"], 3),
                    "kg": _r(x["kg"], 3),
                    "harvest_lots_verified": int(x["lots_ok"]),
                    "harvest_lots": int(x["lots"]),
                    "lots_without_weight": int(x["no_weight"]),
                    "harvest_lots_awaiting_confirmation": int(x["lots_awaiting"]),
                    "check": check,
                },
                note=_awaiting_note(int(x["lots_awaiting"]), "harvest lots"),
            ),
        )
        i = ledger.inspections
        day = i["day"].to_numpy()
        i = i[(day >= self.period.start) & (day < self.period.end)] if len(i) else i
        iv = i["v"].to_numpy()
        self.emit(
            {"passed": self.vsum(iv, i["passed"].to_numpy(dtype=float)), "all": self.vsum(iv)},
            lambda x, _s: Value(
                "inspection_pass_rate",
                _r(_pct(x["passed"], x["all"])),
                {"passed": int(x["passed"]), "inspections": int(x["all"])},
            ),
        )
        a = ledger.anchored
        a = a[(a["block_ms"] >= lo) & (a["block_ms"] < hi) & (a["v"] >= 0)]
        a = a.assign(minutes=(a["block_ms"] - a["created_ms"]) / 60_000.0)

        groups = {int(k): g for k, g in a.groupby("v")} if len(a) else {}

        def records(_x: dict[str, float], s: int | None) -> Value:
            e = a if s is None else groups.get(s, a.iloc[0:0])
            return Value(
                "anchored_records",
                float(len(e)),
                {
                    "records": len(e),
                    "by_kind": {str(k): int(n) for k, n in e["kind"].value_counts().sort_index().items()},
                },
            )

        def latency(_x: dict[str, float], s: int | None) -> Value:
            m = (a if s is None else groups.get(s, a.iloc[0:0]))["minutes"]
            return Value(
                "anchor_latency_median",
                _r(float(m.median())) if len(m) else None,
                {
                    "records": len(m),
                    "p90_min": _r(float(m.quantile(0.9))) if len(m) else None,
                    "max_min": _r(float(m.max())) if len(m) else None,
                },
            )

        self.emit({}, records)
        self.emit({}, latency)

    # -------------------------------------------------------- all

    def compute(self) -> dict[int | None, dict[str, Value]]:
        self.registry()
        self.devices()
        self.risks()
        self.ledger()
        if not self.ndays:
            for values in self.values.values():
                for v in values.values():
                    if self.ctx.catalogue.by_id[v.indicator].source == "influx" and v.indicator != "device_online_rate":
                        v.value = None
                        v.note = "no closed days of the period yet"
        return self.values


# computed_by in analytics/indicators.yaml -> the method that emits those indicators
FUNCTIONS: dict[str, Callable[[_Cut], Any]] = {
    "registry": _Cut.registry,
    "devices": _Cut.devices,
    "idle": _Cut._idle,
    "continuous": _Cut._continuous,
    "risks": _Cut.risks,
    "fever": _Cut._fever,
    "nh3": _Cut._nh3,
    "clearance": _Cut._clearance,
    "ledger": _Cut.ledger,
}
if set(FUNCTIONS) != set(COMPUTE_FUNCTIONS):  # pragma: no cover - a programming error, caught on import
    raise ImportError(f"analytics.compute.FUNCTIONS {sorted(FUNCTIONS)} != catalogue COMPUTE_FUNCTIONS")


def _in_season(day: date, windows: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    md = (day.month, day.day)
    return any(a <= md <= b for a, b in windows)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


@dataclass
class _Context:
    registry: Registry
    telemetry: Telemetry
    ledger: LedgerData
    params: ComputationParams
    catalogue: Catalogue
    now: datetime
    chain: Any = None
    # village index arrays (built once): village of each device, plot and herd, -1 outside the county
    village_codes: list[str] = field(init=False)
    vidx: dict[str, int] = field(init=False)
    dev_v: np.ndarray = field(init=False)
    plot_v: np.ndarray = field(init=False)
    herd_v: np.ndarray = field(init=False)
    plot_vidx: dict[int, int] = field(init=False)
    plot_crop: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        reg = self.registry
        self.village_codes = list(reg.villages)
        self.vidx = {c: i for i, c in enumerate(self.village_codes)}
        self.dev_v = reg.devices["village"].map(self.vidx).fillna(-1).to_numpy(dtype=int)
        self.plot_v = reg.plots["village"].map(self.vidx).fillna(-1).to_numpy(dtype=int)
        self.herd_v = reg.herds["village"].map(self.vidx).fillna(-1).to_numpy(dtype=int)
        self.plot_vidx = dict(zip(reg.plots["id"], self.plot_v, strict=True))
        self.plot_crop = dict(zip(reg.plots["id"], reg.plots["crop"], strict=True))
        for frame in (self.ledger.lots, self.ledger.inspections, self.ledger.anchored):
            frame["v"] = frame["village"].map(self.vidx).fillna(-1).astype(int)

    @property
    def season(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        def md(text: str) -> tuple[int, int]:
            m, d = text.split("-")
            return int(m), int(d)

        return [(md(a), md(b)) for a, b in self.params.paddy.season]


# ---------------------------------------------------------------- statistics and the composite index


def statistics_values(
    session: Session, county: str, years: Iterable[int], catalogue: Catalogue
) -> dict[int, dict[str, Value]]:
    """Imported county statistics (analytics.statistics_io) per year as Values."""
    from analytics.statistics_io import load_statistics

    years = sorted(set(years))
    long = load_statistics(session, counties=[county], years=years)
    known = {i.id for i in catalogue.of_source("statistics")}
    out: dict[int, dict[str, Value]] = {y: {} for y in years}
    for row in long.itertuples(index=False):
        if row.indicator_id in known:
            out[int(row.year)][row.indicator_id] = Value(
                row.indicator_id, float(row.value), {"year": int(row.year), "source_note": row.source_note}
            )
    return out


def composite(
    session: Session, county: str, year: int, index_id: str = "dvi", catalogue: Catalogue | None = None
) -> dict[str, Any]:
    """The county's composite index (entropy weights pooled over every county-year with all members):
    weights, the county's score and rank in `year` and the year before."""
    from analytics.entropy import composite_index
    from analytics.statistics_io import load_statistics, to_wide

    catalogue = catalogue or get_catalogue()
    index = catalogue.index(index_id)
    members = [m.indicator for m in index.members]
    base = {"index": index.id, "name_zh": index.name_zh, "name_en": index.name_en, "year": year}
    long = load_statistics(session, indicators=members)
    if long.empty:
        return {**base, "score": None, "reason": "no county statistics imported (village stats import / demo)"}
    wide = to_wide(long)
    wide = wide.reindex(columns=members).dropna()
    if (county, year) not in wide.index:
        return {**base, "score": None, "reason": f"county {county} has no complete {index.id} members for {year}"}
    if len(wide) < 2:
        return {**base, "score": None, "reason": "the entropy method needs at least two county-years"}
    result = composite_index(wide, index, catalogue=catalogue)
    scores = result.scores
    in_year = scores.xs(year, level="year")
    ranks = in_year.rank(ascending=False, method="min").astype(int)
    prev = scores.get((county, year - 1))
    return {
        **base,
        "score": _r(float(scores[(county, year)])),
        "previous": _r(float(prev)) if prev is not None else None,
        "rank": int(ranks[county]),
        "counties": len(in_year),
        "objects": int(result.m),
        "method": result.method,
        "weights": [
            {"indicator": ind, "dimension": r["dimension"], "weight": _r(float(r["weight"]), 6)}
            for ind, r in result.weights.iterrows()
        ],
        "dimension_weights": {k: _r(float(v), 6) for k, v in result.dimension_weights.items()},
        "dimension_scores": {k: _r(float(v)) for k, v in result.dimension_scores.loc[(county, year)].items()},
    }


# ---------------------------------------------------------------- entry point


def compute_indicators(
    session: Session,
    influx: InfluxV1 | None,
    county: str,
    period: Period,
    *,
    village: str | None = None,
    villages: bool = True,
    trend: int = 1,
    now: datetime | None = None,
    rollups: Rollups | None = None,
    catalogue: Catalogue | None = None,
    params: ComputationParams | None = None,
    statistics: bool = True,
    index_id: str | None = "dvi",
    chain: Any = None,
) -> IndicatorReport:
    """Every registry, influx and ledger indicator (plus imported statistics) for the county, its villages
    (all, or only `village`), `period` and the `trend` periods before it. `influx=None` with `rollups`
    given uses the rollups' client. See the module docstring for the definitions."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    catalogue = catalogue or get_catalogue()
    params = params or load_params()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if rollups is None:
        if influx is None:
            raise ValueError("give an InfluxDB client or a Rollups")
        rollups = Rollups(influx, tz=period.tz)
    registry = Registry.load(session, county)
    if village is not None and village not in registry.villages:
        raise KeyError(f"village {village!r} is not in county {county}")
    timings["registry_s"] = time.perf_counter() - t0
    periods = period.trend(max(0, trend))
    first = min(periods[0].start, period.closed_end(now) - timedelta(days=params.idle.days))
    end = period.closed_end(now)
    t1 = time.perf_counter()
    telemetry = load_telemetry(
        rollups,
        registry,
        first,
        end,
        session=session,
        params=params,
        online_now=now if period.contains(now) else None,
    )
    timings["telemetry_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ledger = load_ledger(session, registry, params, chain=chain, influx=rollups.influx)
    timings["ledger_s"] = time.perf_counter() - t2
    ctx = _Context(registry, telemetry, ledger, params, catalogue, now, chain)
    t3 = time.perf_counter()
    stats = statistics_values(session, county, [p.year for p in periods], catalogue) if statistics else {}
    wanted = [village] if village is not None else list(registry.villages) if villages else []
    scopes: list[int | None] = [None, *(ctx.vidx[c] for c in wanted)]
    results: dict[str, dict[str, ScopeValues]] = {}
    for p in periods:
        values = _Cut(ctx, p, scopes).compute()
        county_values = values[None]
        county_values.update(stats.get(p.year, {}))
        results[p.label] = {county: ScopeValues("county", county, registry.county.name_zh or county, p, county_values)}
        for code in wanted:
            results[p.label][code] = ScopeValues("village", code, registry.villages[code], p, values[ctx.vidx[code]])
    timings["compute_s"] = time.perf_counter() - t3
    report = IndicatorReport(
        county=county,
        county_name=registry.county.name_zh,
        period=period,
        periods=periods,
        villages={c: n for c, n in registry.villages.items() if village is None or c == village},
        results=results,
        catalogue=catalogue,
        computed_at=now,
        timings=timings,
    )
    if index_id:
        t4 = time.perf_counter()
        report.composite = composite(session, county, period.year, index_id, catalogue)
        timings["composite_s"] = time.perf_counter() - t4
    report.seconds = time.perf_counter() - t0
    timings["influx_queries"] = telemetry.queries
    return report
