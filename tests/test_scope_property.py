"""Property: for random actors and random references, no write outside the actor's area succeeds.

Hypothesis draws a signed-in user of the demo world (every role, and the county administrator of
another county), a kind of write and the rows it references (any farm, plot, lot or village of
the registry, inside the user's area or not), and makes the write through the real API. An oracle
that does not use core/scope.py (division codes as written in the registry, compared as strings:
a village code starts with its township's and county's codes) says where each referenced row
lies; a write that succeeds must reference nothing outside the user's area, and an analyst's
never succeeds. The test also checks that both outcomes occurred, so it cannot pass vacuously.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_fixtures import USERS, Template, token, world_settings

COUNTER = itertools.count(1)


@dataclass
class Registry:
    """Where each row lies, read straight from the database (not through core/scope.py)."""

    villages: list[str]
    farms: dict[str, str]  # code -> village
    plots: dict[str, tuple[str, str]]  # plot_no -> (village, farm code)
    lots: dict[str, str]  # code -> owner village
    paddy_of_plot: dict[str, str]  # plot_no -> code of a lot grown on it
    facilities: dict[str, str]  # code -> village


@pytest.fixture(scope="module")
def world(api_template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Registry]]:
    s = world_settings(api_template, tmp_path_factory.mktemp("scope-property"), API_VERIFY_CACHE_S=0)
    db = s.resolved_database_url().removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        reg = Registry(
            villages=[v for (v,) in q("select code from village")],
            farms=dict(q("select code, village_code from farm")),
            plots={
                p: (v, f)
                for p, v, f in q(
                    "select plot_no, plot.village_code, farm.code from plot join farm on farm.id = plot.farm_id"
                )
            },
            lots=dict(
                q(
                    "select lot.code, coalesce(farm.village_code, facility.village_code) from lot "
                    "left join farm on farm.id = lot.farm_id left join facility on facility.id = lot.facility_id"
                )
            ),
            paddy_of_plot=dict(
                q(
                    "select plot.plot_no, lot.code from lot_source "
                    "join plot on plot.id = lot_source.plot_id join lot on lot.id = lot_source.lot_id"
                )
            ),
            facilities=dict(q("select code, village_code from facility")),
        )
    from api.app import create_app

    with TestClient(create_app(s)) as client:
        yield client, reg


def inside(user: str, code: str) -> bool:
    """The oracle: is a row lying at division `code` (6-digit county or 12-digit village) in `user`'s area?"""
    _role, scope = USERS[user]
    return scope.startswith(code) if len(code) == 6 else code.startswith(scope)


Write = Callable[[st.DataObject, Registry, str], tuple[str, dict[str, Any], list[str]]]


def _uid(prefix: str) -> str:
    return f"{prefix}{next(COUNTER)}"


def _own_facility(reg: Registry, user: str, data: st.DataObject) -> str:
    mine = [c for c, v in reg.facilities.items() if inside(user, v)]
    return data.draw(st.sampled_from(mine or sorted(reg.facilities)), label="facility")


