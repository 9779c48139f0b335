"""InfluxDB's answers to ingest's writes, each produced for real: only lines InfluxDB names are
dead-lettered; every other answer keeps the readings (spool, retry with backoff) and says what to fix.

Debian's InfluxDB 1.6 answers 401 (bad credentials, authentication on), 403 (a user without WRITE),
404 (database dropped), 413 (`max-body-size`) and 400 naming lines (field type conflict, unparsable
line) itself. It never answers 429, 503 with Retry-After, or 2.x's 422 partial write: those come from
`tests.faults.InfluxFaults`, a small real HTTP server in front of the real InfluxDB (documented there).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from core.influx import InfluxV1
from core.localstack import LocalStack
from core.services import InfluxD, free_port, influxd
from core.settings import get_settings
from tests.conftest import DeviceClient, now_ms, wait_until
from tests.faults import InfluxFaults, dead_letters, metric, wait_subscribed

SPOOLED = "village_ingest_readings_spooled_total"
ERRORS = "village_ingest_influx_errors_total"


def _auth_influxd(stack: LocalStack) -> InfluxV1:
    """Restart the stack's InfluxDB with authentication on and an admin user admin/pw (same data)."""
    assert stack.influxd
    port = stack.influxd.port
    stack.influxd.stop()
    stack.influxd = influxd(stack.root / "influxdb", port=port, auth=True).start()
    create = "CREATE USER admin WITH PASSWORD 'pw' WITH ALL PRIVILEGES"  # allowed while no user exists
    assert httpx.post(f"{stack.influxd.url}/query", data={"q": create}).status_code == 200
    return InfluxV1(stack.influxd.url, stack.influx_db, username="admin", password="pw")


def _send(device: DeviceClient, n: int, t0: int, metric_name: str = "soil_moisture") -> None:
    for i in range(n):
        device.send([{"ts": t0 + i, "seq": i, "values": {metric_name: 20.0 + i % 10}}])


def _ingest(stack: LocalStack, **env: str) -> int:
    port = free_port()
    stack.start_ingest(1, **{"INGEST_METRICS_PORT": str(port), "INGEST_RETRY_MAX_S": "2", "LOG_FORMAT": "json", **env})
    wait_subscribed(port)
    return port


def test_fault_influx_401_spools_never_dead_letters_and_stores_all_after_the_fix(stack: LocalStack) -> None:
    admin = _auth_influxd(stack)
    port = _ingest(stack, INFLUX_USERNAME="admin", INFLUX_PASSWORD="expired")
    soil = DeviceClient(stack, "soil-0001")
    _send(soil, 20, now_ms() - 60_000)
    assert wait_until(lambda: metric(port, SPOOLED) == 20, 20), "the readings were not spooled"
    assert metric(port, ERRORS, status="401") >= 1
    assert metric(port, "village_ingest_readings_stored_total") == 0  # nothing counts as stored
    assert dead_letters(stack) == []  # a credentials problem is not bad data
    assert admin.count("soil", "soil_moisture") == 0
    log = (stack.root / "ingest.log").read_text()
    assert "InfluxDB refused the credentials (401): check INFLUX_USERNAME/INFLUX_PASSWORD" in log
    stack.stop_ingest()
    _ingest(stack, INFLUX_USERNAME="admin", INFLUX_PASSWORD="pw")  # the operator fixes the password
    assert wait_until(lambda: admin.count("soil", "soil_moisture") == 20, 30)
    assert dead_letters(stack) == []
    admin.close()


def test_fault_influx_403_spools_and_stores_all_once_write_is_granted(stack: LocalStack) -> None:
    admin = _auth_influxd(stack)
    admin.query("CREATE USER ingester WITH PASSWORD 'pw2'")
    admin.query(f'GRANT READ ON "{stack.influx_db}" TO ingester')  # may read, may not write
    port = _ingest(stack, INFLUX_USERNAME="ingester", INFLUX_PASSWORD="pw2")
    soil = DeviceClient(stack, "soil-0002")
    _send(soil, 20, now_ms() - 60_000)
    assert wait_until(lambda: metric(port, SPOOLED) == 20, 20)
    assert metric(port, ERRORS, status="403") >= 1 and dead_letters(stack) == []
    assert "(403): grant the user WRITE on it" in (stack.root / "ingest.log").read_text()
    admin.query(f'GRANT WRITE ON "{stack.influx_db}" TO ingester')  # fixed on the server, no restart
    assert wait_until(lambda: admin.count("soil", "soil_moisture") == 20, 30)
    assert wait_until(lambda: metric(port, "village_ingest_readings_replayed_total") == 20, 10)
    assert dead_letters(stack) == []
    admin.close()


