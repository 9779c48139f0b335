"""Webhook notifications of alert events against a real local HTTP receiver: each format (generic JSON
signed with HMAC, WeCom and DingTalk robot markdown, DingTalk's signed URL), retries with exponential
backoff after 500s, a receiver that is down and then up, final failures, and the delivery log; the
endpoints file and its secrets (never in the file, the database or the log)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.models import Alert, AlertAction, WebhookDelivery
from api.services import alerts, webhooks
from core.db import get_engine, migrate
from core.services import free_port
from core.settings import Settings
from tests.webhook_receiver import Receiver

WECOM_KEY = "wecom-key-0f3a9c"
DING_TOKEN = "ding-token-7b21e4"
DING_SECRET = "SECdingtalk-signing-secret-123"
JSON_SECRET = "json-hook-secret-456"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    e = get_engine(url)
    yield e
    e.dispose()


def write_endpoints(path: Path, body: str) -> Path:
    path.write_text(body, "utf-8")
    return path


def settings_for(tmp_path: Path, hooks: Path, **extra: object) -> Settings:
    values = {
        "VILLAGE_DATA_DIR": str(tmp_path),
        "ALERT_WEBHOOKS_FILE": str(hooks),
        "ALERT_WEBHOOK_BACKOFF_S": 0.3,
        "ALERT_WEBHOOK_TIMEOUT_S": 2,
        "TRACE_BASE_URL": "https://village.example.cn",
        **extra,
    }
    return Settings(_env_file=None, **{k: str(v) for k, v in values.items()})  # type: ignore[arg-type]


def new_alert(engine: Engine, settings: Settings, village: str = "211122101201") -> int:
    """An alert opened (as the evaluator does), its event queued for the endpoints."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        a = Alert(
            kind="drought",
            device_id="soil-0001",
            village_code=village,
            place="211122101201-001",
            metric="soil_moisture",
            threshold=30,
            value=12.5,
            opened_at=now,
            last_breach_at=now,
        )
        session.add(a)
        session.flush()
        alerts.record(session, a, AlertAction.opened, "system", webhooks.load_config(settings), value=12.5)
        session.commit()
        assert a.id is not None
        return a.id


def log_rows(engine: Engine) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(WebhookDelivery).order_by(col(WebhookDelivery.id))).all())


def one_endpoint(tmp_path: Path, receiver: Receiver) -> Path:
    hooks = f'endpoints: [{{name: ops, format: json, url: "{receiver.url}/h"}}]'
    return write_endpoints(tmp_path / "hooks.yaml", hooks)


