"""The county digitalisation indicators computed from our own data: registry, InfluxDB rollups, ledger.

`compute_indicators(session, influx, county, period)` computes every catalogue indicator whose
source is registry, influx or ledger (and picks up the imported statistics) for the county, each
of its villages, the period and the periods before it (the trend), and returns an
`IndicatorReport`: values with their inputs (numerators, denominators, counts) so the API can show
how each one was computed, trends, village rankings and the composite index of the county.

Data volume. Telemetry is read only from the rollups (analytics/rollups.py), never as raw points:
one query per device kind over the daily rollups (one row per device-day), one per alert kind over
the hourly rollups with the alert condition in the WHERE clause (only alert-days come back), and for
the current period one `last()` per device. Registry and ledger rows are read once. Every scope
(county, village) and period is then cut from those arrays, so villages and trends cost little more.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from sqlmodel import Session, col, select

from analytics.catalogue import Catalogue, get_catalogue
from analytics.periods import Period, local_midnight
from analytics.rollups import Rollups, ident, quote
from core import crops
from core.catalogue import get_catalogue as get_device_catalogue
from core.influx import InfluxV1
from core.models import Animal, County, DeadLetter, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from ledger.anchor_models import AnchorState, AnchorWindow, GrowthSummary, LedgerLeaf, LotManifest, TelemetryDigest
from ledger.models import Facility, Inspection, Lot, LotSource, TraceEvent

PARAMS_FILE = Path(__file__).with_name("data") / "computation.yaml"
ANCHORED = (AnchorState.confirmed, AnchorState.final)
COMPUTED_SOURCES = ("registry", "influx", "ledger")
Scope = Literal["county", "village"]


@lru_cache
def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


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


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


# ---------------------------------------------------------------- registry snapshot


@dataclass
class Registry:
    """The county's villages, plots, herds, animals and devices, as arrays for fast cuts by village."""

    county: County
    villages: dict[str, str]
    plots: pd.DataFrame  # id, plot_no, village, area_mu, crop
    herds: pd.DataFrame  # id, herd_no, village, head
    devices: pd.DataFrame  # id, kind, plot_id, herd_id, animal_id, village, since, until, interval_s

    @classmethod
    def load(cls, session: Session, county_code: str) -> Registry:
        county = session.get(County, county_code)
        if county is None:
            raise KeyError(f"unknown county {county_code!r}: not in the registry")
        vrows = session.exec(
            select(Village.code, Village.name_zh, Village.name_en)
            .join(Township, col(Township.code) == col(Village.township_code))
            .where(Township.county_code == county_code)
            .order_by(col(Village.code))
        ).all()
        villages = {code: (zh or en or code) for code, zh, en in vrows}
        codes = list(villages)
        plots = pd.DataFrame(
            session.exec(
                select(Plot.id, Plot.plot_no, Plot.village_code, Plot.area_mu, Plot.crop).where(
                    col(Plot.village_code).in_(codes)
                )
            ).all(),
            columns=["id", "plot_no", "village", "area_mu", "crop"],
        )
        herd_rows = session.exec(
            select(Herd.id, Herd.herd_no, Herd.village_code, Herd.head_count).where(col(Herd.village_code).in_(codes))
        ).all()
        herds = pd.DataFrame(herd_rows, columns=["id", "herd_no", "village", "head_count"])
        animals = pd.DataFrame(
            session.exec(select(Animal.id, Animal.herd_id).where(col(Animal.herd_id).in_(list(herds["id"])))).all(),
            columns=["id", "herd_id"],
        )
        registered = animals.groupby("herd_id").size()
        herds["animals"] = herds["id"].map(registered).fillna(0).astype(int)
        herds["head"] = herds[["head_count", "animals"]].max(axis=1)
        plot_village = dict(zip(plots["id"], plots["village"], strict=True))
        herd_village = dict(zip(herds["id"], herds["village"], strict=True))
        animal_herd = dict(zip(animals["id"], animals["herd_id"], strict=True))
        dev_rows = session.exec(
            select(
                Device.id,
                Device.kind,
                Device.plot_id,
                Device.herd_id,
                Device.animal_id,
                Device.status,
                Device.created_at,
                Device.provisioned_at,
                Device.revoked_at,
            ).where(
                col(Device.plot_id).in_(list(plot_village))
                | col(Device.herd_id).in_(list(herd_village))
                | col(Device.animal_id).in_(list(animal_herd))
            )
        ).all()
        intervals = {k: v.interval_s for k, v in get_device_catalogue().kinds.items()}
        rows = []
        for dev_id, kind, plot_id, herd_id, animal_id, status, created, provisioned, revoked in dev_rows:
            village = (
                plot_village.get(plot_id) or herd_village.get(herd_id) or herd_village.get(animal_herd.get(animal_id))  # type: ignore[arg-type]
            )
            since = None if status == DeviceStatus.inactive else (provisioned or created)
            if status == DeviceStatus.revoked and revoked is None:
                since = None  # revoked at an unknown time: never counted as active
            rows.append(
                (
                    dev_id,
                    kind,
                    plot_id,
                    herd_id if herd_id is not None else animal_herd.get(animal_id),
                    animal_id,
                    village,
                    _utc(since),
                    _utc(revoked),
                    intervals.get(kind, 0),
                )
            )
        devices = pd.DataFrame(
            rows,
            columns=["id", "kind", "plot_id", "herd_id", "animal_id", "village", "since", "until", "interval_s"],
        )
        devices["since"] = pd.to_datetime(devices["since"], utc=True)
        devices["until"] = pd.to_datetime(devices["until"], utc=True)
        devices = devices.sort_values("id").reset_index(drop=True)
        return cls(county, villages, plots, herds, devices)

    def device_index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.devices["id"])}

    def active_at(self, moment: datetime) -> np.ndarray:
        t = pd.Timestamp(moment).tz_convert("UTC")
        d = self.devices
        return ((d["since"] <= t) & (d["until"].isna() | (d["until"] > t))).to_numpy()


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# ---------------------------------------------------------------- telemetry from the rollups


