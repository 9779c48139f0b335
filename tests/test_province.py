"""Tiers above the county and the county comparison, against the API's real InfluxDB and registry.

The module's copy of the template registry gets: the demo county's devices active from June 2026
(so the July readings of the template count), Dawa (211104, Panjin) with a village, a plot and a
device without readings, Heishan (210726, Jinzhou: another city), and officers of Panjin and of
Liaoning. Each defence has an attack test named after it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import update
from sqlmodel import Session, col, select

from api.app import create_app
from api.users import UserError, add_user
from core.db import get_engine
from core.influx import InfluxV1
from core.models import Device, Plot
from core.registry_io import import_data
from tests.api_fixtures import PASSWORD, Template, is_problem, token, world_settings

JUNE = datetime(2026, 6, 1, tzinfo=UTC)
PERIOD = "2026-07-01..2026-07-03"  # the template's readings: 3 days from 1 July
DAWA = {
    "counties": [{"code": "211104", "name_zh": "大洼区", "name_en": "Dawa District"}],
    "townships": [{"code": "211104100", "county_code": "211104", "name_zh": "示例镇"}],
    "villages": [{"code": "211104100200", "township_code": "211104100", "name_zh": "示例村"}],
    "farms": [{"code": "DW-F001", "name": "示例农场", "village_code": "211104100200"}],
    "plots": [
        {
            "plot_no": "211104100200-001",
            "farm_code": "DW-F001",
            "village_code": "211104100200",
            "area_mu": 50,
            "crop": "rice",
        }
    ],
    "devices": [{"id": "dw-soil-0001", "kind": "soil", "plot_no": "211104100200-001"}],
}
HEISHAN = {
    "counties": [{"code": "210726", "name_zh": "黑山县", "name_en": "Heishan County"}],
    "townships": [{"code": "210726100", "county_code": "210726", "name_zh": "示例镇"}],
    "villages": [{"code": "210726100200", "township_code": "210726100", "name_zh": "示例村"}],
}
OFFICERS = {"panjin": ("city_officer", "211100"), "liaoning": ("province_officer", "210000")}


@pytest.fixture(scope="module")
def world(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    settings = world_settings(api_template, tmp_path_factory.mktemp("province"))
    engine = get_engine(settings.resolved_database_url())
    with Session(engine) as session:
        import_data(session, DAWA)
        import_data(session, HEISHAN)
        session.exec(update(Device).values(status="active", provisioned_at=JUNE))  # type: ignore[call-overload]
        for name, (role, scope) in OFFICERS.items():
            add_user(session, name, PASSWORD, role, scope, update=True)
        session.commit()
    with TestClient(create_app(settings)) as c:
        yield c, settings.resolved_database_url()


@pytest.fixture(scope="module")
def client(world: tuple[TestClient, str]) -> TestClient:
    return world[0]


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, dict[str, str]]:
    return {u: token(client, u) for u in ("panjin", "liaoning", "county", "other", "analyst", "shaling")}


def _compare(client: TestClient, who: dict[str, str], **params: str):  # type: ignore[no-untyped-def]
    return client.get("/api/v1/province/comparison", params={"period": PERIOD, **params}, headers=who)


# ---------------------------------------------------------------- users of the new roles


def test_officer_scope_must_be_a_city_or_province(world: tuple[TestClient, str]) -> None:
    with Session(get_engine(world[1])) as session:
        for role, scope in (("city_officer", "211122"), ("city_officer", "210000"), ("province_officer", "211100")):
            with pytest.raises(UserError, match="covers a"):
                add_user(session, "x-officer", PASSWORD, role, scope)
        with pytest.raises(UserError, match="no prefecture 219900"):
            add_user(session, "x-officer", PASSWORD, "city_officer", "219900")


# ---------------------------------------------------------------- what each tier reads


def test_city_officer_reads_every_county_of_the_city(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    r = _compare(client, auth["panjin"])
    assert r.status_code == 200, r.text
    assert {c["code"] for c in r.json()["counties"]} == {"211103", "211104", "211122"}  # not Heishan (2107)
    villages = client.get("/api/v1/admin/villages", params={"limit": 500}, headers=auth["panjin"]).json()["items"]
    assert {v["code"][:6] for v in villages} == {"211103", "211104", "211122"}


def test_province_officer_reads_every_county_of_the_province(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    codes = {c["code"] for c in _compare(client, auth["liaoning"]).json()["counties"]}
    assert codes == {"210726", "211103", "211104", "211122"}
    narrowed = _compare(client, auth["liaoning"], within="211100").json()
    assert {c["code"] for c in narrowed["counties"]} == {"211103", "211104", "211122"}
    assert narrowed["scope"]["prefix"] == "2111"


def test_city_officer_cannot_read_other_city(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    is_problem(_compare(client, auth["panjin"], within="210700"), 403, "outside-scope")
    is_problem(_compare(client, auth["panjin"], within="210000"), 403, "outside-scope")  # the province is wider
    r = client.get("/api/v1/admin/villages/210726100200", headers=auth["panjin"])
    is_problem(r, 403, "outside-scope")
    assert "示例村" not in r.text


def test_county_admin_cannot_read_neighbour_county(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    mine = _compare(client, auth["county"]).json()
    assert [c["code"] for c in mine["counties"]] == ["211122"]  # never the neighbours' figures
    is_problem(_compare(client, auth["county"], within="211100"), 403, "outside-scope")
    is_problem(_compare(client, auth["county"], within="211104"), 403, "outside-scope")
    r = client.get("/api/v1/admin/villages/211104100200", headers=auth["county"])
    is_problem(r, 403, "outside-scope")
    assert "示例村" not in r.text  # nothing of the row leaks


def test_township_officer_cannot_compare_counties(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    is_problem(_compare(client, auth["shaling"]), 403, "forbidden-role")


def test_city_officer_cannot_write_registry(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    farm = {"code": "PJ-F999", "name": "市里建的农场", "village_code": "211122101201"}
    is_problem(client.post("/api/v1/admin/farms", json=farm, headers=auth["panjin"]), 403, "read-only-role")
    plot = client.get("/api/v1/admin/plots", params={"limit": 1}, headers=auth["panjin"]).json()["items"][0]
    r = client.patch(f"/api/v1/admin/plots/{plot['plot_no']}", json={"area_mu": 1}, headers=auth["panjin"])
    is_problem(r, 403, "read-only-role")


def test_province_officer_cannot_write_registry(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    village = {"code": "211104100201", "township_code": "211104100", "name_zh": "省里建的村"}
    is_problem(client.post("/api/v1/admin/villages", json=village, headers=auth["liaoning"]), 403, "read-only-role")


def test_officer_sees_no_personal_data(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    farms = client.get("/api/v1/admin/farms", params={"limit": 500}, headers=auth["liaoning"]).json()["items"]
    assert farms and all(not f.get("contact_phone") for f in farms)


# ---------------------------------------------------------------- the comparison's figures


def _influx_device_days(world_url: str, template: Template) -> tuple[int, int]:
    """Device-days with readings and readings of the demo county in PERIOD, counted from the raw points."""
    influx = InfluxV1(template.influx_url, "village")
    devices, readings = set(), 0
    for kind in ("soil", "paddy", "weather", "collar", "barn"):
        q = (
            f"SELECT count(*) FROM \"{kind}\" WHERE \"county\" = '211122' AND time >= '2026-06-30T16:00:00Z' "
            f"AND time < '2026-07-03T16:00:00Z' GROUP BY \"device\", time(1d) tz('Asia/Shanghai')"
        )
        for s in influx.query(q):
            for row in s.get("values", []):
                counts = [v for v in row[1:] if v]
                if counts:
                    devices.add((s["tags"]["device"], row[0]))
                    readings += max(counts)
    influx.close()
    return len(devices), readings


def test_comparison_figures(
    client: TestClient, auth: dict[str, dict[str, str]], world: tuple[TestClient, str], api_template: Template
) -> None:
    r = _compare(client, auth["panjin"]).json()
    assert r["days"] == 3 and r["period"]["label"] == PERIOD
    rows = {c["code"]: c for c in r["counties"]}
    panshan, dawa = rows["211122"], rows["211104"]
    with Session(get_engine(world[1])) as session:
        n_devices = len(session.exec(select(Device.id).join(Plot, col(Plot.id) == col(Device.plot_id))).all())
    reporting, readings = _influx_device_days(world[1], api_template)
    online = panshan["inputs"]["device_online_rate"]
    assert online["device_days_reporting"] == reporting > 0
    assert online["active_device_days"] == 3 * panshan["devices"] and panshan["devices"] >= n_devices - 1
    assert panshan["values"]["device_online_rate"] == pytest.approx(100 * reporting / (3 * panshan["devices"]), 1e-3)
    assert panshan["inputs"]["data_completeness"]["readings_counted"] <= readings
    assert dawa["devices"] == 1 and dawa["values"]["device_online_rate"] == 0.0  # active, silent
    assert dawa["values"]["plot_device_share"] == 100.0 and dawa["values"]["device_coverage"] == 100.0
    assert rows["211103"]["values"]["device_online_rate"] is None  # no devices: no data, not 0 %
    assert panshan["ranks"]["device_online_rate"] == 1 and dawa["ranks"]["device_online_rate"] == 2
    assert rows["211103"]["ranks"]["device_online_rate"] is None


def test_comparison_composite_and_weights(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    """Without imported statistics the index is not made up: it says why."""
    comp = _compare(client, auth["panjin"]).json()["composite"]
    assert comp["index"] == "dvi" and comp["year"] is None and "statistics" in comp["reason"]


def test_comparison_exports_are_formula_safe(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    r = client.get("/api/v1/province/comparison.csv", params={"period": PERIOD}, headers=auth["panjin"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert {x["county_code"] for x in rows} == {"211103", "211104", "211122"}
    assert "device_online_rate" in rows[0] and "device_online_rate_rank" in rows[0]
    x = client.get("/api/v1/province/comparison.xlsx", params={"period": PERIOD}, headers=auth["panjin"])
    book = load_workbook(io.BytesIO(x.content))
    assert book.sheetnames == ["counties", "weights", "indicators"]
    assert book["counties"].max_row == 4


def test_comparison_rejects_bad_input(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    is_problem(_compare(client, auth["panjin"], period="2026-13"), 422)
    is_problem(client.get("/api/v1/province/comparison", params={"within": "21"}, headers=auth["panjin"]), 422)
    is_problem(client.get("/api/v1/province/comparison"), 401)


def test_province_page_zh_and_en(client: TestClient) -> None:
    client.cookies.clear()
    r = client.post("/dashboard/login", data={"username": "panjin", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303
    dash = client.get("/dashboard", follow_redirects=False)
    assert dash.status_code == 303 and dash.headers["location"] == "/province"
    zh = client.get("/province", params={"period": PERIOD})
    assert zh.status_code == 200 and "县域数字乡村发展对比" in zh.text and 'id="county-211104"' in zh.text
    en = client.get("/province", params={"period": PERIOD, "lang": "en"})
    assert "County comparison" in en.text and "no data" in en.text
    client.cookies.clear()


# ---------------------------------------------------------------- the demo's province


def test_demo_province_compares_three_counties(tmp_path: Path) -> None:
    """The demo's two extra counties, their readings and rollups, compared with the demo county by a
    province officer: figures counted independently from the raw points, the composite's weights."""
    from analytics.periods import parse_period
    from analytics.province import compare, counties_under
    from analytics.rollups import Rollups
    from api import province_demo
    from core.db import migrate
    from core.registry_io import load_demo
    from core.services import influxd

    server = influxd(tmp_path / "influx").start()
    try:
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        migrate(url)
        engine = get_engine(url)
        with Session(engine) as session:
            load_demo(session)
            province_demo.load(session, installed={"211122": JUNE})
            session.commit()
        influx = InfluxV1(server.url, "village")
        influx.ensure_database()
        written = province_demo.write_readings(engine, influx, date(2026, 7, 1), date(2026, 7, 11))
        rollups = Rollups(influx)
        rollups.backfill(since=date(2026, 7, 1), until=date(2026, 7, 11))
        period = parse_period("2026-07-01..2026-07-10", "Asia/Shanghai")
        with Session(engine) as session:
            result = compare(session, rollups, counties_under(session, ["21"]), period, prefixes=["21"])
        rows = {c["code"]: c for c in result["counties"]}
        assert set(rows) == {"210726", "211104", "211122"}
        days_with_data: dict[str, int] = {}
        total = 0
        for kind in ("soil", "paddy"):
            q = (
                'SELECT count("soil_moisture") FROM "soil"'
                if kind == "soil"
                else 'SELECT count("water_level_cm") FROM "paddy"'
            )
            q += " WHERE time >= '2026-06-30T16:00:00Z' AND time < '2026-07-10T16:00:00Z'"
            q += ' GROUP BY "county", "device", time(1d) tz(\'Asia/Shanghai\')'
            for s in influx.query(q):
                n = sum(1 for row in s["values"] if row[1])
                days_with_data[s["tags"]["county"]] = days_with_data.get(s["tags"]["county"], 0) + n
                total += sum(row[1] or 0 for row in s["values"])
        assert total == written
        for county in ("211104", "210726"):
            got = rows[county]["inputs"]["device_online_rate"]
            assert got["device_days_reporting"] == days_with_data[county]
            assert got["active_device_days"] == 10 * rows[county]["devices"] == 160
        assert rows["211104"]["values"]["device_online_rate"] > rows["210726"]["values"]["device_online_rate"]
        assert rows["211122"]["values"]["device_online_rate"] == 0.0  # active since June, no readings in July here
        comp = result["composite"]
        assert comp["year"] == 2024 and sum(w["weight"] for w in comp["weights"]) == pytest.approx(1.0, abs=1e-5)
        assert sorted(r["rank"] for r in rows.values()) == [1, 2, 3]
        assert all(rows[c]["values"]["dvi"] is not None for c in rows)
        influx.close()
    finally:
        server.stop()


