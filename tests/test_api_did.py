"""`GET /api/v1/models/did` through the real API (tests/api_fixtures.py): the registry's device roll-out as the
treatment, the county statistics as outcome; the same numbers as the analytics function; a 422 problem saying
what the registry has when it cannot give a panel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from analytics import statistics_io
from analytics.did_data import did_from_registry
from core.models import Device, DeviceStatus, Plot
from core.registry_io import import_data
from tests.api_fixtures import Template, is_problem, make_client, token

# demo-statistics counties put into the registry, with the time their first monitoring device became active
ROLLOUT = {
    "211104": datetime(2018, 6, 1, tzinfo=UTC),  # first full year 2019
    "210726": datetime(2018, 9, 15, tzinfo=UTC),  # 2019
    "210781": datetime(2019, 12, 31, 16, 0, tzinfo=UTC),  # 1 January 2020 00:00 in Asia/Shanghai: 2020 itself
    "210727": datetime(2020, 3, 10, tzinfo=UTC),  # 2021
    "210782": None,  # no device: never treated
    "210881": None,
}


def _registry(session: Session) -> None:
    data: dict[str, list[dict]] = {"counties": [], "townships": [], "villages": [], "farms": [], "plots": []}
    for code in ROLLOUT:
        data["counties"].append({"code": code, "name_zh": f"县{code}"})
        data["townships"].append({"code": f"{code}001", "county_code": code, "name_zh": "镇"})
        for v in ("001", "002"):
            village = f"{code}001{v}"
            data["villages"].append({"code": village, "township_code": f"{code}001", "name_zh": f"村{v}"})
            data["farms"].append({"code": f"F{village}", "name": "农场", "village_code": village})
            data["plots"].append(
                {
                    "plot_no": f"{village}-001",
                    "farm_code": f"F{village}",
                    "village_code": village,
                    "area_mu": 10,
                    "crop": "rice",
                }
            )
    import_data(session, data)
    for code, since in ROLLOUT.items():
        if since is None:
            continue
        plot = session.exec(select(Plot).where(Plot.plot_no == f"{code}001001-001")).one()
        session.add(
            Device(
                id=f"did-soil-{code}", kind="soil", plot_id=plot.id, status=DeviceStatus.active, provisioned_at=since
            )
        )
        # a second village's device a year later does not move the county's treatment year
        later = session.exec(select(Plot).where(Plot.plot_no == f"{code}001002-001")).one()
        session.add(
            Device(
                id=f"did-soil2-{code}",
                kind="soil",
                plot_id=later.id,
                status=DeviceStatus.active,
                provisioned_at=since.replace(year=since.year + 1),
            )
        )


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("did")) as c:
        with Session(c.app.state.engine) as session:  # type: ignore[attr-defined]
            statistics_io.load_demo(session)
            session.commit()
        yield c


def test_did_needs_a_login(client: TestClient) -> None:
    is_problem(client.get("/api/v1/models/did"), 401)


def test_demo_registry_alone_cannot_give_a_panel_and_says_so(client: TestClient) -> None:
    # the demo county's devices were provisioned now (2026): first full year after the last statistics (2024)
    p = is_problem(client.get("/api/v1/models/did", headers=token(client, "analyst")), 422, "did-panel-too-short")
    assert "211122" in p["detail"] and "2015-2024" in p["detail"] and "Nothing was estimated" in p["detail"]


def test_did_from_the_registry_equals_the_analytics_function(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        _registry(session)
        session.commit()
    auth = token(client, "county")
    params = {"outcome": "dvi", "reps": 99, "seed": 7}
    r = client.get("/api/v1/models/did", params=params, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    with Session(engine) as session:
        direct = did_from_registry(session, outcome="dvi", reps=99, seed=7).to_dict()
    direct["source"].pop("villages")
    assert {k: v for k, v in body.items() if k != "summary"} == direct
    assert body["summary"] and "Callaway" in body["summary"]
    first = body["source"]["county_first_treated"]
    assert {c: first[c] for c in ROLLOUT} == {
        "211104": 2019,
        "210726": 2019,
        "210781": 2020,
        "210727": 2021,
        "210782": 0,
        "210881": 0,
    }
    assert first["211122"] == 2027 and "villages" not in body["source"]
    assert body["panel"]["cohorts"] == {"2019": 2, "2020": 1, "2021": 1} and body["panel"]["never_treated"] == 2
    assert body["bootstrap"]["seed"] == 7 and body["bootstrap"]["weights"] == "mammen"
    assert {"g", "t", "att", "se"} <= set(body["att_gt"][0]) and {"att", "se"} <= set(body["overall"])
    assert {"e", "att", "se"} <= set(body["dynamic"][0]) and {"coef", "se"} <= set(body["twfe"])
    again = client.get("/api/v1/models/did", params=params, headers=auth).json()
    assert again["overall"] == body["overall"]  # same seed, same errors


def test_did_demo_sources_and_bad_parameters(client: TestClient) -> None:
    auth = token(client, "analyst")
    r = client.get(
        "/api/v1/models/did", params={"source": "demo", "controls": "irrigated_share", "reps": 49}, headers=auth
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"]["source"] == "demo" and body["estimator"] == "dr" and body["outcome"] == "rice_yield_kg_mu"
    assert body["twfe"]["weights"]["negative_cells"] > 0
    r = client.get(
        "/api/v1/models/did",
        params={"source": "demo-counties", "control_group": "notyet", "reps": 19, "outcome": "dvi"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["source"]["panel"] == "counties" and r.json()["control_group"] == "notyet"
    p = is_problem(
        client.get("/api/v1/models/did", params={"source": "demo-counties"}, headers=auth), 422, "did-panel-too-short"
    )
    assert "not-yet-treated" in p["detail"]
    is_problem(client.get("/api/v1/models/did", params={"control_group": "later"}, headers=auth), 422)
    p = is_problem(client.get("/api/v1/models/did", params={"outcome": "no_such_var"}, headers=auth), 422)
    assert "no_such_var" in p["detail"]
