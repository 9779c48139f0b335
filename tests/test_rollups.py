"""Rollups inside a REAL InfluxDB 1.x (Debian's influxd started by core.services; missing: the test fails
with an install hint). Rollups are checked against aggregates computed independently in pandas from
the very points written, and the incremental update against late readings inside and outside the lookback.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from analytics.periods import PeriodError, parse_period
from analytics.rollups import Rollups
from core.influx import InfluxV1
from core.services import InfluxD, influxd

SH = ZoneInfo("Asia/Shanghai")
_db_numbers = itertools.count()


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


@pytest.fixture(scope="module")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxD]:
    server = influxd(tmp_path_factory.mktemp("rollups") / "influx").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx(influx_server: InfluxD) -> Iterator[InfluxV1]:
    client = InfluxV1(influx_server.url, f"r{next(_db_numbers)}")
    client.ensure_database()
    try:
        yield client
    finally:
        client.close()


def soil_points(seed: int = 1) -> pd.DataFrame:
    """Irregular soil readings of two devices over two local days, plus one at 23:30 local on July 1."""
    rng = random.Random(seed)
    rows = []
    start = local(2026, 7, 1, 0, 0)
    for device, plot, village in (("s-1", "P-1", "V1"), ("s-2", "P-2", "V2")):
        t = start
        while t < start + timedelta(days=2):
            rows.append((ms(t), device, plot, village, round(rng.uniform(5, 40), 2), round(rng.uniform(10, 25), 2)))
            t += timedelta(seconds=rng.randint(200, 1400))
    rows.append((ms(local(2026, 7, 1, 23, 30)), "s-1", "P-1", "V1", 99.0, 11.0))  # 15:30 UTC: July 1 locally
    return pd.DataFrame(rows, columns=["time", "device", "plot", "village", "soil_moisture", "soil_temp_c"])


def write(influx: InfluxV1, frame: pd.DataFrame) -> None:
    lines = [
        f"soil,county=211122,device={r.device},plot={r.plot},village={r.village} "
        f"soil_moisture={r.soil_moisture},soil_temp_c={r.soil_temp_c} {r.time}"
        for r in frame.itertuples()
    ]
    influx.write("\n".join(lines))


def rollup_frame(influx: InfluxV1, rollups: Rollups, res: str) -> pd.DataFrame:
    series = influx.query(f'SELECT * FROM {rollups.source("soil", res)} GROUP BY "device"')
    frames = [pd.DataFrame(s["values"], columns=s["columns"]).assign(device=s["tags"]["device"]) for s in series]
    return pd.concat(frames).set_index(["device", "time"]).sort_index()


def expected(points: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    g = points.assign(bucket=key).groupby(["device", "bucket"])
    out = pd.DataFrame(
        {
            f"{stat}_{m}": getattr(g[m], stat)()
            for m in ("soil_moisture", "soil_temp_c")
            for stat in ("mean", "min", "max", "count", "sum")
        }
    )
    out.index.names = ["device", "time"]
    return out.sort_index()


def test_hourly_and_daily_rollups_equal_raw_aggregates_with_days_cut_at_local_midnight(influx: InfluxV1) -> None:
    points = soil_points()
    write(influx, points)
    rollups = Rollups(influx, kinds=["soil"], tz="Asia/Shanghai")
    report = rollups.backfill(date(2026, 7, 1), date(2026, 7, 2), now=local(2026, 7, 10))
    assert report.mode == "into" and report.kinds["soil"].chunks == 2

    hour_key = (points["time"] // 3_600_000) * 3_600_000  # Shanghai is UTC+8: local hours are UTC hours
    local_days = pd.to_datetime(points["time"], unit="ms", utc=True).dt.tz_convert(SH).dt.normalize()
    day_key = local_days.map(lambda t: ms(t.to_pydatetime()))
    for res, key in (("1h", hour_key), ("1d", day_key)):
        got, want = rollup_frame(influx, rollups, res), expected(points, key)
        assert list(got.index) == list(want.index), res
        for column in want.columns:
            pd.testing.assert_series_equal(
                got[column].astype(float), want[column].astype(float), check_names=False, rtol=1e-9
            )
    # the 23:30 local reading (15:30 UTC) belongs to the local day July 1, not to the UTC day July 1 either way:
    # the local day starts at 16:00 UTC the day before
    daily = rollup_frame(influx, rollups, "1d")
    july1 = ms(local(2026, 7, 1))
    assert daily.loc[("s-1", july1), "max_soil_moisture"] == 99.0
    assert list(daily.xs("s-1").index) == [july1, ms(local(2026, 7, 2))]
    utc_july1 = ms(datetime(2026, 7, 1, tzinfo=UTC))
    assert utc_july1 not in set(daily.xs("s-1").index)


def test_county_rollup_of_several_days_in_one_query_equals_day_by_day(influx: InfluxV1) -> None:
    """The rollup job writes the county points a day at a time; a backfill writes many days in one query
    (`days`): the same points, days cut at local midnight."""
    write(influx, soil_points())
    rollups = Rollups(influx, kinds=["soil"], tz="Asia/Shanghai")
    rollups.backfill(date(2026, 7, 1), date(2026, 7, 2), now=local(2026, 7, 10))
    q = f"SELECT * FROM {rollups.source('soil', 'county_1d')}"
    day_by_day = influx.query(q)
    assert [row[0] for row in day_by_day[0]["values"]] == [ms(local(2026, 7, 1)), ms(local(2026, 7, 2))]
    influx.query('DROP MEASUREMENT "soil_county_1d"')
    assert influx.query(q) == []
    assert rollups.county_rollup("soil", date(2026, 7, 1), days=2) == 2
    assert influx.query(q) == day_by_day


def test_copy_mode_writes_the_same_rollups_as_select_into(influx: InfluxV1) -> None:
    write(influx, soil_points(seed=2))
    into = Rollups(influx, kinds=["soil"], mode="into", rp="r_into")
    copy = Rollups(influx, kinds=["soil"], mode="copy", rp="r_copy")
    now = local(2026, 7, 10)
    assert into.backfill(date(2026, 7, 1), date(2026, 7, 2), now=now).mode == "into"
    assert copy.backfill(date(2026, 7, 1), date(2026, 7, 2), now=now).mode == "copy"
    for res in ("1h", "1d"):
        a, b = rollup_frame(influx, into, res), rollup_frame(influx, copy, res)
        pd.testing.assert_frame_equal(a.astype(float, errors="ignore"), b.astype(float, errors="ignore"), rtol=1e-12)


def test_incremental_update_takes_late_readings_within_the_lookback_and_leaves_closed_buckets_alone(
    influx: InfluxV1,
) -> None:
    rollups = Rollups(influx, kinds=["soil"], lookback_s=6 * 3600, workers=1)
    base = local(2026, 7, 1, 0, 0)
    series = "soil,county=211122,device=s-1,plot=P-1,village=V1"
    lines = [  # a full local day, every 10 minutes
        f"{series} soil_moisture=20,soil_temp_c=15 {ms(base + timedelta(minutes=10 * i))}" for i in range(6 * 24)
    ]
    influx.write("\n".join(lines))
    now = local(2026, 7, 2, 3, 20)
    first = rollups.update(now=now)
    assert rollups.watermark("soil") == ms(local(2026, 7, 2, 3, 0))  # the last closed hour
    assert first.kinds["soil"].daily_points == 1  # July 1 closed; July 2 still open

    hourly = lambda: rollup_frame(influx, rollups, "1h").xs("s-1")["count_soil_moisture"]  # noqa: E731
    before = hourly()
    assert before.loc[ms(local(2026, 7, 1, 22))] == 6
    # late readings: one 5 h before the watermark (inside the 6 h lookback), one 10 h before (outside),
    # one in the open hour (03:00-04:00 local) that is not closed at the next update either
    late_inside = local(2026, 7, 1, 22, 5)
    late_outside = local(2026, 7, 1, 17, 5)
    open_hour = local(2026, 7, 2, 3, 30)
    influx.write(
        "\n".join(
            f"soil,county=211122,device=s-1,plot=P-1,village=V1 soil_moisture=80,soil_temp_c=15 {ms(t)}"
            for t in (late_inside, late_outside, open_hour)
        )
    )
    second = rollups.update(now=local(2026, 7, 2, 3, 50))
    assert second.kinds["soil"].start_ms == ms(local(2026, 7, 1, 21))  # watermark 03:00 - 6 h
    after = hourly()
    assert after.loc[ms(local(2026, 7, 1, 22))] == 7  # picked up
    assert after.loc[ms(local(2026, 7, 1, 17))] == 6  # older than the lookback: left alone
    assert ms(local(2026, 7, 2, 3)) not in after.index  # the open hour is not rolled up yet
    daily = rollup_frame(influx, rollups, "1d").xs("s-1")
    assert daily.loc[ms(local(2026, 7, 1)), "count_soil_moisture"] == 145  # the day was recomputed from hours
    assert daily.loc[ms(local(2026, 7, 1)), "max_soil_moisture"] == 80

    third = rollups.update(now=local(2026, 7, 2, 4, 1))
    assert hourly().loc[ms(local(2026, 7, 2, 3))] == 1  # now closed
    assert third.kinds["soil"].watermark_ms == ms(local(2026, 7, 2, 4))


def test_a_run_limited_to_some_devices_rolls_up_only_them_and_leaves_the_watermark(influx: InfluxV1) -> None:
    write(influx, soil_points(seed=3))
    rollups = Rollups(influx, kinds=["soil"])
    report = rollups.backfill(date(2026, 7, 1), date(2026, 7, 2), now=local(2026, 7, 10), tags={"device": ["s-2"]})
    assert report.kinds["soil"].hourly_points == 48 and rollups.watermark("soil") is None
    assert set(rollup_frame(influx, rollups, "1h").index.get_level_values("device")) == {"s-2"}
    rollups.backfill(date(2026, 7, 1), date(2026, 7, 2), now=local(2026, 7, 10))
    assert rollups.watermark("soil") == ms(local(2026, 7, 3))
    assert set(rollup_frame(influx, rollups, "1d").index.get_level_values("device")) == {"s-1", "s-2"}


def test_summary_gives_completeness_per_village_from_rollups(influx: InfluxV1) -> None:
    base = local(2026, 7, 1)
    lines = []
    for i in range(144):  # s-1 reports every 10 minutes (the catalogue interval): complete
        lines.append(f"soil,county=211122,device=s-1,plot=P-1,village=V1 soil_moisture=20 {ms(base) + i * 600_000}")
    for i in range(72):  # s-2 half of the day
        lines.append(f"soil,county=211122,device=s-2,plot=P-2,village=V1 soil_moisture=30 {ms(base) + i * 600_000}")
    influx.write("\n".join(lines))
    rollups = Rollups(influx, kinds=["soil"])
    rollups.backfill(date(2026, 7, 1), date(2026, 7, 1), now=local(2026, 7, 3))
    s = rollups.summary("soil", ms(base), ms(base + timedelta(days=1)), by="village")
    row = s.iloc[0]
    assert row["village"] == "V1" and row["devices"] == 2 and row["count_soil_moisture"] == 216
    assert row["completeness"] == pytest.approx(75.0)
    assert row["mean_soil_moisture"] == pytest.approx((144 * 20 + 72 * 30) / 216)
    # three registered devices in V1 (one silent): expected grows, completeness falls
    s3 = rollups.summary("soil", ms(base), ms(base + timedelta(days=1)), by="village", expected_devices={"V1": 3})
    assert s3.iloc[0]["completeness"] == pytest.approx(50.0)


def test_periods_parse_in_the_county_time_zone() -> None:
    q3 = parse_period("2026-Q3")
    assert (q3.start, q3.end, q3.label) == (date(2026, 7, 1), date(2026, 10, 1), "2026-Q3")
    assert q3.previous().label == "2026-Q2" and parse_period("2026-Q1").previous().label == "2025-Q4"
    assert parse_period("2026-07").previous().label == "2026-06"
    assert parse_period("2026-01").previous().label == "2025-12"
    assert parse_period("2026").days == 365
    r = parse_period("2026-07-01..2026-07-31")
    assert r.days == 31 and r.previous().label == "2026-05-31..2026-06-30"
    assert parse_period("2026-W27").start == date(2026, 6, 29)
    assert r.start_dt() == datetime(2026, 6, 30, 16, tzinfo=UTC)  # local midnight in Shanghai
    assert [p.label for p in q3.trend(2)] == ["2026-Q1", "2026-Q2", "2026-Q3"]
    now = local(2026, 8, 15, 9)
    assert q3.closed_end(now) == date(2026, 8, 15) and q3.contains(now)
    for bad in ("2026-13", "2026-Q5", "July", "2026-07-31..2026-07-01", "2026-02-30"):
        with pytest.raises(PeriodError):
            parse_period(bad)
