"""Computed indicators on a small hand-built county against a REAL InfluxDB 1.x and a SQLite registry.

Every expected value below is worked out by hand from the registry rows and readings written here
(the comments show the arithmetic); the CLI is run end to end and its CSV and Excel files read back.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from analytics.compute import IndicatorReport, compute_indicators
from analytics.periods import parse_period
from analytics.rollups import Rollups
from core.db import get_engine, migrate
from core.influx import InfluxV1
from core.models import Animal, County, DeadLetter, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from core.services import InfluxD, influxd
from core.settings import get_settings
from ledger.anchor_models import AnchorState, AnchorWindow, LedgerLeaf, LotManifest
from ledger.models import Inspection, Lot, LotSource, Product

SH = ZoneInfo("Asia/Shanghai")
V1, V2 = "211122101201", "211122101203"
PERIOD = "2026-06-01..2026-06-04"  # four local days, all in the paddy flooded season
_db_numbers = itertools.count()


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


@pytest.fixture(scope="module")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxD]:
    server = influxd(tmp_path_factory.mktemp("indicators") / "influx").start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class World:
    url: str
    engine: Engine
    influx: InfluxV1
    rollups: Rollups


def build_registry(session: Session) -> None:
    """Two villages. V1: plots P1 (100 mu rice: soil probe s1 + paddy gauge k1) and P2 (50 mu maize: soil
    probe s2, weather station w1 that never reports). V2: plot P3 (30 mu soybean: an inactive and a revoked
    device only), herd H1 (head count 10, animals A1..A3; collars c1 on A1 and c2 on A2, c2 provisioned at
    noon on June 2) with barn sensor b1."""
    session.add(County(code="211122", name_zh="盘山县", name_en="Panshan County"))
    session.add(Township(code="211122101", county_code="211122", name_zh="沙岭镇"))
    session.add(Village(code=V1, township_code="211122101", name_zh="北郑家村"))
    session.add(Village(code=V2, township_code="211122101", name_zh="西拉拉村"))
    session.flush()
    session.add(Farm(id=1, code="F1", name="farm one", village_code=V1))
    session.add(Farm(id=2, code="F2", name="farm two", village_code=V2))
    session.flush()
    session.add(Plot(id=1, plot_no="P1", farm_id=1, village_code=V1, area_mu=100, crop="rice"))
    session.add(Plot(id=2, plot_no="P2", farm_id=1, village_code=V1, area_mu=50, crop="maize"))
    session.add(Plot(id=3, plot_no="P3", farm_id=2, village_code=V2, area_mu=30, crop="soybean"))
    session.add(Herd(id=1, herd_no="H1", farm_id=2, village_code=V2, head_count=10))
    session.flush()
    for i in (1, 2, 3):
        session.add(Animal(id=i, ear_tag=f"A{i}", herd_id=1))
    session.flush()
    early = utc(local(2026, 5, 1))
    active = {"status": DeviceStatus.active, "provisioned_at": early}
    session.add(Device(id="s1", kind="soil", plot_id=1, **active))
    session.add(Device(id="k1", kind="paddy", plot_id=1, **active))
    session.add(Device(id="s2", kind="soil", plot_id=2, **active))
    session.add(Device(id="w1", kind="weather", plot_id=2, **active))
    session.add(Device(id="x1", kind="soil", plot_id=3, status=DeviceStatus.inactive))
    session.add(
        Device(id="r1", kind="soil", plot_id=3, status=DeviceStatus.revoked, provisioned_at=early,
               revoked_at=utc(local(2026, 5, 20)))
    )  # fmt: skip
    session.add(Device(id="c1", kind="collar", animal_id=1, **active))
    session.add(
        Device(id="c2", kind="collar", animal_id=2, status=DeviceStatus.active,
               provisioned_at=utc(local(2026, 6, 2, 12)))
    )  # fmt: skip
    session.add(Device(id="b1", kind="barn", herd_id=1, **active))
    session.flush()


def build_ledger(session: Session) -> None:
    """Lots of 2026: L1 (F1, 1000 kg from P1) fully anchored; L2 (F2, 3000 kg from P3) whose manifest is
    anchored but whose lot record is still pending; L3 (F1, 500 kg, no origin) without a manifest.
    Window 1 is final with block time 10:30 on June 2; window 2 is pending."""
    session.add(Product(id=1, code="paddy", name_zh="稻谷"))
    session.flush()
    for lot_id, farm, kg in ((1, 1, 1000), (2, 2, 3000), (3, 1, 500)):
        session.add(
            Lot(id=lot_id, code=f"AAAA-BBBB-C{lot_id:02d}", product_id=1, lot_no=f"L{lot_id}", quantity=kg,
                farm_id=farm, harvest_year=2026)
        )  # fmt: skip
    session.flush()
    session.add(LotSource(lot_id=1, plot_id=1))
    session.add(LotSource(lot_id=2, plot_id=3))
    block = utc(local(2026, 6, 2, 10, 30))
    session.add(AnchorWindow(seq=1, window_id="w000001", root="0x" + "1" * 64, prev_root="0x" + "0" * 64,
                             leaf_count=3, state=AnchorState.final, block_time=block))  # fmt: skip
    session.add(AnchorWindow(seq=2, window_id="w000002", root="0x" + "2" * 64, prev_root="0x" + "1" * 64,
                             leaf_count=1, state=AnchorState.pending))  # fmt: skip
    session.flush()
    leaf = {name: "0x" + c * 64 for name, c in (("lot1", "a"), ("lot2", "b"), ("m1", "c"), ("m2", "d"))}
    session.add(LotManifest(id=1, lot_id=1, version=1, content={"leaves": [leaf["lot1"]]}))
    session.add(LotManifest(id=2, lot_id=2, version=1, content={"leaves": [leaf["lot2"]]}))
    session.flush()
    t0 = local(2026, 6, 2, 10, 0)
    rows = [  # kind, record, leaf, created, window: latencies 30, 20 and 10 minutes in window 1
        ("lot/1", 1, leaf["lot1"], t0, 1),
        ("manifest/1", 1, leaf["m1"], t0 + timedelta(minutes=10), 1),
        ("manifest/1", 2, leaf["m2"], t0 + timedelta(minutes=20), 1),
        ("lot/1", 2, leaf["lot2"], t0 + timedelta(minutes=25), 2),
    ]
    for kind, record_id, hexleaf, created, seq in rows:
        session.add(LedgerLeaf(kind=kind, record_id=record_id, leaf=hexleaf, canonical=b"{}",
                               created_at=utc(created), window_seq=seq))  # fmt: skip
    session.add(Inspection(lot_id=1, lab="lab", report_no="R1", sampled_on=date(2026, 6, 2), passed=True))
    session.add(Inspection(lot_id=2, lab="lab", report_no="R2", sampled_on=date(2026, 6, 3), passed=False))
    session.add(Inspection(lot_id=2, lab="lab", report_no="R3", sampled_on=date(2026, 7, 3), passed=False))
    for when in (local(2026, 6, 2, 8), local(2026, 6, 3, 9), local(2026, 5, 30, 9)):  # two in the period
        session.add(DeadLetter(received_at=utc(when), topic="v1/devices/s1/telemetry", device_id="s1",
                               reason="out_of_range", detail="x"))  # fmt: skip
    session.flush()


def readings() -> list[str]:
    """Per device, what it sends on June 1..4 (local days d = 0..3) at its catalogue interval."""
    lines: list[str] = []
    start = local(2026, 6, 1)

    def every(seconds: int, first: datetime, last: datetime) -> Iterator[datetime]:
        t = first
        while t < last:
            yield t
            t += timedelta(seconds=seconds)

    def day(d: int, hours: float = 24) -> tuple[datetime, datetime]:
        a = start + timedelta(days=d)
        return a, a + timedelta(hours=hours)

    p1 = "county=211122,plot=P1,village=" + V1
    p2 = "county=211122,plot=P2,village=" + V1
    h1 = "county=211122,herd=H1,village=" + V2
    for d in range(4):  # s1: complete; moisture 25 (below rice's 30) except on day 2 (35)
        for t in every(600, *day(d)):
            lines.append(f"soil,device=s1,{p1} soil_moisture={35 if d == 2 else 25},soil_temp_c=18 {ms(t)}")
    for d, hours in ((0, 24), (1, 24), (2, 12)):  # s2: two full days, half of the third, nothing on the fourth
        for t in every(600, *day(d, hours)):
            lines.append(f"soil,device=s2,{p2} soil_moisture=20,soil_temp_c=18 {ms(t)}")
    for d in range(4):  # k1: complete; on day 0 the water drops to -10 cm for one reading
        for i, t in enumerate(every(600, *day(d))):
            level = -10 if d == 0 and i == 50 else 3
            lines.append(f"paddy,device=k1,{p1} water_level_cm={level},water_temp_c=22 {ms(t)}")
    for d in range(4):  # c1: complete; fever (40.2 °C) from 14:00 to 16:00 on day 1: two hourly means above 39.5
        for t in every(900, *day(d)):
            hot = d == 1 and 14 <= t.hour < 16
            lines.append(f"collar,device=c1,animal=A1,{h1} body_temp_c={40.2 if hot else 38.5},activity=100i {ms(t)}")
    for t in every(900, local(2026, 6, 2, 12), local(2026, 6, 5)):  # c2: from its provisioning at noon on day 1
        lines.append(f"collar,device=c2,animal=A2,{h1} body_temp_c=38.6,activity=90i {ms(t)}")
    for d in range(4):  # b1: complete; ammonia 30 ppm from 02:00 to 05:00 on day 0 (three hours above 25)
        for t in every(300, *day(d)):
            nh3 = 30 if d == 0 and 2 <= t.hour < 5 else 10
            lines.append(f"barn,device=b1,{h1} nh3_ppm={nh3},co2_ppm=800 {ms(t)}")
    return lines


@pytest.fixture
def world(tmp_path: Path, influx_server: InfluxD) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        build_registry(session)
        build_ledger(session)
        session.commit()
    influx = InfluxV1(influx_server.url, f"i{next(_db_numbers)}", timeout=60)
    influx.ensure_database()
    influx.write("\n".join(readings()))
    rollups = Rollups(influx, tz="Asia/Shanghai")
    rollups.backfill(date(2026, 5, 25), date(2026, 6, 4), now=local(2026, 8, 1))
    yield World(url, engine, influx, rollups)
    influx.close()
    engine.dispose()


def compute(world: World, period: str = PERIOD, now: datetime | None = None, **kw: object) -> IndicatorReport:
    with Session(world.engine) as session:
        return compute_indicators(
            session,
            world.influx,
            "211122",
            parse_period(period),
            now=now or local(2026, 8, 1),
            rollups=world.rollups,
            **kw,  # type: ignore[arg-type]
        )


def test_registry_indicators_coverage_livestock_and_informatization(world: World) -> None:
    r = compute(world)
    # P1 and P2 have active devices; P3 only an inactive and a revoked one
    assert r.value("plot_device_share") == pytest.approx(100 * 2 / 3, abs=1e-4)
    assert r.value("device_coverage") == pytest.approx(100 * 150 / 180, abs=1e-4)
    v = r.scope().values["device_coverage"]
    assert v.inputs["area_mu_with_active_device"] == 150 and v.inputs["area_mu"] == 180
    assert r.value("device_coverage", V1) == 100 and r.value("device_coverage", V2) == 0
    # collars on A1 and A2; herd head count 10 (more than the three registered animals)
    assert r.value("livestock_monitoring_share") == pytest.approx(20.0)
    assert r.scope().values["livestock_monitoring_share"].inputs == {
        "head_with_active_collar": 2,
        "head": 10,
        "herds": 1,
        "as_of": "2026-06-04T16:00:00+00:00",
    }
    # 0.675 x 83.333 + 0.325 x 20; V1 has no livestock, so crop coverage alone
    assert r.value("production_informatization_rate") == pytest.approx(0.675 * 250 / 3 + 0.325 * 20, abs=1e-3)
    assert r.value("production_informatization_rate", V1) == pytest.approx(100.0)


def test_telemetry_indicators_from_the_rollups(world: World) -> None:
    r = compute(world)
    sv = r.scope().values
    # active device-days: s1, k1, s2, w1, c1, b1 x 4 days + c2 x 2 (active whole days June 3 and 4) = 26;
    # with readings: s1 4 + k1 4 + s2 3 + w1 0 + c1 4 + b1 4 + c2 2 = 21
    assert sv["device_online_rate"].inputs["device_days_reporting"] == 21
    assert sv["device_online_rate"].inputs["active_device_days"] == 26
    assert r.value("device_online_rate") == pytest.approx(100 * 21 / 26, abs=1e-4)
    # expected per day: soil and paddy 144, weather and barn 288, collar 96.
    # expected = 4 x (144 + 144 + 144 + 288 + 96 + 288) + 2 x 96 = 4608
    # counted = 576 + 576 + (144 + 144 + 72) + 0 + 384 + 1152 + 192 = 3240
    assert sv["data_completeness"].inputs["readings_expected"] == 4608
    assert sv["data_completeness"].inputs["readings_counted"] == 3240
    assert r.value("data_completeness") == pytest.approx(100 * 3240 / 4608, abs=1e-4)
    # idle: of the devices active since before May 29 (c2 is too new), w1 sent nothing in the last 7 days
    assert sv["idle_device_rate"].inputs == {"idle_devices": 1, "active_devices": 6, "silent_days": 7}
    # continuous monitoring: P1 complete on all 4 days; P2 on 2 of 4 (< 80 %) -> 100 of 180 mu
    assert r.value("continuous_monitoring_share") == pytest.approx(100 * 100 / 180, abs=1e-4)
    # drought: P1 (rice, below 30) on days 0, 1 and 3; P2 (maize, 20 >= 18) never; 4 + 3 plot-days observed
    assert sv["drought_plot_days"].value == 3
    assert sv["drought_plot_days"].inputs["plot_days_observed"] == 7
    assert sv["drought_plot_days"].inputs["soil_moisture_min_by_crop"] == {"maize": 18, "rice": 30}
    # paddy: the daily minimum on day 0 is -10 < -5
    assert sv["paddy_dry_plot_days"].value == 1
    assert sv["paddy_dry_plot_days"].inputs["plot_days_observed_in_season"] == 4
    # fever: one fever animal-day (c1, day 1) of 4 + 3 monitored animal-days (c2 from its first noon), per 100
    assert sv["fever_alerts"].inputs["fever_animal_days"] == 1
    assert sv["fever_alerts"].inputs["monitored_animal_days"] == 7
    assert r.value("fever_alerts") == pytest.approx(100 / 7, abs=1e-4)
    assert r.value("barn_nh3_exceedance_hours") == 3
    # clearance: drought P1 day 0 -> day 2 (2 days), reopened on day 3 (open); paddy 1 day; fever 1 day
    assert r.value("alert_clearance_days") == 1
    assert sv["alert_clearance_days"].inputs["episodes_cleared"] == 3
    assert sv["alert_clearance_days"].inputs["episodes_open"] == 1
    # rejected: two dead letters of s1 in the period; stored = 576 + 576 + 360 + 384 + 240 + 1152
    assert sv["rejected_reading_rate"].inputs == {"dead_letters": 2, "stored_readings": 3288}
    # villages: V1 holds the plots, V2 the herd
    assert r.value("drought_plot_days", V1) == 3 and r.value("drought_plot_days", V2) is None
    assert r.value("fever_alerts", V2) == pytest.approx(100 / 7, abs=1e-4)
    assert r.scope(V1).values["device_online_rate"].inputs["active_device_days"] == 16


def test_ledger_indicators_from_anchor_states(world: World) -> None:
    r = compute(world)
    sv = r.scope().values
    # lots of 2026: L1 and L2 have an anchored manifest, L3 none
    assert sv["trace_lot_coverage"].inputs["lots_anchored"] == 2 and sv["trace_lot_coverage"].inputs["lots"] == 3
    assert r.value("trace_lot_coverage") == pytest.approx(100 * 2 / 3, abs=1e-4)
    # harvest lots L1 (1000 kg, verified) and L2 (3000 kg, its lot leaf still pending)
    assert r.value("traced_output_share") == pytest.approx(25.0)
    assert sv["traced_output_share"].inputs["kg"] == 4000 and sv["traced_output_share"].inputs["kg_verified"] == 1000
    # inspections sampled in the period: R1 passed, R2 failed (R3 is in July)
    assert r.value("inspection_pass_rate") == pytest.approx(50.0)
    # three leaves in the final window (block time June 2), created 30, 20 and 10 minutes before it
    assert r.value("anchored_records") == 3
    assert r.value("anchor_latency_median") == pytest.approx(20.0)
    assert r.value("anchored_records", V1) == 2 and r.value("anchored_records", V2) == 1
    assert r.value("traced_output_share", V1) == 100.0 and r.value("traced_output_share", V2) == 0.0


def test_current_period_online_rate_trend_and_ranking(world: World) -> None:
    # 10:00 on June 4: s1, k1, c1, c2 and b1 reported in the last three intervals; s2 stopped on June 3
    # and w1 never reported; 7 devices are active now
    r = compute(world, "2026-06", now=local(2026, 6, 4, 10), trend=2)
    v = r.scope().values["device_online_rate"]
    assert v.inputs["devices_online"] == 5 and v.inputs["active_devices"] == 7
    assert v.value == pytest.approx(100 * 5 / 7, abs=1e-4)
    assert [p for p, _ in r.trend("device_online_rate")] == ["2026-04", "2026-05", "2026-06"]
    assert r.scope().values["data_completeness"].inputs["days"] == 3  # June 1-3 are closed at 10:00 on June 4
    ranking = r.ranking("device_coverage")
    assert [(x["village"], x["rank"]) for x in ranking] == [(V1, 1), (V2, 2)]
    lower = r.ranking("drought_plot_days")  # lower is better; V2 has no soil probes: no value, ranked last
    assert lower[0]["village"] == V1 and lower[-1]["rank"] is None


def test_report_dict_statistics_and_composite_index(world: World) -> None:
    from analytics.statistics_io import load_demo

    with Session(world.engine) as session:
        load_demo(session)
        session.commit()
    r = compute(world, "2024")
    doc = r.to_dict()
    json.dumps(doc)  # the API returns it as is
    ids = {row["indicator"] for row in doc["indicators"]}
    assert {"rural_5g_coverage", "device_coverage", "traced_output_share"} <= ids
    assert doc["composite"]["index"] == "dvi" and doc["composite"]["score"] is not None
    assert sum(w["weight"] for w in doc["composite"]["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert doc["composite"]["rank"] >= 1 and doc["rankings"]["device_coverage"][0]["rank"] == 1
    stat = next(row for row in doc["indicators"] if row["indicator"] == "rural_5g_coverage")
    assert stat["inputs"]["year"] == 2024 and stat["previous"] is not None


@pytest.fixture
def cli_env(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("DATABASE_URL", world.url)
    monkeypatch.setenv("INFLUX_URL", world.influx.url)
    monkeypatch.setenv("INFLUX_DB", world.influx.db)
    get_settings.cache_clear()
    yield world
    get_settings.cache_clear()


def test_cli_indicators_table_csv_excel_and_charts(cli_env: World, tmp_path: Path) -> None:
    from cli.main import app

    runner = CliRunner()
    out_csv, out_xlsx, charts = tmp_path / "ind.csv", tmp_path / "ind.xlsx", tmp_path / "charts"
    result = runner.invoke(
        app,
        ["indicators", "--county", "211122", "--period", PERIOD, "--csv", str(out_csv), "--excel", str(out_xlsx),
         "--charts", str(charts), "--chart-indicators", "device_coverage,drought_plot_days,rural_5g_coverage"],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "监测设备覆盖率" in result.output and "device_coverage" in result.output
    with open(out_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    county = {r["indicator"]: r for r in rows if r["scope"] == "county"}
    assert float(county["device_coverage"]["value"]) == pytest.approx(100 * 150 / 180, abs=1e-3)
    assert json.loads(county["device_coverage"]["inputs"])["area_mu"] == 180
    assert {r["code"] for r in rows} == {"211122", V1, V2}
    book = openpyxl.load_workbook(out_xlsx)
    assert {"county", "villages", "trend"} <= set(book.sheetnames)
    sheet = book["county"]
    header = [c.value for c in sheet[1]]
    values = {row[header.index("indicator")]: row for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert values["drought_plot_days"][header.index("value")] == 3
    assert values["drought_plot_days"][header.index("name_zh")] == "干旱地块日数"
    pngs, svgs = sorted(charts.glob("*.png")), sorted(charts.glob("*.svg"))
    # trend and village charts of the two computed indicators; no statistics imported: no 5G chart
    assert (
        [p.stem for p in pngs]
        == [p.stem for p in svgs]
        == [
            "trend_device_coverage",
            "trend_drought_plot_days",
            "villages_device_coverage",
            "villages_drought_plot_days",
        ]
    )
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert (charts / "trend_device_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (charts / "villages_device_coverage.svg").read_text(encoding="utf-8")[:500]
    # one village, JSON
    result = runner.invoke(app, ["indicators", "--county", "211122", "--period", PERIOD, "--village", V2, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["code"] == V2 and doc["scope"] == "village"
    bad = runner.invoke(app, ["indicators", "--county", "211122", "--period", "2026-Q9"])
    assert bad.exit_code == 2 and "2026-Q3" in bad.output


def test_cli_rollups_backfill_and_status(cli_env: World) -> None:
    from cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["rollups", "--since", "2026-06-01", "--until", "2026-06-02"])
    assert result.exit_code == 0, result.output
    assert "soil" in result.output
    result = runner.invoke(app, ["rollups", "--status"])
    assert result.exit_code == 0 and "watermark" in result.output.lower()


def test_bench_indicators_small_run_prints_one_json_line_last(tmp_path: Path) -> None:
    import subprocess
    import sys

    args = ["bench", "indicators", "--devices", "30", "--days", "2", "--interval-s", "900", "--steps", "10"]
    args += ["--period-days", "1", "--repeats", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "indicators" and figures["cores"] >= 1
    assert figures["points"] == 30 * 2 * 96  # every device, every 15 minutes, two days
    assert [s["devices"] for s in figures["steps"]] == [10, 30]
    assert [c["days"] for c in figures["steps"][-1]["computes"]] == [1, 2]
    last = figures["steps"][-1]["computes"][-1]
    assert last["villages"] == 10 and last["indicators"] >= 15
    assert last["online_pct"] == 100.0 and 0 < last["completeness_pct"] <= 100
    assert figures["compute_s"] > 0 and figures["load_s"] > 0 and figures["rollup_s"] > 0
    assert "all indicators" in out.stderr
