"""`village bench indicators`: time to compute every indicator of a county from the rollups.

Starts its own InfluxDB (core.services.influxd) and SQLite registry in a temporary folder (removed
afterwards), registers a synthetic county (`bench_registry`: 20-device blocks of 8 soil probes,
4 paddy gauges, 2 weather stations on 8 plots, 5 collars on the animals of a herd and a barn
sensor; 10 villages), loads `days` days of readings every `interval_s` seconds per device made by
simulators.devices.generate (1,000 devices x 30 days x one a minute = 43.2 million points),
written as line protocol in large batches by several processes, builds the rollups, and times
`compute_indicators` for the county, all its villages and the previous period (what
`village indicators` does) for periods of the last 7, 15 and `days` days. Each computation covers
the period and its previous period (the trend), so a period whose previous period lies before the
loaded data does less work (`previous_period_days_with_data` says how much). The ledger part is
synthetic (`_ledger`: made-up leaves marked anchored, no chain): the ledger indicators count rows.

Devices are added in steps (250, 500, then all 1,000 by default): each step loads only its new
devices, rolls up only their series (the steps add up to one full build) and times the computation
again, so the figures show how the time grows with devices and days without loading anything twice.
Load, rollup and compute times are reported separately. Devices are marked active from before the
data starts (provisioning would date them now, and PBKDF2 hashing 1,000 secrets only slows the setup).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, func, select

from analytics.compute import compute_indicators
from analytics.periods import Period, local_midnight, zone
from analytics.rollups import Rollups
from core.db import get_engine, migrate
from core.influx import InfluxUnavailable, InfluxV1
from core.models import Device, DeviceStatus, Plot
from core.registry_io import import_data
from core.services import influxd
from ingest.enrich import DeviceDirectory
from ingest.pipeline import series_key
from ledger.anchor_models import AnchorState, AnchorWindow, LedgerLeaf, LotManifest
from ledger.models import Inspection, Lot, LotSource, Product
from simulators.devices import generate

COUNTY = "211122"
TZ = "Asia/Shanghai"
BLOCK = 20  # devices per farm block
SOILS, PADDIES, WEATHERS, COLLARS = 8, 4, 2, 5  # + 1 barn = 20
VILLAGES = 10
PLOT_CROPS = ("rice", "rice", "rice", "rice", "maize", "soybean", "peanut", "maize")
Say = Callable[[str], None]


def _block_layout(b: int) -> list[tuple[str, str, str]]:
    """(device id, kind, attach key) of the 20 devices of block `b`, in index order."""
    out = [(f"soil-{b:04d}-{p}", "soil", f"B{b:04d}-P{p}") for p in range(SOILS)]
    out += [(f"paddy-{b:04d}-{p}", "paddy", f"B{b:04d}-P{p}") for p in range(PADDIES)]
    out += [(f"wx-{b:04d}-{p}", "weather", f"B{b:04d}-P{p * 4}") for p in range(WEATHERS)]
    out += [(f"collar-{b:04d}-{a}", "collar", f"2{COUNTY}{b:04d}{a:02d}") for a in range(COLLARS)]
    out.append((f"barn-{b:04d}", "barn", f"B{b:04d}-H"))
    return out


def device_plan(devices: int) -> list[tuple[str, str, str]]:
    """The first `devices` devices of the synthetic county: the same prefix for any size."""
    blocks = math.ceil(devices / BLOCK)
    return [d for b in range(blocks) for d in _block_layout(b)][:devices]


def bench_registry(devices: int, start: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Registry rows for devices [start, devices) of the plan and the blocks they need (the blocks of
    the first `start` devices exist already)."""
    blocks, blocks_done = math.ceil(devices / BLOCK), math.ceil(start / BLOCK)
    townships = [f"{COUNTY}10{t}" for t in range(2)]
    villages = [f"{townships[v % 2]}2{v:02d}" for v in range(VILLAGES)]
    data: dict[str, list[dict[str, Any]]] = {k: [] for k in ("farms", "plots", "herds", "animals")}
    if blocks_done == 0:
        data["counties"] = [{"code": COUNTY, "name_zh": "盘山县", "name_en": "Panshan County", "timezone": TZ}]
        data["townships"] = [{"code": t, "county_code": COUNTY, "name_zh": f"镇{i}"} for i, t in enumerate(townships)]
        data["villages"] = [
            {"code": v, "township_code": townships[i % 2], "name_zh": f"村{i:02d}"} for i, v in enumerate(villages)
        ]
    for b in range(blocks_done, blocks):
        village, farm = villages[b % VILLAGES], f"BF{b:04d}"
        data["farms"].append({"code": farm, "name": f"bench farm {b}", "village_code": village})
        data["plots"] += [
            {
                "plot_no": f"B{b:04d}-P{p}",
                "farm_code": farm,
                "village_code": village,
                "area_mu": 50 + 10 * p,
                "crop": PLOT_CROPS[p],
            }
            for p in range(SOILS)
        ]
        data["herds"].append({"herd_no": f"B{b:04d}-H", "farm_code": farm, "village_code": village, "head_count": 6})
        data["animals"] += [{"ear_tag": f"2{COUNTY}{b:04d}{a:02d}", "herd_no": f"B{b:04d}-H"} for a in range(COLLARS)]
    field = {"soil": "plot_no", "paddy": "plot_no", "weather": "plot_no", "collar": "ear_tag", "barn": "herd_no"}
    data["devices"] = [{"id": dev, "kind": kind, field[kind]: key} for dev, kind, key in device_plan(devices)[start:]]
    return data


