"""A small `village bench ingest` run end to end (the short `village demo`: tests/test_demo.py), and the
benchmark's load generator against a real broker: reason codes, refused and disconnected publishers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, select

from bench.ingest import run
from core.broker_auth import TELEMETRY_TOPIC
from core.db import get_engine
from core.localstack import LocalStack
from core.models import Device
from simulators.loadgen import _receive_maximum, connect_packet, publish_load, sentinel_indices


def test_bench_ingest_counts_every_reading_and_reports_its_figures() -> None:
    figures = run(readings=3000, devices=6, per_message=3, replicas=1, timeout=120)
    assert figures["readings"] == 3000 and figures["published"] == 1000
    assert figures["acked"] == 1000 and figures["acked_readings"] == 3000  # PUBACKs with reason code < 128
    assert figures["puback_reason_codes"] == {"0": 1000} and figures["refused"] == figures["unacked"] == 0
    assert figures["publishers_failed"] == 0 and figures["publisher_failures"] == []
    assert figures["stored"] == 3000 and figures["lost"] == 0 and figures["rejected"] == 0
    assert figures["stored_per_s"] > 0 and figures["published_per_s"] > 0 and figures["cores"] == os.cpu_count()
    assert set(figures["cpu_s"]) == {"mosquitto", "ingest", "influxd", "bench"} and figures["cores_used"] > 0
    assert "latency_ms_p99" not in figures  # a flood's latency is its backlog: only paced runs time sentinels


def test_bench_ingest_paced_run_times_sentinels_found_in_influxdb() -> None:
    figures = run(readings=2000, devices=8, replicas=1, timeout=120, rate=500, sentinel_devices=2)
    assert figures["paced_messages_per_s"] == 500 and 400 <= figures["published_per_s"] <= 520
    assert figures["stored"] == figures["acked"] == 2000 and figures["lost"] == 0
    assert figures["sentinels"] == 500 and figures["sentinels_missing"] == 0  # 2 devices of 8: every reading
    # device to queryable: at least ingest's batch wait, well under the poller's give-up time
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p99"] <= figures["latency_ms_max"] < 10_000
    assert figures["polls"] > 0 and figures["poller_cpu_s"] > 0 and 0 < figures["poller_cores"] < 0.5
    stages = figures["stages"]  # where the time goes, from InfluxDB's and the replicas' own counters
    assert stages["influx_writes"] > 0 and stages["influx_points_per_write"] > 0 and stages["ingest_lag_ms_mean"] > 0


def test_load_generator_counts_reason_codes_and_names_failed_publishers(stack: LocalStack) -> None:
    with Session(get_engine(stack.database_url)) as session:
        devices = [(d.id, d.kind) for d in session.exec(select(Device).order_by(Device.id)).all()[:3]]
    (good, kind), (other, other_kind), (wrong, wrong_kind) = devices
    assert stack.mosquitto
    host, port = stack.mosquitto.host, stack.mosquitto.port
    secret = stack.secrets[good]  # type: ignore[attr-defined]

    # a refused connection: the publisher is named, the others carry its share
    load = publish_load([(good, secret, kind), (wrong, "not-its-secret", wrong_kind)], host, port, 10)
    assert load.messages == 10 and load.acked == 10 and load.refused == load.unacked == 0
    assert load.reason_codes == {16: 10}  # no subscriber: "No matching subscribers" (16 < 128) is an acknowledgement
    [failure] = load.failures
    assert failure["device"] == wrong and str(failure["error"]).startswith("connection refused: 13")

    # a PUBACK with an error reason code: another device's topic is not authorized (135), never acknowledged;
    # mosquitto 2.0 then closes the connection (one message: nothing unread, so a close, not a reset)
    load = publish_load([(good, secret, kind)], host, port, 1, topic=TELEMETRY_TOPIC.format(device_id=other))
    assert load.messages == 1 and load.acked == 0 and load.refused == 1 and load.reason_codes == {135: 1}
    [failure] = load.failures
    assert failure["device"] == good and str(failure["error"]).startswith("PUBACK 135 Not authorized")

    # a packet over the broker's limit: the broker disconnects the publisher, its message stays unacknowledged
    load = publish_load([(good, secret, kind)], host, port, 3000, per_message=3000)
    assert load.messages == 1 and load.acked == 0 and load.unacked == 1
    assert load.failures[0]["device"] == good and "broker" in str(load.failures[0]["error"])
    assert other_kind  # (unused: only its topic matters)


def test_load_generator_reads_the_brokers_receive_maximum() -> None:
    props = bytes([0x22, 0, 10]) + bytes([0x26, 0, 1]) + b"k" + bytes([0, 1]) + b"v" + bytes([0x21, 0, 20])
    assert _receive_maximum(props) == 20 and _receive_maximum(b"") is None
    assert connect_packet("d", "d", "s")[:1] == b"\x10"
    assert sentinel_indices(200, 4) == {0, 51, 100, 151} and sentinel_indices(3, 5) == {0, 1, 2}


def test_bench_cli_prints_one_json_line_last(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "bench",
            "ingest",
            "--readings",
            "500",
            "--devices",
            "4",
            "--replicas",
            "1",
            "--array-size",
            "5",
            "--rate",
            "250",
            "--sentinel-devices",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=True,
    )
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["payload"], r["paced_messages_per_s"]) for r in last["runs"]] == [
        ("single", None),
        ("array of 5", None),
        ("single", 250),
    ]
    assert all(r["lost"] == 0 and r["stored"] == 500 and r["acked_readings"] == 500 for r in last["runs"])
    assert last["runs"][2]["sentinels"] == 125 and last["runs"][2]["latency_ms_p99"] > 0
    assert last["targets"]["zero_lost"] is True and set(last["targets"]) == {
        "zero_lost",
        "single_stored_per_s_at_least_10000",
        "paced_p99_under_2000_ms",
    }
