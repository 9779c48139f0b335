"""The dashboard's charts against a real InfluxDB and registry (the API template world): the county map's
data (boundaries, plots and herds with status and alerts, scoped by role), device health over time, the
series page, a herd's time series with thresholds, ECharts served by the app, and the indicator period
(the latest month with readings, "no data" rather than 0 %)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.routers.charts import echarts_file
from api.services import indicators
from core.db import get_engine
from tests.api_fixtures import PASSWORD, USERS, Template, is_problem, make_client, token, world_settings

HTML = {"Accept": "text/html"}
JULY = "start=2026-07-01T00:00:00%2B08:00&end=2026-07-04T00:00:00%2B08:00"


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("charts")) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, dict[str, str]]:
    return {user: token(client, user) for user in USERS}


def test_echarts_is_served_by_the_app(client: TestClient) -> None:
    path = echarts_file()
    assert path is not None, "npm ci (make node) installs echarts"
    r = client.get("/static/vendor/echarts.min.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.content == path.read_bytes() and b'"6.1.0"' in r.content  # the version package.json pins
    assert "max-age" in r.headers["cache-control"]
    charts_js = client.get("/static/charts.js")
    assert charts_js.status_code == 200 and "/static/vendor/echarts.min.js" in charts_js.text
    assert "//" not in charts_js.text.replace("\n  //", "").replace("\n//", "").split("SRC = ")[1].split(";")[0]


def test_county_map_data(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    m = client.get("/api/v1/dashboard/map", headers=auth["county"])
    assert m.status_code == 200, m.text
    body = m.json()
    features = {f["id"]: f for f in body["boundaries"]["features"]}
    assert (
        features["211122"]["properties"]["label"] == "盘山县" and not features["211122"]["properties"]["illustrative"]
    )
    assert features["2111"]["properties"]["label"] == "盘锦市" and features["2111"]["properties"]["level"] == "city"
    assert len([c for c in features if len(c) == 4]) == 14  # Liaoning's cities
    assert features["211122101201"]["properties"]["illustrative"] and features["211122101201"]["properties"]["label"]
    assert "211122101201" in body["illustrative"] and "211122" not in body["illustrative"]
    points = {p["id"]: p for p in body["points"]}
    assert len([p for p in body["points"] if p["kind"] == "plot"]) == 23
    dry = points["211122101201-001"]  # soil-0001 reports 12 % soil moisture: drought
    assert dry["status"] == "alert" and {a["kind"] for a in dry["alerts"]} == {"drought"}
    assert {d["id"] for d in dry["devices"]} >= {"soil-0001", "paddy-0001"}
    herd = points["PS-H001"]
    assert herd["kind"] == "herd" and herd["status"] == "alert" and {a["kind"] for a in herd["alerts"]} == {"fever"}
    quiet = points["211122104201-001"]
    assert quiet["status"] == "silent" and quiet["alerts"] == []
    assert all(121.5 < p["lon"] < 122.5 and 40.9 < p["lat"] < 41.5 for p in body["points"])
    # a village operator sees their village's plots only
    own = client.get("/api/v1/dashboard/map", headers=auth["beizhengjia"]).json()
    assert {p["village"] for p in own["points"]} == {"211122101201"} and len(own["points"]) == 5
    other = client.get("/api/v1/dashboard/map", headers=auth["other"]).json()
    assert not any(p["id"].startswith("211122") for p in other["points"])
    is_problem(client.get("/api/v1/dashboard/map"), 401)


def test_device_health_history(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    r = client.get("/api/v1/dashboard/devices/history?days=200", headers=auth["county"])
    assert r.status_code == 200, r.text
    h = r.json()
    assert len(h["days"]) == len(h["reporting"]) == len(h["dead_letters"]) == 200
    by_day = dict(zip(h["days"], h["reporting"], strict=True))
    assert by_day["2026-07-02"] > 0  # the template's July readings, from the daily rollups
    assert h["reporting"][-1] == 3  # soil-0001, paddy-0001, collar-0001 today, from the raw points
    assert h["dead_letters"][-1] == 1 and sum(h["dead_letters"]) == 1
    assert h["active"] > 30
    village = client.get("/api/v1/dashboard/devices/history?days=200", headers=auth["changtun"]).json()
    assert village["reporting"][-1] == 0 and village["active"] < h["active"]
    is_problem(client.get("/api/v1/dashboard/devices/history?days=0", headers=auth["county"]), 422)


def test_series_of_a_herd_and_thresholds(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    now = datetime.now(UTC)
    window = {"start": (now - timedelta(hours=3)).isoformat(), "end": (now + timedelta(hours=1)).isoformat()}
    herd = client.get("/api/v1/timeseries", params={"herd": "PS-H001", **window}, headers=auth["county"])
    assert herd.status_code == 200, herd.text  # collar-0001's reading of the last minutes (raw points)
    temp = next(s for s in herd.json()["series"] if s["metric"] == "body_temp_c")
    assert temp["kind"] == "collar" and [v[1] for v in temp["values"]] == [40.6]
    assert temp["thresholds"][0]["bound"] == "max" and temp["thresholds"][0]["value"] < 40.6
    plot = client.get(
        f"/api/v1/timeseries?plot=211122101201-001&{JULY}&resolution=1d&metric=water_level_cm",
        headers=auth["county"],
    ).json()
    limit = plot["series"][0]["thresholds"][0]
    assert limit == {"bound": "min", "value": -5.0, "source": "crops.yaml rice.paddy_water_min_cm"}
    is_problem(client.get(f"/api/v1/timeseries?herd=PS-H001&{JULY}", headers=auth["beizhengjia"]), 403)
    is_problem(client.get(f"/api/v1/timeseries?herd=PS-H999&{JULY}", headers=auth["county"]), 404)


def test_series_page(client: TestClient) -> None:
    client.cookies.clear()
    assert client.get("/dashboard/series?plot=211122101201-001", follow_redirects=False).status_code == 303
    client.post("/dashboard/login", data={"username": "beizhengjia", "password": PASSWORD})
    page = client.get("/dashboard/series?plot=211122101201-001", headers=HTML)
    assert page.status_code == 200 and 'data-chart="series"' in page.text
    assert "/api/v1/timeseries?plot=211122101201-001&resolution=1h&start=" in page.text
    assert "/static/charts.js" in page.text and "逐小时" in page.text
    daily = client.get("/dashboard/series?plot=211122101201-001&resolution=1d&lang=en", headers=HTML)
    assert "resolution=1d" in daily.text and "Daily" in daily.text
    assert client.get("/dashboard/series?plot=211122104201-001", headers=HTML).status_code == 403
    assert client.get("/dashboard/series?plot=nope", headers=HTML).status_code == 404
    assert client.get("/dashboard/series", headers=HTML).status_code == 422
    client.cookies.clear()


def test_latest_month_with_readings(api_template: Template, tmp_path: Path) -> None:
    """The template has readings in July 2026 (and a few of the last minutes): seen from October 2026 or
    March 2027 (past the five months of one report's trend), the latest month with readings is 2026-07."""
    settings = world_settings(api_template, tmp_path)
    with Session(get_engine(settings.resolved_database_url())) as session:
        for now in (datetime(2026, 10, 15, tzinfo=UTC), datetime(2027, 3, 15, tzinfo=UTC)):
            assert indicators.latest_period(session, settings, "211122", now=now).label == "2026-07"
        assert indicators.latest_period(session, settings, "211122", now=datetime(2026, 5, 1, tzinfo=UTC)).label == (
            "2026-05"  # nothing before: this month
        )


def test_dashboard_opens_on_the_latest_month_with_readings(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    """The dashboard opens on the latest month with readings and says so; a month without readings shows
    "no data", never 0 %."""
    latest = client.get("/api/v1/dashboard/indicators", headers=auth["county"]).json()
    chosen = latest["period"]["label"]
    assert latest["chosen"] == "latest_with_data" and latest["has_data"] and chosen >= "2026-07"
    this_month = datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    later = [p for p in (f"2026-{m:02d}" for m in range(8, 13)) if chosen < p <= this_month]
    for month in later:  # every month after the chosen one has no readings
        assert not client.get(f"/api/v1/dashboard/indicators?period={month}", headers=auth["county"]).json()["has_data"]
    empty = client.get("/api/v1/dashboard/indicators?period=2026-09", headers=auth["county"]).json()
    assert empty["chosen"] == "requested" and not empty["has_data"]
    sensor = [i for i in empty["indicators"] if i["source"] == "influx"]
    assert sensor and all(i["value"] is None for i in sensor)
    client.cookies.clear()
    client.post("/dashboard/login", data={"username": "county", "password": PASSWORD})
    page = client.get("/dashboard", headers=HTML).text
    assert f'id="indicator-period">{chosen}<' in page and "最近有数据的月份" in page
    september = client.get("/dashboard?period=2026-09", headers=HTML).text
    assert (
        "所选期间" in september and "本期间没有传感器数据" in september and 'class="no-data muted">无数据<' in september
    )
    for i in sensor:
        row = september.split(f'data-indicator="{i["indicator"]}"', 1)[1].split("</tr>", 1)[0]
        assert "无数据" in row and "0 %" not in row
    en = client.get("/dashboard?period=2026-09&lang=en", headers=HTML).text
    assert "no data" in en and "the period asked for" in en
    assert 'data-chart="map"' in page and 'data-chart="health"' in page and 'id="indicator-data"' in page
    client.cookies.clear()


def test_trace_page_growth_curve(client: TestClient) -> None:
    page = client.get("/t/M35CW3XRD6R", headers=HTML).text
    assert page.count('data-chart="growth"') >= 1 and "生长季曲线" in page
    assert "&#34;threshold&#34;: -5" in page or "&#34;threshold&#34;:-5" in page
    assert '<meta name="description"' in page


def test_static_files_of_the_package() -> None:
    """The image installs the package without its source: the pages' files must be package data."""
    import tomllib

    doc = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = doc["tool"]["setuptools"]["package-data"]["api"]
    assert {"static/*", "static/vendor/*", "templates/*"} <= set(data)
