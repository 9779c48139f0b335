"""The ingest consumer's MQTT client: paho, acknowledging a message only once it is stored.

Two clients offer one interface to `ingest.service`: `on_delivery(topic, payload, qos, dup, mid)`
receives each message, `ack_stored(mids)` acknowledges stored messages of the current connection,
`buffered()` says whether bytes wait that select() cannot see.

- `BufferedClient`, the fast path, overrides private parts of paho-mqtt 2.2 (`_sock_recv`,
  `_packet_read`, `_handle_publish`, and uses `_in_packet`, `_packet_queue`, `_last_bytes_received`,
  `paho.mqtt._packet`), which paho is free to change in any release.
- `StockClient`, the fallback, uses paho's public API only (`manual_ack`, `on_message`, `ack`).

`make_client` builds the fast one only when `fast_path_problem()` finds those internals present and
decoding known byte streams exactly as stock paho does; otherwise the fallback, with a warning.

QoS, as the broker delivers it to our QoS 1 subscription (a subscriber never receives more than
it was granted, so a device's QoS 2 arrives here as QoS 1):
- QoS 0 has no packet id: stored like any other, never acknowledged (there is nothing to ack;
  mosquitto closes the connection on a PUBACK with packet id 0).
- QoS 1: PUBACK once stored, so the broker redelivers what a replica did not store.
- QoS 2, should a broker send it anyway: paho's flow (PUBREC on receipt, the message delivered on
  PUBREL), and PUBCOMP once stored.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK, PUBCOMP
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from core.log import get_logger

try:  # paho 2.2's own decoder and exception; 2.1 has neither (the self-check then refuses the fast path)
    from paho.mqtt._packet import decode_publish
    from paho.mqtt.exception import MalformedPacket

    _IMPORT_PROBLEM: str | None = None
except ImportError as e:  # pragma: no cover - depends on the installed paho
    _IMPORT_PROBLEM = f"cannot import paho's packet decoder: {e}"

    class MalformedPacket(Exception):  # type: ignore[no-redef]
        pass


log = get_logger("ingest")

#: (topic, payload, qos, dup, mid): mid is the packet id, 0 for QoS 0 (nothing to acknowledge).
OnDelivery = Callable[[str, bytes, int, bool, int], None]
_ACK = struct.Struct("!BBH").pack


class StockClient(mqtt.Client):
    """paho's public API only, acknowledging by `ack()` after store (`manual_ack`): the fallback."""

    on_delivery: OnDelivery | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["manual_ack"] = True
        super().__init__(*args, **kwargs)
        self._village_qos2: set[int] = set()  # packet ids of delivered QoS 2 messages: PUBCOMP, not PUBACK
        self.on_message = self._deliver

    def reconnect(self) -> MQTTErrorCode:
        # Deliveries of the old connection are never acknowledged (the broker sends them again).
        self._village_qos2.clear()
        return super().reconnect()

    def _deliver(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers refuse such topics; do as the fast path does
            topic = bytes(getattr(msg, "_topic", b"")).decode("utf-8", "replace")
        if msg.qos == 2:
            self._village_qos2.add(msg.mid)
        if self.on_delivery is not None:
            self.on_delivery(topic, msg.payload, msg.qos, bool(msg.dup), msg.mid if msg.qos else 0)

    def ack_stored(self, mids: Sequence[int]) -> None:
        """Acknowledge stored messages: PUBACK (QoS 1) or PUBCOMP (QoS 2); packet id 0 (QoS 0) never."""
        for mid in mids:
            if mid:
                qos2 = mid in self._village_qos2
                self._village_qos2.discard(mid)
                self.ack(mid, 2 if qos2 else 1)

    def buffered(self) -> bool:
        """True while decrypted TLS bytes wait that select() cannot see."""
        pending = getattr(self.socket(), "pending", None)  # ssl.SSLSocket
        return bool(pending is not None and pending())


class BufferedClient(StockClient):
    """The fast path: reads the socket in 64 KiB chunks and takes whole packets in one slice.

    paho reads every packet with at least three `recv` calls (command byte, length bytes, body)
    and bookkeeping between them; at ten thousand messages a second that cost as much as decoding.
    QoS 0 and 1 PUBLISHes skip paho's generic dispatch (an MQTTMessage object, a debug-log call
    and a topic-filter match per message), and a batch is acknowledged with one socket write.
    The owner of the loop must call `loop_read` again while `buffered()` is true.
    """

    _rbuf = b""
    _rpos = 0
    _rsock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: drop what was left of the old one
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            self._rbuf, self._rpos = super()._sock_recv(65536), 0  # BlockingIOError when nothing waits
            if not self._rbuf:
                return b""
        chunk = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def _packet_read(self) -> MQTTErrorCode:
        """Take a packet that is whole in the buffer in one slice; anything else goes to paho.

        The packet is then handled by paho's own `_packet_handle`, as paho's `_packet_read` does.
        """
        packet = self._in_packet
        if packet["command"] == 0 and self._rsock is self._sock:
            buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
            length, mult, i = 0, 1, pos + 1
            while i < end and i <= pos + 4:
                byte = buf[i]
                i += 1
                length += (byte & 127) * mult
                mult *= 128
                if not byte & 128:
                    if i + length > end:
                        break  # the rest is still on the socket: paho reads it
                    packet["command"], packet["packet"], packet["pos"] = buf[pos], buf[i : i + length], 0
                    packet["remaining_length"] = length
                    self._rpos = i + length
                    try:
                        rc = self._packet_handle()
                    except MalformedPacket:
                        rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    packet["command"], packet["packet"], packet["remaining_length"] = 0, bytearray(), 0
                    self._last_bytes_received = mqtt.time_func()
                    return rc
        return super()._packet_read()

    def buffered(self) -> bool:
        if self._rpos < len(self._rbuf) and self._rsock is self._sock:
            return True
        return super().buffered()

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet
        command = packet["command"]
        if command & 0x04 or self.on_delivery is None:  # QoS 2 (or the invalid 3): paho's own flow
            return super()._handle_publish()
        result = decode_publish(command, packet["packet"], self._protocol)
        self.on_delivery(result.topic.decode("utf-8", "replace"), result.payload, result.qos, result.dup, result.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_stored(self, mids: Sequence[int]) -> None:
        """Acknowledge stored messages with one socket write; packet id 0 (QoS 0) never."""
        qos2 = self._village_qos2
        acks = [_ACK(PUBCOMP if qos2 and mid in qos2 else PUBACK, 2, mid) for mid in mids if mid]
        if acks:
            if qos2:
                qos2.difference_update(mids)
            self._packet_queue(PUBACK, b"".join(acks), 0, 0)


IngestClient = StockClient  # the interface both clients offer (BufferedClient is a StockClient)


def make_client(choice: Literal["auto", "stock"], client_id: str, **kwargs: Any) -> StockClient:
    """The fast client when `choice` is auto and the self-check passes; the stock one otherwise."""
    if choice == "stock":
        log.info("mqtt client: stock paho (INGEST_MQTT_CLIENT=stock)", paho=paho.mqtt.__version__)
        cls: type[StockClient] = StockClient
    elif problem := fast_path_problem():
        log.warning(
            "mqtt client: stock paho, slower; the fast path does not fit this paho",
            paho=paho.mqtt.__version__,
            problem=problem,
        )
        cls = StockClient
    else:
        cls = BufferedClient
    return cls(CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)


# -- replaying raw MQTT bytes (the self-check and the tests) ---------------------------------------


class ScriptedSocket:
    """A socket that serves `chunks` one `recv` at a time (a recv never spans two chunks, as with
    TCP segments), then raises BlockingIOError; it records what the client sends."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = deque(c for c in chunks if c)
        self.sent = bytearray()

    def recv(self, bufsize: int) -> bytes:
        if not self._chunks:
            raise BlockingIOError
        chunk = self._chunks[0]
        if len(chunk) <= bufsize:
            return self._chunks.popleft()
        self._chunks[0] = chunk[bufsize:]
        return chunk[:bufsize]

    def exhausted(self) -> bool:
        return not self._chunks

    def send(self, data: bytes | bytearray) -> int:
        self.sent += data
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


Delivery = tuple[str, bytes, int, bool, int]  # (topic, payload, qos, dup, mid)


@dataclass
class Replay:
    deliveries: list[Delivery]
    sent: bytes  # PUBRECs written while reading, then the acknowledgements of every delivery


def replay(cls: type[StockClient], chunks: Sequence[bytes], protocol: int = mqtt.MQTTv311) -> Replay:
    """Feed raw broker-to-client bytes, cut into `chunks`, to a client of `cls`; then ack all it delivered."""
    client = cls(CallbackAPIVersion.VERSION2, client_id="replay", protocol=protocol, clean_session=False)
    deliveries: list[Delivery] = []
    client.on_delivery = lambda topic, payload, qos, dup, mid: deliveries.append((topic, bytes(payload), qos, dup, mid))
    sock = ScriptedSocket(chunks)
    client._sock = sock  # as paho's connect would, without a broker
    for _ in range(10 * sum(len(c) for c in chunks) + 10):
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"{cls.__name__} failed to read the stream: {rc!r}")
        if sock.exhausted() and not client.buffered() and client._in_packet["command"] == 0:
            break
    else:
        raise RuntimeError(f"{cls.__name__} did not finish reading the stream")
    client.ack_stored([mid for *_, mid in deliveries])
    client._sock = None
    return Replay(deliveries, bytes(sock.sent))


# -- known packets: what the self-check decodes through both clients ---------------------------------


def encode_length(n: int, width: int = 0) -> bytes:
    """MQTT's variable-length remaining length; `width` pads it (a valid, non-minimal encoding)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte)
        if not n and len(out) >= width:
            break
    for i in range(len(out) - 1):
        out[i] |= 0x80
    return bytes(out)


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int = 0, dup: bool = False, width: int = 0) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | dup << 3 | qos << 1]) + encode_length(len(body), width) + body