def _format(values: dict[str, Any]) -> str:
    parts = []
    for k, v in values.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int):
            parts.append(f"{k}={v}i")
        else:
            parts.append(f"{k}={v!r}")
    return ",".join(parts)


@dataclass(frozen=True)
class LoadJob:
    url: str
    db: str
    device: str
    kind: str
    tags: tuple[tuple[str, str], ...]
    start_ms: int
    interval_ms: int
    count: int
    batch: int


def _load_device(job: LoadJob) -> tuple[int, int]:
    """Generate and write one device's readings; (points, bytes). Runs in a worker process."""
    key = series_key(job.kind, job.tags)
    client = InfluxV1(job.url, job.db, timeout=300)
    points = size = 0
    lines: list[str] = []
    try:
        for r in generate(job.device, job.kind, job.start_ms, job.interval_ms, job.count, seed="bench"):
            lines.append(f"{key} {_format(r['values'])} {r['ts']}")
            if len(lines) >= job.batch:
                size += _write(client, lines)
                points += len(lines)
                lines = []
        if lines:
            size += _write(client, lines)
            points += len(lines)
    finally:
        client.close()
    return points, size


def _write(client: InfluxV1, lines: list[str]) -> int:
    body = "\n".join(lines).encode()
    for attempt in range(60):
        try:
            client.write(body)
            return len(body)
        except InfluxUnavailable:  # cache full while it snapshots: back off
            time.sleep(min(5.0, 0.2 * (attempt + 1)))
    raise RuntimeError("InfluxDB kept refusing writes (cache full?)")


def _du_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return round(total / 1e6, 1)


