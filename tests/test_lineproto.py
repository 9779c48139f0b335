"""ingest.pipeline.to_line: line protocol built with influxdb-client's Point, round-tripped through a REAL InfluxDB 1.x.

influxd is started by core.services; when it is missing, core.services.ServiceError fails the
tests with an install hint (nothing is skipped).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from core.influx import InfluxV1
from core.services import InfluxD, influxd
from ingest.payload import Reading
from ingest.pipeline import to_line

TS = 1_764_000_000_251  # 2025-11-24T16:00:00.251Z: not a whole second
PADDY_TAGS = (
    ("county", "211122"),
    ("village", "211122101201"),
    ("device", "paddy-0001"),
    ("plot", "211122101201-001"),
)
_db_numbers = itertools.count()


@pytest.fixture(scope="module")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxD]:
    server = influxd(tmp_path_factory.mktemp("lineproto") / "influx").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx(influx_server: InfluxD) -> Iterator[InfluxV1]:
    client = InfluxV1(influx_server.url, f"t{next(_db_numbers)}")  # a fresh database per test
    client.ensure_database()
    try:
        yield client
    finally:
        client.close()


def roundtrip(influx: InfluxV1, lines: list[str], measurement: str) -> list[dict]:
    influx.write("\n".join(lines))
    return influx.query(f'SELECT * FROM "{measurement}" GROUP BY *')


def rows(series: dict) -> list[dict]:
    return [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]


def test_plain_reading_line() -> None:
    reading = Reading("paddy-0001", "paddy", TS, {"water_level_cm": 4.5, "water_temp_c": 18.0})
    # tags sorted by key; a whole float is written without the integer suffix "i", so it stays a float
    assert to_line(reading, PADDY_TAGS) == (
        "paddy,county=211122,device=paddy-0001,plot=211122101201-001,village=211122101201 "
        f"water_level_cm=4.5,water_temp_c=18 {TS}"
    )


def test_paddy_tags_and_values_round_trip_with_millisecond_time(influx: InfluxV1) -> None:
    reading = Reading("paddy-0001", "paddy", TS, {"water_level_cm": 4.5, "water_temp_c": 18.0}, seq=3)
    (series,) = roundtrip(influx, [to_line(reading, PADDY_TAGS)], "paddy")
    assert series["tags"] == dict(PADDY_TAGS)
    assert rows(series) == [{"time": TS, "water_level_cm": 4.5, "water_temp_c": 18.0}]


SPECIAL_TAGS = (
    ("county", "211122"),
    ("village", "北郑家村 一组"),  # non-ASCII and a space
    ("device", "paddy-0001"),
    ("plot", "A,B=C D"),  # comma, equals sign and space
    ("herd", "=leading equals, trailing space "),
    ("animal", "牛 #7,黑白=花"),
)
SPECIAL_FIELDS = {
    "water level": 1.25,
    "a,b": 2.5,
    "x=y": -3.0,
    "水位 cm": 4.75,
    "mixed, 温度=°C": 36.6,
}


def test_special_characters_give_valid_line_protocol() -> None:
    line = to_line(Reading("d", "paddy", TS, dict(SPECIAL_FIELDS)), SPECIAL_TAGS)
    assert "\n" not in line
    assert line.endswith(f" {TS}")
    # every space, comma and equals sign inside a tag value or field key is escaped
    assert r"village=北郑家村\ 一组" in line
    assert r"plot=A\,B\=C\ D" in line
    assert r"water\ level=1.25" in line
    assert r"a\,b=2.5" in line
    assert r"x\=y=-3" in line
    # exactly two unescaped spaces separate measurement+tags, fields and time
    unescaped = [i for i, c in enumerate(line) if c == " " and line[i - 1] != "\\"]
    assert len(unescaped) == 2


def test_special_characters_round_trip_exactly(influx: InfluxV1) -> None:
    reading = Reading("d", "paddy", TS, dict(SPECIAL_FIELDS))
    (series,) = roundtrip(influx, [to_line(reading, SPECIAL_TAGS)], "paddy")
    assert series["tags"] == dict(SPECIAL_TAGS)
    assert rows(series) == [{"time": TS, **SPECIAL_FIELDS}]


@pytest.mark.parametrize("value", ["back\\slash", "two\\\\slashes"])
def test_backslashes_inside_tag_values_round_trip(influx: InfluxV1, value: str) -> None:
    tags = (("county", "211122"), ("plot", value), ("device", "paddy-0001"))
    reading = Reading("paddy-0001", "paddy", TS, {"water_level_cm": 1.0})
    (series,) = roundtrip(influx, [to_line(reading, tags)], "paddy")
    assert series["tags"] == dict(tags)
    assert rows(series) == [{"time": TS, "water_level_cm": 1.0}]


@pytest.mark.parametrize("value", ["ends with backslash\\", "tab\there", "line\nbreak", "back\\slash"])
def test_registry_refuses_identifiers_line_protocol_would_alter(tmp_path, value: str) -> None:  # type: ignore[no-untyped-def]
    # Line protocol cannot carry a trailing backslash or control characters unchanged, so the
    # registry refuses such plot numbers instead of letting them become altered tag values.
    from sqlmodel import Session

    from core.db import make_engine, migrate
    from core.registry_io import ImportErrors, import_data, load_demo

    url = f"sqlite:///{tmp_path / 'r.db'}"
    migrate(url)
    with Session(make_engine(url)) as session:
        load_demo(session)
        plot = {"plot_no": value, "farm_code": "PS-F001", "village_code": "211122101201", "area_mu": 10, "crop": "rice"}
        with pytest.raises(ImportErrors, match="plot_no"):
            import_data(session, {"plots": [plot]})


def test_ts_missing_becomes_a_boolean_field(influx: InfluxV1) -> None:
    stamped = Reading("paddy-0001", "paddy", TS, {"water_level_cm": 4.5}, ts_missing=True)
    normal = Reading("paddy-0001", "paddy", TS + 1, {"water_level_cm": 5.5})
    line = to_line(stamped, PADDY_TAGS)
    assert " water_level_cm=4.5,ts_missing=true " in line or "ts_missing=true,water_level_cm=4.5 " in line
    assert "ts_missing" not in to_line(normal, PADDY_TAGS)
    (series,) = roundtrip(influx, [line, to_line(normal, PADDY_TAGS)], "paddy")
    assert rows(series) == [
        {"time": TS, "water_level_cm": 4.5, "ts_missing": True},
        {"time": TS + 1, "water_level_cm": 5.5, "ts_missing": None},
    ]
    field_types = influx.query('SHOW FIELD KEYS FROM "paddy"')[0]["values"]
    assert ["ts_missing", "boolean"] in field_types and ["water_level_cm", "float"] in field_types


def test_millisecond_timestamps_are_preserved(influx: InfluxV1) -> None:
    stamps = [TS, TS + 1, TS + 999, 1_700_000_000_001, 946_684_800_000]  # 946684800000 = 2000-01-01
    lines = [
        to_line(Reading("collar-0001", "collar", ts, {"body_temp_c": 38.0 + i / 10}), (("animal", "221112200000003"),))
        for i, ts in enumerate(stamps)
    ]
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == stamps
    (series,) = roundtrip(influx, lines, "collar")
    assert [r["time"] for r in rows(series)] == sorted(stamps)
    by_time = {r["time"]: r["body_temp_c"] for r in rows(series)}
    assert by_time == {ts: 38.0 + i / 10 for i, ts in enumerate(stamps)}


def test_collar_tags_round_trip(influx: InfluxV1) -> None:
    tags = (
        ("county", "211122"),
        ("village", "211122108204"),
        ("device", "collar-0001"),
        ("herd", "PS-H001"),
        ("animal", "221112200000003"),
    )
    reading = Reading("collar-0001", "collar", TS, {"body_temp_c": 38.4, "activity": 3.0, "rumination_min": 12.0})
    (series,) = roundtrip(influx, [to_line(reading, tags)], "collar")
    assert series["tags"] == dict(tags)
    assert rows(series) == [{"time": TS, "activity": 3.0, "body_temp_c": 38.4, "rumination_min": 12.0}]


def test_string_and_bool_field_values_round_trip(influx: InfluxV1) -> None:
    # the catalogue allows boolean and string metrics; their values must survive escaping too
    values = {"note": 'say "hi" \\ 你好, a=b', "door_open": False, "level": 2.0}
    (series,) = roundtrip(influx, [to_line(Reading("barn-0001", "barn", TS, values), PADDY_TAGS)], "barn")
    assert rows(series) == [{"time": TS, **values}]


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    kind=_text,
    tags=st.lists(st.tuples(_text, _text), max_size=4, unique_by=lambda t: t[0]),
    values=st.dictionaries(_text, st.floats(allow_nan=False, allow_infinity=False) | st.booleans(), min_size=1),
    ts_missing=st.booleans(),
)
def test_cached_series_key_gives_exactly_what_one_point_gives(
    kind: str, tags: list[tuple[str, str]], values: dict, ts_missing: bool
) -> None:
    """to_line splices a per-device series key into each line; the result must equal a Point built whole."""
    point = Point(kind)
    for key, value in tags:
        point.tag(key, value)
    for key, value in values.items():
        point.field(key, value)
    if ts_missing:
        point.field("ts_missing", True)
    expected = point.time(TS, WritePrecision.MS).to_line_protocol()
    reading = Reading("d-1", kind, TS, values, ts_missing=ts_missing)
    assert to_line(reading, tuple(tags)) == expected
