"""In headless Chromium against `village serve`: a village operator signs in on the dashboard, follows
the link to the alerts, writes a note and acknowledges 北郑家村's drought alert (the page's script posts
with the session cookie and the page's CSRF token), under the Content-Security-Policy; the screenshot
goes to tests/artifacts/alerts.png."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.services import alerts
from core.catalogue import get_catalogue
from core.db import get_engine
from core.influx import InfluxV1
from core.services import die_with_parent, free_port, wait_for_port
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.payload import Reading
from ingest.pipeline import to_line
from tests.api_fixtures import PASSWORD, Template, world_env
from tests.test_browser import ARTIFACTS, CSP_WATCH, DevTools, csp_complaints, wait_for
from tests.test_browser import devtools as devtools


@pytest.fixture(scope="module")
def alert_server(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`village serve` on a copy of the demo registry where soil-0001's dry reading opened an alert."""
    folder = tmp_path_factory.mktemp("alerts-browser")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = world_env(api_template, folder, TRACE_BASE_URL=base, INFLUX_DB=f"alerts_{secrets.token_hex(4)}")
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
    influx = InfluxV1(api_template.influx_url, env["INFLUX_DB"])
    influx.ensure_database()
    engine = get_engine(env["DATABASE_URL"])
    info = DeviceDirectory(engine).get("soil-0001")
    assert info is not None and info.tags
    influx.write(
        to_line(Reading("soil-0001", "soil", int(time.time() * 1000) - 60_000, {"soil_moisture": 11.0}), info.tags)
    )
    report = alerts.evaluate(engine, influx, get_catalogue(None), settings)
    assert len(report.opened) == 1
    engine.dispose()
    influx.close()
    log = open(folder / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, **env, "LOG_LEVEL": "WARNING"},
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        yield base, report.opened[0]
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_village_operator_acknowledges_an_alert(
    alert_server: tuple[str, int], devtools: DevTools, tmp_path: Path
) -> None:
    server, alert_id = alert_server
    devtools.call("Log.enable", session=True)
    devtools.call("Runtime.enable", session=True)
    devtools.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=CSP_WATCH)
    devtools.navigate(f"{server}/dashboard/login")
    devtools.js(
        "document.querySelector('#username').value = 'beizhengjia';"
        f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
        "document.querySelector('#login-button').click();"
    )
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard"
    devtools.js("document.querySelector('#alerts-link').click()")
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard/alerts"
    row = f"#alert-{alert_id}"
    assert devtools.js(f"document.querySelector('{row}').dataset.state") == "open"
    assert "干旱胁迫" in devtools.js(f"document.querySelector('{row}').innerText")
    assert devtools.js(f"document.querySelector('{row} .state').textContent") == "待处理"
    devtools.js(f"document.querySelector('{row} input.note').value = '已安排灌溉'")
    devtools.js(f"document.querySelector('{row} button.ack').click()")
    devtools.wait_load()  # the script reloads the page after the API's answer
    wait_for(
        devtools, f"document.querySelector('{row}') && document.querySelector('{row}').dataset.state === 'acknowledged'"
    )
    assert devtools.js(f"document.querySelector('{row} .state').textContent") == "已确认"
    assert "beizhengjia" in devtools.js(f"document.querySelector('{row}').innerText")
    assert devtools.js(f"document.querySelector('{row} button.ack')") is None  # acknowledged: only resolve is left
    assert csp_complaints(devtools) == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "alerts.png"
    devtools.screenshot(shot)
    assert shot.stat().st_size > 10_000
    # what the server recorded: who, and the note, in the alert's history
    devtools.navigate(f"{server}/dashboard/alerts/{alert_id}?lang=en")
    text = devtools.js("document.body.innerText")
    assert "Alert acknowledged" in text and "已安排灌溉" in text and "beizhengjia" in text
    # resolving without a note is refused in the page, before any request
    devtools.js(f"document.querySelector('{row} button.resolve').click()")
    wait_for(devtools, "!document.querySelector('#alert-error').hidden")
    assert "note is required" in devtools.js("document.querySelector('#alert-error').textContent")
    assert httpx.get(f"{server}/api/v1/alerts/{alert_id}").status_code == 401  # the API itself needs credentials
