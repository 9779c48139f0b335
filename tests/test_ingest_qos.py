"""Faults of the consumer's MQTT session (issue 11, items 1 and 5), against real mosquitto, InfluxDB
and ingest processes: devices at QoS 0 and 2 beside QoS 1, and the stock-paho fallback consumer."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.broker_auth import TELEMETRY_FILTER
from core.localstack import LocalStack
from core.services import die_with_parent
from tests.conftest import DeviceClient, now_ms, wait_ingest_ready, wait_until

PROBE = {"air_temp_c": 10.0}


class QosDevice:
    """A device publishing at a given QoS with MQTT 3.1.1, as `mosquitto_pub` does (QoS 0 by default)."""

    def __init__(self, stack: LocalStack, device_id: str, qos: int) -> None:
        assert stack.mosquitto
        self.qos = qos
        self.topic = f"v1/devices/{device_id}/telemetry"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device_id, stack.secrets[device_id])  # type: ignore[attr-defined]
        self.client.connect(stack.mosquitto.host, stack.mosquitto.port)
        self.client.loop_start()

    def send(self, doc: dict) -> None:
        """Publish one reading; wait for the broker's PUBACK/PUBCOMP (QoS 1/2) or the socket write (QoS 0)."""
        info = self.client.publish(self.topic, orjson.dumps(doc), qos=self.qos)
        info.wait_for_publish(10)
        assert info.is_published(), f"QoS {self.qos} publish not completed"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _ingest_log(stack: LocalStack) -> str:
    return (stack.root / "ingest.log").read_text(errors="replace")


def _assert_session_undisturbed(stack: LocalStack) -> None:
    log = _ingest_log(stack)
    assert "disconnected from broker" not in log, "the ingest replica was knocked off the broker"
    assert log.count("session_present") == 1, "the ingest replica connected more than once"


def _assert_everything_acknowledged(stack: LocalStack) -> None:
    """Stop the replica, then take over its persistent session: the broker resends every message
    it delivered but never had acknowledged, so nothing may arrive."""
    assert stack.mosquitto
    stack.stop_ingest()
    received: list[str] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="ingest-0", protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True
    )
    client.username_pw_set("ingest-0", stack.ingest_password)
    client.on_message = lambda _c, _u, m: received.append(m.topic)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(f"$share/ingest/{TELEMETRY_FILTER}", qos=1)
    client.connect(stack.mosquitto.host, stack.mosquitto.port)
    client.loop_start()
    try:
        assert wait_until(client.is_connected, 10)
        time.sleep(2)
    finally:
        client.disconnect()
        client.loop_stop()
    assert received == [], f"{len(received)} messages were delivered to ingest but never acknowledged"


def _interleave(stack: LocalStack, devices: dict[str, QosDevice | DeviceClient], n: int) -> int:
    """Send `n` readings from each device, interleaved; returns the first timestamp."""
    t0 = now_ms() - 60_000
    for i in range(n):
        for device in devices.values():
            doc = {"ts": t0 + i, "seq": i, "values": {"soil_moisture": 20.0 + i}}
            if isinstance(device, DeviceClient):
                assert device.send([doc]) == [0]
            else:
                device.send(doc)
        time.sleep(0.03)  # several batches (INGEST_BATCH_MS=20), each with readings of every QoS
    return t0


def _count(stack: LocalStack, device_id: str) -> int:
    with stack.influx() as influx:
        return influx.count("soil", "soil_moisture", f"device = '{device_id}'")


def test_fault_qos0_publisher_does_not_disconnect_ingest(stack: LocalStack) -> None:
    """A device at QoS 0 (no packet id) beside one at QoS 1: every reading is stored and the replica
    is never knocked off (before the fix, a "PUBACK 0" made mosquitto close its connection)."""
    stack.start_ingest(1)
    wait_ingest_ready(stack, DeviceClient(stack, "wx-0005"), "weather", PROBE)
    qos0, qos1 = QosDevice(stack, "soil-0004", qos=0), DeviceClient(stack, "soil-0005")
    try:
        _interleave(stack, {"soil-0004": qos0, "soil-0005": qos1}, 20)
        assert wait_until(lambda: _count(stack, "soil-0005") == 20, 30), "QoS 1 readings missing"
        assert wait_until(lambda: _count(stack, "soil-0004") == 20, 10), "QoS 0 readings missing"
    finally:
        qos0.close()
        qos1.close()
    time.sleep(0.5)  # a disconnect caused by the last batch's acknowledgements shows in the log by now
    _assert_session_undisturbed(stack)
    _assert_everything_acknowledged(stack)


def _all_qos_stored(stack: LocalStack) -> None:
    """Devices at QoS 0, 1 and 2, interleaved: each reading stored once, the replica never knocked off,
    every message acknowledged (a QoS 2 publication reaches our QoS 1 subscription as QoS 1)."""
    wait_ingest_ready(stack, DeviceClient(stack, "wx-0005"), "weather", PROBE)
    devices: dict[str, QosDevice | DeviceClient] = {
        "soil-0001": QosDevice(stack, "soil-0001", qos=0),
        "soil-0002": DeviceClient(stack, "soil-0002"),
        "soil-0003": QosDevice(stack, "soil-0003", qos=2),
    }
    try:
        _interleave(stack, devices, 15)
        for device_id in devices:
            assert wait_until(lambda d=device_id: _count(stack, d) == 15, 30), f"readings of {device_id} missing"
    finally:
        for device in devices.values():
            device.close()
    time.sleep(0.5)
    _assert_session_undisturbed(stack)
    _assert_everything_acknowledged(stack)


def test_fault_qos2_publisher_beside_qos0_and_qos1_is_stored_and_acknowledged(stack: LocalStack) -> None:
    stack.start_ingest(1)
    _all_qos_stored(stack)
    log = _ingest_log(stack)
    assert "mqtt client: stock paho" not in log  # the fast path was tested
    assert "the broker delivered QoS 2" not in log  # granted QoS 1, the broker downgraded QoS 2


def test_fault_paho_internals_changed_ingest_falls_back_to_stock_paho(stack: LocalStack) -> None:
    """A paho whose internals fail the start-up self-check (simulated: paho 2.1 has no paho.mqtt._packet)
    makes the replica run on paho's public API, with a warning, and lose nothing."""
    code = (
        "import ingest.mqttclient as m; m._IMPORT_PROBLEM = 'simulated: no paho.mqtt._packet';"
        "from cli.main import app; app()"
    )
    with open(stack.root / "ingest.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "ingest", "--replica", "0"],
            env={**os.environ, **stack.env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    stack.ingest_procs.append(proc)
    _all_qos_stored(stack)
    log = _ingest_log(stack)
    assert "mqtt client: stock paho, slower; the fast path does not fit this paho" in log
    assert "simulated: no paho.mqtt._packet" in log