ARGS = ("--counties", "3", "--devices-per-county", "25", "--days", "2", "--hourly-days", "-1", "--repeats", "1")


def test_bench_province_small(tmp_path: Path) -> None:
    """`village bench province` at a small scale: the rollups it writes are what the comparison counts,
    and its last line is one JSON object with the figures and the cores."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "province", *ARGS],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "VILLAGE_DATA_DIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["bench"] == "province" and r["cores"] == os.cpu_count() and r["devices"] == 75
    assert 0 < r["daily_points"] <= 75 * 2 and r["hourly_points"] == 24 * r["daily_points"]
    assert r["hourly_days"] == 2 and r["hourly_points_all_days"] == r["hourly_points"]
    assert r["written"] == "daily rollups of all 2 days; hourly rollups of all of them"
    assert r["influxd_cpu_us_per_point"] > 0 and r["comparison_cold_cpu_s"] > 0 and r["cost_per_county_cpu_ms"] > 0
    assert 20 <= r["county_rollup_points"] <= 3 * 5 * 2  # per county, kind and day with readings (both days)
    assert r["device_days_reporting"] == r["daily_points"]  # every device-day written is counted, once
    assert r["counties_ranked"] == 3 and r["comparison_cold_s"] > 0 and r["cost_per_county_ms"] > 0
    assert r["cold_timings"]["influx_queries"] == 5  # one query per device kind, whatever the counties
