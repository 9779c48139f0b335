"""Registry administration by role and area: what each role sees (personal data only for the county
administrator and the farm's own village operator), what it may change (403 otherwise), validation
as 422 problems naming the fields, pagination and filters, device provisioning (secret once),
lots, events and inspections through the trace importer, and the public trace following a change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from core.broker_auth import verify_secret
from core.db import get_engine
from core.models import Device, DeviceStatus
from tests.api_fixtures import USERS, Template, is_problem, make_client, token

ROLES = list(USERS)
COUNTY_FARMS = ["PS-F001", "PS-F002", "PS-F003", "PS-F004", "PS-F005", "PS-F006"]
# user -> farms they see, and those whose contact fields they see
VISIBLE = {
    "county": (COUNTY_FARMS, COUNTY_FARMS),
    "shaling": (["PS-F001", "PS-F002"], []),
    "beizhengjia": (["PS-F001"], ["PS-F001"]),
    "analyst": (COUNTY_FARMS, []),
    "changtun": (["PS-F003"], ["PS-F003"]),
    "other": (["ST-F001"], ["ST-F001"]),
}


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("admin")) as c:
        yield c


@pytest.fixture(scope="module")
def auth(client: TestClient) -> dict[str, dict[str, str]]:
    return {user: token(client, user) for user in USERS}


@pytest.mark.parametrize("user", ROLES)
def test_farms_by_role_with_personal_data_only_where_allowed(
    client: TestClient, auth: dict[str, dict[str, str]], user: str
) -> None:
    r = client.get("/api/v1/admin/farms", headers=auth[user])
    assert r.status_code == 200
    page = r.json()
    seen, personal = VISIBLE[user]
    assert [f["code"] for f in page["items"]] == seen and page["total"] == len(seen)
    assert [f["code"] for f in page["items"] if "contact_phone" in f] == personal
    for code in seen:
        one = client.get(f"/api/v1/admin/farms/{code}", headers=auth[user]).json()
        assert ("contact_name" in one) == (code in personal)
    if user == "county":
        assert page["items"][0]["contact_phone"] == "13800000101"
    else:
        assert "13800000101" not in r.text or user == "beizhengjia"


@pytest.mark.parametrize("user", ["shaling", "beizhengjia", "changtun", "other"])
def test_reading_outside_the_area_is_403(client: TestClient, auth: dict[str, dict[str, str]], user: str) -> None:
    outside = {"shaling": "PS-F003", "beizhengjia": "PS-F002", "changtun": "PS-F001", "other": "PS-F001"}[user]
    body = is_problem(client.get(f"/api/v1/admin/farms/{outside}", headers=auth[user]), 403, "outside-scope")
    assert outside in body["detail"]
    is_problem(client.get("/api/v1/admin/farms?village=211122108201", headers=auth[user]), 403, "outside-scope")


@pytest.mark.parametrize(
    "user,expected",
    [("county", 201), ("shaling", 201), ("beizhengjia", 201), ("analyst", 403), ("changtun", 403), ("other", 403)],
)
def test_creating_a_farm_by_role(client: TestClient, auth: dict[str, dict[str, str]], user: str, expected: int) -> None:
    farm = {
        "code": f"NEW-{user}",
        "name": "新农场",
        "kind": "family_farm",
        "village_code": "211122101201",
        "contact_name": "测试人",
        "contact_phone": "13700000000",
    }
    r = client.post("/api/v1/admin/farms", headers=auth[user], json=farm)
    assert r.status_code == expected, r.text
    if expected == 201:
        body = r.json()
        assert body["code"] == farm["code"]
        assert ("contact_phone" in body) == (user in ("county", "beizhengjia"))  # a township officer writes, not reads
        assert client.post("/api/v1/admin/farms", headers=auth[user], json=farm).status_code == 409
    else:
        assert r.json()["type"].endswith(("read-only-role", "outside-scope"))


def test_patching_a_farm_keeps_the_rest_and_validates(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["beizhengjia"]
    r = client.patch("/api/v1/admin/farms/PS-F001", headers=h, json={"name": "鑫禾合作社"})
    assert r.status_code == 200 and r.json()["name"] == "鑫禾合作社" and r.json()["contact_phone"] == "13800000101"
    body = is_problem(client.patch("/api/v1/admin/farms/PS-F001", headers=h, json={"kind": "castle"}), 422)
    assert body["errors"][0]["loc"].endswith("kind")
    body = is_problem(client.patch("/api/v1/admin/farms/PS-F001", headers=h, json={"code": "X"}), 422)
    is_problem(client.patch("/api/v1/admin/farms/PS-F001", headers=h, json={"village_code": "211122104201"}), 403)
    is_problem(client.patch("/api/v1/admin/farms/PS-F001", headers=auth["analyst"], json={"name": "x"}), 403)
    is_problem(client.patch("/api/v1/admin/farms/NOPE", headers=h, json={"name": "x"}), 404, "not-found")


def test_validation_errors_name_every_field_without_echoing_personal_data(
    client: TestClient, auth: dict[str, dict[str, str]]
) -> None:
    bad = {"code": "", "name": "x", "village_code": "123", "contact_phone": "call-me-maybe"}
    body = is_problem(client.post("/api/v1/admin/farms", headers=auth["county"], json=bad), 422, "validation")
    locs = {e["loc"] for e in body["errors"]}
    assert {"body.code", "body.village_code", "body.contact_phone"} <= locs
    assert "call-me-maybe" not in str(body)
    missing = is_problem(client.post("/api/v1/admin/farms", headers=auth["county"], json={"code": "Z"}), 422)
    assert "body.name" in {e["loc"] for e in missing["errors"]}
    nonexistent = {"code": "NV-1", "name": "x", "village_code": "211122101299"}
    gone = is_problem(client.post("/api/v1/admin/farms", headers=auth["county"], json=nonexistent), 422, "validation")
    assert gone["errors"] == [{"field": "village_code", "message": "village '211122101299' does not exist"}]


def test_pagination_and_filters(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["county"]
    first = client.get("/api/v1/admin/plots?limit=5", headers=h).json()
    second = client.get("/api/v1/admin/plots?limit=5&offset=5", headers=h).json()
    assert first["total"] == second["total"] == 23 and len(first["items"]) == 5
    assert {p["plot_no"] for p in first["items"]}.isdisjoint(p["plot_no"] for p in second["items"])
    maize = client.get("/api/v1/admin/plots?crop=maize", headers=h).json()
    assert maize["total"] == 3 and all(p["crop"] == "maize" for p in maize["items"])
    f2 = client.get("/api/v1/admin/plots?farm=PS-F002", headers=h).json()
    assert [p["plot_no"] for p in f2["items"]] == ["211122101203-001", "211122101203-002", "211122101203-003"]
    devices = client.get("/api/v1/admin/devices?village=211122108204&kind=collar&limit=500", headers=h).json()
    assert devices["total"] > 0 and all(d["kind"] == "collar" and d["ear_tag"] for d in devices["items"])
    villages = client.get("/api/v1/admin/villages?township=211122101", headers=auth["shaling"]).json()
    assert [v["code"] for v in villages["items"]] == ["211122101201", "211122101203"]
    is_problem(client.get("/api/v1/admin/plots?limit=0", headers=h), 422, "validation")
    is_problem(client.get("/api/v1/admin/plots?limit=501", headers=h), 422, "validation")
    is_problem(client.get("/api/v1/admin/devices?status=broken", headers=h), 422, "validation")
    animals = client.get("/api/v1/admin/animals?herd=PS-H001&limit=3", headers=h).json()
    assert animals["total"] >= 16 and len(animals["items"]) == 3
    assert client.get("/api/v1/admin/herds", headers=auth["beizhengjia"]).json()["total"] == 0


def test_divisions(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    assert [c["code"] for c in client.get("/api/v1/admin/counties", headers=auth["analyst"]).json()["items"]] == [
        "211122"
    ]
    assert client.get("/api/v1/admin/counties/211103", headers=auth["other"]).json()["name_zh"] == "双台子区"
    is_problem(client.get("/api/v1/admin/counties/211103", headers=auth["county"]), 403)
    is_problem(client.get("/api/v1/admin/counties/999999", headers=auth["county"]), 404)
    town = {"code": "211122110", "county_code": "211122", "name_zh": "新镇"}
    is_problem(client.post("/api/v1/admin/townships", headers=auth["shaling"], json=town), 403, "forbidden-role")
    is_problem(client.post("/api/v1/admin/townships", headers=auth["other"], json=town), 403, "outside-scope")
    assert client.post("/api/v1/admin/townships", headers=auth["county"], json=town).status_code == 201
    wrong = {"code": "211123110", "county_code": "211122", "name_zh": "错镇"}
    body = is_problem(client.post("/api/v1/admin/townships", headers=auth["county"], json=wrong), 422)
    assert "does not start with its county code" in body["detail"]
    village = {"code": "211122110201", "township_code": "211122110", "name_zh": "新村"}
    assert client.post("/api/v1/admin/villages", headers=auth["county"], json=village).status_code == 201
    assert client.get("/api/v1/admin/villages/211122110201", headers=auth["analyst"]).status_code == 200
    patched = client.patch("/api/v1/admin/counties/211122", headers=auth["county"], json={"name_en": "Panshan"})
    assert patched.json()["name_en"] == "Panshan" and patched.json()["name_zh"] == "盘山县"
    is_problem(client.patch("/api/v1/admin/counties/211122", headers=auth["analyst"], json={"name_en": "x"}), 403)


def test_plots_herds_animals(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["beizhengjia"]
    plot = {
        "plot_no": "211122101201-099",
        "farm_code": "PS-F001",
        "village_code": "211122101201",
        "area_mu": 12.5,
        "crop": "rice",
    }
    assert client.post("/api/v1/admin/plots", headers=h, json=plot).json()["farm_code"] == "PS-F001"
    assert client.patch("/api/v1/admin/plots/211122101201-099", headers=h, json={"area_mu": 13}).json()["area_mu"] == 13
    is_problem(client.patch("/api/v1/admin/plots/211122101201-099", headers=h, json={"area_mu": -1}), 422)
    bad_farm = {**plot, "plot_no": "211122101201-098", "farm_code": "NOPE"}
    body = is_problem(client.post("/api/v1/admin/plots", headers=h, json=bad_farm), 422)
    assert body["errors"][0]["field"] == "farm_code" and "does not exist" in body["errors"][0]["message"]
    herd = {"herd_no": "PS-H009", "farm_code": "PS-F001", "village_code": "211122101201", "head_count": 3}
    assert client.post("/api/v1/admin/herds", headers=h, json=herd).status_code == 201
    animal = {"ear_tag": "221112200000999", "herd_no": "PS-H009", "sex": "female", "birth_date": "2024-03-01"}
    made = client.post("/api/v1/admin/animals", headers=h, json=animal)
    assert made.status_code == 201 and made.json()["village_code"] == "211122101201"
    is_problem(client.post("/api/v1/admin/animals", headers=auth["changtun"], json={**animal, "ear_tag": "2"}), 403)
    assert (
        client.patch("/api/v1/admin/animals/221112200000999", headers=h, json={"sex": "male"}).json()["sex"] == "male"
    )
    is_problem(client.get("/api/v1/admin/animals/221112200000999", headers=auth["changtun"]), 403)


def test_device_provisioning_returns_the_secret_once(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["beizhengjia"]
    made = client.post(
        "/api/v1/admin/devices", headers=h, json={"id": "soil-9001", "kind": "soil", "plot_no": "211122101201-001"}
    )
    assert made.status_code == 201
    secret = made.json()["secret"]
    assert made.json()["status"] == "active" and len(secret) >= 32
    got = client.get("/api/v1/admin/devices/soil-9001", headers=h).json()
    assert "secret" not in got and got["village_code"] == "211122101201"
    with Session(get_engine(client.app.state.settings.resolved_database_url())) as s:  # type: ignore[attr-defined]
        row = s.get(Device, "soil-9001")
        assert row is not None and row.secret_hash and secret not in row.secret_hash
        assert verify_secret(secret, row.secret_hash)
    rotated = client.post("/api/v1/admin/devices/soil-9001/provision", headers=h).json()["secret"]
    assert rotated != secret
    revoked = client.post("/api/v1/admin/devices/soil-9001/revoke", headers=h).json()
    assert revoked["status"] == DeviceStatus.revoked and revoked["revoked_at"]
    is_problem(client.post("/api/v1/admin/devices/soil-9001/revoke", headers=auth["analyst"]), 403, "read-only-role")
    is_problem(client.post("/api/v1/admin/devices/soil-9001/provision", headers=auth["changtun"]), 403)
    wrong = client.post(
        "/api/v1/admin/devices", headers=h, json={"id": "soil-9002", "kind": "soil", "herd_no": "PS-H001"}
    )
    assert wrong.status_code in (403, 422)
    unknown_kind = client.post(
        "/api/v1/admin/devices", headers=h, json={"id": "x-1", "kind": "radar", "plot_no": "211122101201-001"}
    )
    assert "unknown device kind" in is_problem(unknown_kind, 422)["detail"]
    is_problem(
        client.post(
            "/api/v1/admin/devices", headers=h, json={"id": "soil-0001", "kind": "soil", "plot_no": "211122101201-001"}
        ),
        409,
    )
    is_problem(client.get("/api/v1/admin/devices/none-such", headers=h), 404)


def test_lots_events_inspections(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    h = auth["beizhengjia"]
    lots = client.get("/api/v1/admin/lots?limit=500", headers=h).json()
    # the village's farm lots and the lots of the Shaling dryer, which stands in the village
    assert {x["lot_no"] for x in lots["items"]} == {"2026-101201-001", "2026-101201-002", "2026-D01", "2026-D02"}
    county_lots = client.get("/api/v1/admin/lots?year=2026&limit=500", headers=auth["county"]).json()
    assert county_lots["total"] == 12
    assert client.get("/api/v1/admin/lots?product=rice-5kg", headers=auth["county"]).json()["total"] == 3
    assert client.get("/api/v1/admin/lots/jfpd-18rs-dbw", headers=h).json()["farm"] == "PS-F001"
    is_problem(client.get("/api/v1/admin/lots/88SP-GS5J-KRZ", headers=h), 403)
    is_problem(client.get("/api/v1/admin/lots/88SP-GS5J-KRX", headers=h), 400, "bad-trace-code")
    lot = {
        "product": "paddy-yf47",
        "lot_no": "2027-101201-001",
        "farm": "PS-F001",
        "harvest_year": 2027,
        "sources": [{"plot_no": "211122101201-001", "area_mu": 152}],
    }
    made = client.post("/api/v1/admin/lots", headers=h, json=lot)
    assert made.status_code == 201 and len(made.json()["code"]) == 11
    code = made.json()["code"]
    is_problem(client.post("/api/v1/admin/lots", headers=h, json=lot), 409)
    is_problem(client.post("/api/v1/admin/lots", headers=auth["changtun"], json={**lot, "lot_no": "x1"}), 403)
    event = {
        "action": "ADD",
        "step": "sowing",
        "disposition": "active",
        "time": "2027-04-14T07:30:00+08:00",
        "lot": code,
        "read_point": {"plot_no": "211122101201-001"},
        "attributes": {"variety": "盐丰47", "seed_kg_per_mu": 4.5},
    }
    ev = client.post("/api/v1/admin/events", headers=h, json=event)
    assert ev.status_code == 201 and ev.json()["step"] == "sowing" and ev.json()["event_id"].startswith("ni:///")
    is_problem(client.post("/api/v1/admin/events", headers=h, json=event), 409)
    bad = {**event, "step": "dancing", "time": "2027-04-15T07:30:00+08:00"}
    assert "dancing" in is_problem(client.post("/api/v1/admin/events", headers=h, json=bad), 422)["detail"]
    no_tz = {**event, "time": "2027-04-15T07:30:00"}
    is_problem(client.post("/api/v1/admin/events", headers=h, json=no_tz), 422, "validation")
    listed = client.get(f"/api/v1/admin/events?lot={code}", headers=h).json()
    assert listed["total"] == 1 and listed["items"][0]["attributes"]["seed_kg_per_mu"] == 4.5
    assert client.get("/api/v1/admin/events?step=harvesting&limit=500", headers=auth["county"]).json()["total"] == 5
    is_problem(client.get("/api/v1/admin/events?step=dancing", headers=h), 422)
    eid = listed["items"][0]["id"]
    assert client.get(f"/api/v1/admin/events/{eid}", headers=h).json()["lot"] == code
    is_problem(client.get(f"/api/v1/admin/events/{eid}", headers=auth["changtun"]), 403)
    insp = {
        "lot": code,
        "lab": "盘锦市农产品质量检测中心",
        "report_no": "T-2027-1",
        "sampled_on": "2027-10-05",
        "items": [{"item": "cadmium", "value": 0.25, "unit": "mg/kg", "limit": 0.2, "method": "GB 2762-2022"}],
    }
    made_insp = client.post("/api/v1/admin/inspections", headers=h, json=insp)
    assert made_insp.status_code == 201 and made_insp.json()["passed"] is False  # computed, not entered
    is_problem(client.post("/api/v1/admin/inspections", headers=h, json=insp), 409)
    failed = client.get("/api/v1/admin/inspections?passed=false&limit=500", headers=auth["county"]).json()
    assert {i["report_no"] for i in failed["items"]} >= {"T-2027-1"}
    iid = made_insp.json()["id"]
    is_problem(client.get(f"/api/v1/admin/inspections/{iid}", headers=auth["changtun"]), 403)
    # the public trace of the new lot shows the new event and inspection at once (caches cleared)
    public = client.get(f"/api/v1/trace/{code}").json()
    assert [e["step"] for e in public["events"]] == ["sowing"] and public["inspections"][0]["passed"] is False


def test_products_and_facilities(client: TestClient, auth: dict[str, dict[str, str]]) -> None:
    assert client.get("/api/v1/admin/products", headers=auth["analyst"]).json()["total"] == 3
    product = {"code": "rice-10kg", "gtin": "06947512300027", "name_zh": "盘锦大米 10 kg", "unit": "bag"}
    is_problem(client.post("/api/v1/admin/products", headers=auth["shaling"], json=product), 403)
    bad = client.post("/api/v1/admin/products", headers=auth["county"], json={**product, "gtin": "06947512300028"})
    assert "check digit" in is_problem(bad, 422)["detail"]
    assert client.post("/api/v1/admin/products", headers=auth["county"], json=product).status_code == 201
    facility = {"code": "PS-WH-01", "name": "沙岭仓库", "kind": "warehouse", "village_code": "211122101201"}
    assert client.post("/api/v1/admin/facilities", headers=auth["beizhengjia"], json=facility).status_code == 201
    assert client.get("/api/v1/admin/facilities", headers=auth["beizhengjia"]).json()["total"] == 2
