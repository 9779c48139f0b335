"""The device plane's trust boundary (issue 10): client ids, service accounts, message sizes, TLS.

Each attack is a test named after it, against the real mosquitto, InfluxDB and ingest processes
the fixtures start (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, SQLModel, col, select
from typer.testing import CliRunner

from cli.main import app
from core.catalogue import PACKAGED_CATALOGUE
from core.db import alembic_config, get_engine, make_engine
from core.localstack import LocalStack
from core.models import DeadLetter, DeadLetterPayload, Device
from core.provisioning import provision
from core.registry_io import load_demo
from core.services import BrokerTls, free_port, postgres
from core.settings import get_settings
from ingest.rejects import PREFIX_BYTES
from tests.api_fixtures import Template, make_client, token
from tests.conftest import DeviceClient, now_ms, wait_ingest_ready, wait_until

PROBE = {"air_temp_c": 10.0}


def _ready(stack: LocalStack) -> DeviceClient:
    probe = DeviceClient(stack, "wx-0005")
    wait_ingest_ready(stack, probe, "weather", PROBE)
    return probe


def _ingest_log(stack: LocalStack) -> str:
    return (stack.root / "ingest.log").read_text(errors="replace")


class Intruder:
    """A device with its own valid credentials that connects under another client id and keeps
    reconnecting (paho's automatic reconnect), as the attacker of issue 10 did."""

    def __init__(self, stack: LocalStack, device_id: str, client_id: str, protocol: int = mqtt.MQTTv311) -> None:
        assert stack.mosquitto
        kwargs = {"clean_session": False} if protocol == mqtt.MQTTv311 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **kwargs)
        self.client.username_pw_set(device_id, stack.secrets[device_id])  # type: ignore[attr-defined]
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.1)  # type: ignore[arg-type]
        self.connacks: list[mqtt.ReasonCode] = []
        self.messages: list[str] = []
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.append(rc)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        self.client.connect(stack.mosquitto.host, stack.mosquitto.port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------- attack 5: client ids


def test_attack_session_takeover_by_device_client_id(stack: LocalStack) -> None:
    """A device connecting as `ingest-0` with clean session off no longer takes over the ingest
    replica's persistent session and shared subscription: the broker gives it its own id."""
    stack.start_ingest(1)
    _ready(stack)
    paddy = DeviceClient(stack, "paddy-0003")
    t0 = now_ms() - 60_000
    intruders = [Intruder(stack, "soil-0002", "ingest-0")]
    try:
        for i in range(40):  # about 8 s of attack while another device publishes 40 QoS 1 readings
            if i % 8 == 0:  # fresh connections too, not only paho's reconnects
                intruders.append(Intruder(stack, "soil-0002", "ingest-0"))
            assert paddy.send([{"ts": t0 + i, "seq": i, "values": {"water_level_cm": 2.0}}]) == [0]
            time.sleep(0.2)
    finally:
        for intruder in intruders:
            intruder.close()
    assert any(not rc.is_failure for x in intruders for rc in x.connacks), "the intruder never got in"
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("paddy", "water_level_cm", "device = 'paddy-0003'") == 40, 30)
    log = _ingest_log(stack)
    assert "disconnected from broker" not in log, "the ingest replica was knocked off"
    assert log.count("session_present") == 1  # connected once, never again
    assert all(not x.messages for x in intruders), "the intruder received device telemetry"


def test_attack_device_kicks_another_device(stack: LocalStack) -> None:
    """A device using another device's client id (with its own credentials) cannot knock it off."""
    stack.start_ingest(1)
    _ready(stack)
    victim = DeviceClient(stack, "paddy-0004")
    dropped: list[object] = []
    victim.client.on_disconnect = lambda _c, _u, _f, rc, _p: dropped.append(rc)
    t0 = now_ms() - 60_000
    intruders: list[Intruder] = []
    try:
        for i in range(20):
            if i % 4 == 0:
                protocol = mqtt.MQTTv311 if i % 8 == 0 else mqtt.MQTTv5
                intruders.append(Intruder(stack, "soil-0003", "paddy-0004", protocol))
            assert victim.send([{"ts": t0 + i, "seq": i, "values": {"water_level_cm": 1.5}}]) == [0]
            time.sleep(0.15)
    finally:
        for intruder in intruders:
            intruder.close()
    assert any(not rc.is_failure for x in intruders for rc in x.connacks), "the intruder never got in"
    assert dropped == [], f"the victim was disconnected: {dropped}"
    assert victim.client.is_connected()
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("paddy", "water_level_cm", "device = 'paddy-0004'") == 20, 30)


