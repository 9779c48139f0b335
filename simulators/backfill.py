"""Offline backfill: devices that were out of reach send their buffered readings as arrays.

The demo uses it to give the demo county a growing season of history (the trace page's growth
cycle and the ledger's growth summaries and daily digests need one), through the same path a
real device takes after an outage: its own credentials, its own topic, QoS 1, JSON arrays no
larger than the payload limit.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.devices import default_interval_ms, generate
from simulators.runner import DeviceCredential


@dataclass
class BackfillResult:
    devices: int = 0
    messages: int = 0
    readings: int = 0


def backfill(
    devices: list[DeviceCredential],
    host: str,
    port: int,
    start_ms: int,
    end_ms: int,
    array_size: int = 400,
    seed: int | str = 0,
    timeout: float = 120.0,
) -> BackfillResult:
    """Publish every device's readings from `start_ms` to `end_ms` at its catalogue interval."""
    result = BackfillResult()
    for cred in devices:
        step = default_interval_ms(cred.kind)
        count = max(0, (end_ms - start_ms) // step)
        readings = generate(cred.id, cred.kind, start_ms, step, count, seed=seed)
        acked = threading.Semaphore(0)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cred.id}-backfill", protocol=mqtt.MQTTv311)
        client.username_pw_set(cred.id, cred.secret)
        client.on_publish = lambda *_a, acked=acked: acked.release()
        client.connect(host, port)
        client.loop_start()
        sent = 0
        try:
            for batch in iter(lambda r=readings: list(itertools.islice(r, array_size)), []):
                client.publish(f"v1/devices/{cred.id}/telemetry", orjson.dumps(batch), qos=1)
                sent += 1
                result.readings += len(batch)
            for _ in range(sent):
                if not acked.acquire(timeout=timeout):
                    raise TimeoutError(f"{cred.id}: the broker did not acknowledge the backfill")
        finally:
            client.loop_stop()
            client.disconnect()
        result.devices += 1
        result.messages += sent
    return result
