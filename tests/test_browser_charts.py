"""The dashboard's ECharts charts in headless Chromium (Debian's `chromium`) against `village serve`: signed in
as the county administrator and as a village operator, switching language, opening a plot's time series by
clicking it on the map, and the trace page's growth curve; no Content-Security-Policy violation on the way.
Screenshots go to docs/screenshots/ (referenced by the README)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.api_fixtures import PASSWORD, Template
from tests.test_browser import CSP_WATCH, DevTools, csp_complaints, devtools, label_uri, server

__all__ = ["devtools", "server"]  # the fixtures, shared with test_browser
SCREENSHOTS = Path(__file__).parents[1] / "docs" / "screenshots"


def sign_in(devtools: DevTools, base: str, user: str, lang: str = "zh") -> None:
    devtools.navigate(f"{base}/dashboard/login?lang={lang}")
    devtools.js(
        f"document.querySelector('#username').value = {json.dumps(user)};"
        f"document.querySelector('#password').value = {json.dumps(PASSWORD)};"
        "document.querySelector('#login-button').click();"
    )
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard"


def sign_out(devtools: DevTools) -> None:
    devtools.js("document.querySelector('form.logout button').click()")
    devtools.wait_load()


def show(devtools: DevTools, selector: str) -> None:
    """Scroll the element into view (charts are drawn when they come near the screen) and wait for it."""
    el = f"document.querySelector({json.dumps(selector)})"
    devtools.js(f"{el}.scrollIntoView()")
    deadline = time.monotonic() + 60
    while devtools.js(f"{el}.getAttribute('data-drawn')") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    state = devtools.js(f"{el}.getAttribute('data-drawn')")
    assert state == "1", f"{selector}: {state}: {devtools.js(el + '.textContent')[:500]}"


def click_at(devtools: DevTools, x: float, y: float) -> None:
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        devtools.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)
        time.sleep(0.05)


def shot(devtools: DevTools, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    devtools.js("window.scrollTo(0, 0)")
    devtools.screenshot(path)
    assert path.stat().st_size > 20_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_county_admin_map_click_opens_the_plot_series(server: str, devtools: DevTools) -> None:
    devtools.call("Log.enable", session=True)
    devtools.call("Runtime.enable", session=True)
    devtools.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=CSP_WATCH)
    sign_in(devtools, server, "county")
    text = devtools.js("document.body.innerText")
    assert "县域地图" in text and "设备运行趋势" in text and "最近有数据的月份" in text
    show(devtools, "#county-map")
    assert int(devtools.js("document.querySelector('#county-map').getAttribute('data-points')")) == 24
    show(devtools, "#device-health")
    show(devtools, "#indicator-charts .chart-trend")
    show(devtools, "#indicator-charts .chart-villages")
    assert devtools.js("document.querySelectorAll('canvas').length") >= 4
    assert csp_complaints(devtools) == []
    shot(devtools, "dashboard-county-zh.png")
    # a plot on the map, clicked like a mouse would
    show(devtools, "#county-map")
    where = devtools.js(  # plot 211122101203-001 of 西拉拉村 (July readings), where ECharts draws it
        "(function () { var m = window.villageMap, r = document.querySelector('#county-map').getBoundingClientRect();"
        " var pts = m.getOption().series.reduce(function (a, s) { return a.concat(s.data); }, []);"
        " var x = pts.filter(function (p) { return p.name === '211122101203-001'; })[0];"
        " var q = m.convertToPixel({geoIndex: 0}, x.value);"
        " return {plot: x.name, x: r.left + q[0], y: r.top + q[1]}; })()"
    )
    assert where["plot"] == "211122101203-001"
    click_at(devtools, where["x"], where["y"])
    devtools.wait_load()
    assert devtools.js("location.pathname") == "/dashboard/series"
    assert devtools.js("new URLSearchParams(location.search).get('plot')") == where["plot"]
    show(devtools, "#series")
    metrics = devtools.js(
        "Array.prototype.map.call(document.querySelectorAll('.series-chart'), function (e) {"
        " return e.getAttribute('data-metric'); })"
    )
    assert "water_level_cm" in metrics or "soil_moisture" in metrics
    assert csp_complaints(devtools) == []
    shot(devtools, "series-plot-zh.png")
    # the daily view, and English
    devtools.navigate(f"{server}/dashboard/series?plot={where['plot']}&resolution=1d&lang=en")
    show(devtools, "#series")
    assert "Time series" in devtools.js("document.body.innerText")
    devtools.navigate(f"{server}/dashboard")
    sign_out(devtools)


def test_village_operator_and_language_switch(server: str, devtools: DevTools) -> None:
    sign_in(devtools, server, "beizhengjia")
    assert "村级操作员" in devtools.js("document.body.innerText")
    show(devtools, "#county-map")
    assert devtools.js("document.querySelector('#county-map').getAttribute('data-points')") == "5"
    devtools.js("document.querySelector('a.lang').click()")
    devtools.wait_load()
    text = devtools.js("document.body.innerText")
    assert "County map" in text and "Device health over time" in text and "Village operator" in text
    show(devtools, "#county-map")
    show(devtools, "#device-health")
    shot(devtools, "dashboard-village-en.png")
    sign_out(devtools)


def test_trace_page_growth_curve(server: str, api_template: Template, devtools: DevTools) -> None:
    devtools.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=CSP_WATCH)
    devtools.call(
        "Emulation.setDeviceMetricsOverride", session=True, width=390, height=844, deviceScaleFactor=2, mobile=True
    )
    devtools.navigate(label_uri(api_template, server))
    show(devtools, "[data-chart='growth']")
    assert csp_complaints(devtools) == []
    assert "生长季曲线" in devtools.js("document.body.innerText")
    devtools.js("document.querySelector('#growth').scrollIntoView()")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    devtools.screenshot(SCREENSHOTS / "trace-growth-zh.png")
    assert (SCREENSHOTS / "trace-growth-zh.png").stat().st_size > 20_000
