"""Authentication: OAuth2 password flow with JWT, API keys, the dashboard cookie (GET only), 401 and 403
as problem details, disabled accounts, password hashing, and the `village users` commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from typer.testing import CliRunner

from api.models import ApiKey, User
from api.security import create_token, hash_password, verify_password
from cli.main import app as cli
from core.db import get_engine
from core.settings import get_settings
from tests.api_fixtures import PASSWORD, Template, is_problem, make_client, token, world_settings

PROTECTED = [
    "/api/v1/auth/me",
    "/api/v1/auth/keys",
    "/api/v1/admin/counties",
    "/api/v1/admin/farms",
    "/api/v1/admin/devices",
    "/api/v1/admin/lots",
    "/api/v1/admin/events",
    "/api/v1/admin/inspections",
    "/api/v1/dashboard",
    "/api/v1/dashboard/devices",
    "/api/v1/dashboard/traceability",
    "/api/v1/dashboard/anchoring",
    "/api/v1/dashboard/export.csv",
    "/api/v1/timeseries?plot=211122101201-001&start=2026-07-01T00:00:00%2B08:00&end=2026-07-02T00:00:00%2B08:00",
]


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("auth")) as c:
        yield c


def test_password_hashes_are_salted_scrypt() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", a) and not verify_password("correct horsf", a)
    assert not verify_password("x", "not-a-hash") and not verify_password("x", "pbkdf2$1$2$3$4$5")


def test_token_flow(client: TestClient) -> None:
    r = client.post("/api/v1/auth/token", data={"username": "shaling", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["role"] == "township_officer" and body["scope"] == "211122101"
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    assert me == {"username": "shaling", "role": "township_officer", "scope": "211122101", "via": "token"}


@pytest.mark.parametrize("username,password", [("shaling", "wrong-password"), ("nobody", PASSWORD)])
def test_bad_credentials_are_401_without_saying_which(client: TestClient, username: str, password: str) -> None:
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    body = is_problem(r, 401, "bad-credentials")
    assert body["detail"] == "wrong user name or password" and r.headers["www-authenticate"].startswith("Bearer")
    assert PASSWORD not in r.text


def test_token_request_without_fields_is_a_422_problem(client: TestClient) -> None:
    body = is_problem(client.post("/api/v1/auth/token", data={"username": "x"}), 422, "validation")
    assert any(e["loc"] == "body.password" for e in body["errors"])


@pytest.mark.parametrize("path", PROTECTED)
def test_no_credentials_is_401(client: TestClient, path: str) -> None:
    r = client.get(path)
    body = is_problem(r, 401, "unauthenticated")
    assert "sign in" in body["detail"] and r.headers["www-authenticate"].startswith("Bearer")


def test_invalid_expired_and_foreign_tokens_are_401(client: TestClient) -> None:
    secret = client.app.state.jwt_secret  # type: ignore[attr-defined]
    cases = {
        "garbage": "not.a.token",
        "expired": create_token(secret, "county", "county_admin", "211122", ttl_s=-10),
        "foreign": create_token("another-secret-of-someone-else-0123456789", "county", "county_admin", "211122", 60),
    }
    for name, value in cases.items():
        body = is_problem(client.get("/api/v1/admin/farms", headers={"Authorization": f"Bearer {value}"}), 401)
        assert ("expired" in body["detail"]) == (name == "expired"), (name, body)


def test_token_of_an_unknown_user_is_401(client: TestClient) -> None:
    ghost = create_token(client.app.state.jwt_secret, "ghost", "county_admin", "211122", 60)  # type: ignore[attr-defined]
    is_problem(client.get("/api/v1/admin/farms", headers={"Authorization": f"Bearer {ghost}"}), 401)


def test_api_keys(client: TestClient) -> None:
    h = token(client, "beizhengjia")
    made = client.post("/api/v1/auth/keys", headers=h, json={"name": "weather importer"})
    assert made.status_code == 201
    key, prefix = made.json()["key"], made.json()["prefix"]
    assert key.startswith(f"vk_{prefix}.")
    listed = client.get("/api/v1/auth/keys", headers=h).json()
    assert [k["prefix"] for k in listed] == [prefix] and key not in str(listed)
    kh = {"X-API-Key": key}
    assert client.get("/api/v1/auth/me", headers=kh).json()["via"] == "key"
    farms = client.get("/api/v1/admin/farms", headers=kh).json()
    assert [f["code"] for f in farms["items"]] == ["PS-F001"]  # the owner's area
    is_problem(client.post("/api/v1/auth/keys", headers=kh, json={"name": "more"}), 403, "key-cannot-make-keys")
    is_problem(client.get("/api/v1/auth/me", headers={"X-API-Key": key[:-2] + "xx"}), 401)
    is_problem(client.get("/api/v1/auth/me", headers={"X-API-Key": "nonsense"}), 401)
    assert client.delete(f"/api/v1/auth/keys/{prefix}", headers=h).status_code == 204
    is_problem(client.get("/api/v1/auth/me", headers=kh), 401)
    is_problem(client.delete("/api/v1/auth/keys/000000", headers=h), 404, "unknown-key")
    with Session(get_engine(client.app.state.settings.resolved_database_url())) as s:  # type: ignore[attr-defined]
        row = s.exec(select(ApiKey).where(ApiKey.prefix == prefix)).one()
        assert key not in row.key_hash and len(row.key_hash) == 64


def test_cookie_authorises_reading_only(client: TestClient) -> None:
    r = client.post("/dashboard/login", data={"username": "county", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.cookies.get("village_session")
    assert (
        cookie
        and "httponly" in r.headers["set-cookie"].lower()
        and "samesite=strict" in r.headers["set-cookie"].lower()
    )
    jar = {"village_session": cookie}
    me = client.get("/api/v1/auth/me", cookies=jar)
    assert me.status_code == 200 and me.json()["via"] == "cookie"
    r = client.post(
        "/api/v1/admin/farms", cookies=jar, json={"code": "CSRF-1", "name": "x", "village_code": "211122101201"}
    )
    body = is_problem(r, 401, "unauthenticated")
    assert "only authorises reading" in body["detail"]
    client.cookies.clear()


def test_disabled_user_is_refused_at_once(api_template: Template, tmp_path: Path) -> None:
    settings = world_settings(api_template, tmp_path / "disable")
    from api.app import create_app

    with TestClient(create_app(settings)) as c:
        h = token(c, "analyst")
        assert c.get("/api/v1/auth/me", headers=h).status_code == 200
        with Session(get_engine(settings.resolved_database_url())) as s:
            user = s.exec(select(User).where(User.username == "analyst")).one()
            user.active = False
            s.add(user)
            s.commit()
        is_problem(c.get("/api/v1/auth/me", headers=h), 401)
        is_problem(c.post("/api/v1/auth/token", data={"username": "analyst", "password": PASSWORD}), 401)


@pytest.fixture
def cli_env(api_template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings = world_settings(api_template, tmp_path / "cli")
    monkeypatch.setenv("DATABASE_URL", settings.resolved_database_url())
    monkeypatch.setenv("VILLAGE_DATA_DIR", str(tmp_path / "cli"))
    get_settings.cache_clear()
    yield settings.resolved_database_url()
    get_settings.cache_clear()


def add(runner: CliRunner, name: str, role: str, scope: str, password: str = "s3cret-password"):  # type: ignore[no-untyped-def]
    args = ["users", "add", name, "--role", role, "--scope", scope, "--password-stdin"]
    return runner.invoke(cli, args, input=f"{password}\n")


def test_users_cli(cli_env: str) -> None:
    runner = CliRunner()
    r = add(runner, "dahuang", "village_operator", "211122101203")
    assert r.exit_code == 0, r.output
    assert "dahuang: village_operator of 211122101203" in r.output and "s3cret" not in r.output
    with Session(get_engine(cli_env)) as s:
        user = s.exec(select(User).where(User.username == "dahuang")).one()
        assert verify_password("s3cret-password", user.password_hash)
    again = add(runner, "dahuang", "analyst", "211122")
    assert again.exit_code == 2 and "exists" in again.output
    bad_scope = add(runner, "x1", "township_officer", "211122")
    assert bad_scope.exit_code == 2 and "9-digit" in bad_scope.output
    unknown = add(runner, "x2", "township_officer", "211122999")
    assert unknown.exit_code == 2 and "no township 211122999" in unknown.output
    short = add(runner, "x3", "analyst", "211122", "short")
    assert short.exit_code == 2 and "at least 8" in short.output
    role = add(runner, "x4", "mayor", "211122")
    assert role.exit_code == 2 and "unknown role" in role.output
    listed = runner.invoke(cli, ["users", "list"])
    assert "dahuang" in listed.output and "village_operator" in listed.output
    key = runner.invoke(cli, ["users", "key", "dahuang", "--name", "station"])
    assert key.exit_code == 0 and key.stdout.strip().startswith("vk_")
    assert runner.invoke(cli, ["users", "disable", "dahuang"]).exit_code == 0
    with Session(get_engine(cli_env)) as s:
        assert not s.exec(select(User).where(User.username == "dahuang")).one().active
