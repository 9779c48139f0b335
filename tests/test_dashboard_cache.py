"""The dashboard's indicator cache (api/services/indicators.py) against the API test world: computed at
start-up, then never computed while a page waits for an answer it already has (stale-while-revalidate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.services import indicators
from tests.api_fixtures import PASSWORD, Template, make_client

HTML = {"Accept": "text/html"}


class Counting:
    """compute_indicators, counted, optionally slowed down (to see who waits for it)."""

    def __init__(self, real: Any, delay_s: float = 0.0) -> None:
        self.real, self.delay_s, self.calls = real, delay_s, 0
        self.threads: list[str] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        return self.real(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counting]:
    indicators.clear()
    counted = Counting(indicators.compute_indicators)
    monkeypatch.setattr(indicators, "compute_indicators", counted)
    yield counted
    indicators.clear()


def test_indicators_are_warm_at_start_up_and_refreshed_in_the_background(
    api_template: Template, tmp_path_factory: pytest.TempPathFactory, counting: Counting
) -> None:
    folder = tmp_path_factory.mktemp("indicator-cache")
    with make_client(api_template, folder, API_INDICATORS_WARM="true", API_INDICATORS_CACHE_S="600") as c:
        c.app.state.indicators_warm.join(120)  # type: ignore[attr-defined]
        warmed = counting.calls
        assert warmed >= 1 and set(counting.threads) == {"indicators-warm"}
        c.post("/dashboard/login", data={"username": "county", "password": PASSWORD}, follow_redirects=False)
        page = c.get("/dashboard", headers=HTML)
        assert page.status_code == 200 and 'id="indicator-period"' in page.text
        assert counting.calls == warmed  # the first view computed nothing

        c.app.state.settings.api_indicators_cache_s = 0.001  # type: ignore[attr-defined]
        time.sleep(0.01)  # past API_INDICATORS_CACHE_S: the next view gets the cached report at once...
        counting.delay_s = 3.0
        t0 = time.monotonic()
        again = c.get("/dashboard", headers=HTML)
        assert again.status_code == 200 and time.monotonic() - t0 < counting.delay_s
        deadline = time.monotonic() + 60  # ... while one background thread recomputes it
        while counting.calls == warmed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counting.calls > warmed and counting.threads[-1].startswith("indicators-211122-")
        for t in threading.enumerate():  # the other stale reports' refreshes end before the world goes
            if t.name.startswith("indicators-"):
                t.join(120)


def test_no_cache_computes_on_every_view(
    api_template: Template, tmp_path_factory: pytest.TempPathFactory, counting: Counting
) -> None:
    folder = tmp_path_factory.mktemp("indicator-no-cache")
    with make_client(api_template, folder, API_INDICATORS_CACHE_S="0", API_INDICATORS_WARM="true") as c:
        assert not hasattr(c.app.state, "indicators_warm")  # nothing to warm without a cache
        c.post("/dashboard/login", data={"username": "county", "password": PASSWORD}, follow_redirects=False)
        for n in (1, 2):
            assert c.get("/api/v1/dashboard/indicators?period=2026-07").status_code == 200
            assert counting.calls == n