# ---------------------------------------------------------------- attack 4: bounded storage per message


def _rows(stack: LocalStack) -> tuple[list[DeadLetter], list[DeadLetterPayload]]:
    with Session(get_engine(stack.database_url)) as session:
        rows = list(session.exec(select(DeadLetter).order_by(col(DeadLetter.id))))
        return rows, list(session.exec(select(DeadLetterPayload).order_by(col(DeadLetterPayload.id))))


def _registry_bytes(stack: LocalStack) -> int:
    return sum(p.stat().st_size for p in stack.root.glob("village.db*"))


def test_attack_dead_letter_amplification(stack: LocalStack) -> None:
    """30,000 zeros (60,001 bytes) once wrote 30,000 rows with the whole payload each (1.8 GB):
    now one copy of the payload and at most INGEST_DEADLETTER_ROWS_PER_MESSAGE rows, the rest counted."""
    stack.start_ingest(1)
    _ready(stack)
    before = _registry_bytes(stack)
    zeros = b"[" + b",".join([b"0"] * 30_000) + b"]"
    assert len(zeros) == 60_001
    soil = DeviceClient(stack, "soil-0004")
    t = now_ms() - 1000
    assert soil.send([zeros, {"ts": t, "values": {"soil_moisture": 30.0}}]) == [0, 0]
    with stack.influx() as influx:  # ingestion goes on: the next reading is stored
        assert wait_until(lambda: influx.count("soil", "soil_moisture", "device = 'soil-0004'") == 1)
    assert wait_until(lambda: len(_rows(stack)[0]) == 21)
    time.sleep(0.5)
    rows, payloads = _rows(stack)
    assert len(payloads) == 1  # one copy of the message, whole (it is under the size limit)
    kept = payloads[0]
    assert kept.payload == zeros and kept.size == 60_001 and not kept.truncated
    assert kept.sha256 == hashlib.sha256(zeros).hexdigest()
    assert len(rows) == 21 and {r.payload_id for r in rows} == {kept.id}
    assert [(r.index, r.more) for r in rows[:20]] == [(i, 0) for i in range(20)]
    rest = rows[20]  # the first of the rest, counting the others of its reason
    assert (rest.reason, rest.index, rest.more) == ("bad_shape", 20, 29_979)
    assert "29979 more for this reason up to index 29999" in rest.detail
    assert sum(1 + r.more for r in rows) == 30_000 and {r.reason for r in rows} == {"bad_shape"}
    assert all(r.detail.startswith("a reading must be a JSON object, got int") for r in rows)
    assert _registry_bytes(stack) - before < 2_000_000  # was 3.7 GB in the report
    assert stack.ingest_procs[0].poll() is None
    get_settings.cache_clear()  # the registry's import read the settings of this process's environment
    listed = CliRunner().invoke(app, ["deadletters", "list"], env={**stack.env(), "COLUMNS": "300"})
    get_settings.cache_clear()
    assert listed.exit_code == 0 and "+29979" in listed.output and "(60001 bytes)" in listed.output


