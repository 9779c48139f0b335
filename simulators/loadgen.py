"""The load generator: many devices publishing readings over MQTT 5, counting every PUBACK.

One thread drives one TCP connection per device (its own credentials, its own topic) with a
small MQTT 5 publisher written on raw non-blocking sockets: it encodes CONNECT and QoS 1
PUBLISH packets itself and parses CONNACK, PUBACK and DISCONNECT, so that it knows the reason
code of every acknowledgement. "Acknowledged" means a PUBACK with a reason code below 128;
a PUBACK with 128 or more (e.g. 135 Not authorized), a refused CONNECT, a DISCONNECT from the
broker or a closed socket are counted and name the publisher that met them.

Why not paho-mqtt: measured on the 2-core development machine against a broker without
subscribers, 200 paho clients in one thread published 200,000 QoS 1 messages at about
9,000 messages/s using a whole core, while this publisher sends about 40,000 messages/s at
about 25 µs of CPU per message (send and PUBACK included); the benchmark must leave the cores to
the broker, ingest and InfluxDB it measures (README "Benchmark").

Each device sends at most `max_inflight` unacknowledged messages (or the broker's Receive
Maximum, if smaller), like `mosquitto_pub -M`. Messages go round-robin over the devices, either
as fast as the broker takes them or paced at a fixed rate. A reading's `ts` is the wall time it
was made (milliseconds, unique per device). In a paced run a few devices spread over the list
(`sentinel_indices`) send sentinels: each of their readings carries a fixed marker value in one
metric (`SENTINELS`) and is reported to `on_sentinel` with the time it was due, so that a poller
can time when it becomes queryable in InfluxDB. Sentinels come from a few devices rather than
from every Nth message because a query of InfluxDB 1.x costs per series it touches.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from core.broker_auth import TELEMETRY_TOPIC

SAMPLE_VALUES = {
    "soil": lambda i: {"soil_moisture": 20.0 + (i % 200) / 10, "soil_temp_c": 12.5},
    "paddy": lambda i: {"water_level_cm": 5.0 + (i % 50) / 10, "water_temp_c": 18.0},
    "weather": lambda i: {"air_temp_c": 10.0 + (i % 100) / 10, "humidity_pct": 60.0},
    "collar": lambda i: {"body_temp_c": 38.5, "activity": float(i % 500)},
    "barn": lambda i: {"nh3_ppm": 8.0 + (i % 30) / 10, "co2_ppm": 900.0},
}

#: The metric and value that mark a sentinel reading of each kind (ordinary readings never carry
#: it: the samples above keep that metric at another constant). Exact in binary floating point,
#: so InfluxDB finds it with `WHERE metric = value`.
SENTINELS: dict[str, tuple[str, float]] = {
    "soil": ("soil_temp_c", 12.75),
    "paddy": ("water_temp_c", 18.25),
    "weather": ("humidity_pct", 60.25),
    "collar": ("body_temp_c", 38.75),
    "barn": ("co2_ppm", 900.25),
}

#: Called for each sentinel as (device id, kind, reading ts in ms, wall time it was due).
SentinelHook = Callable[[str, str, int, float], None]

_CONNECT, _CONNACK, _PUBACK, _PINGRESP, _DISCONNECT = 1, 2, 4, 13, 14
_KEEPALIVE_S = 60
_TICK_S = 0.002  # a paced publisher wakes at most every 2 ms and writes the messages due by then


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 127
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _reason(packet: PacketTypes, code: int) -> str:
    try:
        return f"{code} {ReasonCode(packet, identifier=code).getName()}"
    except (KeyError, ValueError):
        return str(code)


def connect_packet(client_id: str, username: str, password: str, keepalive: int = _KEEPALIVE_S) -> bytes:
    """An MQTT 5 CONNECT with clean start, user name and password, no properties."""
    body = (
        _string("MQTT")
        + bytes([5, 0xC2])
        + keepalive.to_bytes(2, "big")
        + b"\x00"
        + _string(client_id)
        + _string(username)
        + _string(password)
    )
    return bytes([_CONNECT << 4]) + _varint(len(body)) + body


def _receive_maximum(props: bytes) -> int | None:
    """The Receive Maximum (0x21) of a CONNACK's properties, if the broker sent one."""
    fixed = {0x01: 1, 0x17: 1, 0x19: 1, 0x24: 1, 0x25: 1, 0x28: 1, 0x29: 1, 0x2A: 1}
    fixed |= {0x13: 2, 0x21: 2, 0x22: 2, 0x23: 2, 0x02: 4, 0x11: 4, 0x18: 4, 0x27: 4}
    pos = 0
    while pos < len(props):
        pid = props[pos]
        pos += 1
        if pid == 0x21:
            return int.from_bytes(props[pos : pos + 2], "big")
        if pid in fixed:
            pos += fixed[pid]
        elif pid == 0x0B:  # variable byte integer
            while props[pos] & 128:
                pos += 1
            pos += 1
        elif pid == 0x26:  # user property: two strings
            for _ in range(2):
                pos += 2 + int.from_bytes(props[pos : pos + 2], "big")
        else:  # strings and binary data: 2-byte length
            pos += 2 + int.from_bytes(props[pos : pos + 2], "big")
    return None


