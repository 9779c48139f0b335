"""Composite indices and panel models through the API: the same numbers as the analytics functions,
authentication required, bad variables a 422 problem."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from analytics import statistics_io
from analytics.dataset import build_variables
from analytics.panel import fixed_effects_table
from tests.api_fixtures import Template, is_problem, make_client, token


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("models")) as c:
        with Session(c.app.state.engine) as session:  # type: ignore[attr-defined]
            statistics_io.load_demo(session)
            session.commit()
        yield c


def test_models_need_a_login(client: TestClient) -> None:
    is_problem(client.get("/api/v1/models/fe"), 401)


def test_fixed_effects_equal_the_analytics_function(client: TestClient) -> None:
    auth = token(client, "analyst")
    r = client.get("/api/v1/models/fe", params={"y": "rri", "x": "dvi", "controls": ""}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        wide = statistics_io.to_wide(statistics_io.load_statistics(session))
    direct = fixed_effects_table(build_variables(wide, ["rri", "dvi"]), "rri", ["dvi"], []).to_dict()
    assert body["summary"] and "dvi" in body["summary"]
    assert {k: v for k, v in body.items() if k != "summary"} == direct


def test_entropy_threshold_and_mediation_answer(client: TestClient) -> None:
    auth = token(client, "county")
    r = client.get("/api/v1/models/entropy", params={"index": "dvi", "year": 2024}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == "dvi" and len(body["scores"]) == 14  # the demo panel's counties in 2024
    assert body["weights"] and all(w["indicator"] for w in body["weights"])
    r = client.get("/api/v1/models/threshold", params={"reps": 20, "grid": 30, "controls": ""}, headers=auth)
    assert r.status_code == 200, r.text
    assert "threshold" in r.text.lower()
    r = client.get("/api/v1/models/mediation", params={"reps": 20, "controls": ""}, headers=auth)
    assert r.status_code == 200 and "sobel" in r.text.lower(), r.text


def test_unknown_variable_is_a_422_problem(client: TestClient) -> None:
    auth = token(client, "analyst")
    p = is_problem(client.get("/api/v1/models/fe", params={"y": "no_such_var"}, headers=auth), 422)
    assert "no_such_var" in p["detail"]


def test_dea_equals_the_analytics_function(client: TestClient) -> None:
    import inspect

    from analytics import dea
    from analytics.statistics_io import county_names
    from api.routers import models

    auth = token(client, "analyst")
    r = client.get("/api/v1/models/dea", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        wide = statistics_io.to_wide(statistics_io.load_statistics(session))
        direct = dea.county_dea(wide, names=county_names(session)).to_dict()
    assert {k: v for k, v in body.items() if k != "summary"} == direct
    assert len(body["stage1"]) == 14 and body["specification"]["year"] == 2024
    row = body["stage1"][0]
    assert {"unit", "crs", "vrs", "scale", "rts", "slacks"} <= set(row)
    assert set(row["slacks"]) == set(dea.DEFAULT_INPUTS) and set(body["stage2"]) == set(dea.DEFAULT_INPUTS)
    assert {"beta", "sigma2", "gamma", "loglik", "lr"} <= set(body["stage2"]["employment_primary"])
    assert len(body["stage3"]) == 14 and "Stage 1 and stage 3 side by side" in body["summary"]
    # the endpoint's defaults are the module's default specification
    params = inspect.signature(models.dea).parameters
    assert params["inputs"].default == ",".join(dea.DEFAULT_INPUTS)
    assert params["outputs"].default == ",".join(dea.DEFAULT_OUTPUTS)
    assert params["env"].default == ",".join(dea.DEFAULT_ENV)


def test_dea_options_and_bad_input(client: TestClient) -> None:
    auth = token(client, "county")
    r = client.get("/api/v1/models/dea", params={"year": 2020, "env": "", "rts": "crs"}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rts"] == "crs" and body["stage2"] == {} and body["stage3"] == []
    p = is_problem(client.get("/api/v1/models/dea", params={"inputs": "no_such_var"}, headers=auth), 422)
    assert "no_such_var" in p["detail"]
    is_problem(client.get("/api/v1/models/dea", params={"orientation": "output"}, headers=auth), 422)
    is_problem(client.get("/api/v1/models/dea", params={"year": 2001}, headers=auth), 422)
    is_problem(client.get("/api/v1/models/dea"), 401)


def test_panel_models_take_their_declared_parameters(client: TestClient) -> None:
    """The query parameters are analytics/specs.py's declarations: --se and the s² convention reach the model."""
    auth = token(client, "analyst")
    r = client.get("/api/v1/models/fe", params={"controls": "", "se": "stata"}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert all(m["se"] == "stata" and m["time_effects"] for m in body["regressions"])
    assert "Std. errors stata:" in body["summary"] and "fe vce(cluster id)" in body["summary"]
    assert "R² within (xtreg)" in body["summary"]
    r = client.get(
        "/api/v1/models/threshold", params={"controls": "", "reps": 0, "double": False, "sigma2": "dof"}, headers=auth
    )
    assert r.status_code == 200, r.text
    settings = r.json()["settings"]
    assert settings["sigma2"] == "dof" and settings["time_effects"] and settings["grid_max"] is None
    p = is_problem(client.get("/api/v1/models/fe", params={"se": "sas"}, headers=auth), 422)
    assert "se" in json.dumps(p)
    r = client.get("/api/v1/models/hausman", params={"controls": ""}, headers=auth)
    assert r.status_code == 200 and r.json()["model"] == "hausman", r.text