def _ledger(session: Session, plots: Iterable[tuple[int, str]], year: int, block_time: datetime) -> None:
    """One harvest lot per plot, anchored: a lot leaf and a manifest leaf each, windows of 200 leaves."""
    if session.get(Product, 1) is None:
        session.add(Product(id=1, code="bench-paddy", name_zh="稻谷"))
        session.flush()
    leaves: list[LedgerLeaf] = []
    for plot_id, plot_no in plots:
        lot = Lot(
            code=f"B{plot_id:010d}", product_id=1, lot_no=plot_no[-20:], quantity=1000.0 + plot_id, harvest_year=year
        )
        session.add(lot)
        session.flush()
        session.add(LotSource(lot_id=lot.id, plot_id=plot_id))  # type: ignore[arg-type]
        lot_leaf = "0x" + f"{plot_id:064x}"
        manifest = LotManifest(lot_id=lot.id, version=1, content={"leaves": [lot_leaf]})  # type: ignore[arg-type]
        session.add(manifest)
        session.add(
            Inspection(
                lot_id=lot.id,
                lab="bench",
                report_no=f"R{plot_id}",
                sampled_on=block_time.date(),
                passed=plot_id % 10 != 0,
            )
        )  # type: ignore[arg-type]
        session.flush()
        created = block_time - timedelta(minutes=plot_id % 50 + 1)
        leaves.append(LedgerLeaf(kind="lot/1", record_id=lot.id, leaf=lot_leaf, canonical=b"{}", created_at=created))  # type: ignore[arg-type]
        leaves.append(
            LedgerLeaf(
                kind="manifest/1",
                record_id=manifest.id,
                leaf="0x" + f"{plot_id:063x}f",
                canonical=b"{}",
                created_at=created,
            )
        )  # type: ignore[arg-type]
    seq0 = session.exec(select(func.count()).select_from(AnchorWindow)).one()
    for i in range(0, len(leaves), 200):
        seq = seq0 + i // 200 + 1
        window = AnchorWindow(
            seq=seq,
            window_id=f"w{seq:06d}",
            root="0x" + f"{seq:064x}",
            prev_root="0x" + "0" * 64,
            leaf_count=len(leaves[i : i + 200]),
            state=AnchorState.final,
            block_time=block_time,
        )
        session.add(window)
        session.flush()
        for leaf in leaves[i : i + 200]:
            leaf.window_seq = seq
            session.add(leaf)
    session.flush()


