"""Alerts that are worked, against a real InfluxDB (a database of this module's own) and a copy of the
demo registry: opened by readings out of range, acknowledged and resolved by people of the alert's
village (and nobody else), resolved by readings back within range for ALERT_RESOLVE_AFTER_S, reopened,
with their history; the dashboard's buttons (session cookie + CSRF token); the worker process
delivering the queued webhooks to a local receiver."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from api.models import AlertEvent, WebhookDelivery
from api.services import alerts
from core.catalogue import get_catalogue
from core.db import get_engine
from core.influx import InfluxV1
from core.services import die_with_parent, free_port
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line
from tests.api_fixtures import PASSWORD, USERS, Template, is_problem, token, world_env
from tests.webhook_receiver import Receiver

BEIZHENGJIA = "211122101201"


@dataclass
class World:
    env: dict[str, str]
    settings: Settings
    client: TestClient
    influx: InfluxV1
    receiver: Receiver
    auth: dict[str, dict[str, str]]

    def write(self, device: str, kind: str, ago_s: float, values: dict[str, float]) -> None:
        info = DeviceDirectory(self.client.app.state.engine).get(device)  # type: ignore[attr-defined]
        assert info is not None and info.tags
        t = int((time.time() - ago_s) * 1000)
        self.influx.write(to_line(Reading(device, kind, t, values), info.tags))

    def evaluate(self) -> alerts.EvalReport:
        engine = self.client.app.state.engine  # type: ignore[attr-defined]
        return alerts.evaluate(engine, self.influx, get_catalogue(None), self.settings)

    def alerts(self, user: str, **params: str) -> list[dict]:  # type: ignore[type-arg]
        r = self.client.get("/api/v1/alerts", headers=self.auth[user], params=params)
        assert r.status_code == 200, r.text
        return r.json()["items"]


@pytest.fixture(scope="module")
def world(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("alerts")
    receiver = Receiver(free_port()).start()
    hooks = folder / "hooks.yaml"
    hooks.write_text(f'endpoints: [{{name: county-ops, format: json, url: "{receiver.url}/alerts", scope: "211122"}}]')
    env = world_env(
        api_template,
        folder,
        INFLUX_DB=f"alerts_{secrets.token_hex(4)}",
        ALERT_RESOLVE_AFTER_S=120,
        ALERT_WEBHOOKS_FILE=hooks,
    )
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
    influx = InfluxV1(api_template.influx_url, env["INFLUX_DB"])
    influx.ensure_database()
    with TestClient(create_app(settings)) as client:
        auth = {user: token(client, user) for user in USERS}
        w = World(env, settings, client, influx, receiver, auth)
        # soil-0001 (rice, 北郑家村) dry: 12 % < 30 %; collar-0001 feverish
        w.write("soil-0001", "soil", 600, {"soil_moisture": 12.0, "soil_temp_c": 14.0})
        w.write("collar-0001", "collar", 600, {"body_temp_c": 40.8, "activity": 100.0, "rumination_min": 20.0})
        report = w.evaluate()
        assert len(report.opened) == 2 and report.checked >= 2, report
        yield w
    influx.close()
    receiver.stop()


def drought(w: World) -> dict:  # type: ignore[type-arg]
    return next(a for a in w.alerts("county") if a["kind"] == "drought")


def test_alerts_listed_by_area(world: World) -> None:
    county = world.alerts("county")
    assert {(a["kind"], a["device_id"]) for a in county} >= {("drought", "soil-0001"), ("fever", "collar-0001")}
    d = drought(world)
    assert d["village_code"] == BEIZHENGJIA and d["value"] == 12.0 and d["threshold"] == 30
    assert d["metric"] == "soil_moisture" and d["state"] == "open"
    assert [a["kind"] for a in world.alerts("beizhengjia")] == ["drought"]  # the herd is in another village
    assert world.alerts("other") == []  # another county's administrator
    assert [a["device_id"] for a in world.alerts("county", device="collar-0001")] == ["collar-0001"]
    assert world.alerts("county", kind="fever", state="resolved") == []
    page = world.client.get("/api/v1/alerts?limit=1", headers=world.auth["county"]).json()
    assert page["total"] >= 2 and len(page["items"]) == 1 and page["limit"] == 1
    is_problem(world.client.get("/api/v1/alerts?state=closed", headers=world.auth["county"]), 422, "validation")
    is_problem(world.client.get("/api/v1/alerts"), 401, "unauthenticated")


def test_operator_cannot_acknowledge_other_village_alert(world: World) -> None:
    """changtun's operator may neither see nor work 北郑家村's alert: a 403 problem, and nothing recorded."""
    d = drought(world)
    before = world.client.get(f"/api/v1/alerts/{d['id']}", headers=world.auth["county"]).json()["history"]
    url = f"/api/v1/alerts/{d['id']}"
    r = world.client.post(f"{url}/acknowledge", json={"note": "mine"}, headers=world.auth["changtun"])
    assert "211122101201" in is_problem(r, 403, "outside-scope")["detail"]
    r = world.client.post(f"/api/v1/alerts/{d['id']}/resolve", json={"note": "x"}, headers=world.auth["changtun"])
    is_problem(r, 403, "outside-scope")
    is_problem(world.client.get(f"/api/v1/alerts/{d['id']}", headers=world.auth["changtun"]), 403, "outside-scope")
    is_problem(world.client.get(f"/api/v1/alerts?village={BEIZHENGJIA}", headers=world.auth["changtun"]), 403)
    after = world.client.get(f"/api/v1/alerts/{d['id']}", headers=world.auth["county"]).json()["history"]
    assert after == before


def test_other_county_admin_cannot_work_the_county_s_alert(world: World) -> None:
    d = drought(world)
    r = world.client.post(f"/api/v1/alerts/{d['id']}/resolve", json={"note": "not mine"}, headers=world.auth["other"])
    is_problem(r, 403, "outside-scope")


def test_analyst_cannot_acknowledge_or_resolve(world: World) -> None:
    d = drought(world)
    assert world.client.get(f"/api/v1/alerts/{d['id']}", headers=world.auth["analyst"]).status_code == 200
    r = world.client.post(f"/api/v1/alerts/{d['id']}/acknowledge", json={}, headers=world.auth["analyst"])
    is_problem(r, 403, "read-only-role")


def test_bad_bodies_are_precise_problems(world: World) -> None:
    d = drought(world)
    url = f"/api/v1/alerts/{d['id']}/resolve"
    body = is_problem(world.client.post(url, json={}, headers=world.auth["county"]), 422, "validation")
    assert any("note" in str(e) for e in body["errors"])
    is_problem(world.client.post(url, json={"note": "x" * 1001}, headers=world.auth["county"]), 422, "validation")
    is_problem(world.client.post(url, json={"note": "ok", "by": "x"}, headers=world.auth["county"]), 422)
    missing = world.client.post("/api/v1/alerts/999999/resolve", json={"note": "x"}, headers=world.auth["county"])
    is_problem(missing, 404, "not-found")


def test_lifecycle_acknowledged_resolved_by_readings_reopened_and_by_hand(world: World) -> None:
    d = drought(world)
    url = f"/api/v1/alerts/{d['id']}"
    r = world.client.post(f"{url}/acknowledge", json={"note": "灌溉泵已派人检查"}, headers=world.auth["beizhengjia"])
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["state"] == "acknowledged" and a["acknowledged_by"] == "beizhengjia" and a["acknowledged_at"]
    assert [(e["action"], e["actor"], e["note"]) for e in a["history"]] == [
        ("opened", "system", None),
        ("acknowledged", "beizhengjia", "灌溉泵已派人检查"),
    ]
    assert {x["endpoint"] for x in a["deliveries"]} == {"county-ops"}  # queued for the county's endpoint
    is_problem(world.client.post(f"{url}/acknowledge", json={}, headers=world.auth["county"]), 409, "alert-state")

    # readings back within range: not resolved until they have stayed so for ALERT_RESOLVE_AFTER_S (120 s)
    world.write("soil-0001", "soil", 400, {"soil_moisture": 35.0, "soil_temp_c": 14.0})
    assert d["id"] not in world.evaluate().resolved
    world.write("soil-0001", "soil", 320, {"soil_moisture": 36.0, "soil_temp_c": 14.0})  # 80 s later
    assert d["id"] not in world.evaluate().resolved
    world.write("soil-0001", "soil", 250, {"soil_moisture": 36.5, "soil_temp_c": 14.0})  # 150 s after the first
    assert world.evaluate().resolved == [d["id"]]
    a = world.client.get(url, headers=world.auth["beizhengjia"]).json()
    assert a["state"] == "resolved" and a["resolved_by"] == "system"
    assert a["history"][-1]["action"] == "resolved" and "for 2 min" in a["history"][-1]["note"]
    assert world.evaluate().resolved == []  # once

    # dry again, soon after: the same alert reopens
    world.write("soil-0001", "soil", 200, {"soil_moisture": 10.0, "soil_temp_c": 14.0})
    assert world.evaluate().reopened == [d["id"]]
    a = world.client.get(url, headers=world.auth["county"]).json()
    assert a["state"] == "open" and a["value"] == 10.0 and a["acknowledged_by"] is None
    # a breach in between does not let the earlier normal readings count
    world.write("soil-0001", "soil", 190, {"soil_moisture": 40.0, "soil_temp_c": 14.0})
    world.write("soil-0001", "soil", 180, {"soil_moisture": 11.0, "soil_temp_c": 14.0})
    world.evaluate()
    assert world.client.get(url, headers=world.auth["county"]).json()["normal_since"] is None

    # resolved by hand, with the note saying why; the same (old) reading does not reopen it
    r = world.client.post(f"{url}/resolve", json={"note": "传感器被移动，已复位"}, headers=world.auth["beizhengjia"])
    assert r.status_code == 200 and r.json()["state"] == "resolved" and r.json()["resolved_by"] == "beizhengjia"
    assert world.evaluate().reopened == []
    assert [e["action"] for e in r.json()["history"]] == [
        "opened", "acknowledged", "resolved", "reopened", "resolved"
    ]  # fmt: skip
    is_problem(world.client.post(f"{url}/resolve", json={"note": "again"}, headers=world.auth["county"]), 409)
    assert world.alerts("county", state="resolved", kind="drought")[0]["id"] == d["id"]


def test_history_is_append_only_for_the_api_role() -> None:
    """The API's (and the worker's) PostgreSQL role may add to an alert's history but never change it
    (core/db_roles.py; applied and checked against PostgreSQL by tests/test_least_privilege.py)."""
    from core.db_roles import GRANTS

    api = GRANTS["api"]
    assert api.privileges("alert_event") == {"SELECT", "INSERT"}
    assert api.privileges("alert") == {"SELECT", "INSERT", "UPDATE"}
    assert "DELETE" not in api.privileges("webhook_delivery")


def _signed_in(world: World, user: str) -> TestClient:
    c = TestClient(world.client.app)
    r = c.post("/dashboard/login", data={"username": user, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303
    return c


def test_cookie_post_without_csrf_token_is_refused(world: World) -> None:
    """The session cookie, which a browser sends on its own, does not authorise a change unless the
    page's CSRF token comes with it; a forged or another session's token is a 403."""
    fever = next(a for a in world.alerts("county") if a["kind"] == "fever")
    county = _signed_in(world, "county")
    page = county.get("/dashboard/alerts", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "预警处置" in page.text and f'id="alert-{fever["id"]}"' in page.text
    csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', page.text)
    assert csrf
    url = f"/api/v1/alerts/{fever['id']}/acknowledge"
    is_problem(county.post(url, json={}), 401, "unauthenticated")
    is_problem(county.post(url, json={}, headers={"X-CSRF-Token": "0" * 64}), 403, "csrf")
    other = _signed_in(world, "analyst")
    other_token = re.search(r'content="([0-9a-f]{64})"', other.get("/dashboard/alerts").text)
    assert other_token and other_token.group(1) != csrf.group(1)
    is_problem(county.post(url, json={}, headers={"X-CSRF-Token": other_token.group(1)}), 403, "csrf")
    assert world.client.get(f"/api/v1/alerts/{fever['id']}", headers=world.auth["county"]).json()["state"] == "open"
    r = county.post(url, json={"note": "兽医已通知"}, headers={"X-CSRF-Token": csrf.group(1)})
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "county"
    en = county.get(f"/dashboard/alerts/{fever['id']}?lang=en")
    assert "Alert acknowledged" in en.text and "兽医已通知" in en.text and "History" in en.text


def test_pages_need_signing_in_and_show_only_the_area(world: World) -> None:
    anon = TestClient(world.client.app)
    r = anon.get("/dashboard/alerts", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    changtun = _signed_in(world, "changtun")
    assert "暂无预警" in changtun.get("/dashboard/alerts").text
    d = drought(world)
    assert changtun.get(f"/dashboard/alerts/{d['id']}", headers={"Accept": "text/html"}).status_code == 403
    analyst = _signed_in(world, "analyst").get("/dashboard/alerts").text
    assert "soil-0001" in analyst and 'data-action="acknowledge"' not in analyst  # reads, no buttons


def test_worker_process_delivers_queued_notifications(world: World) -> None:
    """`village alerts run` (a process of its own) delivers what the evaluation and the API queued."""
    env = {**os.environ, **world.env, "ALERT_EVAL_INTERVAL_S": "0.5", "ALERT_WEBHOOK_POLL_S": "0.2"}
    env["LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "alerts", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        with Session(get_engine(world.env["DATABASE_URL"])) as session:
            events = session.exec(select(AlertEvent)).all()
        in_county = len(events)  # every alert of this module is in the county, the endpoint's scope
        got = world.receiver.wait(in_county, timeout=60)
        assert {r.json()["event"] for r in got} >= {"opened", "acknowledged", "resolved", "reopened"}
        assert all(r.path == "/alerts" for r in got)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, -15), out
    assert b"webhooks: county-ops (json)" in out
    time.sleep(0.5)
    with Session(get_engine(world.env["DATABASE_URL"])) as session:
        states = {d.state for d in session.exec(select(WebhookDelivery))}
    assert states == {"delivered"}