def test_fault_influx_404_database_dropped_spools_until_it_exists_again(stack: LocalStack) -> None:
    port = _ingest(stack)
    with stack.influx() as influx:
        influx.query(f'DROP DATABASE "{stack.influx_db}"')
        soil = DeviceClient(stack, "soil-0003")
        _send(soil, 20, now_ms() - 60_000)
        assert wait_until(lambda: metric(port, SPOOLED) == 20, 20)
        assert metric(port, ERRORS, status="404") >= 1 and dead_letters(stack) == []
        assert f"InfluxDB has no database '{stack.influx_db}' (404)" in (stack.root / "ingest.log").read_text()
        influx.ensure_database()  # the operator creates it again
        assert wait_until(lambda: influx.count("soil", "soil_moisture") == 20, 30)
    assert dead_letters(stack) == []


def test_fault_influx_413_halves_requests_and_loses_nothing(stack: LocalStack) -> None:
    assert stack.influxd
    port = stack.influxd.port
    stack.influxd.stop()
    stack.influxd = influxd(stack.root / "influxdb", port=port, max_body_bytes=2048).start()
    metrics_port = _ingest(stack, INGEST_BATCH_MS="300")
    paddy = DeviceClient(stack, "paddy-0001")
    t0 = now_ms() - 60_000
    for m in range(5):  # arrays of 60 readings: ~9 KB of line protocol per message
        paddy.send([[{"ts": t0 + m * 100 + i, "values": {"water_level_cm": 3.0}} for i in range(60)]])
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("paddy", "water_level_cm") == 300, 30)
    assert dead_letters(stack) == [] and metric(metrics_port, SPOOLED) == 0


def test_fault_influx_type_conflict_dead_letters_exactly_the_named_points_and_replays(stack: LocalStack) -> None:
    port = _ingest(stack)
    with stack.influx() as influx:
        # the field is now an integer in the shard of these readings (1.x keeps field types per shard)
        influx.write(f"soil,device=other soil_moisture=1i {now_ms() - 120_000}")
        soil, paddy = DeviceClient(stack, "soil-0004"), DeviceClient(stack, "paddy-0002")
        t0 = now_ms() - 60_000
        for i in range(10):  # soil (float: refused) and paddy (fine) readings in the same batches
            soil.send([{"ts": t0 + i, "values": {"soil_moisture": 30.5, "soil_temp_c": 11.0}}])
            paddy.send([{"ts": t0 + i, "values": {"water_level_cm": 4.0}}])
        assert wait_until(lambda: influx.count("paddy", "water_level_cm") == 10, 20)
        assert wait_until(lambda: sum(p.payload.count(b"\n") + 1 for p in _influx_payloads(stack)) == 10, 20)
        rows = dead_letters(stack, "influx_rejected")
        assert all(d.topic == "influx" and d.device_id == "soil-0004" for d, _ in rows)
        assert 'input field "soil_moisture" on measurement "soil" is type float' in rows[0][0].detail
        assert all(line.startswith(b"soil,") for p in _influx_payloads(stack) for line in p.payload.split(b"\n"))
        assert metric(port, ERRORS, status="refused_lines") >= 1
        assert metric(port, SPOOLED) == 0  # the batches were written, not held
        # the fix InfluxDB's reason calls for, then the replay
        influx.query('DROP MEASUREMENT "soil"')
        env = {**stack.env(), "COLUMNS": "250"}
        get_settings.cache_clear()
        from cli.main import app

        replayed = CliRunner().invoke(app, ["deadletters", "replay", "--reason", "influx_rejected"], env=env)
        assert replayed.exit_code == 0, replayed.output
        assert f"stored {len(rows)}, still rejected 0" in replayed.output
        assert influx.count("soil", "soil_moisture") == 10


def _influx_payloads(stack: LocalStack) -> list:
    return list({p.id: p for _, p in dead_letters(stack, "influx_rejected")}.values())


def test_fault_influx_unparsable_lines_are_named_by_influxdb_not_bisected(tmp_path: Path) -> None:
    server: InfluxD = influxd(tmp_path / "influx").start()
    try:
        faults = InfluxFaults(server.url)
        influx = InfluxV1(faults.url, "village")
        influx.ensure_database()
        lines = [f"paddy,device=p{i} water_level_cm={i}.5 {1000 + i}" for i in range(50)]
        lines[7] = "paddy,device=p7 water_level_cm= 1007"  # no field value
        lines[31] = 'paddy,device=p31 water_level_cm="unclosed 1031'
        before = faults.count()
        refused = influx.write_lines(lines)
        assert sorted(refused) == [7, 31] and all(r.startswith("unable to parse") for r in refused.values())
        assert influx.count("paddy", "water_level_cm") == 48
        assert faults.count(since=0) - before <= 2  # one answer named both lines, one write of the rest
        faults.close()
    finally:
        server.stop()