def deliver_until(deliverer: webhooks.Deliverer, done, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries never finished"
        deliverer.run_once()
        time.sleep(0.05)


def test_each_format_delivered_and_signed(
    engine: Engine, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WECOM_URL", f"{receiver.url}/cgi-bin/webhook/send?key={WECOM_KEY}")
    monkeypatch.setenv("TEST_DING_URL", f"{receiver.url}/robot/send?access_token={DING_TOKEN}")
    monkeypatch.setenv("TEST_DING_SECRET", DING_SECRET)
    monkeypatch.setenv("TEST_JSON_SECRET", JSON_SECRET)
    hooks = write_endpoints(
        tmp_path / "hooks.yaml",
        f"""
endpoints:
  - {{name: ops, format: json, url: "{receiver.url}/hooks/alerts", secret_env: TEST_JSON_SECRET}}
  - {{name: county-wecom, format: wecom, url_env: TEST_WECOM_URL, scope: "211122"}}
  - {{name: county-ding, format: dingtalk, url_env: TEST_DING_URL, secret_env: TEST_DING_SECRET}}
  - {{name: other-county, format: json, url: "{receiver.url}/other", scope: "211103"}}
""",
    )
    settings = settings_for(tmp_path, hooks)
    alert_id = new_alert(engine, settings)
    assert {d.endpoint for d in log_rows(engine)} == {"ops", "county-wecom", "county-ding"}  # not other-county
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    before = int(time.time() * 1000)
    assert deliverer.run_once() == 3
    got = {r.path: r for r in receiver.wait(3)}

    generic = got["/hooks/alerts"]
    body = generic.json()
    assert body["event"] == "opened" and body["actor"] == "system"
    assert body["alert"]["id"] == alert_id and body["alert"]["kind"] == "drought" and body["alert"]["value"] == 12.5
    assert body["url"] == f"https://village.example.cn/dashboard/alerts/{alert_id}"
    expected = hmac.new(JSON_SECRET.encode(), generic.body, hashlib.sha256).hexdigest()
    assert generic.headers["x-village-signature"] == f"sha256={expected}"

    wecom = got["/cgi-bin/webhook/send"]
    assert wecom.query == {"key": WECOM_KEY}
    w = wecom.json()
    assert w["msgtype"] == "markdown" and set(w["markdown"]) == {"content"}
    content = w["markdown"]["content"]
    assert "预警产生" in content and "干旱胁迫" in content and "soil-0001" in content and "12.5" in content
    assert f"/dashboard/alerts/{alert_id}" in content

    ding = got["/robot/send"]
    d = ding.json()
    assert d["msgtype"] == "markdown" and d["markdown"]["title"] == "预警产生 · 干旱胁迫"
    assert "211122101201-001" in d["markdown"]["text"]
    assert ding.query["access_token"] == DING_TOKEN
    ts = int(ding.query["timestamp"])
    assert before <= ts <= int(time.time() * 1000)
    sign = base64.b64encode(
        hmac.new(DING_SECRET.encode(), f"{ts}\n{DING_SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    assert ding.query["sign"] == sign  # parse_qsl undid the URL encoding

    rows = log_rows(engine)
    assert [(r.state, r.status_code, r.attempt) for r in rows] == [("delivered", 200, 1)] * 3
    assert all(r.attempted_at is not None and r.duration_ms is not None and r.error is None for r in rows)
    assert deliverer.run_once() == 0  # nothing delivered twice


def test_dingtalk_signature_matches_the_documented_example() -> None:
    """The sign of DingTalk's documented algorithm, computed independently of our helper's URL handling."""
    url = webhooks.dingtalk_signed_url("https://robot.example/send?access_token=t", "SECabc", 1700000000000)
    raw = base64.b64encode(hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()).decode()
    quoted = raw.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert url == f"https://robot.example/send?access_token=t&timestamp=1700000000000&sign={quoted}"


def test_retries_with_exponential_backoff_after_500s(engine: Engine, tmp_path: Path, receiver: Receiver) -> None:
    hooks = write_endpoints(
        tmp_path / "hooks.yaml", f'endpoints: [{{name: ops, format: json, url: "{receiver.url}/h"}}]'
    )
    settings = settings_for(tmp_path, hooks, ALERT_WEBHOOK_BACKOFF_S=0.4)
    new_alert(engine, settings)
    receiver.script = [(500, {"error": "busy"}), (503, {"error": "busy"})]
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    deliver_until(deliverer, lambda: any(r.state == "delivered" for r in log_rows(engine)))
    rows = log_rows(engine)
    assert [(r.attempt, r.state, r.status_code, r.error) for r in rows] == [
        (1, "retried", 500, "HTTP 500"),
        (2, "retried", 503, "HTTP 503"),
        (3, "delivered", 200, None),
    ]
    times = [r.at for r in receiver.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.4 - 0.05  # backoff 0.4 s, then doubled
    assert times[2] - times[1] >= 0.8 - 0.05
    assert receiver.requests[0].body == receiver.requests[2].body  # the same message each time


def test_receiver_down_then_up(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = Receiver(free_port())  # nothing listens there yet
    hooks = write_endpoints(
        tmp_path / "hooks.yaml", "endpoints: [{name: wecom, format: wecom, url_env: TEST_DOWN_URL}]"
    )
    monkeypatch.setenv("TEST_DOWN_URL", f"{down.url}/cgi-bin/webhook/send?key={WECOM_KEY}")
    settings = settings_for(tmp_path, hooks, ALERT_WEBHOOK_BACKOFF_S=0.3)
    new_alert(engine, settings)
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    caplog.set_level(logging.DEBUG)
    assert deliverer.run_once() == 1
    time.sleep(0.35)
    assert deliverer.run_once() == 1
    rows = log_rows(engine)
    assert [(r.attempt, r.state, r.status_code) for r in rows[:2]] == [(1, "retried", None), (2, "retried", None)]
    assert rows[0].error and rows[0].error.startswith("ConnectError")
    down.start()  # the receiver comes up
    try:
        deliver_until(deliverer, lambda: any(r.state == "delivered" for r in log_rows(engine)))
        assert len(down.wait(1)) == 1 and down.requests[0].query == {"key": WECOM_KEY}
    finally:
        down.stop()
    rows = log_rows(engine)
    assert rows[-1].state == "delivered" and rows[-1].attempt == len(rows) >= 3
    # the URL's key never reaches the log or the delivery log
    assert WECOM_KEY not in caplog.text and "HTTP Request: POST" in caplog.text  # httpx's own line, redacted
    assert all(WECOM_KEY not in (r.error or "") and str(down.port) not in (r.error or "") for r in rows)
    assert "webhook wecom" in caplog.text


def test_client_errors_are_final_and_robot_errcodes_retried(engine: Engine, tmp_path: Path, receiver: Receiver) -> None:
    hooks = write_endpoints(
        tmp_path / "hooks.yaml",
        f"""
endpoints:
  - {{name: gone, format: json, url: "{receiver.url}/gone"}}
  - {{name: robot, format: dingtalk, url: "{receiver.url}/robot"}}
""",
    )
    settings = settings_for(tmp_path, hooks, ALERT_WEBHOOK_MAX_ATTEMPTS=2, ALERT_WEBHOOK_BACKOFF_S=0.1)
    new_alert(engine, settings)
    receiver.script = [(404, {"error": "no such hook"}), (200, {"errcode": 310000, "errmsg": "sign not match"})]
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    assert deliverer.run_once() == 2
    by = {(r.endpoint, r.attempt): r for r in log_rows(engine)}
    assert by[("gone", 1)].state == "failed" and by[("gone", 1)].status_code == 404  # no retry on a 404
    assert by[("robot", 1)].state == "retried" and by[("robot", 1)].error == "errcode 310000: sign not match"
    receiver.script = [(200, {"errcode": 45009, "errmsg": "api freq out of limit"})]
    deliver_until(deliverer, lambda: ("robot", 2) in {(r.endpoint, r.attempt) for r in log_rows(engine)})
    deliver_until(deliverer, lambda: all(r.state != "pending" for r in log_rows(engine)))
    last = {(r.endpoint, r.attempt): r for r in log_rows(engine)}[("robot", 2)]
    assert last.state == "failed" and "45009" in (last.error or "")  # ALERT_WEBHOOK_MAX_ATTEMPTS reached
    assert len(log_rows(engine)) == 3


def test_a_dead_worker_s_claimed_rows_are_tried_again(engine: Engine, tmp_path: Path, receiver: Receiver) -> None:
    hooks = write_endpoints(
        tmp_path / "hooks.yaml", f'endpoints: [{{name: ops, format: json, url: "{receiver.url}/h"}}]'
    )
    settings = settings_for(tmp_path, hooks)
    new_alert(engine, settings)
    deliverer = webhooks.Deliverer(engine, settings, webhooks.Webhooks.from_settings(settings))
    with Session(engine) as session:  # as a worker that claimed the row and died
        row = session.exec(select(WebhookDelivery)).one()
        row.state, row.attempted_at = "sending", datetime.now(UTC) - timedelta(hours=1)
        session.add(row)
        session.commit()
    assert deliverer.run_once() == 0
    assert deliverer.rescue() == 1
    assert deliverer.run_once() == 1 and log_rows(engine)[0].state == "delivered"


def test_endpoint_file_refuses_credentials_in_urls_and_names_missing_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = write_endpoints(
        tmp_path / "bad.yaml",
        "endpoints: [{name: w, format: wecom, url: 'https://qyapi.example/cgi-bin/webhook/send?key=abc'}]",
    )
    with pytest.raises(webhooks.WebhookConfigError, match="carries a credential"):
        webhooks.load_config(settings_for(tmp_path, hooks))
    hooks = write_endpoints(tmp_path / "bad2.yaml", "endpoints: [{name: w, format: teams, url: 'https://x.example/'}]")
    with pytest.raises(webhooks.WebhookConfigError, match="format"):
        webhooks.load_config(settings_for(tmp_path, hooks))
    hooks = write_endpoints(tmp_path / "ok.yaml", "endpoints: [{name: d, format: dingtalk, url_env: NOT_SET_HOOK_URL}]")
    monkeypatch.delenv("NOT_SET_HOOK_URL", raising=False)
    assert webhooks.load_config(settings_for(tmp_path, hooks))[0].name == "d"  # the API needs no secret
    with pytest.raises(webhooks.WebhookConfigError, match="NOT_SET_HOOK_URL is not set"):
        webhooks.Webhooks.from_settings(settings_for(tmp_path, hooks))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "NOT_SET_HOOK_URL").write_text("https://oapi.example/robot/send?access_token=zzz\n")
    monkeypatch.setenv("SECRETS_DIR", str(secrets))
    hooks_ok = webhooks.Webhooks.from_settings(settings_for(tmp_path, hooks))
    assert "zzz" not in repr(hooks_ok.endpoints) and "zzz" not in str(hooks_ok.endpoints["d"].url)


def test_the_example_endpoints_file_is_valid() -> None:
    example = Path(__file__).parent.parent / "deploy" / "alert-webhooks.example.yaml"
    settings = Settings(_env_file=None, ALERT_WEBHOOKS_FILE=str(example))  # type: ignore[call-arg]
    configs = webhooks.load_config(settings)
    assert [(c.name, c.format) for c in configs] == [
        ("county-wecom", "wecom"),
        ("county-dingtalk", "dingtalk"),
        ("ops", "json"),
    ]
    assert configs[1].covers("211122101201", AlertAction.opened)
    assert not configs[1].covers("211122101201", AlertAction.acknowledged)  # not among its events
    assert not configs[0].covers("211103001001", AlertAction.opened)  # another county


def test_migration_0011_matches_the_models(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    ours = ("alert", "alert_event", "webhook_delivery")
    assert [d for d in diffs if any(f"'{t}'" in str(d) or f"table={t}" in str(d) for t in ours)] == []
