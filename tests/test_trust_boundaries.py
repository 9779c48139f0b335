"""Trust boundaries of the write path: nobody writes, forges or links beyond their own area.

Each test is an attack from issue 10, made as a signed-in user of the demo county through the real API
(a real registry database, InfluxDB and anvil: tests/api_fixtures.py), against the rules declared once
in core/scope.py and ledger/scope.py. The village operator of 北郑家村 (`beizhengjia`, 211122101201) attacks
the lots of 常屯村 (`changtun`, 211122104201): the paddy lot 88SP-GS5J-KRZ of farm PS-F003 and the bags
KT90-31CD-HKW milled and packed from it at PS-MILL-01.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from core.db import get_engine
from core.scope import Scope
from core.settings import get_settings
from ledger.epcis import EpcisError
from ledger.epcis_io import import_document
from ledger.models import EventCorrection, Lot, TraceEvent
from tests.api_fixtures import USERS, Template, is_problem, token, world_settings

PADDY = "88SP-GS5J-KRZ"  # 常屯村's paddy (farm PS-F003, plot 211122104201-001)
BAGS = "KT90-31CD-HKW"  # 2,600 bags of 5 kg packed at PS-MILL-01 (常屯村) from that paddy
OWN_PLOT = "211122101201-001"  # 北郑家村, farm PS-F001
THEIR_PLOT = "211122104201-001"  # 常屯村, farm PS-F003


@pytest.fixture(scope="module")
def world(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    settings = world_settings(api_template, tmp_path_factory.mktemp("trust"), API_VERIFY_CACHE_S=0)
    from api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c, settings


@pytest.fixture(scope="module")
def client(world: tuple[TestClient, Any]) -> TestClient:
    return world[0]


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, dict[str, str]]:
    return {user: token(client, user) for user in USERS}


def _events_of(client: TestClient, auth: dict[str, dict[str, str]], code: str) -> int:
    r = client.get(f"/api/v1/admin/events?lot={code}&limit=500", headers=auth["county"])
    assert r.status_code == 200
    return int(r.json()["total"])


def _fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


def _event(lot: str, read_point: dict[str, str], step: str = "irrigating", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "action": "OBSERVE",
        "step": step,
        "time": "2026-07-21T06:00:00+08:00",
        "lot": lot,
        "read_point": read_point,
    }
    if step == "irrigating":
        event["attributes"] = {"water_mm": 40, "method": "intermittent"}
    return event | extra


def test_attack_event_on_another_villages_lot(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    before = _events_of(client, auth, PADDY)
    trace_before = client.get(f"/api/v1/trace/{BAGS}").json()["events"]
    # at the attacker's own dryer, with the attacker's own village as business location
    at_dryer = _event(PADDY, {"facility": "PS-DRY-01"}, step="sampling", biz_location="211122101201")
    body = is_problem(client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=at_dryer), 403)
    assert "lot" in _fields(body) and "not shipped" in body["detail"]
    # at the attacker's own plot
    at_plot = _event(PADDY, {"plot_no": OWN_PLOT})
    body = is_problem(client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=at_plot), 403)
    assert "lot" in _fields(body)
    # a township officer of another township, and the other county, fare no better
    for user in ("shaling", "other"):
        is_problem(client.post("/api/v1/admin/events", headers=auth[user], json=at_dryer), 403)
    assert _events_of(client, auth, PADDY) == before
    assert client.get(f"/api/v1/trace/{BAGS}").json()["events"] == trace_before


def test_attack_backdated_event_flips_lot_to_tampered(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    assert client.get(f"/api/v1/trace/{BAGS}/verify").json()["status"] == "verified"
    backdated = _event(PADDY, {"plot_no": THEIR_PLOT}, time="2026-03-01T06:00:00+08:00")  # before its sowing
    body = is_problem(client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=backdated), 403)
    assert "lot" in _fields(body)
    # the lot's own operator may record it (a new, unanchored record), but it cannot rewrite the anchored
    # growth summary: that is recomputed over the season and devices it was computed from
    assert client.post("/api/v1/admin/events", headers=auth["changtun"], json=backdated).status_code == 201
    v = client.get(f"/api/v1/trace/{BAGS}/verify").json()
    assert v["counts"]["tampered"] == 0, [r for r in v["records"] if r["status"] == "tampered"]
    growth = [r for r in v["records"] if r["kind"] == "growth/1"]
    assert growth and all(r["status"] == "verified" for r in growth)
    assert v["counts"]["pending"] >= 1  # the new event waits for its window


def _lot(lot_no: str, **fields: Any) -> dict[str, Any]:
    return {"product": "rice-5kg", "lot_no": lot_no, "harvest_year": 2026} | fields


def test_attack_counterfeit_lineage(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    bags_before = client.get("/api/v1/admin/lots?product=rice-5kg", headers=auth["county"]).json()["total"]
    parent = [{"lot": BAGS, "relation": "split", "quantity": 2600}]
    fake = _lot("FAKE-1", quantity=100_000, facility="PS-DRY-01", parents=parent)
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=fake), 403)
    assert _fields(body) == {"parents[0].lot"}
    # the owner of the bags cannot make 100,000 bags out of 2,600 either
    own = _lot("FAKE-2", quantity=100_000, facility="PS-MILL-01", parents=parent)
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["changtun"], json=own), 422)
    assert _fields(body) == {"quantity"} and "2,600 bag" in body["detail"]
    # a parent releases no more than it holds: 2,600 bags go to one lot, then nothing is left
    ok = _lot("REPACK-1", quantity=2600, facility="PS-MILL-01", parents=parent)
    assert client.post("/api/v1/admin/lots", headers=auth["changtun"], json=ok).status_code == 201
    more = _lot(
        "REPACK-2", quantity=1, facility="PS-MILL-01", parents=[{"lot": BAGS, "relation": "split", "quantity": 1}]
    )
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["changtun"], json=more), 422)
    assert _fields(body) == {"parents[0].quantity"} and "0 bag left" in body["detail"]
    # sources: another village's plot, and a plot of another farm
    paddy = {"product": "paddy-yf47", "lot_no": "STOLEN-1", "quantity": 10, "farm": "PS-F001"}
    stolen = paddy | {"sources": [{"plot_no": THEIR_PLOT}]}
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=stolen), 403)
    assert _fields(body) == {"sources[0].plot_no"}
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["county"], json=stolen), 422)
    assert _fields(body) == {"sources[0].plot_no"} and "another farm" in body["detail"]
    # a facility of another village, and a product of another county
    body = is_problem(
        client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=_lot("F-3", facility="PS-MILL-01")), 403
    )
    assert _fields(body) == {"facility"}
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["other"], json=_lot("F-4", farm="ST-F001")), 403)
    assert _fields(body) == {"product"}
    assert client.get("/api/v1/admin/lots?product=rice-5kg", headers=auth["county"]).json()["total"] == bags_before + 1


def test_attack_registry_writes_outside_area(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    op = auth["beizhengjia"]
    is_problem(client.patch(f"/api/v1/admin/plots/{THEIR_PLOT}", headers=op, json={"area_mu": 1}), 403)
    device = {"id": "soil-evil-1", "kind": "soil", "plot_no": THEIR_PLOT}
    body = is_problem(client.post("/api/v1/admin/devices", headers=op, json=device), 403)
    assert _fields(body) == {"plot_no"}
    body = is_problem(
        client.patch("/api/v1/admin/farms/PS-F001", headers=op, json={"village_code": "211122104201"}), 403
    )
    assert _fields(body) == {"village_code"}
    plot = {
        "plot_no": "211122101201-777",
        "farm_code": "PS-F003",
        "village_code": "211122101201",
        "area_mu": 3,
        "crop": "rice",
    }
    body = is_problem(client.post("/api/v1/admin/plots", headers=op, json=plot), 403)
    assert _fields(body) == {"farm_code"}
    # a fact that anchored records repeat (a plot's village) never changes, even for the county
    body = is_problem(
        client.patch(f"/api/v1/admin/plots/{OWN_PLOT}", headers=auth["county"], json={"village_code": "211122101203"}),
        409,
    )
    assert "anchored" in body["detail"]
    assert (
        client.get(f"/api/v1/admin/plots/{OWN_PLOT}", headers=auth["county"]).json()["village_code"] == "211122101201"
    )
    assert client.get("/api/v1/admin/devices/soil-evil-1", headers=auth["county"]).status_code == 404


def test_handover_lets_another_villages_dryer_take_the_paddy(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    """The custody rule, the way a harvest really travels: 常屯村 ships its paddy to the dryer of 北郑家村,
    which may then name it as the input and parent of its own dried lot, and nothing more."""
    paddy = {
        "product": "paddy-yf47",
        "lot_no": "2026-104201-HO",
        "quantity": 1000,
        "farm": "PS-F003",
        "harvest_year": 2026,
        "sources": [{"plot_no": THEIR_PLOT}],
    }
    r = client.post("/api/v1/admin/lots", headers=auth["changtun"], json=paddy)
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    dried = {
        "product": "paddy-yf47",
        "lot_no": "2026-D-HO",
        "quantity": 930,
        "facility": "PS-DRY-01",
        "parents": [{"lot": code, "relation": "transform", "quantity": 1000}],
    }
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=dried), 403)
    assert _fields(body) == {"parents[0].lot"}
    ship = _event(code, {"plot_no": THEIR_PLOT}, step="shipping", attributes={"to_facility": "PS-DRY-01"})
    # only the custodian hands a lot over
    is_problem(client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=ship), 403)
    assert client.post("/api/v1/admin/events", headers=auth["changtun"], json=ship).status_code == 201
    too_much = dried | {"lot_no": "2026-D-HO-X", "quantity": 1200}
    body = is_problem(client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=too_much), 422)
    assert _fields(body) == {"quantity"}
    assert client.post("/api/v1/admin/lots", headers=auth["beizhengjia"], json=dried).status_code == 201
    drying = {
        "type": "TransformationEvent",
        "step": "drying",
        "time": "2026-10-08T09:00:00+08:00",
        "inputs": [code],
        "outputs": ["paddy-yf47:2026-D-HO"],
        "read_point": {"facility": "PS-DRY-01"},
        "attributes": {"final_moisture_pct": 14.3},
    }
    assert client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=drying).status_code == 201
    # custody is not ownership of the farm's fields: the dryer still cannot record field work on the paddy
    body = is_problem(
        client.post("/api/v1/admin/events", headers=auth["beizhengjia"], json=_event(code, {"plot_no": OWN_PLOT})), 422
    )
    assert _fields(body) == {"read_point.plot_no"}


def test_correction_declares_an_event_in_error(world: tuple[TestClient, Any], auth: dict[str, dict[str, str]]) -> None:
    client, settings = world
    wrong = _event(PADDY, {"plot_no": THEIR_PLOT}, time="2026-07-22T06:00:00+08:00", attributes={"water_mm": 400})
    r = client.post("/api/v1/admin/events", headers=auth["changtun"], json=wrong)
    assert r.status_code == 201, r.text
    event = r.json()
    right = _event(PADDY, {"plot_no": THEIR_PLOT}, time="2026-07-22T06:00:00+08:00")
    body = {"reason": "incorrect_data", "corrective": right}
    is_problem(
        client.post(f"/api/v1/admin/events/{event['id']}/corrections", headers=auth["beizhengjia"], json=body), 403
    )
    r = client.post(f"/api/v1/admin/events/{event['id']}/corrections", headers=auth["changtun"], json=body)
    assert r.status_code == 201, r.text
    correction = r.json()
    assert correction["event_id"] == event["event_id"] and correction["corrective_event_id"].startswith("ni:///")
    is_problem(client.post(f"/api/v1/admin/events/{event['id']}/corrections", headers=auth["changtun"], json=body), 409)
    # the wrong event stays, marked; the page says so
    shown = client.get(f"/api/v1/admin/events/{event['id']}", headers=auth["county"]).json()
    assert shown["attributes"]["water_mm"] == 400 and shown["corrected"]["reason"] == "incorrect_data"
    trace = client.get(f"/api/v1/trace/{BAGS}").json()
    marked = [e for e in trace["events"] if e["event_id"] == event["event_id"]]
    assert marked and marked[0]["corrected"]["corrective_event_id"] == correction["corrective_event_id"]
    page = client.get(f"/t/{BAGS}", headers={"Accept": "text/html"})
    assert "此记录已声明有误" in page.text and "更正记录" in page.text
    # the EPCIS document carries the declaration; the declaration is a record of the lot (anchored like any other)
    doc = client.get(f"/api/v1/trace/{BAGS}/epcis").json()
    declared = [e for e in doc["epcisBody"]["eventList"] if e.get("eventID") == event["event_id"]]
    assert declared[0]["errorDeclaration"]["correctiveEventIDs"] == [correction["corrective_event_id"]]
    v = client.get(f"/api/v1/trace/{BAGS}/verify").json()
    assert "correction/1" in {rec["kind"] for rec in v["records"]}
    with Session(get_engine(settings.resolved_database_url())) as session:
        assert session.exec(select(EventCorrection)).first() is not None
        assert session.get(TraceEvent, event["id"]) is not None  # never deleted


def test_attack_file_import_outside_area(
    world: tuple[TestClient, Any], auth: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    client, settings = world
    text = (
        "events:\n"
        "  - {action: OBSERVE, step: sampling, time: 2026-10-05T08:00:00+08:00, lot: " + PADDY + ",\n"
        "     read_point: {facility: PS-DRY-01}}\n"
    )
    before = _events_of(client, auth, PADDY)
    files = {"file": ("season.yaml", text.encode(), "application/yaml")}
    body = is_problem(client.post("/api/v1/admin/imports/trace", headers=auth["beizhengjia"], files=files), 403)
    assert body["errors"][0]["field"] == "lot" and body["errors"][0]["line"] == 2
    # the same file through the CLI, as the same user
    path = tmp_path / "season.yaml"
    path.write_text(text, encoding="utf-8")
    from cli.main import app

    env = {"DATABASE_URL": settings.resolved_database_url(), "VILLAGE_DATA_DIR": str(tmp_path)}
    get_settings.cache_clear()  # the CLI reads this environment, as a new process would
    try:
        result = CliRunner().invoke(app, ["lots", "import", str(path), "--as", "beizhengjia"], env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "outside your area" in result.output, result.output
    # an EPCIS document of the lot's own events, replayed with a new time as the attacker
    doc = client.get(f"/api/v1/trace/{PADDY}/epcis").json()
    ev = next(e for e in doc["epcisBody"]["eventList"] if e["type"] == "ObjectEvent")
    ev["eventTime"] = "2026-03-02T06:00:00+08:00"
    ev.pop("eventID", None)
    ev.pop("errorDeclaration", None)
    doc["epcisBody"]["eventList"] = [ev]
    with Session(get_engine(settings.resolved_database_url())) as session:
        attacker = Scope.of(session, *USERS["beizhengjia"])
        with pytest.raises(EpcisError) as e:
            import_document(session, json.dumps(doc), attacker)
        assert any("outside your area" in message for _, message in e.value.errors), e.value.errors
    assert _events_of(client, auth, PADDY) == before


def test_analyst_writes_nothing(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    files = {
        "file": ("x.yaml", b"farms:\n  - {code: AN-1, name: x, village_code: '211122101201'}\n", "application/yaml")
    }
    is_problem(client.post("/api/v1/admin/imports/registry", headers=auth["analyst"], files=files), 403)
    with Session(get_engine(str(client.app.state.settings.resolved_database_url()))) as session:  # type: ignore[attr-defined]
        assert session.exec(select(Lot).where(Lot.lot_no == "AN-1")).first() is None
