"""Provisioning, revocation and broker sync, checked against a real mosquitto."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine, inspect, text
from sqlmodel import Session, select
from typer.testing import CliRunner

from core import provisioning
from core.broker_auth import hash_secret, render_acl, render_passwd, reserved_name_problem, verify_secret
from core.db import make_engine, migrate
from core.models import Device, DeviceStatus, ServiceAccount
from core.registry_io import ImportErrors, import_data, load_demo
from core.services import Mosquitto, mosquitto

A, B = "paddy-0001", "collar-0001"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        load_demo(session)
        session.commit()
    return engine


def _all_values(engine: Engine) -> list[str]:
    """Every value of every column of every table, as text."""
    out = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                out += [str(v) for v in row]
    return out


def test_provision_stores_only_a_hash(engine: Engine) -> None:
    with Session(engine) as session:
        secret = provisioning.provision(session, A)
        session.commit()
    assert secret not in "\n".join(_all_values(engine))
    with Session(engine) as session:
        device = session.get(Device, A)
        assert device is not None and device.secret_hash
        assert device.status == DeviceStatus.active and device.provisioned_at is not None
        assert verify_secret(secret, device.secret_hash)
        assert not verify_secret(secret + "x", device.secret_hash)
        rotated = provisioning.provision(session, A)
        assert rotated != secret
        assert verify_secret(rotated, device.secret_hash) and not verify_secret(secret, device.secret_hash)


def test_revoke_and_unknown_device(engine: Engine) -> None:
    with Session(engine) as session:
        provisioning.provision(session, A)
        provisioning.revoke(session, A)
        device = session.get(Device, A)
        assert device is not None
        assert device.status == DeviceStatus.revoked and device.secret_hash is None and device.revoked_at
        with pytest.raises(provisioning.ProvisioningError, match="no device 'ghost-1'"):
            provisioning.provision(session, "ghost-1")
        with pytest.raises(provisioning.ProvisioningError):
            provisioning.revoke(session, "ghost-1")


def test_ensure_ingest_account_is_idempotent(engine: Engine) -> None:
    with Session(engine) as session:
        assert provisioning.ensure_ingest_account(session, "ingest", "pw-1")
        first = session.get(ServiceAccount, "ingest")
        assert first is not None
        stored = first.secret_hash
        assert not provisioning.ensure_ingest_account(session, "ingest", "pw-1")
        assert first.secret_hash == stored
        assert provisioning.ensure_ingest_account(session, "ingest", "pw-2")
        assert verify_secret("pw-2", first.secret_hash)
        with pytest.raises(ValueError, match="MQTT_INGEST_PASSWORD"):
            provisioning.ensure_ingest_account(session, "ingest", "")


def test_each_ingest_replica_gets_its_own_account(engine: Engine) -> None:
    with Session(engine) as session:
        provisioning.ensure_ingest_account(session, "ingest", "pw")  # the former shared account
        assert provisioning.ensure_ingest_accounts(session, "pw", 3)
        names = sorted(a.username for a in session.exec(select(ServiceAccount)))
        assert names == ["ingest-0", "ingest-1", "ingest-2"]  # the shared one is gone
        assert all(verify_secret("pw", a.secret_hash) for a in session.exec(select(ServiceAccount)))
        assert not provisioning.ensure_ingest_accounts(session, "pw", 3)  # idempotent
        assert provisioning.ensure_ingest_accounts(session, "pw", 2)  # fewer replicas: fewer accounts
        assert sorted(a.username for a in session.exec(select(ServiceAccount))) == ["ingest-0", "ingest-1"]
        acl = render_acl(session)
        assert "user ingest-0\ntopic read v1/devices/+/telemetry" in acl and "user ingest-2" not in acl


@pytest.mark.parametrize("device_id", ["ingest", "ingest-0", "ingest-17", "INGEST-3", "ingest-x"])
def test_service_account_names_are_refused_as_device_ids(engine: Engine, device_id: str) -> None:
    """Registration (files and API share DeviceRow), provisioning and the password file all refuse them."""
    with Session(engine) as session:
        row = {"id": device_id, "kind": "soil", "plot_no": "211122101201-001"}
        with pytest.raises(ImportErrors, match="reserved for the broker's service accounts"):
            import_data(session, {"devices": [row]})
        session.rollback()
        # a row registered before names were reserved cannot be provisioned, nor reach the broker
        session.add(Device(id=device_id, kind="soil", status=DeviceStatus.active, secret_hash=hash_secret("s")))
        session.flush()
        with pytest.raises(provisioning.ProvisioningError, match="reserved"):
            provisioning.provision(session, device_id)
        assert f"\n{device_id}:" not in "\n" + render_passwd(session)
    for fine in ("ingester-1", "soil-ingest-0", "ingest_0"):
        assert reserved_name_problem(fine) is None


def test_ingest_refuses_a_replica_without_an_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app
    from core.settings import get_settings

    monkeypatch.setenv("VILLAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INGEST_MAX_REPLICAS", "2")
    get_settings.cache_clear()
    try:
        for args in (["ingest", "--replica", "2"], ["ingest", "--replicas", "3"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2 and "INGEST_MAX_REPLICAS" in result.output, result.output
    finally:
        get_settings.cache_clear()


def test_sync_writes_only_changes(engine: Engine, tmp_path: Path) -> None:
    passwd, acl = tmp_path / "broker" / "passwd", tmp_path / "broker" / "acl"
    with Session(engine) as session:
        provisioning.ensure_ingest_account(session, "ingest", "pw")
        assert provisioning.sync_broker(session, passwd, acl)
        assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
        before = (passwd.stat().st_mtime_ns, acl.stat().st_mtime_ns)
        assert not provisioning.sync_broker(session, passwd, acl)
        assert (passwd.stat().st_mtime_ns, acl.stat().st_mtime_ns) == before
        provisioning.provision(session, A)
        assert provisioning.sync_broker(session, passwd, acl)
        assert f"{A}:$7$" in passwd.read_text()
        provisioning.revoke(session, A)
        assert provisioning.sync_broker(session, passwd, acl)
        assert A not in passwd.read_text()


def test_watch_syncs_until_stopped(engine: Engine, tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    stop = threading.Event()
    thread = threading.Thread(
        target=provisioning.watch, args=(engine, passwd, acl), kwargs={"interval_s": 0.05, "stop": stop}
    )
    thread.start()
    try:
        with Session(engine) as session:
            provisioning.provision(session, A)
            session.commit()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (passwd.exists() and A in passwd.read_text()):
            time.sleep(0.02)
        assert A in passwd.read_text()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_write_credentials(tmp_path: Path) -> None:
    path = tmp_path / "creds" / "devices.json"
    provisioning.write_credentials(path, [(A, "paddy", "s1"), (B, "collar", "s2")])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == [
        {"id": B, "kind": "collar", "secret": "s2"},
        {"id": A, "kind": "paddy", "secret": "s1"},
    ]
    provisioning.write_credentials(path, [(A, "paddy", "s3")])  # rotation keeps the other devices
    assert {c["id"]: c["secret"] for c in provisioning.read_credentials(path)} == {A: "s3", B: "s2"}


# ---------------------------------------------------------------- against a real mosquitto


class Client:
    """A paho 2.x MQTT v5 client that records what happens to it."""

    def __init__(self, broker: Mosquitto, username: str | None, password: str | None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{username or 'anonymous'}-{time.monotonic_ns()}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.2)  # type: ignore[arg-type]  # quick loop_stop
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.acks: dict[int, ReasonCode] = {}
        self.granted: list[ReasonCode] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.client.on_connect = self._on_connect
        self.disconnect_reasons: list[ReasonCode] = []
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.granted.extend(rcs)
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.disconnect_reasons.append(rc)
        self.disconnected.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, device_id: str, payload: bytes = b'{"values": {"water_level_cm": 4.5}}') -> ReasonCode | None:
        """Publish with QoS 1 and return the PUBACK reason code (None when none came)."""
        info = self.client.publish(f"v1/devices/{device_id}/telemetry", payload, qos=1)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and info.mid not in self.acks:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _refused(broker: Mosquitto, username: str | None, password: str | None) -> ReasonCode:
    c = Client(broker, username, password)
    c.close()
    assert c.connack is not None and c.connack.is_failure, f"{username} was let in"
    return c.connack


def _name(rc: ReasonCode | None) -> str | None:
    return rc.getName() if rc is not None else None


def _wait(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_broker_enforces_registry_credentials(engine: Engine, tmp_path: Path) -> None:
    passwd, acl, pid_file = tmp_path / "passwd", tmp_path / "acl", tmp_path / "mosquitto.pid"
    with Session(engine) as session:
        secret_a = provisioning.provision(session, A)
        secret_b = provisioning.provision(session, B)
        provisioning.ensure_ingest_account(session, "ingest", "ingest-pw")
        session.commit()
        assert provisioning.sync_broker(session, passwd, acl, pid_file)
    broker = mosquitto(tmp_path / "mosquitto", passwd, acl).start()
    clients: list[Client] = []
    try:
        assert broker.proc is not None
        pid_file.write_text(str(broker.proc.pid))
        ingest = Client(broker, "ingest", "ingest-pw")
        a, b = Client(broker, A, secret_a), Client(broker, B, secret_b)
        clients += [ingest, a, b]
        assert ingest.accepted and a.accepted and b.accepted
        ingest.client.subscribe("$share/ingest/v1/devices/+/telemetry", qos=1)
        assert _wait(lambda: ingest.granted) and ingest.granted[0].value == 1  # granted QoS 1

        # a device publishes to its own topic only
        assert _name(a.publish(A)) == "Success"
        assert _name(a.publish(B)) == "Not authorized"
        assert _wait(lambda: len(ingest.messages) >= 1)
        time.sleep(0.2)
        assert [m.topic for m in ingest.messages] == [f"v1/devices/{A}/telemetry"]

        # anonymous, wrong secret, another device's secret: refused
        assert _refused(broker, None, None).getName() == "Not authorized"
        _refused(broker, A, "wrong-secret")
        _refused(broker, A, secret_b)

        # revoke A: the files change and the broker re-reads them on SIGHUP, no restart
        pid = broker.proc.pid
        with Session(engine) as session:
            provisioning.revoke(session, A)
            session.commit()
            assert provisioning.sync_broker(session, passwd, acl, pid_file)
        _refused_eventually = _wait(lambda: _connack(broker, A, secret_a) is not None)
        assert _refused_eventually, "revoked device can still connect after SIGHUP"
        assert broker.running and broker.proc.pid == pid

        # mosquitto 2.0.x re-checks connected clients on SIGHUP: A is dropped, B stays
        assert a.disconnected.wait(5), "revoked device kept its connection after SIGHUP"
        # paho calls on_disconnect before it marks the connection lost: wait for that, do not race it
        assert _wait(lambda: not a.client.is_connected()), "paho still reports the revoked device connected"
        # the broker just closes the socket: paho reports "Unspecified error", not a DISCONNECT reason
        assert a.disconnect_reasons and a.disconnect_reasons[0].getName() == "Unspecified error"
        assert not b.disconnected.is_set() and b.client.is_connected()
        assert _name(b.publish(B)) == "Success"
        assert _wait(lambda: len(ingest.messages) >= 2)
        assert not ingest.disconnected.is_set()

        # rotating B's secret drops its connection too; the new secret works
        with Session(engine) as session:
            new_b = provisioning.provision(session, B)
            session.commit()
            provisioning.sync_broker(session, passwd, acl, pid_file)
        assert b.disconnected.wait(5)
        _refused(broker, B, secret_b)
        fresh = Client(broker, B, new_b)
        clients.append(fresh)
        assert fresh.accepted
    finally:
        for c in clients:
            c.close()
        broker.stop()


def _connack(broker: Mosquitto, username: str, password: str) -> ReasonCode | None:
    """The failure reason of a fresh connection, or None when it was accepted."""
    c = Client(broker, username, password)
    c.close()
    return c.connack if c.connack is not None and c.connack.is_failure else None


def test_cli_provision_revoke_and_sync(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.broker import app as broker_app
    from cli.main import app
    from core.db import get_engine
    from core.settings import get_settings

    url = str(engine.url)
    passwd, acl, creds = tmp_path / "passwd", tmp_path / "acl", tmp_path / "creds.json"
    for name, value in {
        "DATABASE_URL": url,
        "VILLAGE_DATA_DIR": str(tmp_path),
        "MOSQUITTO_PASSWD_FILE": str(passwd),
        "MOSQUITTO_ACL_FILE": str(acl),
        "MQTT_INGEST_PASSWORD": "ingest-pw",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    get_engine.cache_clear()
    runner = CliRunner()
    try:
        result = runner.invoke(app, ["devices", "provision", A, B, "--out", str(creds)])
        assert result.exit_code == 0, result.output
        secrets = {c["id"]: c["secret"] for c in provisioning.read_credentials(creds)}
        assert set(secrets) == {A, B}
        assert all(s not in result.output for s in secrets.values())
        # one account per ingest replica (INGEST_MAX_REPLICAS, 8 by default), the broker's client ids
        users = [line.split(":")[0] for line in passwd.read_text().splitlines()]
        assert A in users and [u for u in users if u.startswith("ingest")] == [f"ingest-{i}" for i in range(8)]
        assert acl.read_text().count("topic read v1/devices/+/telemetry") == 8

        result = runner.invoke(app, ["devices", "provision", "--all-inactive", "--out", str(creds), "--show"])
        assert result.exit_code == 0, result.output
        secrets = {c["id"]: c["secret"] for c in provisioning.read_credentials(creds)}
        assert len(secrets) == 39
        assert secrets["barn-0001"] in result.output and secrets[A] not in result.output

        result = runner.invoke(app, ["devices", "revoke", A])
        assert result.exit_code == 0, result.output
        assert f"\n{A}:" not in passwd.read_text()
        result = runner.invoke(app, ["devices", "list", "--status", "revoked"])
        assert result.exit_code == 0 and A in result.output and B not in result.output

        result = runner.invoke(broker_app, ["sync"])
        assert result.exit_code == 0, result.output
        assert "unchanged" in result.output

        result = runner.invoke(app, ["devices", "revoke", "ghost-1"])
        assert result.exit_code == 1 and "ghost-1" in result.output and "Traceback" not in result.output
        result = runner.invoke(app, ["devices", "provision"])
        assert result.exit_code == 2
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()
    assert os.stat(creds).st_mode & 0o077 == 0
