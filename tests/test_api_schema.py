"""Property-based test of the OpenAPI schema (schemathesis): requests generated from the schema, valid and
not, for every operation, as a county administrator, against a real registry copy with the demo data:
no answer is a server error, and every answer conforms to the schema (status codes, content types,
response bodies). Error answers are RFC 9457 problem details."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from api.app import create_app
from core.settings import Settings
from tests.api_fixtures import Template, token, world_settings

EXAMPLES = int(os.environ.get("API_SCHEMA_EXAMPLES", "8"))  # per operation; raise it for a deeper run
# the same examples every run (a test run that passes once passes again); API_SCHEMA_RANDOM=1 draws new
# ones each run, as a search for new failures (three found that way were fixed and have their own tests)
RANDOM = os.environ.get("API_SCHEMA_RANDOM") == "1"


class _App:
    """The ASGI app the generated requests go to: set per module by the `target` fixture, so that the schema
    can be read (from the routes alone) when the tests are collected, before any database exists."""

    app: FastAPI | None = None

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        assert self.app is not None, "the target fixture sets the app"
        await self.app(scope, receive, send)


TARGET = _App()
_offline = Settings(_env_file=None, DATABASE_URL="sqlite://", API_JWT_SECRET="schema-only-" + "0" * 32)  # type: ignore[call-arg]
schema = schemathesis.openapi.from_dict(create_app(_offline).openapi())
schema.app = TARGET


@pytest.fixture(scope="module")
def admin_headers(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A registry copy with the demo data (the chain left out: generated lookups never wait on a
    verification), and a county administrator's token."""
    folder = tmp_path_factory.mktemp("schema")
    TARGET.app = create_app(world_settings(api_template, folder, CHAIN_RPC_URL="http://127.0.0.1:9"))
    yield token(TestClient(TARGET.app), "county")  # no lifespan: nothing is verified in the background
    TARGET.app = None


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_no_server_error_and_answers_match_the_schema(case, admin_headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    response = case.call(headers={**admin_headers, **(case.headers or {})})
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    # A schema-valid request may still be refused for what a schema cannot say (a GTIN check digit, a trace
    # code's check character, a reference to a farm that does not exist): 400 or 422 with the reason, as
    # documented. Every other check runs: status codes, content types, headers and bodies as documented.
    # The pages (outside /api/) answer a request without their session cookie with the sign-in page
    # before reading its query, as a browser expects, so a malformed query there is not refused.
    excluded = [positive_data_acceptance]
    if not case.path.startswith("/api/"):
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)
    if response.status_code >= 400 and case.path.startswith("/api/"):
        assert response.headers["content-type"][0].startswith("application/problem+json")


def test_row_numbers_beyond_a_database_integer_are_refused(admin_headers: dict[str, str]) -> None:
    """A row number in a path larger than a database integer is a 422 problem, not an overflow in the
    driver (a 500: schemathesis found it for /api/v1/alerts/{alert_id})."""
    client = TestClient(TARGET.app)  # type: ignore[arg-type]
    too_big = 2**63
    for kind in ("alerts", "admin/inspections", "admin/events"):
        path = f"/api/v1/{kind}/{too_big}"
        r = client.get(path, headers=admin_headers)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), (path, r.text)
    r = client.post(f"/api/v1/alerts/{too_big}/acknowledge", json={}, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert client.get(f"/api/v1/alerts/{too_big - 1}", headers=admin_headers).status_code == 404  # the largest: absent


def test_a_moment_given_as_a_number_is_refused(admin_headers: dict[str, str]) -> None:
    """The schema says RFC 3339 text: 0 is not read as 1970-01-01 (schemathesis found it accepted)."""
    client = TestClient(TARGET.app)  # type: ignore[arg-type]
    body = {"reason": "did_not_occur", "time": 0}
    r = client.post("/api/v1/admin/events/1/corrections", json=body, headers=admin_headers)
    assert r.status_code == 422 and "RFC 3339" in r.text, r.text