def test_dead_letter_rows_count_the_rest_per_reason_and_replay_once_per_message(
    stack: LocalStack, tmp_path: Path
) -> None:
    stack.start_ingest(1, INGEST_DEADLETTER_ROWS_PER_MESSAGE="3")
    _ready(stack)
    barn = DeviceClient(stack, "barn-0002")
    t = now_ms() - 60_000
    nh3 = [12.0, 130, 131, 132, 133, 134, 135, 136, 137, None, 14.0, None]  # None: an unknown metric
    backfill = [
        {"ts": t + i, "values": {"nh3_ppm": v} if v is not None else {"leaf_wetness": 1}} for i, v in enumerate(nh3)
    ]
    assert barn.send([backfill]) == [0]
    assert wait_until(lambda: len(_rows(stack)[0]) == 5)
    rows, payloads = _rows(stack)
    assert len(payloads) == 1
    # 3 rows of their own, then the first of each further reason with how many more it counts
    assert [(r.reason, r.index, r.more) for r in rows] == [
        ("out_of_range", 1, 0),
        ("out_of_range", 2, 0),
        ("out_of_range", 3, 0),
        ("out_of_range", 4, 4),
        ("unknown_metric", 9, 1),
    ]
    with stack.influx() as influx:
        assert influx.count("barn", "nh3_ppm") == 2

    # a sensor that really reads up to 200 ppm: widen the range and replay
    catalogue = yaml.safe_load(PACKAGED_CATALOGUE.read_text())
    catalogue["kinds"]["barn"]["metrics"]["nh3_ppm"]["max"] = 200
    fixed = tmp_path / "catalogue.yaml"
    fixed.write_text(yaml.safe_dump(catalogue, allow_unicode=True))
    env = {**stack.env(), "CATALOGUE_FILE": str(fixed), "COLUMNS": "300"}
    get_settings.cache_clear()
    try:
        replayed = CliRunner().invoke(app, ["deadletters", "replay", "--reason", "out_of_range"], env=env)
        assert replayed.exit_code == 0 and "examined 4, stored 4, still rejected 0" in replayed.output, replayed.output
        again = CliRunner().invoke(app, ["deadletters", "replay"], env=env)
        assert "examined 1, stored 0, still rejected 1" in again.output, again.output
    finally:
        get_settings.cache_clear()
    with stack.influx() as influx:
        assert influx.count("barn", "nh3_ppm") == 10  # every nh3 reading of the message, each once
    rows, _ = _rows(stack)
    assert [r.replay_result for r in rows][:4] == ["stored"] * 4
    assert rows[4].replay_result and rows[4].replay_result.startswith("rejected: unknown_metric: metric 'leaf_wetness'")


def test_attack_oversized_message_refused_by_broker(stack: LocalStack) -> None:
    """900 KB was accepted by the broker and stored whole; now the broker's max_packet_size is the
    payload limit plus the MQTT header: the sender is disconnected and nothing of it is stored."""
    stack.start_ingest(1)
    _ready(stack)
    assert stack.mosquitto
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soil-0005", protocol=protocol)
        client.username_pw_set("soil-0005", stack.secrets["soil-0005"])  # type: ignore[attr-defined]
        acked, dropped = threading.Event(), threading.Event()
        client.on_publish = lambda *_a, acked=acked: acked.set()
        client.on_disconnect = lambda *_a, dropped=dropped: dropped.set()
        client.connect(stack.mosquitto.host, stack.mosquitto.port)
        client.loop_start()
        try:
            body = b'{"ts": %d, "values": {"soil_moisture": 20}, "pad": "' % now_ms() + b"x" * 900_000 + b'"}'
            client.publish("v1/devices/soil-0005/telemetry", body, qos=1)
            assert dropped.wait(10), "the broker kept the connection of a 900 KB message"
            assert not acked.is_set()
        finally:
            client.disconnect()
            client.loop_stop()
    # At the limit: 65,536 bytes pass the broker and are stored; a little over passes the broker
    # (header allowance) and becomes payload_too_large with a prefix, its size and SHA-256.
    soil = DeviceClient(stack, "soil-0005")
    head = b'{"ts": %d, "values": {"soil_moisture": 21.5}}' % (now_ms() - 1000)
    at_limit = head + b" " * (65_536 - len(head))
    over = b'{"pad": "' + b"y" * (65_600 - 11) + b'"}'
    assert len(at_limit) == 65_536 and len(over) == 65_600
    assert soil.send([at_limit, over]) == [0, 0]
    with stack.influx() as influx:
        assert wait_until(lambda: influx.count("soil", "soil_moisture", "device = 'soil-0005'") == 1)
    assert wait_until(lambda: len(_rows(stack)[0]) == 1)
    time.sleep(0.5)
    rows, payloads = _rows(stack)
    assert [r.reason for r in rows] == ["payload_too_large"]  # nothing of the 900 KB messages
    assert [(p.size, p.truncated, len(p.payload)) for p in payloads] == [(65_600, True, PREFIX_BYTES)]
    assert payloads[0].payload == over[:PREFIX_BYTES] and payloads[0].sha256 == hashlib.sha256(over).hexdigest()
    with stack.influx() as influx:
        assert influx.count("soil", "soil_moisture", "device = 'soil-0005'") == 1


# ---------------------------------------------------------------- migration 0006 (SQLite and PostgreSQL)