def mid_packet(command: int, mid: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (0x62) or PUBCOMP: a packet id and nothing else (MQTT 3.1.1)."""
    return _ACK(command, 2, mid)


def _known_stream() -> tuple[bytes, list[Delivery]]:
    topic = "v1/devices/soil-0001/telemetry"
    t = topic.encode()
    small, medium, large = b'{"values": {"soil_moisture": 31.2}}', b"m" * 300, b"L" * 20_000
    packets = [
        bytes([0x90, 3, 0, 1, 1]),  # SUBACK: packet id 1, QoS 1 granted
        publish_packet(t, small, 1, mid=7),
        publish_packet(t, small, 0),
        bytes([0xD0, 0]),  # PINGRESP
        publish_packet(t, medium, 2, mid=9),
        publish_packet(t, medium, 1, mid=8, dup=True),  # a 2-byte remaining length
        mid_packet(0x62, 9),  # PUBREL: the QoS 2 message is delivered now
        publish_packet(t, large, 1, mid=10),  # a 3-byte remaining length
        publish_packet(t, small, 1, mid=11, width=4),  # a 4-byte remaining length (not minimal, but valid)
        publish_packet(t, b"", 0),
    ]
    expected = [
        (topic, small, 1, False, 7),
        (topic, small, 0, False, 0),
        (topic, medium, 1, True, 8),
        (topic, medium, 2, False, 9),
        (topic, large, 1, False, 10),
        (topic, small, 1, False, 11),
        (topic, b"", 0, False, 0),
    ]
    return b"".join(packets), expected


def _cuts(stream: bytes) -> list[list[bytes]]:
    """The stream whole, then cut after every byte of its first 400 bytes, then in 7-byte pieces."""
    head = [stream[i : i + 1] for i in range(400)]
    return [[stream], [*head, stream[400:]], [stream[i : i + 7] for i in range(0, len(stream), 7)]]


#: paho internals the fast path overrides or calls, and instance state it reads or writes.
_METHODS = ("_sock_recv", "_packet_read", "_handle_publish", "_packet_handle", "_packet_queue", "reconnect", "ack")
_STATE = ("_in_packet", "_last_bytes_received", "_sock", "_protocol", "_manual_ack")
_OURS = ("_rbuf", "_rpos", "_rsock", "_village_qos2", "_deliver", "on_delivery", "ack_stored", "buffered")


def fast_path_problem() -> str | None:
    """Why `BufferedClient` cannot be trusted with the installed paho, or None when it can.

    Checks that the internals it uses exist, that none of our names collide with paho's, that
    paho's keepalive reads the receive time the fast path writes, and that known byte streams,
    cut at various points, give the same deliveries and acknowledgements through both clients.
    """
    if _IMPORT_PROBLEM:
        return _IMPORT_PROBLEM
    try:
        for name in _METHODS:
            if not callable(getattr(mqtt.Client, name, None)):
                return f"paho's Client has no method {name}"
        probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="self-check", protocol=mqtt.MQTTv311)
        for name in _STATE:
            if not hasattr(probe, name):
                return f"paho's Client has no attribute {name}"
        for name in _OURS:
            if hasattr(probe, name):
                return f"paho's Client now has an attribute {name} of its own"
        if not {"command", "packet", "pos", "remaining_length"} <= probe._in_packet.keys():
            return f"paho's _in_packet changed: {sorted(probe._in_packet)}"
        if "_last_bytes_received" not in mqtt.Client._check_keepalive.__code__.co_names:
            return "paho's keepalive no longer reads _last_bytes_received"
        stream, expected = _known_stream()
        expected_acks = b"".join(mid_packet(PUBACK if q == 1 else PUBCOMP, m) for (_t, _p, q, _d, m) in expected if m)
        for chunks in _cuts(stream):
            fast, stock = replay(BufferedClient, chunks), replay(StockClient, chunks)
            if stock.deliveries != expected or stock.sent != mid_packet(0x50, 9) + expected_acks:
                return f"stock paho decodes the known stream differently: {stock.deliveries[:3]}..."
            if fast.deliveries != stock.deliveries:
                return f"the fast path delivers {fast.deliveries[:3]}..., stock paho {stock.deliveries[:3]}..."
            if fast.sent != stock.sent:
                return f"the fast path sends {fast.sent.hex()}, stock paho {stock.sent.hex()}"
    except Exception as e:  # any surprise from paho's internals means: do not use them
        return f"self-check failed: {e!r}"
    return None