@dataclass(eq=False)
class Publisher:
    """One device's connection and its counts."""

    device_id: str
    kind: str
    sock: socket.socket
    topic: bytes  # length-prefixed, as it goes into PUBLISH
    max_inflight: int
    state: str = "connecting"  # connecting | ready | failed
    error: str | None = None
    inflight: dict[int, int] = field(default_factory=dict)  # packet id -> readings in the message
    next_mid: int = 1
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    sent: int = 0
    acked: int = 0
    acked_readings: int = 0
    refused: int = 0
    refused_readings: int = 0
    last_write: float = 0.0


@dataclass
class LoadResult:
    """What the publishers sent and what the broker answered."""

    messages: int = 0  # PUBLISH packets written
    readings: int = 0
    acked: int = 0  # messages with a PUBACK reason code < 128
    acked_readings: int = 0
    refused: int = 0  # messages with a PUBACK reason code >= 128
    refused_readings: int = 0
    unacked: int = 0  # messages without any PUBACK (their connection was lost or the wait timed out)
    reason_codes: dict[int, int] = field(default_factory=dict)  # PUBACK reason code -> messages
    failures: list[dict[str, object]] = field(default_factory=list)  # publishers that failed, and why
    devices: int = 0
    started: float = 0.0  # time.perf_counter() at the first publish (after the clients connected)
    started_wall: float = 0.0  # time.time() at the same moment
    publish_seconds: float = 0.0  # first publish to the last one written
    seconds: float = 0.0  # first publish to the last acknowledgement
    behind_ms_max: float = 0.0  # paced: the most a message was written after it was due
    cpu_s: float = 0.0  # CPU time of the publishing thread

    @property
    def readings_per_message(self) -> float:
        return self.readings / self.messages if self.messages else 0.0