def test_fault_influx_answers_of_2x_and_3_name_their_lines() -> None:
    """Bodies as InfluxDB 2.x (422 partial write), 3 Core (`data` with line numbers) and IOx send them."""
    from core.influx import refused_lines

    lines = ["soil,d=a soil_moisture=1 1", "paddy,d=b water_level_cm=2 1", "soil,d=c soil_moisture=3i 1"]
    v2 = (
        '{"code":"unprocessable entity","message":"failure writing points to database: partial write: field type '
        'conflict: input field \\"soil_moisture\\" on measurement \\"soil\\" is type float, already exists as type '
        'integer dropped=1"}'
    )
    assert list(refused_lines(v2, lines)) == [0]
    core3 = (
        '{"error":"partial write of line protocol occurred","data":[{"error_message":"No fields were provided",'
        '"line_number":2,"original_line":"paddy,d=b water_level_cm=2 1"}]}'
    )
    assert refused_lines(core3, lines) == {1: "No fields were provided"}
    assert refused_lines('{"code":"invalid","line":3,"message":"bad"}', lines) == {2: "bad"}
    assert refused_lines('{"error":"partial write: points beyond retention policy dropped=2"}', lines) == {}


def test_fault_influx_429_503_and_timeouts_spool_and_honour_retry_after(stack: LocalStack) -> None:
    assert stack.influxd
    faults = InfluxFaults(stack.influxd.url)
    try:
        port = _ingest(stack, INFLUX_URL=faults.url, INFLUX_TIMEOUT_S="1", INGEST_RETRY_MAX_S="1")
        soil = DeviceClient(stack, "soil-0005")
        t0 = now_ms() - 60_000
        faults.mode = ("status", 429, 4)  # InfluxDB 2.x/3 rate limit: "come back in 4 s"
        start = time.monotonic()
        _send(soil, 5, t0)
        assert wait_until(lambda: faults.count(429) >= 1, 10)
        first = min(t for t, s in faults.writes if s == 429)
        time.sleep(max(0.0, first + 6 - time.monotonic()))
        asked = [t - first for t, s in faults.writes if s == 429]
        # a backoff capped at 1 s would have tried ~6 times; Retry-After allows one more try after 4 s
        assert len(asked) <= 2 and all(dt == 0 or dt >= 3.9 for dt in asked), asked
        assert metric(port, ERRORS, status="429") >= 1
        faults.mode = ("status", 503, None)  # overloaded, no Retry-After: backoff
        _send(soil, 5, t0 + 5)
        assert wait_until(lambda: metric(port, ERRORS, status="503") >= 1, 15)
        faults.mode = ("hang", 3)  # no answer within INFLUX_TIMEOUT_S
        _send(soil, 5, t0 + 10)
        assert wait_until(lambda: metric(port, ERRORS, status="timeout") >= 1, 15)
        assert metric(port, "village_ingest_readings_stored_total") == 0
        faults.mode = "forward"
        with stack.influx() as influx:
            assert wait_until(lambda: influx.count("soil", "soil_moisture") == 15, 30)
        assert dead_letters(stack) == [] and time.monotonic() - start < 60
        assert "rate-limiting writes (429)" in (stack.root / "ingest.log").read_text()
    finally:
        faults.close()


def test_fault_influx_2x_422_partial_write_dead_letters_only_the_conflicting_points(stack: LocalStack) -> None:
    assert stack.influxd
    faults = InfluxFaults(stack.influxd.url)
    faults.mode = "2.x"
    try:
        _ingest(stack, INFLUX_URL=faults.url)
        with stack.influx() as influx:
            influx.write(f"paddy,device=other water_level_cm=1i {now_ms() - 120_000}")
            paddy, soil = DeviceClient(stack, "paddy-0003"), DeviceClient(stack, "soil-0006")
            t0 = now_ms() - 60_000
            for i in range(6):
                paddy.send([{"ts": t0 + i, "values": {"water_level_cm": 2.5, "water_temp_c": 18.0}}])
                soil.send([{"ts": t0 + i, "values": {"soil_moisture": 30.0}}])
            assert wait_until(lambda: influx.count("soil", "soil_moisture") == 6, 20)
            assert wait_until(lambda: sum(p.payload.count(b"\n") + 1 for p in _influx_payloads(stack)) == 6, 20)
        assert faults.count(422) >= 1
        assert all(d.device_id == "paddy-0003" for d, _ in dead_letters(stack))
    finally:
        faults.close()


@pytest.fixture(autouse=True)
def _fresh_settings() -> None:
    get_settings.cache_clear()