DEAD_TABLES = {"dead_letter", "dead_letter_payload"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    folder = Path(tempfile.mkdtemp(prefix="village-pg-"))  # the 'postgres' user cannot enter tmp_path
    server = postgres(folder).start()
    try:
        yield server.create_database("deadletters")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_migration_0006_keeps_one_payload_per_message_and_downgrades(database_url: str) -> None:
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "0001")
    engine = make_engine(database_url)
    when = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    old = [  # three rows of one message, one of another
        ("v1/devices/soil-0001/telemetry", when, b'[1, 2, {"values": {}}]', 0, "bad_shape"),
        ("v1/devices/soil-0001/telemetry", when, b'[1, 2, {"values": {}}]', 1, "bad_shape"),
        ("v1/devices/soil-0001/telemetry", when, b'[1, 2, {"values": {}}]', 2, "no_values"),
        ("v1/devices/soil-0002/telemetry", when, b"not json", None, "not_json"),
    ]
    legacy = sa.table(
        "dead_letter",
        *(sa.column(c) for c in ("received_at", "topic", "device_id", "reason", "detail", "payload", "index")),
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                legacy.insert(),
                [
                    {"received_at": t, "topic": topic, "device_id": topic.split("/")[2], "reason": reason}
                    | {"detail": reason, "payload": payload, "index": index}
                    for topic, t, payload, index, reason in old
                ],
            )
        command.upgrade(cfg, "0006")
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            assert [d for d in diffs if _diff_table(d) in DEAD_TABLES] == []  # the models, exactly
            payloads = conn.execute(sa.text("SELECT id, sha256, payload, truncated FROM dead_letter_payload")).all()
            rows = conn.execute(sa.text('SELECT payload_id, "index", more FROM dead_letter ORDER BY id')).all()
        assert sorted(bytes(p.payload) for p in payloads) == [b'[1, 2, {"values": {}}]', b"not json"]
        assert all(p.sha256 == hashlib.sha256(bytes(p.payload)).hexdigest() and not p.truncated for p in payloads)
        first = next(p.id for p in payloads if bytes(p.payload) == b"not json")
        assert [r.more for r in rows] == [0, 0, 0, 0] and rows[3].payload_id == first
        assert rows[0].payload_id == rows[1].payload_id == rows[2].payload_id != first
        command.downgrade(cfg, "0001")
        with engine.connect() as conn:
            assert "dead_letter_payload" not in sa.inspect(conn).get_table_names()
            back = conn.execute(sa.text('SELECT payload, "index" FROM dead_letter ORDER BY id')).all()
        assert [(bytes(r.payload), r.index) for r in back] == [(p, i) for _, _, p, i, _ in old]
        command.upgrade(cfg, "heads")  # with every other package's branch
    finally:
        engine.dispose()


def _diff_table(diff: Any) -> str | None:
    """The table an alembic autogenerate diff is about."""
    if isinstance(diff, list):  # column modifications come as a list of tuples
        return _diff_table(diff[0])
    for part in diff[1:]:
        if isinstance(part, sa.Table):
            return part.name
        if isinstance(part, sa.Index | sa.UniqueConstraint | sa.ForeignKeyConstraint) and part.table is not None:
            return part.table.name
        if isinstance(part, str) and part in DEAD_TABLES:
            return part
    return None


# ---------------------------------------------------------------- TLS and the metrics address


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is not installed: apt-get install openssl")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A throw-away CA: (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"),
        *("-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=folder,
    )
    return cert, key


def make_server_cert(folder: Path, ca: tuple[Path, Path], names: str) -> tuple[Path, Path]:
    """A server certificate signed by `ca` for `names` (subjectAltName syntax): (certificate, key)."""
    cert, key, csr, ext = (folder / f"server.{x}" for x in ("pem", "key", "csr", "ext"))
    ext.write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=broker"),
        *("-keyout", str(key), "-out", str(csr)),
        cwd=folder,
    )
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"),
        *("-days", "2", "-extfile", str(ext), "-out", str(cert)),
        cwd=folder,
    )
    return cert, key