class LoadGenerator:
    """Connections of many devices driven from one thread (see the module docstring)."""

    def __init__(
        self,
        devices: list[tuple[str, str, str]],
        host: str,
        port: int,
        max_inflight: int = 100,
        topic: str = TELEMETRY_TOPIC,
        connect_timeout: float = 15.0,
    ) -> None:
        self.sel = selectors.DefaultSelector()
        self.pubs: list[Publisher] = []
        self.codes: Counter[int] = Counter()
        for device_id, secret, kind in devices:
            try:
                sock = socket.create_connection((host, port), timeout=connect_timeout)
            except OSError as e:
                sock = socket.socket()
                pub = Publisher(device_id, kind, sock, b"", max_inflight)
                self._fail(pub, f"cannot connect: {e}")
                self.pubs.append(pub)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            pub = Publisher(device_id, kind, sock, _string(topic.format(device_id=device_id)), max_inflight)
            self.pubs.append(pub)
            self.sel.register(sock, selectors.EVENT_READ, pub)
            self._write(pub, connect_packet(device_id, device_id, secret))
        deadline = time.monotonic() + connect_timeout
        while any(p.state == "connecting" for p in self.pubs) and time.monotonic() < deadline:
            self.pump(0.05)
        for p in self.pubs:
            if p.state == "connecting":
                self._fail(p, f"no CONNACK within {connect_timeout:g} s")

    # -- I/O ----------------------------------------------------------------------------------
    def _fail(self, pub: Publisher, why: str) -> None:
        if pub.state == "failed":
            return
        pub.state, pub.error = "failed", f"{pub.error}, then {why}" if pub.error else why
        if pub.sock in self.sel.get_map():
            self.sel.unregister(pub.sock)
        pub.sock.close()

    def _write(self, pub: Publisher, packet: bytes) -> None:
        pub.last_write = time.monotonic()
        if pub.outbuf:
            pub.outbuf += packet
            return
        try:
            n = pub.sock.send(packet)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._fail(pub, f"connection lost: {e}")
            return
        if n < len(packet):
            pub.outbuf += packet[n:]
            self.sel.modify(pub.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, pub)

    def _flush(self, pub: Publisher) -> None:
        try:
            n = pub.sock.send(pub.outbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(pub, f"connection lost: {e}")
            return
        del pub.outbuf[:n]
        if not pub.outbuf:
            self.sel.modify(pub.sock, selectors.EVENT_READ, pub)

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` s for the sockets; read and handle whatever the broker sent."""
        for key, mask in self.sel.select(timeout):
            pub: Publisher = key.data
            if mask & selectors.EVENT_WRITE:
                self._flush(pub)
            if mask & selectors.EVENT_READ and pub.state != "failed":
                try:
                    data = pub.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self._fail(pub, f"connection lost: {e}")
                    continue
                if not data:
                    self._fail(pub, "connection closed by the broker")
                    continue
                pub.inbuf += data
                self._parse(pub)

    def _parse(self, pub: Publisher) -> None:
        buf, pos, end = pub.inbuf, 0, len(pub.inbuf)
        while pos + 2 <= end:
            decoded = _read_varint(buf, pos + 1, end)
            if decoded is None:
                break
            length, i = decoded
            if i + length > end:
                break
            kind = buf[pos] >> 4
            if kind == _PUBACK:
                mid = buf[i] << 8 | buf[i + 1]
                self._on_puback(pub, mid, buf[i + 2] if length > 2 else 0)
            elif kind == _CONNACK:
                code = buf[i + 1]
                if code >= 128:
                    self._fail(pub, f"connection refused: {_reason(PacketTypes.CONNACK, code)}")
                    return
                props = _read_varint(buf, i + 2, i + length)  # properties length, then the properties
                if props is None:
                    self._fail(pub, "malformed CONNACK properties")
                    return
                props_len, j = props
                receive_max = _receive_maximum(bytes(buf[j : j + props_len]))
                if receive_max:
                    pub.max_inflight = min(pub.max_inflight, receive_max)
                pub.state = "ready"
            elif kind == _DISCONNECT:
                code = buf[i] if length else 0
                self._fail(pub, f"disconnected by the broker: {_reason(PacketTypes.DISCONNECT, code)}")
                return
            pos = i + length  # PINGRESP and anything else: skipped
        del buf[:pos]

    def _on_puback(self, pub: Publisher, mid: int, code: int) -> None:
        readings = pub.inflight.pop(mid, None)
        if readings is None:
            return  # not ours (cannot happen with a conforming broker)
        self.codes[code] += 1
        if code < 128:
            pub.acked += 1
            pub.acked_readings += readings
        else:
            pub.refused += 1
            pub.refused_readings += readings
            if pub.error is None:
                pub.error = f"PUBACK {_reason(PacketTypes.PUBACK, code)}"

    def publish(self, pub: Publisher, payload: bytes, readings: int) -> None:
        """Write one QoS 1 PUBLISH of `payload` (which holds `readings` readings)."""
        mid = pub.next_mid
        while mid in pub.inflight:
            mid = mid % 65535 + 1
        pub.next_mid = mid % 65535 + 1
        pub.inflight[mid] = readings
        pub.sent += 1
        length = len(pub.topic) + 3 + len(payload)  # topic, packet id, empty properties, payload
        self._write(pub, b"\x32" + _varint(length) + pub.topic + mid.to_bytes(2, "big") + b"\x00" + payload)

    def wait_window(self, pub: Publisher, timeout: float = 60.0) -> bool:
        """Read acknowledgements until `pub` may send another message; False if it failed."""
        deadline = time.monotonic() + timeout
        while pub.state == "ready" and len(pub.inflight) >= pub.max_inflight:
            if time.monotonic() > deadline:
                self._fail(pub, f"no PUBACK within {timeout:g} s with {len(pub.inflight)} messages in flight")
            self.pump(0.05)
        return pub.state == "ready"

    def drain(self, timeout: float) -> None:
        """Wait until every message is acknowledged (or its connection failed), pinging idle ones."""
        deadline = time.monotonic() + timeout
        while any(p.inflight and p.state == "ready" for p in self.pubs) and time.monotonic() < deadline:
            self.pump(0.05)
            now = time.monotonic()
            for p in self.pubs:
                if p.state == "ready" and now - p.last_write > _KEEPALIVE_S / 2:
                    self._write(p, b"\xc0\x00")  # PINGREQ

    def close(self) -> None:
        for p in self.pubs:
            if p.state == "ready":
                self._write(p, b"\xe0\x00")  # DISCONNECT, normal
                p.sock.close()
        self.sel.close()

    def result(self, into: LoadResult) -> LoadResult:
        """Fill in the acknowledgement counts and the publishers that failed."""
        into.devices = len(self.pubs)
        into.acked = sum(p.acked for p in self.pubs)
        into.acked_readings = sum(p.acked_readings for p in self.pubs)
        into.refused = sum(p.refused for p in self.pubs)
        into.refused_readings = sum(p.refused_readings for p in self.pubs)
        into.unacked = sum(len(p.inflight) for p in self.pubs)
        into.reason_codes = dict(sorted(self.codes.items()))
        into.failures = [
            {"device": p.device_id, "error": p.error, "sent": p.sent, "acked": p.acked, "unacked": len(p.inflight)}
            for p in self.pubs
            if p.error is not None
        ]
        return into


def sentinel_indices(devices: int, count: int) -> set[int]:
    """`count` device indices spread evenly over `devices`, alternating even and odd (the bench's kinds)."""
    if count >= devices:
        return set(range(devices))
    return {min(devices - 1, i * devices // count + i % 2) for i in range(count)}


def publish_load(
    devices: list[tuple[str, str, str]],
    host: str,
    port: int,
    readings: int,
    per_message: int = 1,
    max_inflight: int = 100,
    rate: float | None = None,
    sentinel_devices: int = 0,
    on_sentinel: SentinelHook | None = None,
    topic: str = TELEMETRY_TOPIC,
    ack_timeout: float = 300.0,
) -> LoadResult:
    """Publish `readings` readings from `devices` [(id, secret, kind)], `per_message` per payload.

    Without `rate` as fast as the broker takes them; with it, paced at `rate` messages per second
    (message i is due `i / rate` s after the first). With `sentinel_devices` (single readings), the
    readings of that many devices (`sentinel_indices`) are sentinels, reported to `on_sentinel`.
    Returns when every message is acknowledged or its publisher failed.
    """
    cpu0 = time.thread_time()
    gen = LoadGenerator(devices, host, port, max_inflight, topic)
    result = LoadResult()
    pubs = gen.pubs
    n = len(pubs)
    values = [SAMPLE_VALUES[p.kind] for p in pubs]
    last_ts = [0] * n
    seqs = [0] * n
    start = result.started = time.perf_counter()
    result.started_wall = time.time()
    wall_offset = result.started_wall - start
    sentinels = sentinel_indices(n, sentinel_devices) if per_message == 1 and on_sentinel else set()
    behind = 0.0
    i = 0
    while result.readings < readings and any(p.state == "ready" for p in pubs):
        d = i % n
        pub = pubs[d]
        if pub.state != "ready" or (len(pub.inflight) >= pub.max_inflight and not gen.wait_window(pub)):
            i += 1
            continue
        if rate:
            due = start + result.messages / rate
            ahead = due - time.perf_counter()
            if ahead > _TICK_S:  # read the acknowledgements, sleep until it is due, then try again
                gen.pump(0)
                time.sleep(ahead)
                continue
            behind = max(behind, -ahead)
        elif i % 256 == 0:
            gen.pump(0)
        k = min(per_message, readings - result.readings)
        now_ms = int(time.time() * 1000)
        batch = []
        for j in range(k):
            ts = max(now_ms - (k - 1 - j), last_ts[d] + 1)
            last_ts[d] = ts
            seqs[d] += 1
            batch.append({"ts": ts, "seq": seqs[d], "values": values[d](i)})
        if d in sentinels:
            metric, marker = SENTINELS[pub.kind]
            batch[0]["values"] = {**batch[0]["values"], metric: marker}
            # timed from when it was due, or written if that is later (up to one tick early)
            due_wall = max(wall_offset + start + result.messages / rate, time.time()) if rate else time.time()
            on_sentinel(pub.device_id, pub.kind, batch[0]["ts"], due_wall)  # type: ignore[misc]
        gen.publish(pub, orjson.dumps(batch[0] if k == 1 else batch), k)
        result.messages += 1
        result.readings += k
        i += 1
    result.publish_seconds = time.perf_counter() - start
    gen.drain(ack_timeout)
    result.seconds = time.perf_counter() - start
    for p in pubs:
        if p.state == "ready" and p.inflight:
            p.error = p.error or f"no PUBACK within {ack_timeout:g} s for {len(p.inflight)} messages"
    gen.close()
    result.behind_ms_max = round(behind * 1000, 1)
    result.cpu_s = round(time.thread_time() - cpu0, 3)
    return gen.result(result)


def _read_varint(buf: bytearray, i: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `buf[i:end]`: (value, index after it), None when incomplete."""
    value, mult = 0, 1
    while i < end:
        byte = buf[i]
        i += 1
        value += (byte & 127) * mult
        mult *= 128
        if not byte & 128:
            return value, i
    return None
