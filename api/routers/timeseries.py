"""Sensor time series: `/api/v1/timeseries?device=|plot=|herd=|village=&start&end&resolution=raw|1h|1d`.

Hourly and daily answers come from the rollups (analytics/rollups.py: `{kind}_1h` and `{kind}_1d`
in the `rollup` retention policy, with sum/count/min/max per metric, so any level is exact: the
mean of a plot or village is sum(sum)/sum(count)) for the time the rollups cover (up to their
watermark), and from the raw points with InfluxQL `GROUP BY time(...)` for the rest (the last hours
not rolled up yet, or everything when no rollups exist). `raw` returns the points themselves.
The answer says which source served which part. Scope: the device, plot or village must be in the
caller's area.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel
from sqlmodel import col, select

from analytics.compute import load_params
from analytics.periods import MAX_REPORT_DAYS
from analytics.rollups import ROLLUP_RP, Rollups, ident, quote
from api.deps import ActorDep, SessionDep
from api.problems import Problem, problem_responses, unavailable
from core import crops
from core.catalogue import get_catalogue
from core.influx import InfluxError, InfluxV1
from core.models import Animal, Device, Herd, Plot

router = APIRouter(prefix="/api/v1/timeseries", tags=["timeseries"])
MAX_SPAN = {"raw": timedelta(days=7), "1h": timedelta(days=93), "1d": timedelta(days=MAX_REPORT_DAYS)}
RAW_LIMIT = 20_000


class Threshold(BaseModel):
    bound: Literal["min", "max"]  # an alert when a value falls below a min / rises above a max
    value: float
    source: str  # e.g. "crops.yaml rice.paddy_water_min_cm"


class Series(BaseModel):
    kind: str
    metric: str
    unit: str
    columns: list[str]
    values: list[list[Any]]
    thresholds: list[Threshold] = []


# metric -> (bound, key in core/data/crops.yaml); body temperature from analytics' fever parameter
CROP_THRESHOLDS = {"soil_moisture": ("min", "soil_moisture_min"), "water_level_cm": ("min", "paddy_water_min_cm")}


def thresholds(session: Any, scope: dict[str, str], metric: str) -> list[Threshold]:
    """The alert thresholds drawn with a metric: the plot's crop (or the device's plot's), fever for collars."""
    if metric == "body_temp_c":
        return [Threshold(bound="max", value=float(load_params().fever.above_c), source="fever.above_c")]
    if metric not in CROP_THRESHOLDS:
        return []
    plot_no = scope.get("plot")
    crop = None
    if plot_no:
        crop = session.exec(select(Plot.crop).where(Plot.plot_no == plot_no)).first()
    elif "device" in scope:
        crop = session.exec(
            select(Plot.crop).join(Device, Device.plot_id == Plot.id).where(Device.id == scope["device"])
        ).first()
    bound, key = CROP_THRESHOLDS[metric]
    value = crops.thresholds(crop).get(key)
    if value is None:
        return []
    return [Threshold(bound=bound, value=float(value), source=f"crops.yaml {crop or 'default'}.{key}")]