@dataclass
class Telemetry:
    """Device-day figures over the closed days [first, first + len(days)) from the rollups."""

    days: list[date]
    day_s: np.ndarray  # seconds of each local day (DST-proof)
    active: np.ndarray  # [device, day]: active during the whole day
    daily: pd.DataFrame  # dev, day, readings, soil_sum, soil_count, paddy_min (day = index into days)
    fever: pd.DataFrame  # dev, day, hours
    nh3: pd.DataFrame  # dev, day, hours
    online: np.ndarray | None  # [device]: reported within the online window (current period only)
    dead: pd.DataFrame  # dev, ms
    queries: int = 0

    def day_index(self, d: date) -> int:
        if not self.days:
            return 0
        return min(max((d - self.days[0]).days, 0), len(self.days))


def load_telemetry(
    rollups: Rollups,
    registry: Registry,
    first: date,
    end: date,
    *,
    session: Session,
    params: dict[str, Any],
    online_now: datetime | None,
) -> Telemetry:
    """Read what the indicators need for the local days [first, end) (closed days only)."""
    tz = rollups.tz
    days = [first + timedelta(days=i) for i in range(max(0, (end - first).days))]
    bounds = [local_midnight(d, tz) for d in [*days, end]] if days else []
    day_s = np.array([(b - a).total_seconds() for a, b in pairwise(bounds)], dtype=float)
    devices = registry.devices
    n = len(devices)
    idx = registry.device_index()
    active = np.zeros((n, len(days)), dtype=bool)
    if days and n:
        since = devices["since"].to_numpy(dtype="datetime64[ns]")
        until = devices["until"].to_numpy(dtype="datetime64[ns]")
        starts = np.array([np.datetime64(b.astimezone(UTC).replace(tzinfo=None), "ns") for b in bounds[:-1]])
        ends = np.array([np.datetime64(b.astimezone(UTC).replace(tzinfo=None), "ns") for b in bounds[1:]])
        ok_since = ~np.isnat(since)[:, None] & (since[:, None] <= starts[None, :])
        ok_until = np.isnat(until)[:, None] | (until[:, None] >= ends[None, :])
        active = ok_since & ok_until
    empty = pd.DataFrame({"dev": pd.Series(dtype=int), "day": pd.Series(dtype=int), "hours": pd.Series(dtype=int)})
    tel = Telemetry(days, day_s, active, _empty_daily(), empty, empty.copy(), None, _empty_dead())
    if not days and online_now is None:
        return tel
    county = registry.county.code
    start_ms = int(bounds[0].timestamp() * 1000) if days else 0
    end_ms = int(bounds[-1].timestamp() * 1000) if days else 0
    where = f'"county" = {quote(county)} AND time >= {start_ms}ms AND time < {end_ms}ms'
    kinds = [k for k in rollups.kinds if k in set(devices["kind"])]
    to_day = _day_mapper(days[0] if days else first, tz)
    frames = []
    for kind in kinds if days else []:
        metrics = rollups.metrics(kind)
        cols = [f"count_{m}" for m in metrics]
        extra = {"soil": [f"sum_{params['drought']['metric']}", f"count_{params['drought']['metric']}"]}.get(kind, [])
        extra += {"paddy": [f"min_{params['paddy']['metric']}"]}.get(kind, [])
        fields = list(dict.fromkeys(cols + extra))
        select_list = ", ".join(ident(c) for c in fields)
        q = f'SELECT {select_list} FROM {rollups.source(kind, "1d")} WHERE {where} GROUP BY "device"'
        tel.queries += 1
        for s in rollups.influx.query(q):
            dev = idx.get(s.get("tags", {}).get("device", ""))
            if dev is None:
                continue
            f = pd.DataFrame(s["values"], columns=s["columns"])
            out = pd.DataFrame({"dev": dev, "day": to_day(f["time"])})
            out["readings"] = f[cols].max(axis=1).fillna(0).astype(int)
            if kind == "soil":
                m = params["drought"]["metric"]
                out["soil_sum"] = f[f"sum_{m}"].astype(float)
                out["soil_count"] = f[f"count_{m}"].astype(float)
            if kind == "paddy":
                out["paddy_min"] = f[f"min_{params['paddy']['metric']}"].astype(float)
            frames.append(out)
    if frames:
        tel.daily = pd.concat([_empty_daily(), *frames], ignore_index=True)
    if days and "collar" in kinds:
        p = params["fever"]
        tel.fever = _alert_days(rollups, "collar", p["metric"], p["above_c"], where, idx, to_day)
        tel.queries += 1
    if days and "barn" in kinds:
        p = params["nh3"]
        tel.nh3 = _alert_days(rollups, "barn", p["metric"], p["above_ppm"], where, idx, to_day)
        tel.queries += 1
    if online_now is not None:
        tel.online = _online(rollups, registry, online_now, params["online"]["intervals"], idx)
        tel.queries += len(kinds)
    if days:
        tel.dead = _dead_letters(session, idx, bounds[0], bounds[-1])
    return tel


