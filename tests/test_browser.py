"""End-to-end in a real browser: headless Chromium (Debian's `chromium`) against `village serve` (uvicorn) on a
free port, with a registry copy of the anchored demo world.

- A consumer scans the QR code of a demo bag: the browser opens the URI the QR code carries
  (ledger.codes.lot_uri of bag M35C-W3XR-D6R, nothing decoded) on a phone-sized window and sees the
  product, the origin plots, the growth charts, the inspections and a "verified" badge with its block.
- A county official signs in on the dashboard's form (typed and submitted in the page through the
  DevTools protocol) and sees device health, alerts, coverage and the anchoring windows.
Screenshots go to tests/artifacts/ (not committed).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select
from websockets.sync.client import connect

from core.db import get_engine
from core.services import die_with_parent, free_port, wait_for_port
from ledger.codes import lot_uri
from ledger.models import Lot
from tests.api_fixtures import BAG, PASSWORD, Template, world_env

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--accept-lang=zh-CN,zh",  # a phone set to Chinese
]


def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install chromium (or run `make deps`)")
    return path


@pytest.fixture(scope="module")
def server(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`village serve` on a free port; its trace base URL is its own address, as in a deployment."""
    folder = tmp_path_factory.mktemp("browser")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **world_env(api_template, folder, TRACE_BASE_URL=base, API_INDICATORS_WARM="true"),
        "LOG_LEVEL": "WARNING",
    }
    log = open(folder / "api.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        # the first verification of the bag (what the page's badge shows) before the browser comes
        assert httpx.get(f"{base}/api/v1/trace/{BAG}/verify", timeout=120).json()["status"] == "verified"
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def label_uri(api_template: Template, base: str) -> str:
    with Session(get_engine(f"sqlite:///{api_template.db}")) as session:
        lot = session.exec(select(Lot).where(Lot.code == BAG)).one()
        return lot_uri(base, lot)


def run_chromium(tmp_path: Path, *args: str) -> str:
    out = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_trace_page_from_the_qr_code_uri(server: str, api_template: Template, tmp_path: Path) -> None:
    uri = label_uri(api_template, server)
    assert uri == f"{server}/01/06947512300010/10/2026-M01-A"
    dom = run_chromium(tmp_path, "--window-size=390,844", "--virtual-time-budget=3000", "--dump-dom", uri)
    for text in ("盘锦大米 5 kg", "2026-M01-A", "211122101201-001", "211122101203-001", "北郑家村", "已验证",
                 "检测报告", "播种育秧", "烘干", "碾米", "稻田水位"):  # fmt: skip
        assert text in dom, text
    assert 'data-status="verified"' in dom and 'id="block">#' in dom
    assert "<svg" in dom and "13800000101" not in dom
    ARTIFACTS.mkdir(exist_ok=True)
    for name, url in (("trace-page-zh.png", uri), ("trace-page-en.png", uri + "?lang=en")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        run_chromium(tmp_path, "--window-size=390,844", "--virtual-time-budget=3000", f"--screenshot={shot}", url)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    en = run_chromium(tmp_path, "--window-size=390,844", "--dump-dom", uri + "?lang=en")
    assert "Panjin rice 5 kg bag" in en and "Verified" in en and "Origin" in en


def test_unknown_code_page(server: str, tmp_path: Path) -> None:
    dom = run_chromium(tmp_path, "--window-size=390,844", "--dump-dom", f"{server}/t/M35C-W3XR-D6X")
    assert "追溯码格式有误" in dom and "expected 'R'" in dom


class DevTools:
    """Just enough of the Chrome DevTools protocol: one page, commands, waiting for its load event."""

    def __init__(self, ws_url: str) -> None:
        self.ws = connect(ws_url, max_size=50_000_000)
        self.ids = count(1)
        self.events: list[dict[str, Any]] = []  # every event seen while waiting (console, log, ...)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_load(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv(timeout=deadline - time.monotonic()))
            if event.get("method") == "Page.loadEventFired":
                return
            self.events.append(event)
        raise AssertionError("the page never finished loading")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_load()

    def js(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get(
            "value"
        )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def devtools(tmp_path: Path) -> Iterator[DevTools]:
    proc = subprocess.Popen(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
         "--window-size=1280,1000", "about:blank"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        ws_url = None
        while ws_url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "DevTools listening on " in line:
                ws_url = line.split("DevTools listening on ", 1)[1].strip()
        assert ws_url, "chromium printed no DevTools address"
        tools = DevTools(ws_url)
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dashboard_after_signing_in(server: str, devtools: DevTools) -> None:
    devtools.navigate(f"{server}/dashboard")
    assert devtools.js("location.pathname") == "/dashboard/login"  # not signed in: the form
    devtools.js(
        "document.querySelector('#username').value = 'county';"
        f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
        "document.querySelector('#login-button').click();"
    )
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard"
    text = devtools.js("document.body.innerText")
    for expected in ("县域数字乡村看板", "county", "县级管理员", "设备运行", "当前预警", "干旱胁迫", "牲畜发热",
                     "追溯覆盖", "已入块待确认", "最新锚定窗口", "导出 Excel"):  # fmt: skip
        assert expected in text, expected
    assert devtools.js("document.querySelector('#kpi-online').textContent") == "3"
    assert devtools.js("document.cookie") == ""  # the session cookie is HttpOnly
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    devtools.screenshot(shot)
    assert shot.stat().st_size > 20_000
    # a wrong password stays on the form with the reason
    devtools.navigate(f"{server}/dashboard/login?lang=en")
    devtools.js(
        "document.querySelector('#username').value = 'county';"
        "document.querySelector('#password').value = 'not-the-password';"
        "document.querySelector('#login-button').click();"
    )
    devtools.wait_load()
    assert "Wrong user name or password" in devtools.js("document.body.innerText")


# Records every Content-Security-Policy violation of a page (runs before the page's own scripts; a script
# added through DevTools is not itself subject to the page's policy).
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI + " " + (e.sourceFile || "") + ":" + e.lineNumber);
});
"""


def csp_complaints(devtools: DevTools) -> list[str]:
    """Violations the page saw, and console or log messages about the policy."""
    seen = list(devtools.js("window.__csp") or [])
    for event in devtools.events:
        params = event.get("params", {})
        text = json.dumps(params.get("entry") or params.get("args") or "")
        if "Content Security Policy" in text or "Refused to" in text:
            seen.append(text)
    return seen


def wait_for(devtools: DevTools, expression: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not devtools.js(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.2)


def test_pages_work_under_the_content_security_policy(server: str, api_template: Template, devtools: DevTools) -> None:
    """The trace page, the dashboard (signing in included) and Swagger UI render and work with the policy
    the server sends (no inline script or style, assets from this origin): no violation reported."""
    head = httpx.get(f"{server}/t/{BAG}")
    assert "script-src 'self'" in head.headers["content-security-policy"]
    assert "unsafe-inline" not in head.headers["content-security-policy"]
    devtools.call("Log.enable", session=True)
    devtools.call("Runtime.enable", session=True)
    devtools.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=CSP_WATCH)
    devtools.navigate(label_uri(api_template, server))
    assert 'data-status="verified"' in devtools.js("document.body.innerHTML")
    assert devtools.js("getComputedStyle(document.body).fontFamily")  # the stylesheet applies
    assert csp_complaints(devtools) == []
    devtools.navigate(f"{server}/dashboard/login")
    devtools.js(
        "document.querySelector('#username').value = 'analyst';"
        f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
        "document.querySelector('#login-button').click();"
    )
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard"
    assert devtools.js("getComputedStyle(document.querySelector('form.logout')).cssFloat") == "right"
    assert devtools.js("document.querySelectorAll('svg').length") > 0
    assert csp_complaints(devtools) == []
    devtools.navigate(f"{server}/api/v1/docs")
    wait_for(devtools, "document.querySelectorAll('.opblock').length > 20")
    assert "Digital village API" in devtools.js("document.querySelector('.swagger-ui .info .title').textContent")
    devtools.js("document.querySelector('.opblock-summary-control').click()")  # an operation opens
    wait_for(devtools, "document.querySelectorAll('.opblock.is-open').length > 0")
    assert csp_complaints(devtools) == []
    # and the watch does see a violation: an inline style added now is refused
    devtools.js("document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">inline</p>')")
    wait_for(devtools, "window.__csp.length > 0")
    assert "style-src" in csp_complaints(devtools)[0]
