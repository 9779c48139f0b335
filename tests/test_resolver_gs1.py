"""The GS1 Digital Link resolver as a GS1 client sees it, against the demo registry (real PostgreSQL, InfluxDB
and anvil behind the app): the linkset by Accept, HEAD, cross-origin reads and link titles, extra segments and
trailing slashes, and the behaviours that must not change (page, GTIN-13, 400s, 404)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.conneg import choose
from tests.api_fixtures import BAG, BAG_GTIN, BAG_LOT, Template, is_problem, make_client

HTML = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
LINKSET = "application/linkset+json"
URI = f"/01/{BAG_GTIN}/10/{BAG_LOT}"
BASE = "https://trace.example.cn"
RELS = (
    "https://gs1.org/voc/defaultLink",
    "https://gs1.org/voc/pip",
    "https://gs1.org/voc/traceability",
    "https://gs1.org/voc/epcis",
    "https://gs1.org/voc/verificationService",
    "https://w3id.org/village-trace/voc/proofBundle",
)


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("resolver")) as c:
        yield c


# --- content negotiation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept,chosen",
    [
        (None, "text/html"),
        ("*/*", "text/html"),
        (HTML["Accept"], "text/html"),
        (LINKSET, LINKSET),
        ("application/json", "application/json"),
        (f"{LINKSET}, application/json;q=0.9", LINKSET),
        (f"text/html;q=0.5, {LINKSET}", LINKSET),
        (f"{LINKSET}, */*;q=0.1", LINKSET),
        (f"{LINKSET}, */*", LINKSET),  # named beats admitted by */*
        (f"text/html, {LINKSET}", "text/html"),  # a tie: the page, the resolver's default
        ("application/*", LINKSET),
        (f"{LINKSET};q=0, */*", "text/html"),
        ("image/png", None),
    ],
)
def test_accept_header_negotiation(accept: str | None, chosen: str | None) -> None:
    assert choose(accept, ("text/html", LINKSET, "application/json")) == chosen


def _assert_linkset(r, media: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media
    assert "Accept" in [v.strip() for v in r.headers["vary"].split(",")]
    (entry,) = r.json()["linkset"]
    assert entry["anchor"] == f"{BASE}{URI}"
    assert tuple(rel for rel in entry if rel != "anchor") == RELS
    return entry


@pytest.mark.parametrize("accept", [LINKSET, f"{LINKSET}, */*;q=0.1", "application/json"])
def test_accept_linkset_or_json_answers_the_linkset(client: TestClient, accept: str) -> None:
    r = client.get(URI, headers={"Accept": accept})
    media = "application/json" if accept == "application/json" else LINKSET
    _assert_linkset(r, media)
    assert "ld+json" in r.headers["link"] and "linkset-context" in r.headers["link"]


def test_link_type_linkset_still_answers_the_linkset(client: TestClient) -> None:
    for accept in (HTML, {}):
        _assert_linkset(client.get(f"{URI}?linkType=linkset", headers=accept), LINKSET)
    _assert_linkset(client.get(f"{URI}?linkType=linkset", headers={"Accept": "application/json"}), "application/json")


def test_the_page_says_it_varies_by_accept(client: TestClient) -> None:
    for _ in range(2):  # the second answer is the micro-cache's replay
        r = client.get(URI, headers=HTML)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert {"Accept", "Accept-Language"} <= {v.strip() for v in r.headers["vary"].split(",")}
    # a cached page is never the answer to a client that asked for the linkset, nor the other way round
    _assert_linkset(client.get(URI, headers={"Accept": LINKSET}), LINKSET)
    assert client.get(URI, headers=HTML).headers["content-type"].startswith("text/html")


def test_every_link_has_a_title_in_chinese_and_english(client: TestClient) -> None:
    entry = _assert_linkset(client.get(URI, headers={"Accept": LINKSET}), LINKSET)
    for rel in RELS:
        (link,) = entry[rel]
        assert link["href"].startswith(BASE) and link["type"]
        assert link["title"] and link["title"].isascii()
        titles = {t["language"]: t["value"] for t in link["title*"]}
        assert set(titles) == {"zh", "en"} and titles["en"] == link["title"]
        assert not titles["zh"].isascii()  # a Chinese title, not the English one again
    assert entry["https://gs1.org/voc/defaultLink"][0]["hreflang"] == ["zh", "en"]
    assert entry["https://gs1.org/voc/defaultLink"][0]["href"] == f"{BASE}{URI}"
    assert entry["https://gs1.org/voc/traceability"][0]["href"] == f"{BASE}/api/v1/trace/{BAG}"


# --- HEAD ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,headers,status",
    [
        (URI, HTML, 200),
        (URI, {"Accept": LINKSET}, 200),
        (f"{URI}?linkType=linkset", {}, 200),
        (f"/01/{BAG_GTIN}/10/2026-NOPE", HTML, 404),
        (f"/01/{BAG_GTIN}/10/2026-NOPE", {"Accept": "application/json"}, 404),
        (f"/01/{BAG_GTIN[:-1]}1/10/{BAG_LOT}", {}, 400),
        (f"/01/123/10/{BAG_LOT}", {}, 400),
        (f"{URI}/extra", {}, 400),
        (f"/t/{BAG}", HTML, 200),
        (f"/api/v1/trace/{BAG}", {}, 200),
    ],
)
def test_head_answers_like_get_without_a_body(client: TestClient, path: str, headers: dict, status: int) -> None:
    get = client.get(path, headers=headers)
    head = client.head(path, headers=headers)
    assert get.status_code == head.status_code == status
    assert head.content == b"" and get.content
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]  # gzip-compressed or not, alike
    assert head.headers.get("content-encoding") == get.headers.get("content-encoding")
    if "vary" in get.headers:
        assert head.headers["vary"] == get.headers["vary"]
    plain = {**headers, "Accept-Encoding": "identity"}
    get, head = client.get(path, headers=plain), client.head(path, headers=plain)
    assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))


def test_head_follows_the_same_redirects(client: TestClient) -> None:
    for path in (f"/01/{BAG_GTIN[1:]}/10/{BAG_LOT}", f"{URI}/"):
        r = client.head(path, follow_redirects=False)
        assert r.status_code == 301 and r.headers["location"] == URI and r.content == b""


# --- cross-origin reads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,headers,status",
    [
        (URI, {"Accept": LINKSET}, 200),
        (f"{URI}?linkType=linkset", {}, 200),
        (URI, HTML, 200),
        (f"/01/{BAG_GTIN}/10/2026-NOPE", {"Accept": "application/json"}, 404),
        (f"/01/{BAG_GTIN[:-1]}1/10/{BAG_LOT}", {}, 400),
        (f"/api/v1/trace/{BAG}", {}, 200),
        (f"/api/v1/trace/{BAG}/epcis", {}, 200),
    ],
)
def test_public_answers_may_be_read_by_other_origins(client: TestClient, path: str, headers: dict, status: int) -> None:
    r = client.get(path, headers={**headers, "Origin": "https://scanner.example.org"})
    assert r.status_code == status
    assert r.headers["access-control-allow-origin"] == "*"
    assert "Link" in r.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in r.headers


def test_a_cors_preflight_on_the_resolver_is_allowed_for_reads(client: TestClient) -> None:
    r = client.options(
        URI,
        headers={
            "Origin": "https://scanner.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept",
        },
    )
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "GET, HEAD"
    assert "Accept" in r.headers["access-control-allow-headers"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/admin/users"),
        ("POST", "/api/v1/auth/token"),
        ("GET", "/dashboard"),
        ("GET", "/api/v1/dashboard/indicators"),
        ("OPTIONS", "/api/v1/admin/users"),
        ("GET", "/"),
    ],
)
def test_cross_origin_reads_of_admin_routes_are_not_allowed(client: TestClient, method: str, path: str) -> None:
    headers = {"Origin": "https://evil.example.org"}
    if method == "OPTIONS":
        headers |= {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    r = client.request(method, path, headers=headers, follow_redirects=False)
    assert not any(h.lower().startswith("access-control-") for h in r.headers), (path, r.headers)


# --- path syntax -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,expected",
    [
        (f"{URI}/", URI),
        (f"{URI}//", URI),
        (f"{URI}/?linkType=linkset", f"{URI}?linkType=linkset"),
        (f"/01/{BAG_GTIN[1:]}/10/{BAG_LOT}/", URI),  # GTIN-13 and a slash: one redirect to the canonical URI
        (f"/t/{BAG}/", f"/t/{BAG}"),
    ],
)
def test_a_trailing_slash_redirects_to_the_canonical_uri(client: TestClient, path: str, expected: str) -> None:
    r = client.get(path, headers=HTML, follow_redirects=False)
    assert r.status_code == 301 and r.headers["location"] == expected
    assert client.get(path, headers=HTML).status_code == 200


@pytest.mark.parametrize("extra", ["/extra", "/21/12345", "/x/y", "//x"])
def test_a_segment_after_the_lot_is_a_400_problem(client: TestClient, extra: str) -> None:
    body = is_problem(client.get(f"{URI}{extra}"), 400, "digital-link-syntax")
    assert "after the lot number" in body["detail"] and "%2F" in body["detail"]
    assert body["lot"] == BAG_LOT
    if extra.startswith("/21/"):
        assert "serial number" in body["detail"]
    page = client.get(f"{URI}{extra}", headers=HTML)
    assert page.status_code == 400 and "after the lot number" in page.text


def test_an_escaped_slash_stays_inside_the_lot_number(client: TestClient) -> None:
    """`%2F` is part of the lot (AI 10 allows '/'): an unknown lot, not an extra segment."""
    body = is_problem(client.get(f"/01/{BAG_GTIN}/10/{BAG_LOT}%2Fx"), 404, "unknown-lot")
    assert f"{BAG_LOT}/x" in body["detail"]


# --- what stays as it was ------------------------------------------------------------------------------------------


def test_existing_behaviours_stay(client: TestClient) -> None:
    page = client.get(URI, headers=HTML)
    assert page.status_code == 200 and "盘锦大米 5 kg" in page.text
    assert page.headers["link"] == f'<{BASE}{URI}?linkType=linkset>; rel="linkset"; type="{LINKSET}"'
    assert client.get(f"/01/{BAG_GTIN[1:]}/10/{BAG_LOT}", headers=HTML).status_code == 200  # GTIN-13
    body = is_problem(client.get(f"/01/{BAG_GTIN[:-1]}1/10/{BAG_LOT}"), 400, "gtin-check-digit")
    assert "check digit" in body["detail"]
    is_problem(client.get(f"/01/123/10/{BAG_LOT}"), 400, "digital-link-syntax")
    is_problem(client.get(f"/01/{BAG_GTIN}/10/has space"), 400, "digital-link-syntax")
    is_problem(client.get(f"/01/{BAG_GTIN}/10/"), 400, "digital-link-syntax")
    unknown = client.get(f"/01/{BAG_GTIN}/10/2026-NOPE", headers=HTML)
    assert unknown.status_code == 404 and "未找到该追溯码" in unknown.text
    assert "Accept" in unknown.headers["vary"]
    is_problem(client.get(f"/01/{BAG_GTIN}/10/2026-NOPE", headers={"Accept": LINKSET}), 404, "unknown-lot")
    r = client.get(f"{URI}?linkType=gs1:traceability", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"{BASE}/api/v1/trace/{BAG}"


@pytest.mark.parametrize("accept", [LINKSET, "application/json", HTML["Accept"]])
def test_a_named_link_type_wins_over_accept(client: TestClient, accept: str) -> None:
    """A GS1 client that names a link type gets that link, whatever its Accept header prefers."""
    r = client.get(f"{URI}?linkType=gs1:epcis", headers={"Accept": accept}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"{BASE}/api/v1/trace/{BAG}/epcis"
    page = client.get(f"{URI}?linkType=gs1:pip", headers={"Accept": accept})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_exported_epcis_names_business_steps_by_full_uri(client: TestClient) -> None:
    """The README's promise, through the API: CBV and project steps and dispositions as full URIs."""
    events = client.get(f"/api/v1/trace/{BAG}/epcis").json()["epcisBody"]["eventList"]
    steps = {e["bizStep"] for e in events if "bizStep" in e}
    assert "https://ref.gs1.org/cbv/BizStep-shipping" in steps
    assert "https://w3id.org/village-trace/voc/BizStep-drying" in steps
    assert all(s.startswith("https://") for s in steps)
    assert all(e["disposition"].startswith("https://ref.gs1.org/cbv/Disp-") for e in events if "disposition" in e)


