"""The public endpoints against a real registry, InfluxDB and anvil: the GS1 Digital Link resolver
(page, linkset, 400 for a wrong check digit, 404 page for an unknown lot), the trace page in Chinese
and English, the trace JSON, verification (verified, tampered, unverifiable), the proof bundle
checked offline, QR images, EPCIS, rate limits and problem details; no personal data anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from core.db import get_engine
from ledger.bundle_verify import verify_bundle
from ledger.codes import lot_uri, new_code, qr_png, qr_svg
from ledger.models import Inspection, InspectionItem, Lot
from tests.api_fixtures import BAG, BAG_GTIN, BAG_LOT, Template, is_problem, make_client, world_settings

HTML = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
PERSONAL = ("13800000101", "王建国", "李秀兰", "contact_phone", "contact_name", "盘山县鑫禾水稻种植专业合作社")


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("public")) as c:
        yield c


def test_trace_json_of_the_demo_bag(client: TestClient) -> None:
    assert client.get(f"/api/v1/trace/{BAG}/verify").json()["status"] == "verified"  # waits for the first check
    r = client.get(f"/api/v1/trace/{BAG}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    t = r.json()
    assert t["code"] == BAG and t["code_display"] == "M35C-W3XR-D6R" and t["lot_no"] == BAG_LOT
    assert t["uri"] == f"https://trace.example.cn/01/{BAG_GTIN}/10/{BAG_LOT}"
    assert t["product"]["gtin"] == BAG_GTIN
    assert [o["plot_no"] for o in t["origin"]] == ["211122101201-001", "211122101201-002", "211122101203-001"]
    assert {o["village"]["name_zh"] for o in t["origin"]} == {"北郑家村", "西拉拉村"}
    assert t["origin"][0]["county"]["name_en"] == "Panshan County" and t["origin"][0]["farm"] == "PS-F001"
    times = [e["time"] for e in t["events"]]
    assert len(times) >= 20 and times == sorted(times)
    steps = [e["step"] for e in t["events"]]
    assert steps[0] == "sowing" and {"harvesting", "drying", "milling", "packing"} <= set(steps)
    assert t["lineage"][-1]["code"] == BAG and t["lineage"][0]["product"]["code"] == "paddy-yf47"
    assert t["inspections"] and all(i["items"] for i in t["inspections"])
    assert all(i["passed"] for i in t["inspections"])  # the failed lot went into no bag
    growth = {g["lot"]: g for g in t["growth"]}
    assert len(growth) == 3 and all(g["days_monitored"] >= 3 for g in growth.values())
    assert any(len(g["daily"].get("water_level_cm", [])) >= 3 for g in growth.values())
    v = t["verification"]
    assert v["status"] == "verified", v
    assert v["block"] > 0 and v["tx"].startswith("0x") and v["anchored_at"] and "records" not in v
    for word in PERSONAL:
        assert word not in r.text


def test_verify_endpoint_lists_every_record_verified(client: TestClient) -> None:
    v = client.get(f"/api/v1/trace/{BAG.lower()}/verify").json()
    assert v["status"] == "verified" and v["counts"]["tampered"] == 0 and v["counts"]["pending"] == 0
    kinds = {r["kind"] for r in v["records"]}
    assert {"lot/1", "event/1", "inspection/1", "growth/1", "digest/1", "manifest/1"} <= kinds
    assert all(r["status"] == "verified" and r["tx_hash"] for r in v["records"])


def test_page_in_chinese_by_default_and_english_on_request(client: TestClient) -> None:
    zh = client.get("/t/m35c-w3xr-d6r", headers=HTML)
    assert zh.status_code == 200 and zh.headers["content-type"].startswith("text/html")
    assert zh.headers["content-language"] == "zh" and "Accept-Language" in zh.headers["vary"]
    for text in ("产地", "盘锦大米 5 kg", "211122101201-001", "北郑家村", "已验证", "检测报告", "播种育秧", "加工环节"):
        assert text in zh.text, text
    assert 'data-status="verified"' in zh.text and "<svg" in zh.text  # the growth charts
    en = client.get(f"/t/{BAG}", headers={**HTML, "Accept-Language": "en-US,en;q=0.9,zh;q=0.5"})
    assert en.headers["content-language"] == "en"
    for text in ("Origin", "Panjin rice 5 kg bag", "Verified", "Laboratory reports", "Beizhengjia Village"):
        assert text in en.text, text
    assert client.get(f"/t/{BAG}?lang=en", headers=HTML).text == en.text
    assert (
        client.get(f"/t/{BAG}?lang=zh", headers={**HTML, "Accept-Language": "en"}).headers["content-language"] == "zh"
    )
    for word in PERSONAL:
        assert word not in zh.text and word not in en.text


def test_digital_link_serves_the_page_and_names_its_linkset(client: TestClient) -> None:
    r = client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}", headers=HTML)
    assert r.status_code == 200 and "盘锦大米 5 kg" in r.text
    assert r.headers["link"] == (
        f'<https://trace.example.cn/01/{BAG_GTIN}/10/{BAG_LOT}?linkType=linkset>; rel="linkset"; '
        'type="application/linkset+json"'
    )
    # a GTIN-13 names the same product
    assert client.get(f"/01/{BAG_GTIN[1:]}/10/{BAG_LOT}", headers=HTML).status_code == 200


@pytest.mark.parametrize("how", ["query", "accept"])
def test_linkset(client: TestClient, how: str) -> None:
    if how == "query":
        r = client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}?linkType=linkset")
    else:
        r = client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}", headers={"Accept": "application/linkset+json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/linkset+json"
    (entry,) = r.json()["linkset"]
    base = "https://trace.example.cn"
    assert entry["anchor"] == f"{base}/01/{BAG_GTIN}/10/{BAG_LOT}"
    assert entry["https://gs1.org/voc/defaultLink"][0]["href"] == entry["anchor"]
    assert entry["https://gs1.org/voc/defaultLink"][0]["hreflang"] == ["zh", "en"]
    traceability = entry["https://gs1.org/voc/traceability"][0]
    assert (traceability["href"], traceability["type"]) == (f"{base}/api/v1/trace/{BAG}", "application/json")
    assert {t["language"] for t in traceability["title*"]} == {"zh", "en"}
    assert entry["https://w3id.org/village-trace/voc/proofBundle"][0]["href"] == f"{base}/api/v1/trace/{BAG}/proof"
    assert entry["https://gs1.org/voc/epcis"][0]["type"] == "application/ld+json"


def test_link_type_redirects_to_that_link(client: TestClient) -> None:
    r = client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}?linkType=gs1:traceability", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"https://trace.example.cn/api/v1/trace/{BAG}"
    r = client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}?linkType=gs1:pip", headers=HTML)  # the page itself
    assert r.status_code == 200 and "盘锦大米" in r.text


def test_wrong_gtin_check_digit_is_a_400_with_the_reason(client: TestClient) -> None:
    bad = BAG_GTIN[:-1] + "1"
    body = is_problem(client.get(f"/01/{bad}/10/{BAG_LOT}"), 400, "gtin-check-digit")
    assert "check digit" in body["detail"] and "Expected 0" in body["detail"] and body["gtin"] == bad
    page = client.get(f"/01/{bad}/10/{BAG_LOT}", headers=HTML)
    assert page.status_code == 400 and "追溯码格式有误" in page.text and "Expected 0" in page.text
    is_problem(client.get(f"/01/{bad}/10/{BAG_LOT}?linkType=linkset"), 400, "gtin-check-digit")
    is_problem(client.get(f"/01/{bad}"), 400, "gtin-check-digit")
    is_problem(client.get(f"/01/123/10/{BAG_LOT}"), 400, "digital-link-syntax")
    is_problem(client.get(f"/01/{BAG_GTIN}/10/has space"), 400, "digital-link-syntax")
    is_problem(client.get(f"/01/{BAG_GTIN}"), 404, "lot-required")


def test_unknown_lot_is_a_clear_404(client: TestClient) -> None:
    page = client.get(f"/01/{BAG_GTIN}/10/2026-NOPE", headers=HTML)
    assert page.status_code == 404 and "未找到该追溯码" in page.text and "<form" in page.text
    en = client.get(f"/01/{BAG_GTIN}/10/2026-NOPE", headers={**HTML, "Accept-Language": "en"})
    assert en.status_code == 404 and "Trace code not found" in en.text
    body = is_problem(client.get(f"/01/{BAG_GTIN}/10/2026-NOPE", headers={"Accept": "application/json"}), 404)
    assert body["type"].endswith("unknown-lot") and "2026-NOPE" in body["detail"]
    unknown = new_code()
    is_problem(client.get(f"/t/{unknown}"), 404, "unknown-lot")
    is_problem(client.get(f"/api/v1/trace/{unknown}"), 404, "unknown-lot")
    assert client.get(f"/t/{unknown}", headers=HTML).status_code == 404


def test_mistyped_code_is_a_400_and_typed_forms_resolve(client: TestClient) -> None:
    body = is_problem(client.get("/t/M35C-W3XR-D6X"), 400, "bad-trace-code")
    assert "expected 'R'" in body["detail"]
    is_problem(client.get("/api/v1/trace/M35C-W3RX-D6R"), 400, "bad-trace-code")  # transposition
    is_problem(client.get("/api/v1/trace/short"), 400, "bad-trace-code")
    # case, hyphens and I/L/O typed for 1/1/0 name the same lot
    assert client.get("/api/v1/trace/m35c-w3xr-d6r").json()["code"] == BAG
    r = client.get("/t?code=m35c w3xr d6r".replace(" ", "-"), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/t/{BAG}"


def test_qr_codes_encode_the_label_uri(client: TestClient, api_template: Template) -> None:
    with Session(get_engine(f"sqlite:///{api_template.db}")) as session:
        lot = session.exec(select(Lot).where(Lot.code == BAG)).one()
        uri = lot_uri("https://trace.example.cn", lot)
    svg = client.get(f"/api/v1/trace/{BAG}/qr.svg")
    assert svg.headers["content-type"] == "image/svg+xml" and svg.content == qr_svg(uri)
    png = client.get(f"/api/v1/trace/{BAG}/qr.png")
    assert png.headers["content-type"] == "image/png" and png.content == qr_png(uri)
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_epcis_document(client: TestClient) -> None:
    r = client.get(f"/api/v1/trace/{BAG}/epcis")
    assert r.status_code == 200 and r.headers["content-type"] == "application/ld+json"
    doc = r.json()
    events = doc["epcisBody"]["eventList"]
    assert doc["type"] == "EPCISDocument" and doc["schemaVersion"] == "2.0"
    assert len(events) == len(client.get(f"/api/v1/trace/{BAG}").json()["events"])
    assert all(e["eventID"].startswith("ni:///sha-256;") for e in events)


def test_proof_bundle_checks_offline_against_the_chain(client: TestClient, api_template: Template) -> None:
    r = client.get(f"/api/v1/trace/{BAG}/proof")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    bundle = r.json()
    assert bundle["format"] == "village-proof/1" and bundle["subject"]["code"] == BAG and not bundle["pending"]
    result = verify_bundle(bundle, api_template.chain_url, chain_id=31337, contract=api_template.contract)
    assert result.ok, [p for p in result.records if not p.ok][:3]
    for word in PERSONAL:
        assert word not in r.text


def test_tampered_inspection_shows_on_the_page(api_template: Template, tmp_path: Path) -> None:
    settings = world_settings(api_template, tmp_path / "tamper", API_VERIFY_CACHE_S=0)
    from api.app import create_app

    with TestClient(create_app(settings)) as c:
        t = c.get(f"/api/v1/trace/{BAG}").json()
        assert t["verification"]["status"] == "verified"
        report_no = t["inspections"][0]["report_no"]
        with Session(get_engine(settings.resolved_database_url())) as session:
            item = session.exec(
                select(InspectionItem)
                .join(Inspection, col(Inspection.id) == InspectionItem.inspection_id)
                .where(Inspection.report_no == report_no, InspectionItem.item == "cadmium")
            ).first()
            assert item is not None
            item.value = 0.01  # a lab result made to look better after anchoring
            session.add(item)
            session.commit()
        v = c.get(f"/api/v1/trace/{BAG}/verify").json()
        assert v["status"] == "tampered"
        bad = [rec for rec in v["records"] if rec["status"] == "tampered"]
        assert any("cadmium" in json.dumps(rec["reasons"]) or "value" in json.dumps(rec["reasons"]) for rec in bad)
        page = c.get(f"/t/{BAG}", headers=HTML)
        assert 'data-status="tampered"' in page.text and "数据被篡改" in page.text


def test_unreachable_chain_shows_unverifiable_not_an_error(api_template: Template, tmp_path: Path) -> None:
    from api.app import create_app
    from core.services import free_port

    settings = world_settings(api_template, tmp_path / "nochain", CHAIN_RPC_URL=f"http://127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as c:
        v = c.get(f"/api/v1/trace/{BAG}/verify")
        assert v.status_code == 200 and v.json()["status"] == "unverifiable"
        t = c.get(f"/api/v1/trace/{BAG}")
        assert t.status_code == 200 and t.json()["verification"]["status"] == "unverifiable"
        assert "blockchain" in t.json()["verification"]["reason"]
        page = c.get(f"/t/{BAG}", headers=HTML)
        assert page.status_code == 200 and "暂时无法验证" in page.text
        assert c.get(f"/api/v1/trace/{BAG}/proof").status_code == 200  # the bundle still builds


def test_first_scan_does_not_wait_for_the_verification(client: TestClient) -> None:
    paddy = "JFPD18RSDBW"  # a plot's paddy lot: not verified at start-up (only retail lots are)
    first = client.get(f"/t/{paddy}", headers=HTML)
    assert first.status_code == 200 and 'data-status="checking"' in first.text
    assert first.headers["cache-control"] == "no-store" and 'http-equiv="refresh"' in first.text
    assert client.get(f"/api/v1/trace/{paddy}/verify").json()["status"] == "verified"  # waits for it
    again = client.get(f"/t/{paddy}", headers=HTML)
    assert 'data-status="verified"' in again.text and "no-store" not in again.headers["cache-control"]


def test_rate_limit_answers_429_with_retry_after(api_template: Template, tmp_path: Path) -> None:
    from api.app import create_app

    settings = world_settings(api_template, tmp_path / "limited", API_RATE_LIMIT_PER_MIN=3)
    with TestClient(create_app(settings)) as c:
        assert [c.get(f"/api/v1/trace/{BAG}").status_code for _ in range(3)] == [200, 200, 200]
        body = is_problem(c.get(f"/t/{BAG}"), 429, "rate-limited")
        assert "3 requests a minute" in body["detail"]
        assert 1 <= int(c.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}").headers["retry-after"]) <= 20
        assert c.get("/healthz").status_code == 200  # not a public trace path: not limited
        assert c.post("/api/v1/auth/token", data={"username": "x", "password": "y"}).status_code == 401


def test_micro_cache_replays_the_same_answer(client: TestClient) -> None:
    a = client.get(f"/t/{BAG}", headers=HTML)
    b = client.get(f"/t/{BAG}", headers=HTML)
    assert a.content == b.content and a.headers["link"] == b.headers["link"]
    assert a.headers["content-language"] == b.headers["content-language"] == "zh"
    en = client.get(f"/t/{BAG}", headers={**HTML, "Accept-Language": "en"})
    assert en.headers["content-language"] == "en" and en.content != a.content

    # a phone that takes gzip gets the compressed answer replayed as it was compressed; one that does not, plain
    gz = [client.get(f"/t/{BAG}", headers={**HTML, "Accept-Encoding": "gzip"}) for _ in range(2)]
    assert [r.headers.get("content-encoding") for r in gz] == ["gzip", "gzip"] and "age" in gz[1].headers
    assert gz[0].content == gz[1].content == a.content  # (httpx decompresses)
    plain = client.get(f"/t/{BAG}", headers={**HTML, "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == a.content


def test_errors_are_problem_details(client: TestClient) -> None:
    is_problem(client.get("/no/such/path"), 404)
    body = is_problem(client.post(f"/api/v1/trace/{BAG}"), 405)
    assert "GET" in body["detail"]
    home = client.get("/", headers=HTML)
    assert home.status_code == 200 and 'action="/t"' in home.text
    openapi = client.get("/api/v1/openapi.json").json()
    assert "/01/{gtin}/10/{lot}" in openapi["paths"] and "/api/v1/trace/{code}" in openapi["paths"]