@pytest.fixture
def tls_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """The stack of tests/conftest.py with a second, TLS listener (as the deployment's on 8883)."""
    ca = make_ca(tmp_path / "pki", "village-test-ca")
    cert, key = make_server_cert(tmp_path / "pki", ca, "DNS:localhost,IP:127.0.0.1")
    s = LocalStack(
        tmp_path / "stack",
        extra_env={"INGEST_BATCH_MS": "20", "INGEST_REGISTRY_TTL_S": "1"},
        mqtt_tls=BrokerTls(free_port(), cert, key),
    )
    s.start()
    with Session(get_engine(s.database_url)) as session:
        load_demo(session)
        session.commit()
        s.secrets = {d.id: provision(session, d.id) for d in session.exec(select(Device))}  # type: ignore[attr-defined]
        session.commit()
    s.sync_broker()
    s.ca_file = ca[0]  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop()


def _tls_device(stack: LocalStack, device_id: str, ca_file: Path) -> mqtt.Client:
    assert stack.mosquitto and stack.mosquitto.tls_port
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, stack.secrets[device_id])  # type: ignore[attr-defined]
    client.tls_set(ca_certs=str(ca_file))
    client.connect("127.0.0.1", stack.mosquitto.tls_port)
    return client


def test_devices_and_ingest_speak_tls_to_the_broker(tls_stack: LocalStack, tmp_path: Path) -> None:
    stack = tls_stack
    assert stack.mosquitto and stack.mosquitto.tls_port
    ca_file: Path = stack.ca_file  # type: ignore[attr-defined]
    tls_env = {"MQTT_PORT": str(stack.mosquitto.tls_port), "MQTT_TLS": "true", "MQTT_CA_FILE": str(ca_file)}
    stack.start_ingest(1, **tls_env)
    device = _tls_device(stack, "wx-0004", ca_file)
    device.loop_start()
    try:
        with stack.influx() as influx:
            for _ in range(100):  # until the ingest subscription is live
                device.publish("v1/devices/wx-0004/telemetry", orjson.dumps({"ts": now_ms(), "values": PROBE}), qos=1)
                if wait_until(lambda: influx.count("weather", "air_temp_c", "device = 'wx-0004'") > 0, 0.5):
                    break
            assert influx.count("weather", "air_temp_c", "device = 'wx-0004'") > 0, _ingest_log(stack)[-2000:]
    finally:
        device.disconnect()
        device.loop_stop()
    assert f"mqtts://127.0.0.1:{stack.mosquitto.tls_port}" in _ingest_log(stack)
    # A broker certificate from a CA the client does not trust is refused, and plain MQTT gets no answer.
    other_ca = make_ca(tmp_path / "other", "someone-else")
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_device(stack, "wx-0003", other_ca[0])
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="wx-0003", protocol=mqtt.MQTTv5)
    plain.username_pw_set("wx-0003", stack.secrets["wx-0003"])  # type: ignore[attr-defined]
    connacks: list[object] = []
    plain.on_connect = lambda *a: connacks.append(a[3])
    plain.connect("127.0.0.1", stack.mosquitto.tls_port)
    plain.loop_start()
    time.sleep(1.5)
    plain.loop_stop()
    assert connacks == []


def test_ingest_metrics_listen_on_loopback_by_default(stack: LocalStack) -> None:
    port = free_port()
    stack.start_ingest(1, INGEST_METRICS_PORT=str(port))
    assert wait_until(lambda: _listening(port), 30), "no metrics server"
    assert _listening(port) == ["127.0.0.1"]
    assert "village_ingest_messages_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def _listening(port: int) -> list[str]:
    """Addresses with a TCP socket listening on `port` (from /proc/net/tcp)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            out.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return out


def test_reserved_device_ids_are_refused_by_the_api(api_template: Template, tmp_path: Path) -> None:
    """Registration through the API goes through the registry's DeviceRow: the same refusal as files."""
    with make_client(api_template, tmp_path) as client:
        h = token(client, "beizhengjia")
        for device_id in ("ingest-0", "ingest", "Ingest-12"):
            body = {"id": device_id, "kind": "soil", "plot_no": "211122101201-001"}
            answer = client.post("/api/v1/admin/devices", headers=h, json=body)
            # (the problem's detail is today only "1 validation error for DeviceRow": api/routers/admin.py)
            assert answer.status_code == 422 and answer.json()["type"].endswith("/validation"), answer.text
        made = client.post(
            "/api/v1/admin/devices", headers=h, json={"id": "soil-9101", "kind": "soil", "plot_no": "211122101201-001"}
        )
        assert made.status_code == 201, made.text
