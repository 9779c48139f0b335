"""Unit tests of ingest.payload.Validator against the packaged device catalogue."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.catalogue import get_catalogue
from ingest.payload import Parsed, Validator, device_from_topic

LIMIT = 65536
FUTURE_S = 300
RETENTION_DAYS = 400
NOW = 1_764_000_000_000  # 2025-11-24T16:00:00Z
DAY_MS = 86_400_000
TOPIC = "v1/devices/paddy-0001/telemetry"


@pytest.fixture(scope="module")
def v() -> Validator:
    return Validator(get_catalogue(), LIMIT, FUTURE_S, RETENTION_DAYS)


def parse(v: Validator, doc: object, kind: str | None = "paddy", topic: str = TOPIC) -> Parsed:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return v.parse(topic, body, kind, NOW)


def only_rejection(p: Parsed) -> tuple[str, str]:
    assert p.readings == []
    assert len(p.rejections) == 1, p.rejections
    return p.rejections[0].reason, p.rejections[0].detail


# ---------------------------------------------------------------- accepted readings


def test_single_reading_is_accepted(v: Validator) -> None:
    p = parse(v, {"ts": NOW - 1000, "seq": 7, "values": {"water_level_cm": 4.5, "water_temp_c": 18.25}})
    assert p.device_id == "paddy-0001" and not p.is_array and p.rejections == []
    (r,) = p.readings
    assert (r.device_id, r.kind, r.ts_ms, r.seq, r.ts_missing) == ("paddy-0001", "paddy", NOW - 1000, 7, False)
    assert r.values == {"water_level_cm": 4.5, "water_temp_c": 18.25}


def test_array_of_readings_is_accepted(v: Validator) -> None:
    doc = [{"ts": NOW - 60_000 * i, "seq": i, "values": {"water_level_cm": float(i)}} for i in range(5)]
    p = parse(v, doc)
    assert p.is_array and p.rejections == []
    assert [(r.ts_ms, r.seq, r.values["water_level_cm"]) for r in p.readings] == [
        (NOW - 60_000 * i, i, float(i)) for i in range(5)
    ]


def test_mixed_array_keeps_good_elements_and_rejects_bad_ones_with_their_index(v: Validator) -> None:
    doc = [
        {"ts": NOW, "values": {"water_level_cm": 1}},
        {"ts": NOW, "values": {"water_level_cm": 99}},
        {"ts": NOW, "values": {"water_level_cm": 2}},
        "not a reading",
        {"ts": NOW, "values": {"soil_ph": 7}},
        {"ts": NOW, "values": {"water_level_cm": 3}},
    ]
    p = parse(v, doc)
    assert p.is_array
    assert [r.values["water_level_cm"] for r in p.readings] == [1.0, 2.0, 3.0]
    assert [(j.index, j.reason) for j in p.rejections] == [
        (1, "out_of_range"),
        (3, "bad_shape"),
        (4, "unknown_metric"),
    ]
    assert p.rejections[0].detail == "water_level_cm: value 99 above maximum 50 cm"
    assert p.rejections[1].detail == "a reading must be a JSON object, got str"


def test_single_reading_rejection_has_no_index(v: Validator) -> None:
    p = parse(v, {"ts": NOW, "values": {"water_level_cm": 99}})
    assert p.rejections[0].index is None and not p.is_array


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-11-24T16:00:00Z", NOW),
        ("2025-11-24T16:00:00z", NOW),
        ("2025-11-24T15:59:59.250Z", NOW - 750),
        ("2025-11-25T00:00:00+08:00", NOW),
        ("2025-11-25T00:00:00.250+08:00", NOW + 250),
        ("2025-11-24T11:00:00-05:00", NOW),
    ],
)
def test_rfc3339_timestamps_give_epoch_ms(v: Validator, ts: str, expected: int) -> None:
    (r,) = parse(v, {"ts": ts, "values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == expected


def test_float_epoch_ms_is_truncated_to_int(v: Validator) -> None:
    (r,) = parse(v, {"ts": NOW - 1000 + 0.7, "values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == NOW - 1000 and isinstance(r.ts_ms, int)


def test_missing_ts_uses_now_and_sets_ts_missing(v: Validator) -> None:
    (r,) = parse(v, {"values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == NOW and r.ts_missing is True
    (r,) = parse(v, {"ts": None, "values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == NOW and r.ts_missing is True


def test_ints_become_floats_for_number_metrics(v: Validator) -> None:
    (r,) = parse(v, {"ts": NOW, "values": {"water_level_cm": 5, "water_temp_c": -3}}).readings
    assert r.values == {"water_level_cm": 5.0, "water_temp_c": -3.0}
    assert all(type(x) is float for x in r.values.values())


def test_bounds_are_inclusive(v: Validator) -> None:
    (r,) = parse(v, {"ts": NOW, "values": {"water_level_cm": 50, "water_temp_c": -5}}).readings
    assert r.values == {"water_level_cm": 50.0, "water_temp_c": -5.0}
    (r,) = parse(v, {"ts": NOW, "values": {"activity": 10**9}}, kind="collar").readings  # no maximum
    assert r.values == {"activity": 1e9}


def test_seq_zero_is_valid(v: Validator) -> None:
    (r,) = parse(v, {"ts": NOW, "seq": 0, "values": {"water_level_cm": 1}}).readings
    assert r.seq == 0


def test_payload_of_exactly_the_limit_is_accepted_one_byte_more_is_too_large(v: Validator) -> None:
    body = orjson.dumps({"ts": NOW, "values": {"water_level_cm": 1}})
    exact = body + b" " * (LIMIT - len(body))
    assert len(exact) == LIMIT
    assert len(v.parse(TOPIC, exact, "paddy", NOW).readings) == 1
    reason, detail = only_rejection(v.parse(TOPIC, exact + b" ", "paddy", NOW))
    assert reason == "payload_too_large"
    assert detail == f"payload of {LIMIT + 1} bytes exceeds the limit of {LIMIT}"


def test_future_limit_is_inclusive(v: Validator) -> None:
    (r,) = parse(v, {"ts": NOW + FUTURE_S * 1000, "values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == NOW + FUTURE_S * 1000


# ---------------------------------------------------------------- every reason code


@pytest.mark.parametrize(
    "topic",
    ["v1/devices/paddy-0001", "v1/devices//telemetry", "v1/devices/a/b/telemetry", "v2/devices/x/telemetry", ""],
)
def test_bad_topic(v: Validator, topic: str) -> None:
    p = parse(v, {"values": {"water_level_cm": 1}}, topic=topic)
    assert p.device_id is None
    assert only_rejection(p) == ("bad_topic", f"topic {topic!r} is not v1/devices/{{id}}/telemetry")
    assert device_from_topic(topic) is None


def test_unknown_device(v: Validator) -> None:
    p = parse(v, {"values": {"water_level_cm": 1}}, kind=None, topic="v1/devices/ghost-9/telemetry")
    assert p.device_id == "ghost-9"
    assert only_rejection(p) == ("unknown_device", "device 'ghost-9' is not in the registry")


def test_not_utf8(v: Validator) -> None:
    reason, detail = only_rejection(parse(v, b'{"values": {"\xff": 1}}'))
    assert reason == "not_utf8"
    assert detail == "payload is not UTF-8: invalid start byte at byte 13"


@pytest.mark.parametrize("body", [b'{"values":', b"", b"{'values': {}}", b"hello", b'{"values": {}} extra'])
def test_not_json(v: Validator, body: bytes) -> None:
    reason, detail = only_rejection(parse(v, body))
    assert reason == "not_json"
    assert detail.startswith("payload is not JSON: ")
    assert len(detail) > len("payload is not JSON: ")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_not_finite(v: Validator, token: str) -> None:
    body = f'{{"ts": {NOW}, "values": {{"water_level_cm": {token}}}}}'.encode()
    assert only_rejection(parse(v, body)) == ("not_finite", f"payload contains the non-finite number {token}")


def test_number_overflowing_a_double_is_not_finite_not_invalid_json(v: Validator) -> None:
    # 1e400 is valid JSON (RFC 8259 grammar) but overflows a double: it is a non-finite number, not "not JSON".
    body = f'{{"ts": {NOW}, "values": {{"water_level_cm": 1e400}}}}'.encode()
    assert json.loads(body) == {"ts": NOW, "values": {"water_level_cm": float("inf")}}
    reason, detail = only_rejection(parse(v, body))
    assert reason == "not_finite", detail


@pytest.mark.parametrize(
    ("doc", "detail"),
    [
        (5, "a reading must be a JSON object, got int"),
        ("x", "a reading must be a JSON object, got str"),
        (None, "a reading must be a JSON object, got NoneType"),
        ({"ts": NOW, "values": {"water_level_cm": 1}, "temp": 3}, "unknown keys ['temp']; expected ts, seq, values"),
        ({"value": {"water_level_cm": 1}, "time": 1}, "unknown keys ['time', 'value']; expected ts, seq, values"),
    ],
)
def test_bad_shape(v: Validator, doc: object, detail: str) -> None:
    assert only_rejection(parse(v, doc)) == ("bad_shape", detail)


def test_empty_array_is_bad_shape(v: Validator) -> None:
    p = parse(v, [])
    assert p.is_array
    assert only_rejection(p) == ("bad_shape", "payload is an empty array")
    assert p.rejections[0].index is None


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        (True, "ts must be epoch milliseconds or an RFC 3339 string, got a boolean"),
        ("2025-11-24T16:00:00", "ts '2025-11-24T16:00:00' has no time zone offset"),
        ("2025-11-24 16:00:00.5", "ts '2025-11-24 16:00:00.5' has no time zone offset"),
        ("yesterday", "ts 'yesterday' is not an RFC 3339 timestamp"),
        ("2025-13-01T00:00:00Z", "ts '2025-13-01T00:00:00Z' is not an RFC 3339 timestamp"),
        ({"s": 1}, "ts must be epoch milliseconds or an RFC 3339 string, got dict"),
        ([NOW], "ts must be epoch milliseconds or an RFC 3339 string, got list"),
    ],
)
def test_bad_timestamp(v: Validator, ts: object, detail: str) -> None:
    assert only_rejection(parse(v, {"ts": ts, "values": {"water_level_cm": 1}})) == ("bad_timestamp", detail)


def test_future_timestamp(v: Validator) -> None:
    ts = NOW + FUTURE_S * 1000 + 1000
    assert only_rejection(parse(v, {"ts": ts, "values": {"water_level_cm": 1}})) == (
        "future_timestamp",
        f"ts {ts} is 301 s in the future (limit 300 s)",
    )
    ts_s = "2025-11-25T01:00:00+08:00"  # one hour ahead
    assert only_rejection(parse(v, {"ts": ts_s, "values": {"water_level_cm": 1}})) == (
        "future_timestamp",
        f"ts {ts_s!r} is 3600 s in the future (limit 300 s)",
    )


def test_too_old_epoch_seconds_says_it_looks_like_seconds(v: Validator) -> None:
    ts = NOW // 1000  # 10-digit epoch seconds
    assert len(str(ts)) == 10
    assert only_rejection(parse(v, {"ts": ts, "values": {"water_level_cm": 1}})) == (
        "too_old",
        f"ts {ts} is older than the retention window of 400 days (it looks like seconds, not milliseconds)",
    )


def test_too_old_milliseconds_has_no_seconds_hint(v: Validator) -> None:
    ts = NOW - RETENTION_DAYS * DAY_MS - 1
    reason, detail = only_rejection(parse(v, {"ts": ts, "values": {"water_level_cm": 1}}))
    assert (reason, detail) == ("too_old", f"ts {ts} is older than the retention window of 400 days")
    # exactly at the edge of the retention window is kept
    (r,) = parse(v, {"ts": NOW - RETENTION_DAYS * DAY_MS, "values": {"water_level_cm": 1}}).readings
    assert r.ts_ms == NOW - RETENTION_DAYS * DAY_MS


@pytest.mark.parametrize(
    ("seq", "shown"), [(-1, "-1"), ("7", "'7'"), (1.5, "1.5"), (True, "True"), ([1], "[1]"), ({}, "{}")]
)
def test_bad_seq(v: Validator, seq: object, shown: str) -> None:
    assert only_rejection(parse(v, {"ts": NOW, "seq": seq, "values": {"water_level_cm": 1}})) == (
        "bad_seq",
        f"seq must be a non-negative integer, got {shown}",
    )


@pytest.mark.parametrize("doc", [{"ts": NOW}, {"ts": NOW, "values": {}}, {"values": [1]}, {"values": None}, {}])
def test_no_values(v: Validator, doc: dict) -> None:
    assert only_rejection(parse(v, doc)) == ("no_values", "a reading needs a non-empty object 'values'")


def test_unknown_metric(v: Validator) -> None:
    assert only_rejection(parse(v, {"ts": NOW, "values": {"water_level_cm": 1, "soil_moisture": 30}})) == (
        "unknown_metric",
        "metric 'soil_moisture' is not defined for kind 'paddy' (known: water_level_cm, water_temp_c)",
    )


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (True, "a boolean"),
        (False, "a boolean"),
        ("4.5", "a string"),
        (None, "null"),
        ([1], "an array"),
        ({}, "an object"),
    ],
)
def test_wrong_type_for_a_number_metric(v: Validator, value: object, got: str) -> None:
    assert only_rejection(parse(v, {"ts": NOW, "values": {"water_level_cm": value}})) == (
        "wrong_type",
        f"water_level_cm: expected a number, got {got}",
    )


@pytest.mark.parametrize(
    ("kind", "values", "detail"),
    [
        ("paddy", {"water_level_cm": 50.5}, "water_level_cm: value 50.5 above maximum 50 cm"),
        ("paddy", {"water_level_cm": -31}, "water_level_cm: value -31 below minimum -30 cm"),
        ("collar", {"body_temp_c": 29.9}, "body_temp_c: value 29.9 below minimum 30 °C"),
        ("collar", {"activity": -1}, "activity: value -1 below minimum 0 steps"),
        ("weather", {"solar_wm2": 1500.5}, "solar_wm2: value 1500.5 above maximum 1500 W/m²"),
        ("soil", {"soil_moisture": 31.2, "soil_ec": 21}, "soil_ec: value 21 above maximum 20 dS/m"),
    ],
)
def test_out_of_range_names_metric_value_and_bound(v: Validator, kind: str, values: dict, detail: str) -> None:
    assert only_rejection(parse(v, {"ts": NOW, "values": values}, kind=kind)) == ("out_of_range", detail)


def test_deeply_nested_payload_is_rejected_not_raised(v: Validator) -> None:
    """A small (5 kB) but deeply nested payload must become a rejection; parse() must never raise."""
    body = b"[" * 5000
    p = v.parse(TOPIC, body, "paddy", NOW)  # raises RecursionError in ingest/payload.py _decode (json.loads)
    assert p.readings == [] and len(p.rejections) == 1
    assert p.rejections[0].reason in {"not_json", "bad_shape"}


# ---------------------------------------------------------------- property: never raises, all accounted for

METRICS = ["water_level_cm", "water_temp_c", "soil_moisture", "x"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
timestamps = (
    st.integers(min_value=NOW - 500 * DAY_MS, max_value=NOW + 600_000)
    | st.integers(min_value=10**9, max_value=10**10)
    | st.sampled_from(["2025-11-24T16:00:00Z", "2025-11-25T00:00:00+08:00", "2025-11-24T16:00:00", "0001-01-01"])
    | json_values
)
readings = st.fixed_dictionaries(
    {},
    optional={
        "ts": timestamps,
        "seq": st.integers(min_value=-3, max_value=2**40) | json_values,
        "values": st.dictionaries(
            st.sampled_from(METRICS),
            st.floats(min_value=-100, max_value=100) | st.integers(-100, 100) | json_values,
            max_size=3,
        )
        | json_values,
        "extra": json_values,
    },
)
documents = readings | st.lists(readings | json_values, max_size=6) | json_values


def _check_accounting(p: Parsed, body: bytes) -> None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        assert p.readings == [] and len(p.rejections) == 1
        return
    if isinstance(doc, list):
        assert p.is_array
        indexed = [j for j in p.rejections if j.index is not None]
        assert len(p.readings) + len(indexed) == len(doc)
        assert sorted(j.index for j in indexed) == sorted({j.index for j in indexed})  # one rejection per element
        assert all(0 <= j.index < len(doc) for j in indexed)
        assert len(p.rejections) - len(indexed) == (1 if not doc else 0)
    else:
        assert not p.is_array
        assert len(p.readings) + len(p.rejections) == 1
    for r in p.readings:
        assert isinstance(r.ts_ms, int)
        assert r.values and all(type(x) is float for x in r.values.values())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_property_json_documents_never_raise_and_every_element_is_accounted_for(doc: object) -> None:
    v = Validator(get_catalogue(), LIMIT, FUTURE_S, RETENTION_DAYS)
    body = orjson.dumps(doc)
    p = v.parse(TOPIC, body, "paddy", NOW)
    _check_accounting(p, body)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | documents.map(lambda d: orjson.dumps(d)[: max(1, len(orjson.dumps(d)) // 2)]))
def test_property_arbitrary_bytes_never_raise(body: bytes) -> None:
    v = Validator(get_catalogue(), LIMIT, FUTURE_S, RETENTION_DAYS)
    p = v.parse(TOPIC, body, "paddy", NOW)
    _check_accounting(p, body)