class TimeseriesOut(BaseModel):
    scope: dict[str, str]
    resolution: Literal["raw", "1h", "1d"]
    start: datetime
    end: datetime
    sources: list[dict[str, Any]]
    series: list[Series]


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _kinds_and_filter(
    session: Any, actor: Any, device: str | None, plot: str | None, village: str | None, herd: str | None = None
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(device kinds to read, the tag filter, the scope echoed back); checks the caller's area."""
    given = [(k, v) for k, v in (("device", device), ("plot", plot), ("herd", herd), ("village", village)) if v]
    if len(given) != 1:
        raise Problem(422, "validation", "give exactly one of device, plot, herd or village")
    key, value = given[0]
    if key == "device":
        d = session.get(Device, value)
        if d is None:
            raise Problem(404, "not-found", f"no device {value}")
        actor.require_read_row(session, "device", d, f"device {value}")
        return [d.kind], {"device": value}, {"device": value}
    if key == "plot":
        p = session.exec(select(Plot).where(Plot.plot_no == value)).first()
        if p is None:
            raise Problem(404, "not-found", f"no plot {value}")
        actor.require_read(p.village_code, f"plot {value}")
        kinds = session.exec(select(Device.kind).where(Device.plot_id == p.id).distinct()).all()
        return sorted(kinds), {"plot": value}, {"plot": value}
    if key == "herd":
        h = session.exec(select(Herd).where(Herd.herd_no == value)).first()
        if h is None:
            raise Problem(404, "not-found", f"no herd {value}")
        actor.require_read(h.village_code, f"herd {value}")
        animals = select(Animal.id).where(Animal.herd_id == h.id)
        kinds = session.exec(
            select(Device.kind).where((Device.herd_id == h.id) | col(Device.animal_id).in_(animals)).distinct()
        ).all()
        return sorted(kinds), {"herd": value}, {"herd": value}
    actor.require_read(value, f"village {value}")
    plots = select(Plot.id).where(Plot.village_code == value)
    herds = select(Herd.id).where(Herd.village_code == value)
    kinds = session.exec(
        select(Device.kind).where(col(Device.plot_id).in_(plots) | col(Device.herd_id).in_(herds)).distinct()
    ).all()
    return (
        sorted(set(kinds) | ({"collar"} if session.exec(herds).first() else set())),
        {"village": value},
        {"village": value},
    )


def _where(tags: dict[str, str], start_ms: int, end_ms: int) -> str:
    conds = [f"time >= {start_ms}ms", f"time < {end_ms}ms"] + [f"{ident(k)} = {quote(v)}" for k, v in tags.items()]
    return " AND ".join(conds)


def _aggregate(
    influx: InfluxV1,
    source: str,
    metrics: list[str],
    tags: dict[str, str],
    start_ms: int,
    end_ms: int,
    res: str,
    tz: str,
    rollup: bool,
) -> dict[str, list[list[Any]]]:
    if start_ms >= end_ms:
        return {}
    parts = []
    for m in metrics:
        if rollup:
            parts += [
                f"sum({ident('sum_' + m)}) / sum({ident('count_' + m)}) AS {ident('mean_' + m)}",
                f"min({ident('min_' + m)}) AS {ident('min_' + m)}",
                f"max({ident('max_' + m)}) AS {ident('max_' + m)}",
                f"sum({ident('count_' + m)}) AS {ident('count_' + m)}",
            ]
        else:
            parts += [
                f"mean({ident(m)}) AS {ident('mean_' + m)}",
                f"min({ident(m)}) AS {ident('min_' + m)}",
                f"max({ident(m)}) AS {ident('max_' + m)}",
                f"count({ident(m)}) AS {ident('count_' + m)}",
            ]
    q = (
        f"SELECT {', '.join(parts)} FROM {source} WHERE {_where(tags, start_ms, end_ms)} "
        f"GROUP BY time({res}) fill(none) tz({quote(tz)})"
    )
    series = influx.query(q)
    out: dict[str, list[list[Any]]] = {m: [] for m in metrics}
    if not series:
        return out
    columns = series[0]["columns"]
    for row in series[0]["values"]:
        rec = dict(zip(columns, row, strict=True))
        for m in metrics:
            if rec.get(f"count_{m}"):
                out[m].append([rec["time"], rec[f"mean_{m}"], rec[f"min_{m}"], rec[f"max_{m}"], rec[f"count_{m}"]])
    return out


def _raw(
    influx: InfluxV1, rollups: Rollups, kind: str, metrics: list[str], tags: dict[str, str], start_ms: int, end_ms: int
) -> dict[str, list[list[Any]]]:
    fields = ", ".join(ident(m) for m in metrics)
    where = _where(tags, start_ms, end_ms)
    rows = influx.query(f'SELECT {fields}, "device" FROM {rollups.raw_source(kind)} WHERE {where} LIMIT {RAW_LIMIT}')
    if not rows:
        return {m: [] for m in metrics}
    cols = rows[0]["columns"]
    dev = cols.index("device")
    return {
        m: [[r[0], r[cols.index(m)], r[dev]] for r in rows[0]["values"] if r[cols.index(m)] is not None]
        for m in metrics
    }


def _bucketed(
    influx: InfluxV1,
    rollups: Rollups,
    kind: str,
    metrics: list[str],
    tags: dict[str, str],
    start_ms: int,
    end_ms: int,
    res: str,
    sources: list[dict[str, Any]],
) -> dict[str, list[list[Any]]]:
    """Rollups up to their watermark, raw points after it."""
    watermark = rollups.watermark(kind) or 0
    if res == "1d" and watermark:
        watermark = rollups.midnight_ms(rollups.local_day(watermark))
    split = max(start_ms, min(end_ms, watermark))
    merged: dict[str, list[list[Any]]] = {m: [] for m in metrics}
    parts = [(start_ms, split, True), (split, end_ms, False)]
    for a, b, from_rollup in parts:
        if b <= a:
            continue
        source = rollups.source(kind, res) if from_rollup else rollups.raw_source(kind)
        part = _aggregate(influx, source, metrics, tags, a, b, res, rollups.tz, from_rollup)
        for m in metrics:
            merged[m] += part.get(m, [])
        name = f"rollup:{ROLLUP_RP}.{rollups.measurement(kind, res)}" if from_rollup else "raw"
        sources.append({"kind": kind, "source": name, "from": a, "to": b})
    return merged


@router.get("", response_model=TimeseriesOut, responses=problem_responses(401, 403, 404, 422, 503))
def timeseries(
    request: Request,
    actor: ActorDep,
    session: SessionDep,
    start: AwareDatetime,
    end: AwareDatetime,
    device: Annotated[str | None, Query(max_length=64)] = None,
    plot: Annotated[str | None, Query(max_length=64)] = None,
    village: Annotated[str | None, Query(pattern=r"^\d{12}$")] = None,
    herd: Annotated[str | None, Query(max_length=64)] = None,
    resolution: Literal["raw", "1h", "1d"] = "1h",
    metric: Annotated[str | None, Query(max_length=64, description="Only this metric")] = None,
) -> TimeseriesOut:
    """`start` and `end` are RFC 3339 times with an offset; at most 7 days raw, 93 days hourly, 366 days daily."""
    if end <= start:
        raise Problem(422, "validation", "end must be after start")
    if end - start > MAX_SPAN[resolution]:
        days = MAX_SPAN[resolution].days
        detail = f"a time series spans at most {days} days at resolution {resolution}"
        raise Problem(422, "period-too-long", detail, max_days=days)
    settings = request.app.state.settings
    catalogue = get_catalogue(settings.catalogue_file)
    kinds, tags, scope = _kinds_and_filter(session, actor, device, plot, village, herd)
    influx: InfluxV1 = request.app.state.trace.influx()
    rollups = Rollups(influx, tz=settings.county_timezone, catalogue=catalogue)
    start_ms, end_ms = _ms(start.astimezone(UTC)), _ms(end.astimezone(UTC))
    series: list[Series] = []
    sources: list[dict[str, Any]] = []
    try:
        for kind in kinds:
            metrics = (
                [m for m in rollups.metrics(kind) if metric is None or m == metric] if kind in catalogue.kinds else []
            )
            if not metrics:
                continue
            if resolution == "raw":
                points = _raw(influx, rollups, kind, metrics, tags, start_ms, end_ms)
                sources.append({"kind": kind, "source": "raw", "from": start_ms, "to": end_ms})
                columns = ["time", "value", "device"]
            else:
                points = _bucketed(influx, rollups, kind, metrics, tags, start_ms, end_ms, resolution, sources)
                columns = ["time", "mean", "min", "max", "count"]
            for m in metrics:
                unit = catalogue.kinds[kind].metrics[m].unit
                limits = thresholds(session, scope, m)
                series.append(
                    Series(kind=kind, metric=m, unit=unit, columns=columns, values=points[m], thresholds=limits)
                )
    except InfluxError as e:
        raise unavailable("the monitoring database", e) from None
    return TimeseriesOut(scope=scope, resolution=resolution, start=start, end=end, sources=sources, series=series)