def _empty_daily() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dev": pd.Series(dtype=int),
            "day": pd.Series(dtype=int),
            "readings": pd.Series(dtype=int),
            "soil_sum": pd.Series(dtype=float),
            "soil_count": pd.Series(dtype=float),
            "paddy_min": pd.Series(dtype=float),
        }
    )


def _empty_dead() -> pd.DataFrame:
    return pd.DataFrame({"dev": pd.Series(dtype=int), "ms": pd.Series(dtype="int64")})


def _day_mapper(first: date, tz: str) -> Any:
    """Bucket start times (ms, local midnights) -> index of the local day from `first`."""
    origin = pd.Timestamp(first)

    def to_day(ms: pd.Series) -> np.ndarray:
        local = pd.to_datetime(ms, unit="ms", utc=True).dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
        return ((local - origin) // pd.Timedelta(days=1)).to_numpy(dtype=int)

    return to_day


def _alert_days(
    rollups: Rollups, kind: str, metric: str, above: float, where: str, idx: dict[str, int], to_day: Any
) -> pd.DataFrame:
    """Device-days with hours whose hourly mean of `metric` is above `above`: (dev, day, hours)."""
    mean = ident(f"mean_{metric}")
    q = (
        f"SELECT count({mean}) FROM {rollups.source(kind, '1h')} WHERE {where} AND {mean} > {float(above)} "
        f'GROUP BY time(1d), "device" fill(none) tz({quote(rollups.tz)})'
    )
    frames = []
    for s in rollups.influx.query(q):
        dev = idx.get(s.get("tags", {}).get("device", ""))
        if dev is None:
            continue
        f = pd.DataFrame(s["values"], columns=s["columns"])
        frames.append(pd.DataFrame({"dev": dev, "day": to_day(f["time"]), "hours": f["count"].astype(int)}))
    if not frames:
        return pd.DataFrame({"dev": pd.Series(dtype=int), "day": pd.Series(dtype=int), "hours": pd.Series(dtype=int)})
    return pd.concat(frames, ignore_index=True)


def _online(rollups: Rollups, registry: Registry, now: datetime, intervals: float, idx: dict[str, int]) -> np.ndarray:
    """Devices whose last reading is at most `intervals` catalogue intervals before `now` (one `last()`
    per device over that window of the raw series: InfluxDB does the work, one row per device comes back)."""
    online = np.zeros(len(registry.devices), dtype=bool)
    now_ms = int(now.timestamp() * 1000)
    county = quote(registry.county.code)
    for kind in sorted(set(registry.devices["kind"])):
        if kind not in rollups.catalogue.kinds:
            continue
        window_ms = int(intervals * rollups.catalogue.kinds[kind].interval_s * 1000)
        metric = rollups.metrics(kind)[0]
        q = (
            f'SELECT last({ident(metric)}) FROM {rollups.raw_source(kind)} WHERE "county" = {county} '
            f'AND time > {now_ms - window_ms}ms AND time <= {now_ms}ms GROUP BY "device"'
        )
        for s in rollups.influx.query(q):
            dev = idx.get(s.get("tags", {}).get("device", ""))
            if dev is not None:
                online[dev] = True
    return online


def _dead_letters(session: Session, idx: dict[str, int], start: datetime, end: datetime) -> pd.DataFrame:
    rows = session.exec(
        select(DeadLetter.device_id, DeadLetter.received_at).where(
            col(DeadLetter.received_at) >= start.astimezone(UTC),
            col(DeadLetter.received_at) < end.astimezone(UTC),
            col(DeadLetter.device_id).is_not(None),
        )
    ).all()
    out = [(idx[d], int(_utc(t).timestamp() * 1000)) for d, t in rows if d in idx and t is not None]  # type: ignore[union-attr]
    return pd.DataFrame(out, columns=["dev", "ms"]) if out else _empty_dead()


# ---------------------------------------------------------------- ledger snapshot


@dataclass
class LedgerData:
    lots: pd.DataFrame  # id, village, kg, unit, harvest_year, created_ms, harvest, anchored, verified
    inspections: pd.DataFrame  # lot_id, village, day (date), passed
    anchored: pd.DataFrame  # kind, village, created_ms, block_ms


def load_ledger(
    session: Session, registry: Registry, params: dict[str, Any], *, chain: Any = None, influx: InfluxV1 | None = None
) -> LedgerData:
    villages = set(registry.villages)
    farm_village = dict(session.exec(select(Farm.id, Farm.village_code)).all())
    facility_village = dict(session.exec(select(Facility.id, Facility.village_code)).all())
    plot_village = dict(zip(registry.plots["id"], registry.plots["village"], strict=True))
    herd_village = dict(zip(registry.herds["id"], registry.herds["village"], strict=True))
    source_village: dict[int, str] = {}
    harvest: set[int] = set()
    for lot_id, plot_id, herd_id in session.exec(select(LotSource.lot_id, LotSource.plot_id, LotSource.herd_id)).all():
        harvest.add(lot_id)
        v = plot_village.get(plot_id) or herd_village.get(herd_id)
        if v:
            source_village.setdefault(lot_id, v)
    kg_per = params["trace"]["kg_per_unit"]
    lots = []
    for lot in session.exec(select(Lot)).all():
        village = farm_village.get(lot.farm_id) or facility_village.get(lot.facility_id) or source_village.get(lot.id)  # type: ignore[arg-type]
        if village not in villages:
            continue
        factor = kg_per.get(lot.unit)
        kg = lot.quantity * factor if lot.quantity is not None and factor is not None else None
        created = _utc(lot.created_at)
        lots.append(
            (lot.id, village, kg, lot.unit, lot.harvest_year, int(created.timestamp() * 1000), lot.id in harvest)
        )  # type: ignore[union-attr]
    frame = pd.DataFrame(lots, columns=["id", "village", "kg", "unit", "harvest_year", "created_ms", "harvest"])
    windows = {
        seq: (state, _utc(bt))
        for seq, state, bt in session.exec(select(AnchorWindow.seq, AnchorWindow.state, AnchorWindow.block_time)).all()
    }
    good = {seq for seq, (state, _) in windows.items() if state in ANCHORED}
    lot_ids = [int(i) for i in frame["id"]]
    latest: dict[int, LotManifest] = {}
    for m in session.exec(select(LotManifest).where(col(LotManifest.lot_id).in_(lot_ids))).all():
        if m.lot_id not in latest or m.version > latest[m.lot_id].version:
            latest[m.lot_id] = m
    manifest_window = _leaf_windows_by_record(session, "manifest/1", [m.id for m in latest.values() if m.id])
    listed = sorted({leaf for m in latest.values() for leaf in m.content.get("leaves", [])})
    leaf_window = _leaf_windows(session, listed)
    anchored_lots, verified_lots = set(), set()
    for lot_id, m in latest.items():
        if manifest_window.get(m.id) in good:  # type: ignore[arg-type]
            anchored_lots.add(lot_id)
            if all(leaf_window.get(leaf) in good for leaf in m.content.get("leaves", [])):
                verified_lots.add(lot_id)
    if chain is not None:  # the full check: every record recomputed and proven against the chain
        from core.settings import get_settings
        from ledger.verify import VERIFIED, verify_lot

        verified_lots = set()
        for lot in session.exec(select(Lot).where(col(Lot.id).in_([i for i in lot_ids if i in harvest]))).all():
            if verify_lot(session, lot, chain, influx, get_settings()).status == VERIFIED:
                verified_lots.add(lot.id)
    frame["anchored"] = frame["id"].isin(anchored_lots)
    frame["verified"] = frame["id"].isin(verified_lots)
    lot_village = dict(zip(frame["id"], frame["village"], strict=True))
    insp = [
        (lot_id, lot_village[lot_id], sampled, passed)
        for lot_id, sampled, passed in session.exec(
            select(Inspection.lot_id, Inspection.sampled_on, Inspection.passed).where(
                col(Inspection.lot_id).in_(lot_ids)
            )
        ).all()
    ]
    inspections = pd.DataFrame(insp, columns=["lot_id", "village", "day", "passed"])
    anchored = _anchored_leaves(session, good, windows, lot_village, registry)
    return LedgerData(frame, inspections, anchored)


def _chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _leaf_windows(session: Session, leaves: Sequence[str]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for part in _chunks(list(leaves)):
        out.update(
            dict(
                session.exec(select(LedgerLeaf.leaf, LedgerLeaf.window_seq).where(col(LedgerLeaf.leaf).in_(part))).all()
            )
        )
    return out


def _leaf_windows_by_record(session: Session, kind: str, record_ids: Sequence[int]) -> dict[int, int | None]:
    out: dict[int, int | None] = {}
    for part in _chunks(list(record_ids)):
        rows = session.exec(
            select(LedgerLeaf.record_id, LedgerLeaf.window_seq).where(
                LedgerLeaf.kind == kind, col(LedgerLeaf.record_id).in_(part)
            )
        ).all()
        out.update(dict(rows))
    return out


def _anchored_leaves(
    session: Session,
    good: set[int],
    windows: dict[int, tuple[Any, datetime | None]],
    lot_village: dict[int, str],
    registry: Registry,
) -> pd.DataFrame:
    """Leaves in confirmed or final windows with the village of their record (kind, village, created, block)."""
    rows = session.exec(
        select(LedgerLeaf.kind, LedgerLeaf.record_id, LedgerLeaf.created_at, LedgerLeaf.window_seq).where(
            col(LedgerLeaf.window_seq).in_(sorted(good))
        )
    ).all()
    by_kind: dict[str, set[int]] = defaultdict(set)
    for kind, record_id, _, _ in rows:
        by_kind[kind].add(record_id)

    def lots_of(model: Any, ids: set[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for part in _chunks(sorted(ids)):
            for rid, lot_id in session.exec(select(model.id, model.lot_id).where(col(model.id).in_(part))).all():
                if lot_id in lot_village:
                    out[rid] = lot_village[lot_id]
        return out

    villages = set(registry.villages)
    by_no = {("plot", str(k)): v for k, v in zip(registry.plots["plot_no"], registry.plots["village"], strict=True)} | {
        ("herd", str(k)): v for k, v in zip(registry.herds["herd_no"], registry.herds["village"], strict=True)
    }
    village_of: dict[str, dict[int, str]] = {
        "lot/1": {i: lot_village[i] for i in by_kind.get("lot/1", set()) if i in lot_village},
        "inspection/1": lots_of(Inspection, by_kind.get("inspection/1", set())),
        "manifest/1": lots_of(LotManifest, by_kind.get("manifest/1", set())),
        "growth/1": lots_of(GrowthSummary, by_kind.get("growth/1", set())),
        "event/1": {},
        "digest/1": {},
    }
    for part in _chunks(sorted(by_kind.get("event/1", set()))):
        for rid, loc in session.exec(
            select(TraceEvent.id, TraceEvent.biz_location).where(col(TraceEvent.id).in_(part))
        ).all():
            if loc in villages:
                village_of["event/1"][rid] = loc
    for part in _chunks(sorted(by_kind.get("digest/1", set()))):
        for rid, tag, value in session.exec(
            select(TelemetryDigest.id, TelemetryDigest.tag, TelemetryDigest.value).where(
                col(TelemetryDigest.id).in_(part)
            )
        ).all():
            if (tag, value) in by_no:
                village_of["digest/1"][rid] = by_no[(tag, value)]
    out = []
    for kind, record_id, created, seq in rows:
        village = village_of.get(kind, {}).get(record_id)
        block = windows[seq][1]
        if village is None or block is None or created is None:
            continue
        out.append((kind, village, int(_utc(created).timestamp() * 1000), int(block.timestamp() * 1000)))  # type: ignore[union-attr]
    return pd.DataFrame(out, columns=["kind", "village", "created_ms", "block_ms"])


# ---------------------------------------------------------------- computing one scope and period


class _Cut:
    """One scope (a set of villages) and one period, cut from the loaded data."""

    def __init__(
        self,
        ctx: _Context,
        villages: set[str],
        period: Period,
    ) -> None:
        self.ctx, self.villages, self.period = ctx, villages, period
        reg, tel = ctx.registry, ctx.telemetry
        self.dev_mask = reg.devices["village"].isin(villages).to_numpy()
        end = period.closed_end(ctx.now)
        self.a, self.b = tel.day_index(period.start), tel.day_index(end)
        if period.start >= end:
            self.a = self.b
        self.ndays = self.b - self.a
        self.t_end = min(period.end_dt(), ctx.now)
        self.active_end = reg.active_at(self.t_end) & self.dev_mask
        d = tel.daily
        keep = self.dev_mask[d["dev"].to_numpy()] & (d["day"].to_numpy() >= self.a) & (d["day"].to_numpy() < self.b)
        self.daily = d[keep]
        self.current = period.contains(ctx.now)

    # -------------------------------------------------------- registry

    def plot_coverage(self) -> tuple[Value, Value]:
        reg = self.ctx.registry
        plots = reg.plots[reg.plots["village"].isin(self.villages)]
        with_device = set(reg.devices.loc[self.active_end, "plot_id"].dropna().astype(int))
        covered = plots["id"].isin(with_device)
        area, area_with = float(plots["area_mu"].sum()), float(plots.loc[covered, "area_mu"].sum())
        share = Value(
            "plot_device_share",
            _r(_pct(int(covered.sum()), len(plots))),
            {"plots_with_active_device": int(covered.sum()), "plots": len(plots), "as_of": _iso(self.t_end)},
        )
        coverage = Value(
            "device_coverage",
            _r(_pct(area_with, area)),
            {"area_mu_with_active_device": _r(area_with, 2), "area_mu": _r(area, 2), "as_of": _iso(self.t_end)},
        )
        return share, coverage

    def livestock(self) -> Value:
        reg = self.ctx.registry
        herds = reg.herds[reg.herds["village"].isin(self.villages)]
        dev = reg.devices[self.active_end]
        monitored = dev.loc[(dev["kind"] == "collar") & dev["animal_id"].notna(), "animal_id"].nunique()
        head = int(herds["head"].sum())
        return Value(
            "livestock_monitoring_share",
            _r(_pct(min(monitored, head), head)),
            {"head_with_active_collar": int(monitored), "head": head, "herds": len(herds), "as_of": _iso(self.t_end)},
        )

    def informatization(self, coverage: Value, livestock: Value) -> Value:
        weights = self.ctx.params["informatization"]["weights"]
        parts = {}
        if coverage.inputs["area_mu"]:
            parts["crop"] = coverage.value
        if livestock.inputs["head"]:
            parts["livestock"] = livestock.value
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

    # -------------------------------------------------------- telemetry

    def _active_cells(self) -> np.ndarray:
        return self.ctx.telemetry.active[self.dev_mask, self.a : self.b]

    def device_days(self) -> dict[str, Any]:
        tel, reg = self.ctx.telemetry, self.ctx.registry
        active = tel.active[:, self.a : self.b] & self.dev_mask[:, None]
        interval = reg.devices["interval_s"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected_cells = np.where(
                active, tel.day_s[None, self.a : self.b] / np.where(interval > 0, interval, np.nan)[:, None], 0.0
            )
        d = self.daily
        devs, days = d["dev"].to_numpy(), d["day"].to_numpy() - self.a
        counted = active[devs, days] if len(d) else np.zeros(0, dtype=bool)
        exp_rows = expected_cells[devs, days] if len(d) else np.zeros(0)
        got = np.minimum(d["readings"].to_numpy(dtype=float), exp_rows)
        return {
            "active": active,
            "expected_cells": expected_cells,
            "active_device_days": int(active.sum()),
            "reporting_device_days": int(counted.sum()),
            "readings_counted": float(got[counted].sum()),
            "readings_expected": float(np.nansum(expected_cells)),
            "row_completeness": np.where(exp_rows > 0, got / np.where(exp_rows > 0, exp_rows, 1), 0.0),
            "row_counted": counted,
        }

    def online(self, dd: dict[str, Any]) -> Value:
        tel = self.ctx.telemetry
        if self.current and tel.online is not None:
            active_now = self.ctx.registry.active_at(self.ctx.now) & self.dev_mask
            on = int((tel.online & active_now).sum())
            return Value(
                "device_online_rate",
                _r(_pct(on, int(active_now.sum()))),
                {
                    "devices_online": on,
                    "active_devices": int(active_now.sum()),
                    "window": f"{self.ctx.params['online']['intervals']} catalogue intervals",
                    "as_of": _iso(self.ctx.now),
                    "device_days_reporting": dd["reporting_device_days"],
                    "active_device_days": dd["active_device_days"],
                },
            )
        return Value(
            "device_online_rate",
            _r(_pct(dd["reporting_device_days"], dd["active_device_days"])),
            {
                "device_days_reporting": dd["reporting_device_days"],
                "active_device_days": dd["active_device_days"],
                "days": self.ndays,
            },
        )

    def completeness(self, dd: dict[str, Any]) -> Value:
        return Value(
            "data_completeness",
            _r(_pct(dd["readings_counted"], dd["readings_expected"])),
            {
                "readings_counted": round(dd["readings_counted"]),
                "readings_expected": round(dd["readings_expected"]),
                "active_device_days": dd["active_device_days"],
                "days": self.ndays,
            },
            note="each device-day capped at its expected readings",
        )

    def idle(self) -> Value:
        tel, reg = self.ctx.telemetry, self.ctx.registry
        n_idle_days = int(self.ctx.params["idle"]["days"])
        end_day = tel.day_index(self.period.closed_end(self.ctx.now))
        start_day = end_day - n_idle_days
        if start_day < 0 or end_day <= 0:
            return Value("idle_device_rate", None, {"reason": "no closed days before the period end"})
        cutoff = pd.Timestamp(local_midnight(tel.days[start_day], self.period.tz)).tz_convert("UTC")
        eligible = self.active_end & (reg.devices["since"] <= cutoff).to_numpy()
        d = tel.daily
        recent = d[(d["day"] >= start_day) & (d["day"] < end_day) & (d["readings"] > 0)]
        heard = np.zeros(len(reg.devices), dtype=bool)
        heard[recent["dev"].to_numpy()] = True
        idle = int((eligible & ~heard).sum())
        return Value(
            "idle_device_rate",
            _r(_pct(idle, int(eligible.sum()))),
            {"idle_devices": idle, "active_devices": int(eligible.sum()), "silent_days": n_idle_days},
        )

    def rejected(self) -> Value:
        tel = self.ctx.telemetry
        stored = int(self.daily["readings"].sum())
        dead = tel.dead
        if self.ndays:
            lo = int(local_midnight(tel.days[self.a], self.period.tz).timestamp() * 1000)
            hi_day = tel.days[self.b - 1] + timedelta(days=1)
            hi = int(local_midnight(hi_day, self.period.tz).timestamp() * 1000)
            mask = self.dev_mask[dead["dev"].to_numpy()] & (dead["ms"] >= lo).to_numpy() & (dead["ms"] < hi).to_numpy()
            n_dead = int(mask.sum())
        else:
            n_dead = 0
        return Value(
            "rejected_reading_rate",
            _r(_pct(n_dead, stored + n_dead)),
            {"dead_letters": n_dead, "stored_readings": stored},
            note="dead letters of registered devices only",
        )

    def continuous(self, dd: dict[str, Any]) -> Value:
        reg, p = self.ctx.registry, self.ctx.params["continuous_monitoring"]
        plots = reg.plots[reg.plots["village"].isin(self.villages)]
        area = float(plots["area_mu"].sum())
        if not self.ndays:
            return Value("continuous_monitoring_share", None, {"area_mu": _r(area, 2), "days": 0})
        d = self.daily.assign(comp=dd["row_completeness"], counted=dd["row_counted"])
        d = d[d["counted"]]
        plot_of = reg.devices["plot_id"].to_numpy()
        d = d.assign(plot=plot_of[d["dev"].to_numpy()])
        d = d[pd.notna(d["plot"])]
        good_days = d[d["comp"] >= p["day_completeness_pct"] / 100.0].groupby("plot")["day"].nunique()
        need = p["days_share_pct"] / 100.0 * self.ndays
        continuous = set(good_days[good_days >= need - 1e-9].index.astype(int))
        covered = plots["id"].isin(continuous)
        area_with = float(plots.loc[covered, "area_mu"].sum())
        return Value(
            "continuous_monitoring_share",
            _r(_pct(area_with, area)),
            {
                "area_mu_continuous": _r(area_with, 2),
                "area_mu": _r(area, 2),
                "plots_continuous": int(covered.sum()),
                "plots": len(plots),
                "days": self.ndays,
                "rule": f">= {p['day_completeness_pct']} % of expected readings on >= {p['days_share_pct']} % of days",
            },
        )

    def _plot_days(self, column: str, how: str) -> pd.DataFrame:
        """Per plot and day: the daily mean (how='mean', from sums and counts) or min of a metric."""
        reg = self.ctx.registry
        d = self.daily[self.daily[column].notna()]
        plot_of = reg.devices["plot_id"].to_numpy()
        d = d.assign(plot=plot_of[d["dev"].to_numpy()])
        d = d[pd.notna(d["plot"])]
        if how == "mean":
            g = d.groupby(["plot", "day"])[["soil_sum", "soil_count"]].sum()
            g = g[g["soil_count"] > 0]
            out = (g["soil_sum"] / g["soil_count"]).rename("value").reset_index()
        else:
            out = d.groupby(["plot", "day"])[column].min().rename("value").reset_index()
        crop = dict(zip(reg.plots["id"], reg.plots["crop"], strict=True))
        out["crop"] = out["plot"].astype(int).map(crop)
        return out

    def drought(self) -> tuple[Value, pd.DataFrame]:
        pd_ = self._plot_days("soil_sum", "mean")
        thresholds = {c: crops.thresholds(c)["soil_moisture_min"] for c in sorted(set(pd_["crop"].dropna()))}
        pd_["alert"] = pd_["value"] < pd_["crop"].map(thresholds)
        below = int(pd_["alert"].sum())
        return (
            Value(
                "drought_plot_days",
                float(below) if len(pd_) else None,
                {
                    "plot_days_below_threshold": below,
                    "plot_days_observed": len(pd_),
                    "plots_observed": int(pd_["plot"].nunique()),
                    "soil_moisture_min_by_crop": thresholds,
                },
            ),
            pd_,
        )

    def paddy(self) -> tuple[Value, pd.DataFrame]:
        pd_ = self._plot_days("paddy_min", "min")
        days, windows = self.ctx.telemetry.days, self.ctx.season
        pd_ = pd_[np.array([_in_season(days[int(i)], windows) for i in pd_["day"]], dtype=bool)]
        thresholds = {c: crops.thresholds(c)["paddy_water_min_cm"] for c in sorted(set(pd_["crop"].dropna()))}
        pd_ = pd_.assign(alert=pd_["value"] < pd_["crop"].map(thresholds))
        below = int(pd_["alert"].sum())
        return (
            Value(
                "paddy_dry_plot_days",
                float(below) if len(pd_) else None,
                {
                    "plot_days_below_threshold": below,
                    "plot_days_observed_in_season": len(pd_),
                    "paddy_water_min_cm_by_crop": thresholds,
                    "season": [f"{a}..{b}" for a, b in self.ctx.params["paddy"]["season"]],
                },
            ),
            pd_,
        )

    def fever(self) -> tuple[Value, pd.DataFrame]:
        reg, tel, p = self.ctx.registry, self.ctx.telemetry, self.ctx.params["fever"]
        animal_of = reg.devices["animal_id"].to_numpy()
        collar = (reg.devices["kind"] == "collar").to_numpy()
        d = self.daily[self.daily["readings"] > 0]
        d = d[collar[d["dev"].to_numpy()]]
        d = d.assign(animal=animal_of[d["dev"].to_numpy()])
        d = d[pd.notna(d["animal"])]
        monitored = d[["animal", "day"]].drop_duplicates()
        f = tel.fever
        f = f[self.dev_mask[f["dev"].to_numpy()] & (f["day"] >= self.a).to_numpy() & (f["day"] < self.b).to_numpy()]
        f = f[f["hours"] >= p["min_hours"]]
        f = f.assign(animal=animal_of[f["dev"].to_numpy()])
        fever_days = f[pd.notna(f["animal"])][["animal", "day"]].drop_duplicates()
        monitored = monitored.merge(fever_days.assign(alert=True), on=["animal", "day"], how="left")
        monitored["alert"] = monitored["alert"].fillna(False).astype(bool)
        n_fever, n_days = int(monitored["alert"].sum()), len(monitored)
        per = p["per_head_days"]
        value = None if not n_days else per * n_fever / n_days
        return (
            Value(
                "fever_alerts",
                _r(value),
                {
                    "fever_animal_days": n_fever,
                    "monitored_animal_days": n_days,
                    "per_head_days": per,
                    "rule": f"hourly mean {p['metric']} > {p['above_c']} for >= {p['min_hours']} h",
                },
            ),
            monitored.rename(columns={"animal": "unit"}),
        )

    def nh3(self) -> Value:
        tel, reg = self.ctx.telemetry, self.ctx.registry
        barn = (reg.devices["kind"] == "barn").to_numpy() & self.dev_mask
        observed = self.daily[barn[self.daily["dev"].to_numpy()] & (self.daily["readings"] > 0).to_numpy()]
        n = tel.nh3
        n = n[barn[n["dev"].to_numpy()] & (n["day"] >= self.a).to_numpy() & (n["day"] < self.b).to_numpy()]
        hours = int(n["hours"].sum())
        return Value(
            "barn_nh3_exceedance_hours",
            float(hours) if len(observed) else None,
            {
                "hours_above": hours,
                "barn_days_observed": len(observed),
                "rule": f"hourly mean nh3_ppm > {self.ctx.params['nh3']['above_ppm']}",
            },
        )

    def clearance(self, series: dict[str, pd.DataFrame]) -> Value:
        """Median days from an alert episode's first day to the next normal day (per plot or animal)."""
        durations: list[int] = []
        open_, by_type = 0, {}
        for name, frame in series.items():
            cleared = still_open = 0
            unit_col = "unit" if "unit" in frame.columns else "plot"
            for _, g in frame.sort_values([unit_col, "day"]).groupby(unit_col, sort=False):
                start = None
                for day, alert in zip(g["day"].to_numpy(), g["alert"].to_numpy(), strict=True):
                    if alert and start is None:
                        start = day
                    elif not alert and start is not None:
                        durations.append(int(day - start))
                        cleared += 1
                        start = None
                if start is not None:
                    still_open += 1
            by_type[name] = {"cleared": cleared, "open": still_open}
            open_ += still_open
        return Value(
            "alert_clearance_days",
            float(statistics.median(durations)) if durations else None,
            {"episodes_cleared": len(durations), "episodes_open": open_, "by_type": by_type},
            note="episodes still open at the period's end are left out",
        )

    # -------------------------------------------------------- ledger

    def lots(self) -> pd.DataFrame:
        lots = self.ctx.ledger.lots
        lots = lots[lots["village"].isin(self.villages)]
        years = set(self.period.years())
        lo, hi = self.period.start_ms(), self.period.end_ms()
        by_year = lots["harvest_year"].isin(years)
        by_created = lots["harvest_year"].isna() & (lots["created_ms"] >= lo) & (lots["created_ms"] < hi)
        return lots[by_year | by_created]

    def trace(self) -> tuple[Value, Value]:
        lots = self.lots()
        coverage = Value(
            "trace_lot_coverage",
            _r(_pct(int(lots["anchored"].sum()), len(lots))),
            {"lots_anchored": int(lots["anchored"].sum()), "lots": len(lots), "years": self.period.years()},
        )
        h = lots[lots["harvest"]]
        weighed = h[h["kg"].notna()]
        kg, kg_ok = float(weighed["kg"].sum()), float(weighed.loc[weighed["verified"], "kg"].sum())
        output = Value(
            "traced_output_share",
            _r(_pct(kg_ok, kg)),
            {
                "kg_verified": _r(kg_ok, 3),
                "kg": _r(kg, 3),
                "harvest_lots_verified": int(h["verified"].sum()),
                "harvest_lots": len(h),
                "lots_without_weight": int(h["kg"].isna().sum()),
                "check": "anchor states" if self.ctx.chain is None else "full verification against the chain",
            },
        )
        return coverage, output

    def inspections(self) -> Value:
        i = self.ctx.ledger.inspections
        i = i[i["village"].isin(self.villages) & (i["day"] >= self.period.start) & (i["day"] < self.period.end)]
        passed = int(i["passed"].sum())
        return Value("inspection_pass_rate", _r(_pct(passed, len(i))), {"passed": passed, "inspections": len(i)})

    def anchoring(self) -> tuple[Value, Value]:
        a = self.ctx.ledger.anchored
        lo, hi = self.period.start_ms(), self.period.end_ms()
        a = a[a["village"].isin(self.villages) & (a["block_ms"] >= lo) & (a["block_ms"] < hi)]
        records = Value(
            "anchored_records",
            float(len(a)),
            {"records": len(a), "by_kind": {str(k): int(v) for k, v in a.groupby("kind").size().items()}},
        )
        minutes = (a["block_ms"] - a["created_ms"]) / 60_000.0
        latency = Value(
            "anchor_latency_median",
            _r(float(minutes.median())) if len(a) else None,
            {
                "records": len(a),
                "p90_min": _r(float(minutes.quantile(0.9))) if len(a) else None,
                "max_min": _r(float(minutes.max())) if len(a) else None,
            },
        )
        return records, latency

    # -------------------------------------------------------- all

    def compute(self) -> dict[str, Value]:
        share, coverage = self.plot_coverage()
        livestock = self.livestock()
        values = [share, coverage, livestock, self.informatization(coverage, livestock)]
        dd = self.device_days()
        values += [self.online(dd), self.completeness(dd), self.idle(), self.rejected(), self.continuous(dd)]
        drought, drought_days = self.drought()
        paddy, paddy_days = self.paddy()
        fever, fever_days = self.fever()
        values += [drought, paddy, fever, self.nh3()]
        values.append(self.clearance({"drought": drought_days, "paddy": paddy_days, "fever": fever_days}))
        values += [*self.trace(), self.inspections(), *self.anchoring()]
        if not self.ndays:
            for v in values:
                if self.ctx.catalogue.by_id[v.indicator].source == "influx" and v.indicator != "device_online_rate":
                    v.value = None
                    v.note = "no closed days of the period yet"
        return {v.indicator: v for v in values}


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
    params: dict[str, Any]
    catalogue: Catalogue
    now: datetime
    chain: Any = None

    @property
    def season(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        def md(text: str) -> tuple[int, int]:
            m, d = text.split("-")
            return int(m), int(d)

        return [(md(a), md(b)) for a, b in self.params["paddy"]["season"]]


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
    params: dict[str, Any] | None = None,
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
    first = min(periods[0].start, period.closed_end(now) - timedelta(days=int(params["idle"]["days"])))
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
    scopes: list[tuple[Scope, str, str, set[str]]] = [
        ("county", county, registry.county.name_zh or county, set(registry.villages))
    ]
    if village is not None:
        scopes.append(("village", village, registry.villages[village], {village}))
    elif villages:
        scopes += [("village", code, name, {code}) for code, name in registry.villages.items()]
    results: dict[str, dict[str, ScopeValues]] = {}
    for p in periods:
        results[p.label] = {}
        for scope, code, name, members in scopes:
            values = _Cut(ctx, members, p).compute()
            if scope == "county":
                values.update(stats.get(p.year, {}))
            results[p.label][code] = ScopeValues(scope, code, name, p, values)
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