def run(
    devices: int = 1000,
    days: int = 30,
    interval_s: int = 60,
    steps: Iterable[int] = (250, 500),
    period_days: Iterable[int] = (7, 15),
    writers: int = 2,
    batch: int = 20_000,
    repeats: int = 3,
    keep: Path | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    say = say or (lambda _m: None)
    sizes = sorted({s for s in steps if 0 < s < devices} | {devices})
    spans = sorted({d for d in period_days if 0 < d < days} | {days})
    tmp = Path(tempfile.mkdtemp(prefix="village-bench-indicators-", dir=keep))
    server = influxd(tmp / "influx").start()
    url = f"sqlite:///{tmp / 'registry.db'}"
    try:
        migrate(url)
        engine = get_engine(url)
        influx = InfluxV1(server.url, "bench", timeout=600)
        influx.ensure_database()
        end_day = datetime.now(zone(TZ)).date()  # data up to the last local midnight: every period is closed
        start_day = end_day - timedelta(days=days)
        start_ms = int(local_midnight(start_day, TZ).timestamp() * 1000)
        count = days * 86400 // interval_s
        rollups = Rollups(influx, tz=TZ, workers=2)
        figures: dict[str, Any] = {
            "bench": "indicators",
            "devices": devices,
            "days": days,
            "interval_s": interval_s,
            "cores": os.cpu_count(),
            "writers": writers,
            "target_s": 5.0,
            "ledger": "synthetic: one lot per plot with made-up lot and manifest leaves in windows of 200 marked "
            "anchored; no records hashed, no chain (the ledger indicators count rows, they do not verify)",
            "steps": [],
        }
        loaded = blocks_done = 0
        total_points = total_bytes = 0
        load_s = rollup_s = 0.0
        for size in sizes:
            with Session(engine) as session:
                import_data(session, bench_registry(size, loaded), "bench")  # raises ImportErrors
                session.flush()
                new = [d for d, _, _ in device_plan(size)[loaded:]]
                session.exec(  # type: ignore[call-overload]
                    update(Device)
                    .where(Device.id.in_(new))  # type: ignore[attr-defined]
                    .values(
                        status=DeviceStatus.active, provisioned_at=local_midnight(start_day - timedelta(days=1), TZ)
                    )
                )
                plots = session.exec(select(Plot.id, Plot.plot_no)).all()
                new_blocks = {f"B{b:04d}" for b in range(blocks_done, math.ceil(size / BLOCK))}
                _ledger(
                    session,
                    [(i, no) for i, no in plots if no[:5] in new_blocks],
                    end_day.year,
                    local_midnight(end_day - timedelta(days=2), TZ).astimezone(UTC),
                )
                session.commit()
            directory = DeviceDirectory(engine)
            directory.refresh()
            jobs = []
            for dev, kind, _ in device_plan(size)[loaded:]:
                info = directory.get(dev)
                assert info is not None
                jobs.append(
                    LoadJob(server.url, "bench", dev, kind, info.tags, start_ms, interval_s * 1000, count, batch)
                )
            say(f"{size:,} devices: loading {len(jobs) * count:,} points with {writers} writers...")
            t0 = time.perf_counter()
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(writers) as pool:
                for points, nbytes in pool.imap_unordered(_load_device, jobs, chunksize=1):
                    total_points += points
                    total_bytes += nbytes
            step_load = time.perf_counter() - t0
            load_s += step_load
            say(f"{size:,} devices: loaded in {step_load:.1f} s; building rollups...")
            t1 = time.perf_counter()
            new_ids = [d for d, _, _ in device_plan(size)[loaded:]]  # only the new devices' series
            rollups.backfill(start_day, end_day - timedelta(days=1), tags={"device": new_ids} if loaded else None)
            step_rollup = time.perf_counter() - t1
            rollup_s += step_rollup
            computes = []
            for span in spans:
                period = Period("range", end_day - timedelta(days=span), end_day, TZ)
                times, report = [], None
                for _ in range(max(1, repeats)):
                    with Session(engine) as session:
                        t2 = time.perf_counter()
                        report = compute_indicators(session, influx, COUNTY, period, rollups=rollups, index_id=None)
                        times.append(time.perf_counter() - t2)
                assert report is not None
                computes.append(
                    {
                        "devices": size,
                        "days": span,
                        # each compute also covers the previous period (the trend); before the loaded data
                        # it is empty and costs less, which is why a 30-day period over 30 days of data can
                        # be faster than a 15-day one
                        "previous_period_days_with_data": max(0, min(span, days - span)),
                        "compute_s": round(statistics.median(times), 3),
                        "first_s": round(times[0], 3),
                        "villages": len(report.villages),
                        "indicators": len(report.indicator_ids()),
                        "influx_queries": report.timings.get("influx_queries"),
                        "telemetry_s": round(report.timings["telemetry_s"], 3),
                        "completeness_pct": report.value("data_completeness"),
                        "online_pct": report.value("device_online_rate"),
                    }
                )
                say(f"{size:,} devices, {span} days: all indicators in {statistics.median(times):.2f} s")
            figures["steps"].append(
                {
                    "devices": size,
                    "points_loaded": (size - loaded) * count,
                    "load_s": round(step_load, 2),
                    "rollup_s": round(step_rollup, 2),
                    "computes": computes,
                }
            )
            loaded, blocks_done = size, math.ceil(size / BLOCK)
        final = figures["steps"][-1]["computes"][-1]
        figures.update(
            {
                "points": total_points,
                "line_protocol_mb": round(total_bytes / 1e6, 1),
                "load_s": round(load_s, 2),
                "load_points_per_s": round(total_points / load_s) if load_s else None,
                "rollup_s": round(rollup_s, 2),  # each step rolls up only its new devices: one full build in all
                "compute_s": final["compute_s"],
                "compute_first_s": final["first_s"],
                "influx_disk_mb": _du_mb(tmp / "influx"),
                "period": f"{start_day.isoformat()}..{(end_day - timedelta(days=1)).isoformat()}",
            }
        )
        return figures
    finally:
        server.stop()
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
