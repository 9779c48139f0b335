"""What the indicators read: snapshots of the registry, the telemetry rollups and the ledger.

Each is loaded once per computation (analytics/compute.py) into arrays that every scope and period
is cut from: the county's devices with their village and active span, device-day figures from the
daily rollups (plus alert-days from the hourly ones, the current online devices and dead letters),
and the lots, inspections and anchored leaves with their villages and anchor states.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
from sqlmodel import Session, col, select

from analytics.computation import ComputationParams
from analytics.periods import local_midnight
from analytics.rollups import Rollups, ident, quote
from core.catalogue import get_catalogue as get_device_catalogue
from core.influx import InfluxV1
from core.models import Animal, County, DeadLetter, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from ledger.anchor_models import AnchorState, AnchorWindow, GrowthSummary, LedgerLeaf, LotManifest, TelemetryDigest
from ledger.models import Facility, Inspection, Lot, LotSource, TraceEvent

ANCHORED = (AnchorState.confirmed, AnchorState.final)


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
    dead: pd.DataFrame  # dev, ms, n (rejected readings the row stands for: 1 + its `more`)
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
    params: ComputationParams,
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
    to_day = _day_mapper([int(x.timestamp() * 1000) for x in bounds])
    soil_m, paddy_m = params.drought.metric, params.paddy.metric
    queries: dict[str, str] = {}
    fields_of: dict[str, tuple[list[str], list[str]]] = {}
    for kind in kinds if days else []:
        cols = [f"count_{m}" for m in rollups.metrics(kind)]
        extra = {"soil": [f"sum_{soil_m}", f"count_{soil_m}"], "paddy": [f"min_{paddy_m}"]}.get(kind, [])
        fields = list(dict.fromkeys(cols + extra))
        fields_of[kind] = (cols, fields)
        select_list = ", ".join(ident(c) for c in fields)
        queries[kind] = f'SELECT {select_list} FROM {rollups.source(kind, "1d")} WHERE {where} GROUP BY "device"'
    alerts = {"fever": ("collar", params.fever.metric, params.fever.above_c)}
    alerts["nh3"] = ("barn", params.nh3.metric, params.nh3.above_ppm)
    for name, (kind, metric, above) in alerts.items():
        if days and kind in kinds:
            queries[name] = _alert_query(rollups, kind, metric, above, where)
    # the queries run at once: InfluxDB answers them on every core while this process parses
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = dict(zip(queries, pool.map(rollups.influx.query, queries.values()), strict=True))
    tel.queries += len(queries)
    frames = []
    for kind, (cols, fields) in fields_of.items():
        x, devs = _blocks(answers[kind], ["time", *fields], idx)
        if x is None:
            continue
        out = pd.DataFrame({"dev": devs, "day": to_day(x[:, 0])})
        counts = x[:, 1 : 1 + len(cols)]
        out["readings"] = np.nan_to_num(counts, nan=0.0).max(axis=1).astype(int)
        if kind == "soil":
            out["soil_sum"] = x[:, 1 + fields.index(f"sum_{soil_m}")]
            out["soil_count"] = x[:, 1 + fields.index(f"count_{soil_m}")]
        if kind == "paddy":
            out["paddy_min"] = x[:, 1 + fields.index(f"min_{paddy_m}")]
        frames.append(out)
    if frames:
        tel.daily = pd.concat([_empty_daily(), *frames], ignore_index=True)
    for name in alerts:
        if name in answers:
            x, devs = _blocks(answers[name], ["time", "count"], idx)
            if x is not None:
                frame = pd.DataFrame({"dev": devs, "day": to_day(x[:, 0]), "hours": x[:, 1].astype(int)})
                setattr(tel, name, frame)
    if online_now is not None:
        tel.online = _online(rollups, registry, online_now, params.online.intervals, idx)
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
    return pd.DataFrame({"dev": pd.Series(dtype=int), "ms": pd.Series(dtype="int64"), "n": pd.Series(dtype=int)})


def _day_mapper(bounds_ms: list[int]) -> Any:
    """Bucket start times (ms; local midnights, as GROUP BY time(1d) tz() makes them) -> index of the
    local day among the days whose midnights are `bounds_ms` (DST-proof: looked up, not divided)."""
    edges = np.array(bounds_ms, dtype=float)

    def to_day(ms: Any) -> np.ndarray:
        return np.searchsorted(edges, np.asarray(ms, dtype=float), side="right") - 1

    return to_day


def _alert_query(rollups: Rollups, kind: str, metric: str, above: float, where: str) -> str:
    """Device-days with hours whose hourly mean of `metric` is above `above` (only those come back)."""
    mean = ident(f"mean_{metric}")
    return (
        f"SELECT count({mean}) FROM {rollups.source(kind, '1h')} WHERE {where} AND {mean} > {float(above)} "
        f'GROUP BY time(1d), "device" fill(none) tz({quote(rollups.tz)})'
    )


def _blocks(series: list[dict[str, Any]], columns: list[str], idx: dict[str, int]) -> tuple[np.ndarray | None, Any]:
    """The rows of per-device series as one float array (columns in the order asked; nulls NaN) and
    the device index of each row; devices not in the registry are left out."""
    devs, blocks = [], []
    for s in series:
        dev = idx.get(s.get("tags", {}).get("device", ""))
        if dev is None:
            continue
        block = np.array(s["values"], dtype=float)
        blocks.append(block[:, [s["columns"].index(c) for c in columns]])
        devs.append(np.full(len(block), dev))
    if not blocks:
        return None, None
    return np.concatenate(blocks), np.concatenate(devs)


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
        select(DeadLetter.device_id, DeadLetter.received_at, DeadLetter.more).where(
            col(DeadLetter.received_at) >= start.astimezone(UTC),
            col(DeadLetter.received_at) < end.astimezone(UTC),
            col(DeadLetter.device_id).is_not(None),
        )
    ).all()
    out = [
        (idx[d], int(_utc(t).timestamp() * 1000), 1 + (more or 0))  # type: ignore[union-attr]
        for d, t, more in rows
        if d in idx and t is not None
    ]
    return pd.DataFrame(out, columns=["dev", "ms", "n"]) if out else _empty_dead()


# ---------------------------------------------------------------- ledger snapshot


@dataclass
class LedgerData:
    lots: pd.DataFrame  # id, village, kg, unit, harvest_year, created_ms, harvest, anchored, verified, awaiting
    inspections: pd.DataFrame  # lot_id, village, day (date), passed
    anchored: pd.DataFrame  # kind, village, created_ms, block_ms


def load_ledger(
    session: Session,
    registry: Registry,
    params: ComputationParams,
    *,
    chain: Any = None,
    influx: InfluxV1 | None = None,
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
    kg_per = params.trace.kg_per_unit
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
    in_block = {seq for seq, (state, _) in windows.items() if state == AnchorState.included}
    lot_ids = [int(i) for i in frame["id"]]
    latest = latest_manifests(session, lot_ids)
    manifest_window = _leaf_windows_by_record(session, "manifest/1", [m.id for m in latest.values() if m.id])
    listed = sorted({leaf for m in latest.values() for leaf in m.content.get("leaves", [])})
    leaf_window = _leaf_windows(session, listed)
    anchored_lots, verified_lots, awaiting_lots = set(), set(), set()
    for lot_id, m in latest.items():
        if manifest_window.get(m.id) in in_block:  # type: ignore[arg-type]
            awaiting_lots.add(lot_id)
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
    frame["awaiting"] = frame["id"].isin(awaiting_lots)  # in a block, not yet confirmed
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


def latest_manifests(session: Session, lot_ids: Sequence[int]) -> dict[int, LotManifest]:
    """Lot id -> its latest manifest (the lot's trace as anchored: its leaves), for lots that have one."""
    latest: dict[int, LotManifest] = {}
    for part in _chunks(list(lot_ids)):
        for m in session.exec(select(LotManifest).where(col(LotManifest.lot_id).in_(part))).all():
            if m.lot_id not in latest or m.version > latest[m.lot_id].version:
                latest[m.lot_id] = m
    return latest


def lot_anchor_states(session: Session, lot_ids: Sequence[int]) -> dict[int, AnchorState]:
    """Lot id -> the state of the anchoring window that holds the lot's latest manifest (lots whose
    manifest is in no window yet are absent). One rule for the indicators and the dashboard's coverage
    card: a lot is anchored when that window is confirmed or final (ANCHORED); in a block (included)
    it awaits confirmation, since a reorganisation can still drop it."""
    latest: dict[int, tuple[int, int]] = {}  # lot id -> (version, manifest id); the manifests' leaves not read
    for part in _chunks(list(lot_ids)):
        rows = session.exec(
            select(LotManifest.lot_id, LotManifest.version, LotManifest.id).where(col(LotManifest.lot_id).in_(part))
        ).all()
        for lot_id, version, manifest_id in rows:
            if lot_id not in latest or version > latest[lot_id][0]:
                latest[lot_id] = (version, manifest_id)  # type: ignore[assignment]
    window_of = _leaf_windows_by_record(session, "manifest/1", [m for _, m in latest.values()])
    states = dict(session.exec(select(AnchorWindow.seq, AnchorWindow.state)).all())
    out: dict[int, AnchorState] = {}
    for lot_id, (_, manifest_id) in latest.items():
        seq = window_of.get(manifest_id)
        if seq is not None and seq in states:
            out[lot_id] = AnchorState(states[seq])
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