def test_the_openapi_document_describes_the_resolver(client: TestClient) -> None:
    op = client.get("/api/v1/openapi.json").json()["paths"]["/01/{gtin}/10/{lot}"]["get"]
    assert {"text/html", LINKSET, "application/json"} <= set(op["responses"]["200"]["content"])
    assert "HEAD" in op["description"]


# --- the resolver description file ---------------------------------------------------------------------------------

# The keys and value forms of the GS1-Conformant resolver standard's description-file schema (1.1/1.2).
PRIMARY_KEYS = {"all", "01", "8006", "8013", "8010", "410", "411", "412", "413", "414", "415", "417", "8017", "8018"}
PRIMARY_KEYS |= {"255", "00", "253", "401", "402", "8003", "8004"}


def test_the_resolver_describes_itself_at_the_well_known_location(client: TestClient) -> None:
    r = client.get("/.well-known/gs1resolver", headers={"Origin": "https://scanner.example"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    d = r.json()
    assert isinstance(d["name"], str) and d["name"]
    assert d["resolverRoot"] == BASE  # TRACE_BASE_URL: where the label URIs point
    assert d["supportedPrimaryKeys"] == ["01"] and set(d["supportedPrimaryKeys"]) <= PRIMARY_KEYS
    assert d["linkTypeDefaultCanBeLinkset"] is False  # the page is the default link, the linkset on request
    prefixes = {t["prefix"]: t["namespace"] for t in d["supportedLinkType"]}
    assert all(re.fullmatch(r"[a-zA-Z_][A-Za-z0-9_-]*?:", p) for p in prefixes)
    assert prefixes["gs1:"] == "https://gs1.org/voc/"
    # every link relation the linkset uses is in a namespace the description names
    (entry,) = client.get(URI, headers={"Accept": LINKSET}).json()["linkset"]
    rels = [rel for rel in entry if rel != "anchor"]
    assert all(any(rel.startswith(ns) for ns in prefixes.values()) for rel in rels), (rels, prefixes)
    head = client.head("/.well-known/gs1resolver")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/json"
