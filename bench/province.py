"""`village bench province`: the county comparison of a whole province, timed from a cold start.

Starts its own InfluxDB (core.services.influxd) and SQLite registry in a temporary folder (removed
afterwards) and writes what a province of `counties` counties of `devices_per_county` devices would
hold after `days` days: the registry (counties under the prefix 21, 10 villages each, devices in
blocks of 20 as `village bench indicators` lays them out: 8 soil probes, 4 paddy gauges, 2 weather
stations on 8 plots, 5 collars on the animals of a herd and a barn sensor), every device active
from before the first day, and the ROLLUPS only, hourly and daily (no raw points: a province keeps
the raw points for INGEST_RETENTION_DAYS, the comparison never reads them), with the fields and
tags `analytics.rollups` writes (mean_/min_/max_/count_/sum_ of every
numeric metric; county, village, device, plot/herd/animal). Each county gets an outage rate (a
share of device-days without readings, drawn between 1 % and 20 %) so the ranking is not a tie, and
ten years of the composite index's statistics (synthetic) so the composite is part of the time.

Then the county rollups are built from the daily ones by `analytics.rollups.Rollups.county_rollup`
(what the rollup job does when it closes a day; here one query per kind and week), timed.
Then InfluxDB is restarted (its caches empty; the OS page cache is not dropped: that needs root) and
`analytics.province.compare` runs for the province and the last `days` days with a fresh database
engine and fresh clients: that first run is the cold figure; `repeats` more runs give the warm one.
The cost per county is the cold time over the counties (wall clock, and the process's CPU time,
which other jobs on the machine do not inflate). Disk use of the rollups is
measured after InfluxDB's compactions and given per point.

What the writes cost is InfluxDB's CPU: about 24 µs per hourly point of 20 fields (1.2 µs a value) and
twice that for a point that creates a series, measured from the server's own CPU time
(`influxd_cpu_us_per_point`, which the machine's load does not inflate). At that rate the hourly tier
of 100,000 devices over 30 days (72 million points) is some 36 minutes of CPU with the writers' own,
so by default only the last day gets hourly points (`hourly_days`, an option); the JSON says what was
written and what the whole tier would be. The comparison never reads the hourly tier.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlmodel import Session

from analytics.models import CountyStatistic
from analytics.periods import local_midnight, parse_period, zone
from analytics.province import compare, counties_under
from analytics.rollups import ROLLUP_RP, Rollups
from core.catalogue import get_catalogue
from core.db import get_engine, migrate
from core.influx import InfluxUnavailable, InfluxV1
from core.models import Animal, County, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from core.services import influxd

TZ = "Asia/Shanghai"
PREFIX = "21"
BLOCK = 20
SOILS, PADDIES, WEATHERS, COLLARS = 8, 4, 2, 5  # + 1 barn = 20
VILLAGES = 10
CITIES = 14  # Liaoning's prefecture-level cities
STAT_YEARS = range(2015, 2025)
# no series limits at a province's cardinality; a shard's cache goes to TSM files 1 s after its last write,
# so that what is measured on disk is the compressed files, not the write-ahead log
INFLUX_LIMITS = '  max-series-per-database = 0\n  max-values-per-tag = 0\n  cache-snapshot-write-cold-duration = "1s"\n'
Say = Callable[[str], None]


def county_codes(n: int) -> list[str]:
    """`n` six-digit county codes under 21, spread over the 14 cities (2101..2114), none ending in 00."""
    return [f"{PREFIX}{i % CITIES + 1:02d}{i // CITIES + 1:02d}" for i in range(n)]


def _layout(county: str, b: int) -> list[tuple[str, str, int]]:
    """(device id, kind, index of its plot 0..7 / animal 0..4 / -1 for the barn) of block `b`."""
    out = [(f"{county}-soil-{b:03d}-{p}", "soil", p) for p in range(SOILS)]
    out += [(f"{county}-paddy-{b:03d}-{p}", "paddy", p) for p in range(PADDIES)]
    out += [(f"{county}-wx-{b:03d}-{p}", "weather", p * 4) for p in range(WEATHERS)]
    out += [(f"{county}-collar-{b:03d}-{a}", "collar", a) for a in range(COLLARS)]
    out.append((f"{county}-barn-{b:03d}", "barn", -1))
    return out


@dataclass(frozen=True)
class Series:
    device: str
    kind: str
    tags: str  # ",county=...,device=...,..." sorted by key, escaped (no escaping needed: plain codes)


def build_registry(url: str, codes: list[str], devices_per_county: int, since: datetime) -> list[Series]:
    """Insert the province's registry in bulk; return every device's rollup series tags."""
    engine = get_engine(url)
    blocks = math.ceil(devices_per_county / BLOCK)
    rows: dict[Any, list[dict[str, Any]]] = {
        t: [] for t in (County, Township, Village, Farm, Plot, Herd, Animal, Device)
    }
    series: list[Series] = []
    farm_id = plot_id = herd_id = animal_id = 0
    for code in codes:
        rows[County].append({"code": code, "name_zh": f"示例县{code}", "name_en": f"Bench county {code}"})
        towns = [f"{code}10{t}" for t in (1, 2)]
        rows[Township] += [{"code": t, "county_code": code, "name_zh": f"镇{t[-1]}", "name_en": ""} for t in towns]
        villages = [f"{towns[v % 2]}2{v:02d}" for v in range(VILLAGES)]
        rows[Village] += [
            {"code": v, "township_code": towns[i % 2], "name_zh": f"村{i}", "name_en": ""}
            for i, v in enumerate(villages)
        ]
        made = 0
        for b in range(blocks):
            village = villages[b % VILLAGES]
            farm_id += 1
            rows[Farm].append({"id": farm_id, "code": f"{code}-F{b:03d}", "name": f"farm {b}", "village_code": village})
            plots = []
            for p in range(SOILS):
                plot_id += 1
                plots.append((plot_id, f"{code}-{b:03d}-P{p}"))
                crop = ("rice", "rice", "rice", "rice", "maize", "soybean", "peanut", "maize")[p]
                rows[Plot].append(
                    {"id": plot_id, "plot_no": plots[-1][1], "farm_id": farm_id, "village_code": village,
                     "area_mu": 50.0 + 10 * p, "crop": crop}
                )  # fmt: skip
            herd_id += 1
            herd_no = f"{code}-{b:03d}-H"
            rows[Herd].append(
                {"id": herd_id, "herd_no": herd_no, "farm_id": farm_id, "village_code": village, "head_count": 6}
            )
            animals = []
            for a in range(COLLARS):
                animal_id += 1
                animals.append((animal_id, f"2{code}{b:04d}{a:02d}"))
                rows[Animal].append({"id": animal_id, "ear_tag": animals[-1][1], "herd_id": herd_id})
            for dev, kind, at in _layout(code, b):
                if made == devices_per_county:
                    break
                made += 1
                row: dict[str, Any] = {"id": dev, "kind": kind, "status": DeviceStatus.active, "provisioned_at": since}
                tags = {"county": code, "village": village, "device": dev}
                if kind == "collar":
                    row["animal_id"], tags["animal"], tags["herd"] = animals[at][0], animals[at][1], herd_no
                elif kind == "barn":
                    row["herd_id"], tags["herd"] = herd_id, herd_no
                else:
                    row["plot_id"], tags["plot"] = plots[at]
                rows[Device].append(row)
                series.append(Series(dev, kind, "".join(f",{k}={v}" for k, v in sorted(tags.items()))))
    with Session(engine) as session:
        for table, values in rows.items():
            for i in range(0, len(values), 20_000):
                session.execute(insert(table), values[i : i + 20_000])  # type: ignore[arg-type]
        _statistics(session, codes)
        session.commit()
    engine.dispose()
    return series


def _statistics(session: Session, codes: list[str]) -> None:
    """Ten years of the composite index's members for every county (synthetic: a level per county)."""
    from analytics.catalogue import get_catalogue as indicator_catalogue

    cat = indicator_catalogue()
    members = [m.indicator for m in cat.index("dvi").members]
    rng = np.random.default_rng(14)
    rows = []
    for code in codes:
        level = rng.uniform(0.3, 1.0)
        for y in STAT_YEARS:
            growth = 1 + 0.08 * (y - STAT_YEARS[0])
            for m in members:
                ind = cat.indicator(m)
                hi = ind.max if ind.max is not None else 1000.0
                value = min(hi, max(1e-3, level * growth * hi * 0.4 * rng.uniform(0.8, 1.2)))
                rows.append(
                    {"county_code": code, "year": y, "indicator_id": m, "value": round(float(value), 3),
                     "unit": ind.unit, "source_note": "synthetic (village bench province)"}
                )  # fmt: skip
    session.execute(insert(CountyStatistic), rows)  # type: ignore[arg-type]


