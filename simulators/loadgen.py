"""The load generator: many devices publishing readings as fast as the broker takes them.

Each device connects with its own credentials. One process drives many MQTT clients from
a single thread (no thread per client): it publishes round-robin over its devices and
reads the broker's acknowledgements from whichever sockets are ready. Every reading's
`ts` is its publish time in milliseconds (unique per device), so the time it is stored
minus `ts` is its publish-to-stored latency. Several processes split the devices.
"""

from __future__ import annotations

import multiprocessing as mp
import selectors
import time
from dataclasses import dataclass

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from core.broker_auth import TELEMETRY_TOPIC


@dataclass
class LoadResult:
    messages_acked: int = 0
    readings_acked: int = 0
    messages_refused: int = 0
    seconds: float = 0.0

    def add(self, other: LoadResult) -> None:
        self.messages_acked += other.messages_acked
        self.readings_acked += other.readings_acked
        self.messages_refused += other.messages_refused
        self.seconds = max(self.seconds, other.seconds)


class _Device:
    __slots__ = ("client", "id", "last_ts", "seq", "sizes", "topic")

    def __init__(self, device_id: str, secret: str, host: str, port: int) -> None:
        self.id = device_id
        self.topic = TELEMETRY_TOPIC.format(device_id=device_id)
        self.seq = 0
        self.last_ts = 0
        self.sizes: dict[int, int] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(device_id, secret)
        c.max_inflight_messages_set(50)
        c.max_queued_messages_set(0)
        c.connect(host, port, keepalive=60)
        self.client = c

    def payload(self, values: dict[str, float], readings: int) -> tuple[bytes, int]:
        now = int(time.time() * 1000)
        batch = []
        for j in range(readings):
            ts = max(now - (readings - 1 - j), self.last_ts + 1)
            self.last_ts = ts
            self.seq += 1
            batch.append({"ts": ts, "seq": self.seq, "values": values})
        return orjson.dumps(batch[0] if readings == 1 else batch), readings


def _values(kind: str, i: int) -> dict[str, float]:
    if kind == "soil":
        return {"soil_moisture": 20.0 + (i % 200) / 10, "soil_temp_c": 12.5}
    return {"water_level_cm": 5.0 + (i % 50) / 10, "water_temp_c": 18.0}


def _run_process(
    devices: list[tuple[str, str, str]], host: str, port: int, readings: int, per_message: int, queue: mp.Queue
) -> None:
    result = LoadResult()
    sel = selectors.DefaultSelector()
    clients: list[_Device] = []

    def on_publish(dev: _Device):
        def cb(_c: mqtt.Client, _u: object, mid: int, rc: mqtt.ReasonCode, _p: object) -> None:
            n = dev.sizes.pop(mid, 0)
            if rc.is_failure:
                result.messages_refused += 1
            else:
                result.messages_acked += 1
                result.readings_acked += n

        return cb

    for device_id, secret, _kind in devices:
        d = _Device(device_id, secret, host, port)
        d.client.on_publish = on_publish(d)
        clients.append(d)
    # Finish the CONNECT handshakes.
    for d in clients:
        sel.register(d.client.socket(), selectors.EVENT_READ, d)
    deadline = time.monotonic() + 30
    while not all(d.client.is_connected() for d in clients) and time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            key.data.client.loop_read()
    kinds = {d.id: k for d, (_i, _s, k) in zip(clients, devices, strict=True)}
    start = time.perf_counter()
    sent = 0
    i = 0
    n = len(clients)
    while sent < readings:
        d = clients[i % n]
        i += 1
        k = min(per_message, readings - sent)
        body, count = d.payload(_values(kinds[d.id], i), k)
        info = d.client.publish(d.topic, body, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            raise RuntimeError(f"publish failed for {d.id}: {info.rc}")
        d.sizes[info.mid] = count
        sent += count
        if i % 64 == 0:
            for key, _ in sel.select(0):
                key.data.client.loop_read()
            if i % 1024 == 0:
                for dev in clients:
                    dev.client.loop_write()
    # Drain: wait for every acknowledgement.
    deadline = time.monotonic() + 120
    while any(d.sizes for d in clients) and time.monotonic() < deadline:
        for dev in clients:
            dev.client.loop_write()
        for key, _ in sel.select(0.05):
            key.data.client.loop_read()
    result.seconds = time.perf_counter() - start
    for d in clients:
        d.client.disconnect()
        d.client.loop_write()
    queue.put(result)


def publish_load(
    devices: list[tuple[str, str, str]], host: str, port: int, readings: int, per_message: int = 1, processes: int = 1
) -> LoadResult:
    """Publish `readings` readings from `devices` [(id, secret, kind)] split over `processes`."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    procs = []
    for p in range(processes):
        share = readings // processes + (1 if p < readings % processes else 0)
        procs.append(
            ctx.Process(target=_run_process, args=(devices[p::processes], host, port, share, per_message, queue))
        )
    for proc in procs:
        proc.start()
    total = LoadResult()
    for _ in procs:
        total.add(queue.get(timeout=900))
    for proc in procs:
        proc.join()
    return total
