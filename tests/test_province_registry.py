"""The comparison's registry part, aggregated in SQL, equals the per-device computation it replaced.

`analytics.province` counts active device-days (and device-seconds) per county and kind, devices per
county, and plots with an active device at the period's end in a few aggregate queries. Here a
registry with devices of every status (inactive, revoked with and without a date, active with a
revocation date, provisioned or created late, exactly on a day bound, on plots, herds and animals),
plus a few hundred random ones, is computed both ways on SQLite and on PostgreSQL: the reference is
the per-device pandas computation the module used before (every device read into a frame).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlmodel import Session, col, select

from analytics.periods import local_midnight
from analytics.province import _active_days, _plots, _village_county
from core.db import get_engine, migrate
from core.models import Animal, County, Device, DeviceStatus, Farm, Herd, Plot, Township, Village
from core.services import Postgres

COUNTIES = ("211122", "211104", "210726")  # the last one has no devices
FIRST = date(2026, 10, 20)
DAYS = 14  # across Europe's change from summer time (25 October 2026)


# ---------------------------------------------------------------- the per-device reference (the former code)


def _reference_devices(session: Session, codes: list[str]) -> pd.DataFrame:
    villages = _village_county(session, codes)
    cols = (Device.kind, Device.status, Device.created_at, Device.provisioned_at, Device.revoked_at)
    queries = [
        select(Plot.village_code, *cols).join(Plot, col(Plot.id) == col(Device.plot_id)),
        select(Herd.village_code, *cols).join(Herd, col(Herd.id) == col(Device.herd_id)),
        select(Herd.village_code, *cols)
        .join(Animal, col(Animal.id) == col(Device.animal_id))
        .join(Herd, col(Herd.id) == col(Animal.herd_id)),
    ]
    rows: list[Any] = [r for q in queries for r in session.exec(q).all() if r[0] in villages]
    frame = pd.DataFrame(rows, columns=["village", "kind", "status", "created", "provisioned", "revoked"])
    frame["county"] = frame["village"].map(villages)
    since = frame["provisioned"].where(frame["provisioned"].notna(), frame["created"])
    since = since.where(frame["status"] != DeviceStatus.inactive)
    since = since.where(~((frame["status"] == DeviceStatus.revoked) & frame["revoked"].isna()))
    frame["since"] = pd.to_datetime(since, utc=True)
    frame["until"] = pd.to_datetime(frame["revoked"], utc=True)
    return frame[["county", "kind", "since", "until"]]


def _reference_active(devices: pd.DataFrame, bounds: list[datetime]) -> pd.DataFrame:
    since = devices["since"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    until = devices["until"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    edges = np.array([np.datetime64(b.astimezone(UTC).replace(tzinfo=None), "ns") for b in bounds])
    starts, ends = edges[:-1], edges[1:]
    day_s = (ends - starts).astype("timedelta64[s]").astype(float)
    active = (~np.isnat(since))[:, None] & (since[:, None] <= starts[None, :])
    active &= np.isnat(until)[:, None] | (until[:, None] >= ends[None, :])
    out = devices[["county", "kind"]].copy()
    out["active_days"] = active.sum(axis=1)
    out["active_s"] = active @ day_s
    return out.groupby(["county", "kind"], as_index=False)[["active_days", "active_s"]].sum()


def _reference_plots(session: Session, codes: list[str], moment: datetime) -> pd.DataFrame:
    villages = _village_county(session, codes)
    devices = pd.DataFrame(
        session.exec(
            select(Device.plot_id, Device.status, Device.created_at, Device.provisioned_at, Device.revoked_at).where(
                col(Device.plot_id).is_not(None)
            )
        ).all(),
        columns=["plot_id", "status", "created", "provisioned", "revoked"],
    )
    t = pd.Timestamp(moment)
    since = pd.to_datetime(devices["provisioned"].where(devices["provisioned"].notna(), devices["created"]), utc=True)
    until = pd.to_datetime(devices["revoked"], utc=True)
    ok = (devices["status"] != DeviceStatus.inactive) & (since <= t) & (until.isna() | (until > t))
    ok &= ~((devices["status"] == DeviceStatus.revoked) & devices["revoked"].isna())
    with_device = set(devices[ok.to_numpy()]["plot_id"].astype(int))
    plots = pd.DataFrame(
        session.exec(select(Plot.id, Plot.village_code, Plot.area_mu)).all(), columns=["id", "village", "area"]
    )
    plots["county"] = plots["village"].map(villages)
    plots = plots[plots["county"].notna()]
    plots["covered"] = plots["id"].isin(with_device)
    plots["area_with"] = plots["area"] * plots["covered"]
    return plots.groupby("county").agg(
        plots=("id", "size"), covered=("covered", "sum"), area=("area", "sum"), area_with=("area_with", "sum")
    )


# ---------------------------------------------------------------- a registry with every kind of device


def _registry(session: Session, bounds: list[datetime]) -> None:
    """Two counties with devices, one without; named edge cases and 400 random devices."""
    b = [x.astimezone(UTC) for x in bounds]
    for code in COUNTIES:
        session.add(County(code=code, name_zh=code))
        session.add(Township(code=f"{code}100", county_code=code, name_zh="镇"))
        session.add(Village(code=f"{code}100200", township_code=f"{code}100", name_zh="村"))
    session.add(County(code="220102", name_zh="outside"))  # another province: never counted
    session.add(Township(code="220102100", county_code="220102", name_zh="镇"))
    session.add(Village(code="220102100200", township_code="220102100", name_zh="村"))
    session.flush()
    plots: list[int] = []
    herds: list[int] = []
    animals: list[int] = []
    for code in (*COUNTIES[:2], "220102"):
        farm = Farm(code=f"F{code}", name="farm", village_code=f"{code}100200")
        session.add(farm)
        session.flush()
        for p in range(12):
            plot = Plot(
                plot_no=f"{code}-{p}", farm_id=farm.id, village_code=farm.village_code, area_mu=10.5 + p, crop="rice"
            )
            session.add(plot)
            session.flush()
            plots.append(plot.id)  # type: ignore[arg-type]
        herd = Herd(herd_no=f"{code}-H", farm_id=farm.id, village_code=farm.village_code)
        session.add(herd)
        session.flush()
        herds.append(herd.id)  # type: ignore[arg-type]
        for a in range(4):
            animal = Animal(ear_tag=f"{code}{a:04d}", herd_id=herd.id)  # type: ignore[arg-type]
            session.add(animal)
            session.flush()
            animals.append(animal.id)  # type: ignore[arg-type]
    early, mid, end = b[0] - timedelta(days=3), b[4] + timedelta(hours=5, microseconds=17), b[-1]
    named: list[dict[str, Any]] = [
        {"status": "active", "provisioned_at": early},
        {"status": "active", "provisioned_at": b[0]},  # exactly at the first start: active that day
        {"status": "active", "provisioned_at": b[0] + timedelta(microseconds=1)},  # a microsecond late: not
        {"status": "active", "provisioned_at": mid},  # provisioned late
        {"status": "active", "created_at": mid},  # never provisioned: since its creation
        {"status": "active", "provisioned_at": end + timedelta(days=1)},  # after the period
        {"status": "inactive", "provisioned_at": early},
        {"status": "inactive"},
        {"status": "revoked", "provisioned_at": early},  # revoked without a date: never active
        {"status": "revoked", "provisioned_at": early, "revoked_at": mid},
        {"status": "revoked", "provisioned_at": early, "revoked_at": b[6]},  # exactly at a day's end
        {"status": "revoked", "provisioned_at": early, "revoked_at": b[6] - timedelta(microseconds=1)},
        {"status": "revoked", "provisioned_at": early, "revoked_at": end},  # at the period's end
        {"status": "revoked", "provisioned_at": early, "revoked_at": early + timedelta(days=1)},  # before it
        {"status": "active", "provisioned_at": early, "revoked_at": mid},  # active yet dated revocation
        {"status": "active", "provisioned_at": mid, "revoked_at": mid + timedelta(hours=1)},  # within one day
    ]
    rng = random.Random(14)
    kinds = ("soil", "paddy", "weather", "collar", "barn")
    n = 0

    def add(attrs: dict[str, Any], where: int, own_plot: bool = False) -> None:
        nonlocal n
        n += 1
        row: dict[str, Any] = {"id": f"dev-{n:04d}", "kind": kinds[n % len(kinds)], "created_at": early, **attrs}
        target = where % 3
        if target == 0 and own_plot:  # the plot's only device: its edge decides whether the plot is covered
            village = f"{COUNTIES[n % 2]}100200"
            farm = session.exec(select(Farm.id).where(Farm.village_code == village)).one()
            plot = Plot(plot_no=f"own-{n}", farm_id=farm, village_code=village, area_mu=1.25 + n, crop="maize")
            session.add(plot)
            session.flush()
            row["plot_id"] = plot.id
        elif target == 0:
            row["plot_id"] = plots[rng.randrange(len(plots))]
        elif target == 1:
            row["herd_id"] = herds[rng.randrange(len(herds))]
        else:
            row["animal_id"] = animals[rng.randrange(len(animals))]
        session.add(Device(**row))

    for attrs in named:
        for where in range(3):
            add(attrs, where, own_plot=True)
    moments = [*b, mid, early, end]
    for _ in range(400):

        def moment() -> datetime:
            if rng.random() < 0.3:
                return rng.choice(moments) + timedelta(microseconds=rng.choice([-1, 0, 0, 1]))
            return b[0] + timedelta(seconds=rng.uniform(-3 * 86400, (DAYS + 3) * 86400))

        attrs = {"status": rng.choice(["active", "active", "active", "inactive", "revoked"]), "created_at": moment()}
        if rng.random() < 0.8:
            attrs["provisioned_at"] = moment()
        if rng.random() < 0.4:
            attrs["revoked_at"] = moment()
        add(attrs, rng.randrange(3))
    session.commit()


def _bounds(tz: str) -> list[datetime]:
    return [local_midnight(FIRST + timedelta(days=i), tz) for i in range(DAYS + 1)]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}"
    else:
        pg: Postgres = request.getfixturevalue("pg")
        url = pg.create_database(f"province_{random.randrange(10**9)}")
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        _registry(session, _bounds("Asia/Shanghai"))
    yield url


@pytest.mark.parametrize("tz", ["Asia/Shanghai", "Europe/Berlin"])
def test_sql_aggregate_equals_per_device_computation(url: str, tz: str) -> None:
    bounds = _bounds(tz)
    codes = list(COUNTIES)
    with Session(get_engine(url)) as session:
        devices = _reference_devices(session, codes)
        want = _reference_active(devices, bounds).sort_values(["county", "kind"]).reset_index(drop=True)
        got, per_county = _active_days(session, codes, bounds)
        got = got.sort_values(["county", "kind"]).reset_index(drop=True)
        assert len(want) == 10 and want["active_days"].sum() > 0  # two counties x five kinds
        assert got["county"].tolist() == want["county"].tolist() and got["kind"].tolist() == want["kind"].tolist()
        assert got["active_days"].astype(int).tolist() == want["active_days"].astype(int).tolist()
        assert got["active_s"].tolist() == want["active_s"].tolist()
        assert per_county.to_dict() == devices.groupby("county").size().to_dict()
        b = _bounds("Asia/Shanghai")  # the registry's edges
        for moment in (b[-1], b[4] + timedelta(hours=5, microseconds=17), b[6], b[0], bounds[3]):
            ref = _reference_plots(session, codes, moment)
            mine = _plots(session, codes, moment)
            assert ref["covered"].min() < ref["plots"].min()  # some plots are not covered
            assert mine.index.tolist() == ref.index.tolist()
            assert mine["plots"].tolist() == ref["plots"].tolist()
            assert mine["covered"].tolist() == ref["covered"].astype(int).tolist()
            assert mine["area"].tolist() == pytest.approx(ref["area"].tolist(), abs=1e-9)
            assert mine["area_with"].tolist() == pytest.approx(ref["area_with"].tolist(), abs=1e-9)


def test_no_closed_day_counts_devices_only(url: str) -> None:
    with Session(get_engine(url)) as session:
        active, per_county = _active_days(session, list(COUNTIES), [])
        assert active.empty and per_county.sum() == len(_reference_devices(session, list(COUNTIES)))