# ---------------------------------------------------------------- rollups, written by worker processes


@dataclass(frozen=True)
class RollupJob:
    url: str
    db: str
    series: list[Series]
    outage: float  # share of device-days without readings
    first_day: date
    days: int
    hourly_days: int
    seed: int


def _fields(metrics: list[str], means: np.ndarray, count: int) -> list[str]:
    """The field sets of buckets with `count` readings and the given means (shape buckets x metrics)."""
    out = []
    for row in means.tolist():
        parts = []
        for m, mean in zip(metrics, row, strict=True):
            parts.append(
                f"mean_{m}={mean:.3f},min_{m}={mean - 0.5:.3f},max_{m}={mean + 0.5:.3f},"
                f"count_{m}={count}i,sum_{m}={mean * count:.3f}"
            )
        out.append(",".join(parts))
    return out


def _write(client: InfluxV1, lines: list[str]) -> int:
    body = "\n".join(lines).encode()
    for attempt in range(60):
        try:
            client.write(body, rp=ROLLUP_RP)
            return len(lines)
        except InfluxUnavailable:  # cache full while it snapshots: back off
            time.sleep(min(5.0, 0.2 * (attempt + 1)))
    raise RuntimeError("InfluxDB kept refusing writes (cache full?)")


def write_rollups(job: RollupJob) -> tuple[int, int]:
    """Hourly and daily rollup points of the job's devices; (hourly points, daily points)."""
    catalogue = get_catalogue()
    client = InfluxV1(job.url, job.db, timeout=600)
    rng = np.random.default_rng(job.seed)
    midnights = [int(local_midnight(job.first_day + timedelta(days=d), TZ).timestamp() * 1000) for d in range(job.days)]
    hourly = daily = 0
    buffer: list[str] = []
    try:
        for s in job.series:
            kind = catalogue.kinds[s.kind]
            metrics = [m for m, spec in kind.metrics.items() if spec.type == "number"]
            per_hour = max(1, 3600 // kind.interval_s)
            base = np.array([10.0 + 5 * i for i in range(len(metrics))])
            up = rng.random(job.days) >= job.outage
            day_means = base[None, :] + rng.normal(0, 1, (job.days, len(metrics)))
            day_fields = _fields(metrics, day_means, per_hour * 24)
            for d in range(job.days):
                if not up[d]:
                    continue
                buffer.append(f"{s.kind}_1d{s.tags} {day_fields[d]} {midnights[d]}")
                daily += 1
                if d >= job.days - job.hourly_days:
                    hour_means = day_means[d][None, :] + rng.normal(0, 0.5, (24, len(metrics)))
                    for h, fields in enumerate(_fields(metrics, hour_means, per_hour)):
                        buffer.append(f"{s.kind}_1h{s.tags} {fields} {midnights[d] + h * 3_600_000}")
                    hourly += 24
                if len(buffer) >= 20_000:
                    _write(client, buffer)
                    buffer = []
        if buffer:
            _write(client, buffer)
    finally:
        client.close()
    return hourly, daily


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _written(days: int, hourly_days: int, hourly: int, hourly_all: int) -> str:
    """What the run wrote, in words, for the JSON (the hourly tier is the option)."""
    daily = f"daily rollups of all {days} days; "
    if hourly_days >= days:
        return daily + "hourly rollups of all of them"
    if hourly_days == 0:
        return daily + f"no hourly rollups (all days would be {hourly_all:,} points)"
    return daily + f"hourly rollups of the last {hourly_days} ({hourly:,} of the {hourly_all:,} points of all days)"


def _du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _start_influx(folder: Path, port: int | None = None):  # type: ignore[no-untyped-def]
    server = influxd(folder, port=port)
    conf = folder / "influxdb.conf"
    data_dir = f'  dir = "{folder.resolve()}/data"\n'
    conf.write_text(conf.read_text().replace(data_dir, data_dir + INFLUX_LIMITS))
    return server.start(timeout=600)  # a province's series index is rebuilt at start: minutes under load


def raw_sample(url: str, series: list[Series], days: int, first_day: date, writers: int) -> tuple[int, float]:
    """Raw readings of `series` for `days` days at their catalogue intervals (simulators.devices, as
    `village bench indicators` loads them) into the database `raw`; (points, seconds)."""
    from bench.indicators import LoadJob, _load_device

    InfluxV1(url, "raw").ensure_database()
    start_ms = int(local_midnight(first_day, TZ).timestamp() * 1000)
    catalogue = get_catalogue()
    jobs = []
    for s in series:
        tags = tuple(tuple(kv.split("=", 1)) for kv in s.tags.strip(",").split(","))
        interval = catalogue.kinds[s.kind].interval_s
        jobs.append(
            LoadJob(url, "raw", s.device, s.kind, tags, start_ms, interval * 1000, days * 86400 // interval, 20_000)
        )  # type: ignore[arg-type]
    t = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        points = sum(p for p, _ in pool.imap_unordered(_load_device, jobs))
    return points, time.perf_counter() - t


def run(
    counties: int = 100,
    devices_per_county: int = 1000,
    days: int = 30,
    hourly_days: int | None = 1,
    writers: int = 2,
    repeats: int = 2,
    raw_sample_devices: int = 0,
    keep: Path | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    say = say or (lambda _m: None)
    hourly_days = days if hourly_days is None else min(days, hourly_days)
    tmp = Path(tempfile.mkdtemp(prefix="village-bench-province-", dir=keep))
    server = _start_influx(tmp / "influx")
    url = f"sqlite:///{tmp / 'registry.db'}"
    try:
        migrate(url)
        end_day = datetime.now(zone(TZ)).date()  # the last `days` closed local days
        first_day = end_day - timedelta(days=days)
        codes = county_codes(counties)
        t0 = time.perf_counter()
        series = build_registry(url, codes, devices_per_county, local_midnight(first_day - timedelta(days=1), TZ))
        registry_s = time.perf_counter() - t0
        say(f"registry: {counties} counties, {len(series):,} devices in {registry_s:.1f} s")
        influx = InfluxV1(server.url, "bench", timeout=600)
        Rollups(influx, tz=TZ).ensure()
        rng = random.Random(14)
        outages = {c: round(rng.uniform(0.01, 0.20), 3) for c in codes}
        by_county: dict[str, list[Series]] = {}
        for s in series:
            by_county.setdefault(s.tags.split("county=")[1].split(",")[0], []).append(s)
        jobs = [
            RollupJob(server.url, "bench", by_county[c], outages[c], first_day, days, hourly_days, seed=i)
            for i, c in enumerate(codes)
        ]
        t1 = time.perf_counter()
        influxd_cpu0 = _cpu_s(server.proc.pid)
        hourly = daily = 0
        with multiprocessing.get_context("spawn").Pool(writers) as pool:
            for n, (h, d) in enumerate(pool.imap_unordered(write_rollups, jobs), start=1):
                hourly, daily = hourly + h, daily + d
                if n % max(1, counties // 10) == 0:
                    say(f"rollups: {n}/{counties} counties, {hourly + daily:,} points")
        write_s = time.perf_counter() - t1
        influxd_cpu = _cpu_s(server.proc.pid) - influxd_cpu0
        say("county rollups: every day and kind summed per county (analytics.rollups.county_rollup)")
        t_c = time.perf_counter()
        rollups = Rollups(influx, tz=TZ)
        # a week per query: few queries (InfluxDB opens every series' cursors once per query) while the
        # cursors held at once stay those of about one shard (a 30-day query doubled InfluxDB's memory)
        weeks = [(k, first_day + timedelta(days=d), min(7, days - d)) for k in rollups.kinds for d in range(0, days, 7)]
        with ThreadPoolExecutor(max_workers=writers) as threads:
            county_points = sum(threads.map(lambda t: rollups.county_rollup(t[0], t[1], days=t[2]), weeks))
        county_s = time.perf_counter() - t_c
        raw_points, raw_s = 0, 0.0
        if raw_sample_devices:
            say(f"raw sample: {raw_sample_devices} devices, {days} days of readings...")
            raw_points, raw_s = raw_sample(server.url, series[:raw_sample_devices], days, first_day, writers)
        influx.close()
        say(f"rollups written: {hourly:,} hourly and {daily:,} daily points in {write_s:.0f} s; restarting InfluxDB")
        port = server.port
        time.sleep(15)  # the caches go to TSM files (cache-snapshot-write-cold-duration) and compact
        server.stop()
        data, wal = tmp / "influx" / "data", tmp / "influx" / "wal"  # what is left in the log counts too
        disk = _du_bytes(data / "bench") + _du_bytes(wal / "bench")
        raw_disk = _du_bytes(data / "raw") + _du_bytes(wal / "raw") if raw_points else 0
        server = _start_influx(tmp / "influx", port=port)

        period = parse_period(f"{first_day.isoformat()}..{(end_day - timedelta(days=1)).isoformat()}", TZ)
        runs: list[dict[str, Any]] = []
        engine = get_engine(url)  # a new engine: no connection of the writes is reused
        for i in range(1 + repeats):
            load, cpu0 = _load(), time.process_time()
            t2 = time.perf_counter()
            client = InfluxV1(server.url, "bench", timeout=600)
            rollups = Rollups(client, tz=TZ)
            with Session(engine) as session:
                result = compare(session, rollups, counties_under(session, [PREFIX]), period, prefixes=[PREFIX])
            seconds = time.perf_counter() - t2
            cpu = time.process_time() - cpu0
            client.close()
            timings = result["timings"]
            runs.append({"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), "load": load, "timings": timings})
            say(f"comparison {'cold' if i == 0 else 'warm'}: {seconds:.2f} s")
        engine.dispose()
        cold = runs[0]["seconds"]
        points = hourly + daily
        hourly_all = 24 * daily  # every device-day with readings has 24 hourly points
        ranked = [r for r in result["counties"] if r["rank"] is not None]
        return {
            "bench": "province",
            "counties": counties,
            "devices_per_county": devices_per_county,
            "devices": len(series),
            "days": days,
            "hourly_days": hourly_days,
            "hourly_points": hourly,
            "daily_points": daily,
            "written": _written(days, hourly_days, hourly, hourly_all),
            "hourly_points_all_days": hourly_all,
            "rollup_write_s": round(write_s, 1),
            "county_rollup_points": county_points,
            "county_rollup_s": round(county_s, 1),
            "rollup_points_per_s": round(points / write_s) if write_s else None,
            "influxd_cpu_s": round(influxd_cpu, 1),
            "influxd_cpu_us_per_point": round(1e6 * influxd_cpu / points, 1) if points else None,
            "load_during_writes": _load(),
            "rollup_disk_mb": round(disk / 1e6, 1),
            "bytes_per_rollup_point": round(disk / (hourly + daily), 1) if hourly + daily else None,
            "registry_s": round(registry_s, 1),
            "raw_sample_points": raw_points,
            "raw_sample_points_per_s": round(raw_points / raw_s) if raw_s else None,
            "bytes_per_raw_point": round(raw_disk / raw_points, 2) if raw_points else None,
            "comparison_cold_s": cold,
            "comparison_cold_cpu_s": runs[0]["cpu_s"],
            "comparison_cold_load": runs[0]["load"],
            "comparison_warm_s": round(statistics.median(r["seconds"] for r in runs[1:]), 3) if repeats else None,
            "cost_per_county_ms": round(1000 * cold / counties, 2),
            "cost_per_county_cpu_ms": round(1000 * runs[0]["cpu_s"] / counties, 2),
            "cold_timings": runs[0]["timings"],
            "counties_ranked": len(ranked),
            # every daily point written is one device-day with readings: the comparison must count them all
            "device_days_reporting": sum(
                r["inputs"]["device_online_rate"]["device_days_reporting"] for r in result["counties"]
            ),
            "top": [{"code": r["code"], "dvi": r["values"].get("dvi")} for r in ranked[:3]],
            "target_s": 5.0,
            "cold_start": "InfluxDB restarted after the writes (its caches empty), a new registry engine and clients;"
            " the operating system's page cache is not dropped",
            "writers": writers,
            "cores": os.cpu_count(),
        }
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
