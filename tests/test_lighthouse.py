"""Lighthouse (mobile) on the trace page and the dashboard of a demo-like `village serve` (the API template
world): performance, accessibility, best practices and SEO at least 0.95 each.

Opt-in (it takes minutes and needs Lighthouse from npm): `LIGHTHOUSE=1 pytest tests/test_lighthouse.py`,
with `lighthouse` on PATH or LIGHTHOUSE_BIN pointing at it (e.g. `npm i -E lighthouse@12.2.3 --prefix
/tmp/lh`, then LIGHTHOUSE_BIN=/tmp/lh/node_modules/.bin/lighthouse). The scores are printed and written to
tests/artifacts/lighthouse-*.json. The dashboard is audited signed in: the session cookie of a sign-in
is passed as an extra header.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.api_fixtures import PASSWORD, Template
from tests.test_browser import BAG, label_uri, server

__all__ = ["server"]
ARTIFACTS = Path(__file__).parent / "artifacts"
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")
pytestmark = pytest.mark.skipif(os.environ.get("LIGHTHOUSE") != "1", reason="opt-in: LIGHTHOUSE=1")


def lighthouse(url: str, name: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    binary = os.environ.get("LIGHTHOUSE_BIN") or shutil.which("lighthouse")
    if binary is None:
        pytest.fail("lighthouse not found: npm i -E lighthouse@12.2.3, then LIGHTHOUSE_BIN=.../lighthouse")
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / f"lighthouse-{name}.json"
    args = [
        binary,
        url,
        "--quiet",
        "--output=json",
        f"--output-path={out}",
        "--chrome-flags=--headless --no-sandbox",
        f"--only-categories={','.join(CATEGORIES)}",
    ]
    if headers:
        args.append(f"--extra-headers={json.dumps(headers)}")
    env = {**os.environ, "CHROME_PATH": os.environ.get("CHROME_PATH", "/usr/bin/chromium")}
    subprocess.run(args, check=True, env=env, timeout=300)
    report = json.loads(out.read_text())
    scores = {c: report["categories"][c]["score"] for c in CATEGORIES}
    failing = {
        a["id"]: a.get("title")
        for a in report["audits"].values()
        if a.get("score") is not None and a["score"] < 0.9 and a.get("scoreDisplayMode") in ("binary", "numeric")
    }
    print(name, scores, "audits below 0.9:", failing)
    return scores


def test_trace_page(server: str, api_template: Template) -> None:
    uri = label_uri(api_template, server)
    # warm, as the page of a bag being scanned is: the lot verified (a page with no current result says
    # "checking" and reloads itself), and kept so by scans every few seconds while Lighthouse runs (a
    # lookup in the second half of API_VERIFY_CACHE_S re-checks in the background)
    assert httpx.get(f"{server}/api/v1/trace/{BAG}/verify", timeout=120).json()["status"] == "verified"
    stop = threading.Event()

    def scans() -> None:
        while not stop.wait(5):
            httpx.get(uri, timeout=30)

    scanner = threading.Thread(target=scans, daemon=True)
    scanner.start()
    try:
        assert 'data-status="verified"' in httpx.get(uri).text
        scores = lighthouse(uri, "trace")
    finally:
        stop.set()
        scanner.join(30)
    assert all(v is not None and v >= 0.95 for v in scores.values()), scores


def test_dashboard(server: str) -> None:
    r = httpx.post(f"{server}/dashboard/login", data={"username": "county", "password": PASSWORD})
    assert r.status_code == 303
    scores = lighthouse(
        f"{server}/dashboard", "dashboard", {"Cookie": f"village_session={r.cookies['village_session']}"}
    )
    assert all(v is not None and v >= 0.95 for v in scores.values()), scores
