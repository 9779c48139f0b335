"""Faults of the consumer's MQTT session (issue 11, items 1 and 5), against real mosquitto, InfluxDB
and ingest processes: devices at QoS 0 and 2 beside QoS 1, and the stock-paho fallback consumer."""

from __future__ import annotations

import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.localstack import LocalStack
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
