"""The dashboard and the time series against a real InfluxDB (readings, rollups, fresh readings with a
drought and a fever) and registry: device health, open alerts, coverage, anchoring, indicators from
analytics, exports, the sign-in page, scoping by role; time series from rollups and raw points."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlmodel import Session, select

from api.services import indicators
from ledger.anchor_models import AnchorState, AnchorWindow
from tests.api_fixtures import PASSWORD, USERS, Template, is_problem, make_client, token

HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("dashboard")) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, dict[str, str]]:
    return {user: token(client, user) for user in USERS}


def test_device_health(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    d = client.get("/api/v1/dashboard/devices", headers=auth["county"]).json()
    assert d["available"]
    status = {x["id"]: x["status"] for x in d["devices"]}
    assert status["soil-0001"] == status["paddy-0001"] == status["collar-0001"] == "online"
    assert status["paddy-0002"] == "failing"  # a rejected reading in the last 24 hours
    assert status["wx-0001"] == "silent"  # readings only in July
    c = d["counts"]
    assert c["online"] == 3 and c["failing"] == 1 and c["total"] == len(d["devices"]) == c["silent"] + 4
    fail = next(x for x in d["devices"] if x["id"] == "paddy-0002")
    assert fail["dead_letters_24h"] == 1 and fail["village"] == "211122101201"
    mine = client.get("/api/v1/dashboard/devices", headers=auth["beizhengjia"]).json()["devices"]
    assert mine and {x["village"] for x in mine} == {"211122101201"}
    other = client.get("/api/v1/dashboard/devices", headers=auth["other"]).json()
    assert other["counts"]["total"] == 0


def test_open_alerts(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    alerts = client.get("/api/v1/dashboard/alerts", headers=auth["county"]).json()
    kinds = {(a["kind"], a["device"]) for a in alerts}
    assert kinds == {("drought", "soil-0001"), ("fever", "collar-0001")}
    drought = next(a for a in alerts if a["kind"] == "drought")
    assert drought["value"] == 12.0 and drought["threshold"] == 30 and drought["place"] == "211122101201-001"
    village_view = client.get("/api/v1/dashboard/alerts", headers=auth["beizhengjia"]).json()
    assert [a["kind"] for a in village_view] == ["drought"]  # the herd is in another village
    assert client.get("/api/v1/dashboard/alerts", headers=auth["changtun"]).json() == []


def test_traceability_coverage_and_anchoring(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    t = client.get("/api/v1/dashboard/traceability", headers=auth["analyst"]).json()
    # the test chain mines a block per transaction: the window is in a block, never confirmed
    assert t["total"]["lots"] == 12 and t["total"]["awaiting"] == 12
    assert t["total"]["anchored"] == 0 and t["total"]["coverage_pct"] == 0.0
    bags = next(r for r in t["by_product"] if r["product"] == "rice-5kg")
    assert bags["lots"] == 3 and bags["inspected"] == 3  # through their ancestors' inspections
    assert (
        client.get("/api/v1/dashboard/traceability", headers=auth["changtun"]).json()["total"]["lots"] == 6
    )  # farm + mill
    a = client.get("/api/v1/dashboard/anchoring", headers=auth["analyst"]).json()
    assert a["latest"] and a["latest"][-1]["window"].endswith("w000001") and a["latest"][-1]["tx"].startswith("0x")
    assert set(a["windows"]) <= {"pending", "included", "confirmed", "final", "re-queued"}


def test_indicators_from_analytics(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    r = client.get("/api/v1/dashboard/indicators?period=2026-07", headers=auth["county"])
    assert r.status_code == 200, r.text
    ind = r.json()
    assert ind["available"] and ind["scope"] == "county" and ind["code"] == "211122"
    assert ind["periods"][-1] == "2026-07" and len(ind["periods"]) == 6
    ids = {i["indicator"] for i in ind["indicators"]}
    assert ids and all(len(i["trend"]) == 6 for i in ind["indicators"])
    assert ind["rankings"] and all(
        {row["village"][:6] for row in rows} <= {"211122"} for rows in ind["rankings"].values()
    )
    village = client.get("/api/v1/dashboard/indicators?period=2026-07", headers=auth["shaling"]).json()
    assert village["scope"] == "village" and village["code"] == "211122101201"
    assert all(row["village"].startswith("211122101") for rows in village["rankings"].values() for row in rows)
    other = client.get(
        "/api/v1/dashboard/indicators?period=2026-07&village=211122101203", headers=auth["shaling"]
    ).json()
    assert other["code"] == "211122101203"
    is_problem(client.get("/api/v1/dashboard/indicators?village=211122104201", headers=auth["shaling"]), 403)
    body = is_problem(client.get("/api/v1/dashboard/indicators?period=someday", headers=auth["county"]), 422)
    assert "period" in body["detail"]


def test_exports(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["county"]
    r = client.get("/api/v1/dashboard/export.csv?section=devices", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="dashboard-devices.csv"' in r.headers["content-disposition"]
    text = r.content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {"id", "kind", "village", "status", "last_seen", "dead_letters_24h"} <= set(rows[0])
    assert {x["id"] for x in rows if x["status"] == "online"} == {"soil-0001", "paddy-0001", "collar-0001"}
    alerts = list(
        csv.DictReader(
            io.StringIO(
                client.get("/api/v1/dashboard/export.csv?section=alerts", headers=h).content.decode("utf-8-sig")
            )
        )
    )
    assert {a["kind"] for a in alerts} == {"drought", "fever"}
    is_problem(client.get("/api/v1/dashboard/export.csv?section=secrets", headers=h), 422)
    x = client.get("/api/v1/dashboard/export.xlsx?period=2026-07", headers=h)
    assert x.status_code == 200 and x.content[:2] == b"PK"
    wb = load_workbook(io.BytesIO(x.content))
    assert wb.sheetnames == ["indicators", "rankings", "devices", "alerts", "traceability", "anchoring"]
    assert wb["traceability"].max_row == 4 and wb["indicators"].max_row > 1
    for sheet in wb:
        for row in sheet.iter_rows(values_only=True):
            assert "13800000101" not in str(row)  # no personal data in exports


def test_dashboard_page_after_signing_in(client: TestClient) -> None:
    client.cookies.clear()
    r = client.get("/dashboard", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    login = client.get("/dashboard/login", headers=HTML)
    assert login.status_code == 200 and 'name="password"' in login.text and "登录" in login.text
    wrong = client.post("/dashboard/login", data={"username": "county", "password": "nope-nope"})
    assert wrong.status_code == 401 and "用户名或密码错误" in wrong.text
    ok = client.post("/dashboard/login", data={"username": "county", "password": PASSWORD}, follow_redirects=False)
    assert ok.status_code == 303
    page = client.get("/dashboard", headers=HTML)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    for text in ("县域数字乡村看板", "设备运行", "干旱胁迫", "牲畜发热", "追溯覆盖", "最新锚定窗口", "导出 Excel"):
        assert text in page.text, text
    assert 'id="kpi-online">3<' in page.text and 'id="kpi-failing">1<' in page.text
    en = client.get("/dashboard?lang=en", headers=HTML)
    assert "Device health" in en.text and "Drought stress" in en.text
    out = client.post("/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and 'village_session=""' in out.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/dashboard", headers=HTML, follow_redirects=False).status_code == 303


@pytest.mark.parametrize("user", list(USERS))
def test_dashboard_summary_by_role(client: TestClient, auth: dict[str, dict[str, str]], user: str) -> None:
    s = client.get("/api/v1/dashboard?period=2026-07", headers=auth[user])
    assert s.status_code == 200
    body = s.json()
    role, scope = USERS[user]
    assert body["scope"]["role"] == role and all(v.startswith(scope[:6]) for v in body["scope"]["villages"])
    assert "13800000101" not in s.text and "王建国" not in s.text


def test_timeseries_from_rollups_and_raw(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["beizhengjia"]
    q = "start=2026-07-01T00:00:00%2B08:00&end=2026-07-04T00:00:00%2B08:00"
    hourly = client.get(f"/api/v1/timeseries?plot=211122101201-001&{q}&resolution=1h", headers=h).json()
    assert {s["kind"] for s in hourly["series"]} == {"paddy", "soil", "weather"}
    level = next(s for s in hourly["series"] if s["metric"] == "water_level_cm")
    assert level["unit"] == "cm" and level["columns"] == ["time", "mean", "min", "max", "count"]
    assert len(level["values"]) == 72 and all(row[4] == 6 for row in level["values"])  # 6 readings an hour
    assert {x["source"] for x in hourly["sources"]} == {
        "rollup:rollup.paddy_1h",
        "rollup:rollup.soil_1h",
        "rollup:rollup.weather_1h",
    }
    raw = client.get(f"/api/v1/timeseries?device=paddy-0001&{q}&resolution=raw&metric=water_level_cm", headers=h).json()
    points = raw["series"][0]["values"]
    assert len(points) == 432 and raw["sources"][0]["source"] == "raw"
    first_hour = [p[1] for p in points if p[0] < points[0][0] + 3_600_000]
    assert level["values"][0][1] == pytest.approx(sum(first_hour) / len(first_hour))  # rollup mean == raw mean
    daily = client.get(
        f"/api/v1/timeseries?village=211122101201&{q}&resolution=1d&metric=soil_moisture", headers=h
    ).json()
    assert len(daily["series"][0]["values"]) == 3 and daily["series"][0]["values"][0][4] >= 144
    # the fresh reading of the last minutes is past the rollups' watermark: it comes from the raw points
    now = datetime.now(UTC)
    window = {"start": (now - timedelta(hours=3)).isoformat(), "end": (now + timedelta(hours=1)).isoformat()}
    recent = client.get(
        "/api/v1/timeseries", params={"device": "soil-0001", "metric": "soil_moisture", **window}, headers=h
    )
    assert recent.status_code == 200, recent.text
    assert recent.json()["sources"][-1]["source"] == "raw"
    assert [row[1] for row in recent.json()["series"][0]["values"]] == [12.0]
    is_problem(client.get(f"/api/v1/timeseries?device=paddy-0001&plot=211122101201-001&{q}", headers=h), 422)
    is_problem(client.get(f"/api/v1/timeseries?{q}", headers=h), 422)
    is_problem(
        client.get(
            "/api/v1/timeseries?device=paddy-0001&start=2026-07-01T00:00:00Z&end=2026-07-30T00:00:00Z&resolution=raw",
            headers=h,
        ),
        422,
    )
    is_problem(
        client.get(
            "/api/v1/timeseries?device=paddy-0001&start=2026-07-02T00:00:00Z&end=2026-07-01T00:00:00Z", headers=h
        ),
        422,
    )
    is_problem(
        client.get(
            "/api/v1/timeseries?device=paddy-0001&start=2026-07-01T00:00:00&end=2026-07-02T00:00:00Z", headers=h
        ),
        422,
    )
    is_problem(client.get(f"/api/v1/timeseries?plot=211122104201-001&{q}", headers=h), 403, "outside-scope")
    is_problem(client.get(f"/api/v1/timeseries?device=nope&{q}", headers=h), 404)


def test_the_coverage_card_and_the_indicators_count_anchored_lots_alike(
    api_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One rule (the window of the lot's latest manifest confirmed or final) for the card and the indicators;
    lots only in a block are 'awaiting confirmation' on both, never a silent 0 % beside a 100 % card."""
    with make_client(api_template, tmp_path_factory.mktemp("anchored")) as c:
        h = token(c, "county")

        def both() -> tuple[dict, dict]:
            card = c.get("/api/v1/dashboard/traceability", headers=h).json()["total"]
            rows = c.get("/api/v1/dashboard/indicators?period=2026", headers=h).json()["indicators"]
            return card, next(i for i in rows if i["indicator"] == "trace_lot_coverage")

        card, ind = both()
        assert card["anchored"] == ind["inputs"]["lots_anchored"] == 0
        assert card["awaiting"] == card["lots"] == ind["inputs"]["lots_awaiting_confirmation"] == ind["inputs"]["lots"]
        assert ind["value"] == 0.0 and "awaiting confirmation" in ind["note"]
        c.post("/dashboard/login", data={"username": "county", "password": PASSWORD})
        page = c.get("/dashboard?period=2026&lang=en", headers=HTML)
        assert "awaiting confirmation" in page.text and 'id="kpi-awaiting"' in page.text
        with Session(c.app.state.engine) as session:  # type: ignore[attr-defined]
            for w in session.exec(select(AnchorWindow)).all():
                w.state = AnchorState.confirmed
                session.add(w)
            session.commit()
        indicators.clear()  # both are kept for a while (API_INDICATORS_CACHE_S, API_DASHBOARD_CACHE_S)
        c.app.state.dashboard.clear()  # type: ignore[attr-defined]
        card, ind = both()
        assert card["anchored"] == card["lots"] == ind["inputs"]["lots_anchored"] == ind["inputs"]["lots"]
        assert card["awaiting"] == ind["inputs"]["lots_awaiting_confirmation"] == 0
        assert card["coverage_pct"] == ind["value"] == 100.0 and ind["note"] is None
