"""The telemetry path end to end against real mosquitto, InfluxDB and ingest processes."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from sqlmodel import Session, select

from core.db import get_engine
from core.localstack import LocalStack
from core.models import DeadLetter, DeadLetterPayload
from core.services import free_ports
from core.settings import get_settings
from tests.conftest import DeviceClient, now_ms, wait_ingest_ready, wait_until

PROBE = {"air_temp_c": 10.0}
_PAD = b'{"ts": 1, "values": {"soil_moisture": 1}, "pad": "'
TOO_LARGE = _PAD + b"x" * (65_600 - len(_PAD) - 2) + b'"}'  # 65,600 bytes: 64 bytes over 64 KiB


def _ready(stack: LocalStack) -> DeviceClient:
    probe = DeviceClient(stack, "wx-0005")
    wait_ingest_ready(stack, probe, "weather", PROBE)
    return probe


def _dead_letters(stack: LocalStack) -> list[DeadLetter]:
    with Session(get_engine(stack.database_url)) as session:
        return list(session.exec(select(DeadLetter).order_by(DeadLetter.id)))


def test_readings_are_stored_with_registry_tags(stack: LocalStack) -> None:
    stack.start_ingest(1)
    _ready(stack)
    paddy, collar = DeviceClient(stack, "paddy-0001"), DeviceClient(stack, "collar-0001")
    t = now_ms() - 60_000
    assert all(rc == 0 for rc in paddy.send([{"ts": t, "seq": 1, "values": {"water_level_cm": 4.5}}]))
    # an offline backfill: an array of readings, and an RFC 3339 timestamp
    backfill = [
        {"ts": t + i * 1000, "seq": 10 + i, "values": {"body_temp_c": 38.4 + i / 10, "activity": 3}} for i in range(5)
    ]
    backfill.append({"ts": "2026-11-25T08:00:00.250+08:00", "values": {"body_temp_c": 38.6}})
    collar.send([backfill])
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("collar", "body_temp_c") == 6)
        series = influx.query('SELECT * FROM "paddy" GROUP BY *')
        tags = series[0]["tags"]
        assert tags == {
            "county": "211122",
            "village": "211122101201",
            "device": "paddy-0001",
            "plot": "211122101201-001",
        }
        assert series[0]["values"][0][0] == t  # millisecond precision kept
        collar_tags = influx.query('SELECT * FROM "collar" GROUP BY *')[0]["tags"]
        assert collar_tags["herd"] == "PS-H001" and collar_tags["animal"] == "221112200000003"
        assert collar_tags["village"] == "211122108204"
        rfc = influx.query("SELECT body_temp_c FROM \"collar\" WHERE time = '2026-11-25T00:00:00.25Z'")
        assert rfc and rfc[0]["values"][0][1] == 38.6


def test_bad_input_gets_its_reason_and_good_readings_are_all_stored(stack: LocalStack) -> None:
    stack.start_ingest(1)
    _ready(stack)
    soil = DeviceClient(stack, "soil-0001")
    t = now_ms() - 10_000
    good = [{"ts": t + i, "seq": i, "values": {"soil_moisture": 30.0 + i, "soil_temp_c": 11.0}} for i in range(20)]
    bad: list[tuple[bytes | dict | list, str]] = [
        (b"not json at all", "not_json"),
        (b'{"ts": 1, "values": {"soil_moisture": NaN}}', "not_finite"),
        (b'{"values": {"soil_moisture": Infinity}}', "not_finite"),
        ({"ts": t, "values": {"soil_moisture": "wet"}}, "wrong_type"),
        ({"ts": t, "values": {"soil_moisture": True}}, "wrong_type"),
        ({"ts": t, "values": {"leaf_wetness": 3}}, "unknown_metric"),
        ({"ts": t, "values": {"soil_moisture": 140}}, "out_of_range"),
        ({"ts": t, "values": {"soil_ph": -1}}, "out_of_range"),
        ({"ts": now_ms() + 3_600_000, "values": {"soil_moisture": 20}}, "future_timestamp"),
        ({"ts": 1_700_000_000, "values": {"soil_moisture": 20}}, "too_old"),
        ({"ts": "yesterday", "values": {"soil_moisture": 20}}, "bad_timestamp"),
        ({"ts": t, "values": {}}, "no_values"),
        ([], "bad_shape"),
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (TOO_LARGE, "payload_too_large"),  # over the limit but within the broker's header allowance
    ]
    # a mixed array: the good element is stored, the bad one dead-lettered with its index
    mixed = [
        {"ts": t + 100, "seq": 100, "values": {"soil_moisture": 33.3}},
        {"ts": t + 101, "seq": 101, "values": {"soil_moisture": -5}},
    ]
    payloads: list[bytes | dict | list] = []
    for i, g in enumerate(good):
        payloads.append(g)
        if i < len(bad):
            payloads.append(bad[i][0])
    payloads.append(mixed)
    assert all(rc == 0 for rc in soil.send(payloads))
    # an unregistered device cannot connect, and a device cannot publish to another device's topic
    intruder = DeviceClient(stack, "soil-9999", secret="guess")
    assert intruder.connack and intruder.connack[0].is_failure
    other = soil.send([{"ts": t, "values": {"soil_moisture": 99}}], topic="v1/devices/soil-0002/telemetry")
    assert other[0].value == 135  # PUBACK "Not authorized": the broker's precise refusal

    expected = {reason for _, reason in bad} | {"out_of_range"}
    assert wait_until(lambda: len(_dead_letters(stack)) >= len(bad) + 1)
    rows = _dead_letters(stack)
    assert sorted(r.reason for r in rows) == sorted([reason for _, reason in bad] + ["out_of_range"])
    assert {r.reason for r in rows} == expected
    by_reason = {r.reason: r for r in rows}
    assert by_reason["unknown_metric"].detail.startswith("metric 'leaf_wetness' is not defined for kind 'soil'")
    assert "above maximum 100" in by_reason["out_of_range"].detail or any("above maximum 100" in r.detail for r in rows)
    assert "seconds, not milliseconds" in by_reason["too_old"].detail
    with Session(get_engine(stack.database_url)) as session:  # the raw payload is kept, once per message
        kept = session.get(DeadLetterPayload, by_reason["not_json"].payload_id)
        assert kept is not None and kept.payload == b"not json at all" and not kept.truncated
        assert len(session.exec(select(DeadLetterPayload)).all()) == len(bad) + 1
    array_row = next(r for r in rows if r.index is not None)
    assert array_row.index == 1 and "below minimum 0" in array_row.detail
    assert all(r.topic == "v1/devices/soil-0001/telemetry" and r.device_id == "soil-0001" for r in rows)
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("soil", "soil_moisture") == len(good) + 1)
        assert influx.count("soil", "soil_moisture", "device = 'soil-0002'") == 0


def test_influxdb_outage_spools_and_replays_everything_once(stack: LocalStack) -> None:
    stack.start_ingest(1)
    _ready(stack)
    paddy = DeviceClient(stack, "paddy-0002")
    t0 = now_ms() - 600_000
    stop = threading.Event()
    sent = []

    def stream() -> None:
        i = 0
        while not stop.is_set() or i < 300:
            payload = {"ts": t0 + i, "seq": i, "values": {"water_level_cm": (i % 40) / 2}}
            paddy.send([payload])
            sent.append(i)
            i += 1
            time.sleep(0.002)

    publisher = threading.Thread(target=stream)
    publisher.start()
    time.sleep(0.5)
    assert stack.influxd
    stack.influxd.stop()  # InfluxDB goes away mid-stream
    time.sleep(2)
    stack.influxd.start()
    stop.set()
    publisher.join(60)
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("paddy", "water_level_cm") >= len(sent), timeout=60)
        time.sleep(1)
        assert influx.count("paddy", "water_level_cm") == len(sent)  # every reading, none twice
    log = (stack.root / "ingest.log").read_text()
    assert "spooling" in log and "replayed spooled batch" in log


def test_ingest_killed_mid_stream_loses_nothing(stack: LocalStack) -> None:
    [proc] = stack.start_ingest(1)
    _ready(stack)
    soil = DeviceClient(stack, "soil-0003")
    t0 = now_ms() - 600_000
    total = 3000
    batch = 50
    for start in range(0, total, batch):
        soil.send([{"ts": t0 + i, "seq": i, "values": {"soil_moisture": 25.0}} for i in range(start, start + batch)])
        if start == total // 3:
            proc.send_signal(signal.SIGKILL)  # no chance to flush or ack
            proc.wait()
            stack.ingest_procs.remove(proc)
        if start == 2 * total // 3:
            stack.start_ingest(1)  # same replica index: resumes its persistent session
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("soil", "soil_moisture", "device = 'soil-0003'") == total, 60)


def test_two_replicas_split_the_load_without_loss_or_doubles(stack: LocalStack) -> None:
    base = free_ports(2)  # replica i serves its metrics on base + i
    stack.start_ingest(2, INGEST_METRICS_PORT=str(base))
    _ready(stack)
    devices = [DeviceClient(stack, f"paddy-{i:04d}") for i in range(3, 9)]
    t0 = now_ms() - 600_000
    per_device = 400
    for n in range(0, per_device, 50):
        for d in devices:
            d.send([{"ts": t0 + i, "seq": i, "values": {"water_level_cm": 3.0}} for i in range(n, n + 50)])
    total = per_device * len(devices)
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("paddy", "water_level_cm") == total, 60)
        time.sleep(0.5)
        assert influx.count("paddy", "water_level_cm") == total
    stored = []
    for port in (base, base + 1):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("village_ingest_readings_stored_total"))
        stored.append(float(line.split()[-1]))
    assert all(s > total * 0.1 for s in stored), f"load not split between replicas: {stored}"
    assert sum(stored) >= total


def test_new_device_is_picked_up_and_revocation_takes_effect_without_restart(stack: LocalStack) -> None:
    from core.provisioning import provision, revoke
    from core.registry_io import import_data

    stack.start_ingest(1)
    _ready(stack)
    engine = get_engine(stack.database_url)
    with Session(engine) as session:
        import_data(session, {"devices": [{"id": "soil-0100", "kind": "soil", "plot_no": "211122101201-002"}]})
        session.commit()
        stack.secrets["soil-0100"] = provision(session, "soil-0100")
        session.commit()
    stack.sync_broker()
    time.sleep(0.3)
    new = DeviceClient(stack, "soil-0100")
    new.send([{"ts": now_ms(), "values": {"soil_moisture": 41.0}}])
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("soil", "soil_moisture", "device = 'soil-0100'") == 1)
    with Session(engine) as session:
        revoke(session, "soil-0100")
        session.commit()
    stack.sync_broker()  # SIGHUP: the broker drops the connected device and refuses it from now on
    assert wait_until(lambda: not new.client.is_connected(), timeout=10)
    again = DeviceClient(stack, "soil-0100")
    assert again.connack and again.connack[0].is_failure
    assert stack.ingest_procs[0].poll() is None  # ingestion never restarted


def test_dead_letters_replay_after_a_catalogue_fix(stack: LocalStack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml
    from typer.testing import CliRunner

    from cli.main import app
    from core.catalogue import PACKAGED_CATALOGUE

    stack.start_ingest(1)
    _ready(stack)
    barn = DeviceClient(stack, "barn-0001")
    t = now_ms() - 5000
    barn.send([{"ts": t, "values": {"nh3_ppm": 130.0}}, {"ts": t + 1, "values": {"nh3_ppm": 12.0}}])
    assert wait_until(lambda: len(_dead_letters(stack)) == 1)
    env = {**stack.env(), "COLUMNS": "250"}
    runner = CliRunner()
    get_settings.cache_clear()
    listed = runner.invoke(app, ["deadletters", "list"], env=env)
    assert listed.exit_code == 0 and "out_of_range" in listed.output
    # nothing changes on replay with the same catalogue
    same = runner.invoke(app, ["deadletters", "replay"], env=env)
    assert same.exit_code == 0 and "stored 0, still rejected 1" in same.output
    # widen the range (a sensor that really reads up to 200 ppm) and replay
    catalogue = yaml.safe_load(PACKAGED_CATALOGUE.read_text())
    catalogue["kinds"]["barn"]["metrics"]["nh3_ppm"]["max"] = 200
    fixed = tmp_path / "catalogue.yaml"
    fixed.write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    get_settings.cache_clear()
    replayed = runner.invoke(app, ["deadletters", "replay"], env={**env, "CATALOGUE_FILE": str(fixed)})
    assert replayed.exit_code == 0 and "stored 1, still rejected 0" in replayed.output, replayed.output
    with stack.influx() as influx:
        assert influx.count("barn", "nh3_ppm") == 2
    assert _dead_letters(stack)[0].replay_result == "stored"
