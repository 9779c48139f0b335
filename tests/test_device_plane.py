"""The device plane's trust boundary (issue 10): client ids, service accounts, message sizes, TLS.

Each attack is a test named after it, against the real mosquitto, InfluxDB and ingest processes
the fixtures start (tests/conftest.py).
"""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.localstack import LocalStack
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
