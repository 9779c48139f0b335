"""SeqTracker, and Pipeline.process on hand-made messages with a real SQLite registry (no broker, no InfluxDB)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from core.catalogue import get_catalogue
from core.db import make_engine, migrate
from core.provisioning import provision, revoke
from core.registry_io import import_data, load_demo
from ingest.enrich import DeviceDirectory
from ingest.metrics import IngestMetrics
from ingest.payload import Validator
from ingest.pipeline import Message, Pipeline, SeqTracker

NOW = 1_764_000_000_000
PADDY_TAGS = {"county": "211122", "village": "211122101201", "device": "paddy-0001", "plot": "211122101201-001"}
COLLAR_TAGS = {
    "county": "211122",
    "village": "211122108204",
    "device": "collar-0001",
    "herd": "PS-H001",
    "animal": "221112200000003",
}

# ---------------------------------------------------------------- SeqTracker


def test_seq_first_observation_is_neither_duplicate_nor_gap() -> None:
    assert SeqTracker().observe("d", 1000) == (False, 0)


def test_seq_duplicates_are_detected() -> None:
    t = SeqTracker()
    assert [t.observe("d", s) for s in (1, 2, 3)] == [(False, 0)] * 3
    assert t.observe("d", 2) == (True, 0)
    assert t.observe("d", 3) == (True, 0)
    assert t.observe("d", 4) == (False, 0)


def test_seq_gaps_are_counted() -> None:
    t = SeqTracker()
    assert t.observe("d", 1) == (False, 0)
    assert t.observe("d", 5) == (False, 3)  # 2, 3, 4 missing
    assert t.observe("d", 6) == (False, 0)
    assert t.observe("d", 3) == (False, 0)  # a late reading: not a new gap, not a duplicate
    assert t.observe("d", 3) == (True, 0)
    assert t.observe("d", 10) == (False, 3)  # gap measured from the highest seq seen (6)


def test_seq_devices_are_independent() -> None:
    t = SeqTracker()
    assert t.observe("a", 1) == (False, 0)
    assert t.observe("b", 1) == (False, 0)
    assert t.observe("b", 3) == (False, 1)
    assert t.observe("a", 2) == (False, 0)
    assert t.observe("a", 3) == (False, 0)


def test_seq_window_is_bounded_very_old_seq_is_forgotten() -> None:
    t = SeqTracker(window=4)
    for s in range(1, 6):  # 1..5: seq 1 falls out of the window of 4
        assert t.observe("d", s) == (False, 0)
    assert t.observe("d", 2) == (True, 0)  # still remembered
    assert t.observe("d", 1) == (False, 0)  # forgotten, so not reported as a duplicate
    seen, order, _top = t._seen["d"]
    assert len(seen) <= 4 and len(order) <= 4


def test_seq_number_of_devices_is_bounded() -> None:
    t = SeqTracker(devices=2)
    t.observe("a", 1)
    t.observe("b", 1)
    t.observe("c", 1)  # evicts the oldest device
    assert len(t._seen) == 2
    assert t.observe("a", 1) == (False, 0)  # "a" was forgotten
    assert t.observe("c", 1) == (True, 0)


# ---------------------------------------------------------------- Pipeline.process with a real registry


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo county, migrated once, with paddy-0001, paddy-0002 and collar-0001 provisioned."""
    path = tmp_path_factory.mktemp("registry") / "registry.db"
    url = f"sqlite:///{path}"
    migrate(url)
    eng = make_engine(url)
    with Session(eng) as session:
        load_demo(session)
        session.commit()
        for device_id in ("paddy-0001", "paddy-0002", "collar-0001"):
            provision(session, device_id)
        session.commit()
    eng.dispose()  # the last connection checkpoints the WAL into the main file
    return path