def farm_in_village(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    village = data.draw(st.sampled_from(reg.villages), label="village")
    return "/api/v1/admin/farms", {"code": _uid("PF-"), "name": "x", "village_code": village}, [village]


def plot_of_farm(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    farm = data.draw(st.sampled_from(sorted(reg.farms)), label="farm")
    village = reg.farms[farm]
    body = {"plot_no": _uid(f"{village}-P"), "farm_code": farm, "village_code": village, "area_mu": 2, "crop": "rice"}
    return "/api/v1/admin/plots", body, [village]


def device_on_plot(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    plot = data.draw(st.sampled_from(sorted(reg.plots)), label="plot")
    return "/api/v1/admin/devices", {"id": _uid("soil-p"), "kind": "soil", "plot_no": plot}, [reg.plots[plot][0]]


def lot_grown_on(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    plot = data.draw(st.sampled_from(sorted(reg.plots)), label="plot")
    village, farm = reg.plots[plot]
    body = {"product": "paddy-yf47", "lot_no": _uid("PL"), "quantity": 5, "farm": farm, "sources": [{"plot_no": plot}]}
    return "/api/v1/admin/lots", body, [village, reg.farms[farm], "211122"]


def lot_from_parent(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    parent = data.draw(st.sampled_from(sorted(reg.lots)), label="parent lot")
    facility = _own_facility(reg, user, data)
    body = {
        "product": "paddy-yf47",
        "lot_no": _uid("PP"),
        "quantity": 1,
        "facility": facility,
        "parents": [{"lot": parent, "relation": "transform", "quantity": 1}],
    }
    return "/api/v1/admin/lots", body, [reg.lots[parent], reg.facilities[facility], "211122"]


def event_on_lot(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    lot = data.draw(st.sampled_from(sorted(reg.lots)), label="lot")
    facility = _own_facility(reg, user, data)
    body = {
        "action": "OBSERVE",
        "step": "sampling",
        "time": f"2026-11-{1 + next(COUNTER) % 28:02d}T08:{next(COUNTER) % 60:02d}:00+08:00",
        "lot": lot,
        "read_point": {"facility": facility},
    }
    return "/api/v1/admin/events", body, [reg.lots[lot], reg.facilities[facility]]


def event_at_plot(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    plot = data.draw(st.sampled_from(sorted(reg.paddy_of_plot)), label="plot")
    lot = reg.paddy_of_plot[plot]
    body = {
        "action": "OBSERVE",
        "step": "irrigating",
        "time": f"2026-08-{1 + next(COUNTER) % 28:02d}T06:{next(COUNTER) % 60:02d}:00+08:00",
        "lot": lot,
        "read_point": {"plot_no": plot},
        "attributes": {"water_mm": 10},
    }
    return "/api/v1/admin/events", body, [reg.plots[plot][0], reg.lots[lot]]


def inspection_of(data: st.DataObject, reg: Registry, user: str) -> tuple[str, dict[str, Any], list[str]]:
    lot = data.draw(st.sampled_from(sorted(reg.lots)), label="lot")
    body = {
        "lot": lot,
        "lab": "测试检测中心",
        "report_no": _uid("R-"),
        "sampled_on": "2026-10-06",
        "items": [{"item": "cadmium", "value": 0.05, "unit": "mg/kg", "limit": 0.2, "method": "GB 2762-2022"}],
    }
    return "/api/v1/admin/inspections", body, [reg.lots[lot]]


WRITES: list[Write] = [
    farm_in_village,
    plot_of_farm,
    device_on_plot,
    lot_grown_on,
    lot_from_parent,
    event_on_lot,
    event_at_plot,
    inspection_of,
]


def test_no_write_outside_the_actors_area_succeeds(world: tuple[TestClient, Registry]) -> None:
    client, reg = world
    headers = {user: token(client, user) for user in USERS}
    outcomes: Counter[str] = Counter()

    @settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(user=st.sampled_from(sorted(USERS)), write=st.sampled_from(WRITES), data=st.data())
    def attempt(user: str, write: Write, data: st.DataObject) -> None:
        path, body, places = write(data, reg, user)
        r = client.post(path, headers=headers[user], json=body)
        assert r.status_code < 500, r.text
        outside = [p for p in places if not inside(user, p)]
        if r.status_code == 201:
            assert USERS[user][0] != "analyst", (user, path, body)
            assert not outside, f"{user} wrote {path} referencing {outside} outside their area: {body}"
            outcomes["allowed"] += 1
        elif outside or USERS[user][0] == "analyst":
            assert r.status_code == 403, (user, path, body, r.status_code, r.text[:300])
            outcomes["refused outside"] += 1
        else:
            outcomes[f"refused inside ({r.status_code})"] += 1

    attempt()
    assert outcomes["allowed"] >= 5 and outcomes["refused outside"] >= 20, outcomes