@pytest.fixture
def engine(registry_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "registry.db"
    shutil.copyfile(registry_template, path)  # each test gets its own copy of the registry
    eng = make_engine(f"sqlite:///{path}")
    try:
        yield eng
    finally:
        eng.dispose()


def make_pipeline(engine: Engine, directory: DeviceDirectory | None = None) -> Pipeline:
    catalogue = get_catalogue()
    return Pipeline(
        catalogue=catalogue,
        validator=Validator(catalogue, 65536, 300, 400),
        directory=directory or DeviceDirectory(engine),
        influx=None,  # type: ignore[arg-type]  # only .process() is called
        spool=None,  # type: ignore[arg-type]
        engine=engine,
        metrics=IngestMetrics(),
    )


def msg(device_id: str, doc: object, received_ms: int = NOW) -> Message:
    return Message(f"v1/devices/{device_id}/telemetry", orjson.dumps(doc), received_ms)


def parse_line(line: str) -> tuple[str, dict[str, str], str, int]:
    """Split a line protocol line without escapes: measurement, tags, fields text, time."""
    head, fields, ts = line.split(" ")
    measurement, *tags = head.split(",")
    return measurement, dict(t.split("=", 1) for t in tags), fields, int(ts)


def test_paddy_gauge_reading_gets_registry_tags(engine: Engine) -> None:
    p = make_pipeline(engine)
    lines, stamps, dead = p.process([msg("paddy-0001", {"ts": NOW - 5000, "seq": 1, "values": {"water_level_cm": 4}})])
    assert dead == []
    assert stamps == [NOW - 5000]
    (line,) = lines
    measurement, tags, fields, ts = parse_line(line)
    assert (measurement, tags, fields, ts) == ("paddy", PADDY_TAGS, "water_level_cm=4", NOW - 5000)
    info = p.directory.get("paddy-0001")
    assert info is not None and dict(info.tags) == PADDY_TAGS and info.kind == "paddy" and info.active


def test_collar_reading_gets_herd_and_animal_tags(engine: Engine) -> None:
    p = make_pipeline(engine)
    lines, _stamps, dead = p.process([msg("collar-0001", {"ts": NOW, "values": {"body_temp_c": 38.5}})])
    assert dead == []
    measurement, tags, fields, ts = parse_line(lines[0])
    assert (measurement, tags, fields, ts) == ("collar", COLLAR_TAGS, "body_temp_c=38.5", NOW)
    assert "plot" not in tags


def test_missing_ts_is_stamped_with_receive_time_and_flagged(engine: Engine) -> None:
    p = make_pipeline(engine)
    lines, stamps, dead = p.process([msg("paddy-0001", {"values": {"water_level_cm": 2.5}}, received_ms=NOW + 7)])
    assert dead == [] and stamps == [NOW + 7]
    assert parse_line(lines[0])[2:] == ("ts_missing=true,water_level_cm=2.5", NOW + 7)
    assert p.metrics.ts_missing._value.get() == 1


def test_revoked_device_messages_become_device_not_active(engine: Engine) -> None:
    with Session(engine) as session:
        revoke(session, "paddy-0002")
        session.commit()
    p = make_pipeline(engine)
    good = msg("paddy-0001", {"ts": NOW, "values": {"water_level_cm": 1}})
    single = msg("paddy-0002", {"ts": NOW, "values": {"water_level_cm": 1}})
    array = msg("paddy-0002", [{"ts": NOW - i, "values": {"water_level_cm": i}} for i in range(3)])
    lines, _stamps, dead = p.process([good, single, array])
    assert len(lines) == 1 and "device=paddy-0001" in lines[0]
    assert [(d.message, d.device_id, d.rejection.reason, d.rejection.detail, d.rejection.index) for d in dead] == [
        (single, "paddy-0002", "device_not_active", "device 'paddy-0002' is revoked, not active", None),
        (array, "paddy-0002", "device_not_active", "device 'paddy-0002' is revoked, not active", None),
    ]


def test_revocation_after_the_directory_loaded_is_seen_after_refresh(engine: Engine) -> None:
    directory = DeviceDirectory(engine, ttl=3600)
    p = make_pipeline(engine, directory)
    reading = {"ts": NOW, "values": {"water_level_cm": 1}}
    assert len(p.process([msg("paddy-0002", reading)])[0]) == 1
    with Session(engine) as session:
        revoke(session, "paddy-0002")
        session.commit()
    directory.refresh()  # what the TTL does periodically
    lines, _stamps, dead = p.process([msg("paddy-0002", reading)])
    assert lines == [] and [d.rejection.reason for d in dead] == ["device_not_active"]


def test_never_provisioned_device_is_not_active(engine: Engine) -> None:
    p = make_pipeline(engine)
    lines, _stamps, dead = p.process([msg("paddy-0003", {"ts": NOW, "values": {"water_level_cm": 1}})])
    assert lines == []
    assert [(d.rejection.reason, d.rejection.detail) for d in dead] == [
        ("device_not_active", "device 'paddy-0003' is inactive, not active")
    ]


def test_unknown_device_is_rejected(engine: Engine) -> None:
    p = make_pipeline(engine)
    m = msg("ghost-0001", {"ts": NOW, "values": {"water_level_cm": 1}})
    lines, _stamps, dead = p.process([m])
    assert lines == []
    assert [(d.message, d.device_id, d.rejection.reason, d.rejection.detail) for d in dead] == [
        (m, "ghost-0001", "unknown_device", "device 'ghost-0001' is not in the registry")
    ]


def test_new_device_registered_after_directory_loaded_is_found_without_refresh(engine: Engine) -> None:
    directory = DeviceDirectory(engine, ttl=3600)
    directory.refresh()
    p = make_pipeline(engine, directory)
    loaded_at = directory._loaded_at
    with Session(engine) as session:
        result = import_data(
            session, {"devices": [{"id": "paddy-0100", "kind": "paddy", "plot_no": "211122108204-001"}]}
        )
        assert result.changed
        provision(session, "paddy-0100")
        session.commit()
    lines, _stamps, dead = p.process([msg("paddy-0100", {"ts": NOW, "values": {"water_level_cm": 3}})])
    assert dead == []
    assert parse_line(lines[0])[1] == {
        "county": "211122",
        "village": "211122108204",
        "device": "paddy-0100",
        "plot": "211122108204-001",
    }
    assert directory._loaded_at == loaded_at  # found by its own lookup, not by a full reload


def test_bad_payloads_and_good_ones_in_one_batch(engine: Engine) -> None:
    p = make_pipeline(engine)
    batch = [
        msg("paddy-0001", [{"ts": NOW, "seq": 1, "values": {"water_level_cm": 1}}, {"values": {"water_level_cm": 99}}]),
        Message("v1/devices/paddy-0001/telemetry", b"{not json", NOW),
        Message("v1/devices/paddy-0001/other", b"{}", NOW),
        msg("collar-0001", {"ts": NOW, "values": {"body_temp_c": 50}}),
        msg("paddy-0001", {"ts": NOW + 1, "seq": 1, "values": {"water_level_cm": 1}}),  # duplicate seq
        msg("paddy-0001", {"ts": NOW + 2, "seq": 4, "values": {"water_level_cm": 1}}),  # 2 and 3 missing
    ]
    lines, stamps, dead = p.process(batch)
    assert stamps == [NOW, NOW + 1, NOW + 2] and len(lines) == 3
    assert [(d.device_id, d.rejection.reason, d.rejection.index) for d in dead] == [
        ("paddy-0001", "out_of_range", 1),
        ("paddy-0001", "not_json", None),
        (None, "bad_topic", None),
        ("collar-0001", "out_of_range", None),
    ]
    m = p.metrics
    assert m.messages._value.get() == 6
    assert m.received._value.get() == 7
    assert m.duplicates._value.get() == 1
    assert m.gaps._value.get() == 2


def test_an_unexpected_validation_error_becomes_a_dead_letter_not_a_crash(engine: Engine) -> None:
    pipeline = make_pipeline(engine)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    pipeline.validator.parse = broken  # type: ignore[method-assign]
    lines, _, dead = pipeline.process([Message("v1/devices/paddy-0001/telemetry", b"{}", 0)])
    assert lines == [] and [(d.rejection.reason, d.rejection.detail) for d in dead] == [
        ("internal_error", "RuntimeError: boom")
    ]


def test_rejections_beyond_the_row_limit_are_counted_per_reason_with_short_details() -> None:
    from ingest.payload import Rejection
    from ingest.rejects import DETAIL_CHARS, clip, rows_for

    long_name = "m" * 5000  # details quote the payload: a metric name of 5,000 characters
    rejections = [Rejection("unknown_metric", f"metric {long_name!r} is not defined", i) for i in range(4)]
    rejections += [Rejection("out_of_range", f"x{i} above maximum", i) for i in range(4, 9)]
    rows = rows_for(rejections, 2)
    assert [(r.reason, r.index, more) for r, more in rows] == [
        ("unknown_metric", 0, 0),
        ("unknown_metric", 1, 0),
        ("unknown_metric", 2, 1),
        ("out_of_range", 4, 4),
    ]
    assert sum(1 + more for _, more in rows) == len(rejections)
    summary = rows[2][0].detail
    assert len(summary) <= DETAIL_CHARS and summary.endswith(
        "(and 1 more for this reason up to index 3, without rows of their own)"
    )
    assert len(clip(rows[0][0].detail)) == DETAIL_CHARS
    assert rows_for(rejections[:2], 2) == [(r, 0) for r in rejections[:2]]
