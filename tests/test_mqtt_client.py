"""The ingest MQTT client (ingest/mqttclient.py) on raw MQTT byte streams, without a broker.

The fast path (`BufferedClient`, built on paho's internals) must deliver exactly what stock paho
delivers, in the same order, and send the same bytes back, however the stream is cut across
reads; it must never acknowledge packet id 0. Its start-up self-check must refuse a paho whose
internals no longer behave, so that ingest falls back to `StockClient`.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ingest.mqttclient as mc
from ingest.mqttclient import (
    BufferedClient,
    Delivery,
    StockClient,
    encode_length,
    fast_path_problem,
    make_client,
    mid_packet,
    publish_packet,
    replay,
)

PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
TOPICS = ["v1/devices/soil-0001/telemetry", "v1/devices/村-0001/telemetry", "t", "v1/devices/" + "x" * 300 + "/t"]
PAYLOAD_SIZES = [0, 1, 60, 126, 127, 128, 300, 16_382, 16_383, 16_384, 70_000]


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    width: int  # remaining-length bytes asked for (0: minimal)


@dataclass(frozen=True)
class Control:
    raw: bytes  # PINGRESP, SUBACK or PUBREL


@st.composite
def sessions(draw: st.DrawFn) -> list[Publish | Control]:
    """A broker-to-client session: QoS 0/1/2 PUBLISHes, PINGRESP, SUBACK, and a PUBREL for each
    QoS 2 message (sometimes for an unknown packet id), in an order a broker may send them."""
    events: list[Publish | Control] = []
    waiting_rel: list[int] = []  # QoS 2 packet ids received, not yet released
    used: set[int] = set()
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["publish"] * 6 + ["pingresp", "suback", "pubrel"]))
        if kind == "pingresp":
            events.append(Control(b"\xd0\x00"))
        elif kind == "suback":
            codes = draw(st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=3))
            events.append(Control(bytes([0x90, 2 + len(codes)]) + struct.pack("!H", draw(st.integers(1, 65535)))))
            events[-1] = Control(events[-1].raw + bytes(codes))
        elif kind == "pubrel":
            if waiting_rel and draw(st.booleans()):
                mid = waiting_rel.pop(draw(st.integers(0, len(waiting_rel) - 1)))
            else:
                mid = draw(st.integers(1, 65535).filter(lambda m: m not in used))  # unknown to the client
                used.add(mid)
            events.append(Control(mid_packet(PUBREL, mid)))
        else:
            qos = draw(st.sampled_from([0, 1, 1, 2]))
            # QoS 0 has no packet id; id 0 at QoS 1 is a broker's protocol error: delivered, never acked
            if qos == 0 or (qos == 1 and draw(st.integers(0, 20)) == 0):
                mid = 0
            else:  # unique: nothing is acknowledged before the end, so no packet id is free for reuse
                mid = draw(st.integers(1, 65535).filter(lambda m: m not in used))
                used.add(mid)
                if qos == 2:
                    waiting_rel.append(mid)
            size = draw(st.sampled_from(PAYLOAD_SIZES))
            payload = draw(st.binary(min_size=size, max_size=size)) if size < 200 else bytes(range(256)) * 300
            events.append(
                Publish(
                    topic=draw(st.sampled_from(TOPICS)),
                    payload=payload[:size],
                    qos=qos,
                    mid=mid,
                    dup=qos > 0 and draw(st.booleans()),
                    width=draw(st.integers(0, 4)),
                )
            )
    for mid in waiting_rel:
        events.append(Control(mid_packet(PUBREL, mid)))
    return events


def encode(events: list[Publish | Control]) -> bytes:
    return b"".join(
        publish_packet(e.topic.encode(), e.payload, e.qos, e.mid, e.dup, e.width) if isinstance(e, Publish) else e.raw
        for e in events
    )


def expected(events: list[Publish | Control]) -> tuple[list[Delivery], bytes]:
    """What paho's documented flow gives: QoS 0/1 delivered on receipt, QoS 2 on its PUBREL after a
    PUBREC; then, once all is stored, a PUBACK per QoS 1 and a PUBCOMP per QoS 2 (never for id 0)."""
    deliveries: list[Delivery] = []
    sent = b""
    held: dict[int, Delivery] = {}
    for e in events:
        if isinstance(e, Publish):
            d = (e.topic, e.payload, e.qos, e.dup, e.mid)
            if e.qos == 2:
                held[e.mid] = d
                sent += mid_packet(PUBREC, e.mid)
            else:
                deliveries.append(d)
        elif e.raw[0] == PUBREL and (mid := struct.unpack("!H", e.raw[2:])[0]) in held:
            deliveries.append(held.pop(mid))
    acks = b"".join(mid_packet(PUBCOMP if qos == 2 else PUBACK, mid) for (_t, _p, qos, _d, mid) in deliveries if mid)
    return deliveries, sent + acks


@st.composite
def cut(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """The stream split into reads: at random offsets, or in small pieces of one size."""
    if draw(st.booleans()):
        points = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=40))))
    else:
        step = draw(st.integers(1, 9))
        points = list(range(step, min(len(stream), 4000), step))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def sent_packets(sent: bytes) -> list[tuple[int, int]]:
    """(command, packet id) of every packet a client sent: each is a 4-byte acknowledgement."""
    assert len(sent) % 4 == 0, sent.hex()
    out = []
    for i in range(0, len(sent), 4):
        command, length, mid = struct.unpack("!BBH", sent[i : i + 4])
        assert length == 2 and command in (PUBACK, PUBREC, PUBCOMP), sent[i : i + 4].hex()
        out.append((command, mid))
    return out


def check_against_stock_paho(events: list[Publish | Control], chunks: list[bytes]) -> None:
    fast, stock = replay(BufferedClient, chunks), replay(StockClient, chunks)
    want_deliveries, want_sent = expected(events)
    assert fast.deliveries == stock.deliveries == want_deliveries
    assert fast.sent == stock.sent == want_sent
    assert all(mid != 0 for _command, mid in sent_packets(fast.sent)), "an acknowledgement for packet id 0"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), events=sessions())
def test_fast_path_delivers_and_acknowledges_exactly_as_stock_paho(
    data: st.DataObject, events: list[Publish | Control]
) -> None:
    stream = encode(events)
    check_against_stock_paho(events, data.draw(cut(stream)))


def test_fast_path_reads_a_packet_with_a_minimal_four_byte_remaining_length() -> None:
    events: list[Publish | Control] = [Publish("t", b"x" * 2_097_152, 1, 5, False, 0), Control(b"\xd0\x00")]
    stream = encode(events)
    assert stream[1:5] == b"\x85\x80\x80\x01"  # 2,097,157 bytes after the fixed header
    check_against_stock_paho(events, [stream[:3], stream[3:70_000], stream[70_000:]])
    check_against_stock_paho(events, [stream])


def test_qos0_is_delivered_and_never_acknowledged() -> None:
    stream = publish_packet(b"v1/devices/soil-0001/telemetry", b"{}", 0) + publish_packet(b"t", b"a", 1, mid=3)
    for cls in (BufferedClient, StockClient):
        result = replay(cls, [stream])
        assert [(q, m) for (_t, _p, q, _d, m) in result.deliveries] == [(0, 0), (1, 3)]
        assert result.sent == mid_packet(PUBACK, 3)


def test_remaining_length_encoding() -> None:
    assert encode_length(0) == b"\x00" and encode_length(127) == b"\x7f" and encode_length(128) == b"\x80\x01"
    assert encode_length(16_384) == b"\x80\x80\x01" and encode_length(2_097_152) == b"\x80\x80\x80\x01"
    assert encode_length(5, width=4) == b"\x85\x80\x80\x00"


# -- the start-up self-check and the fallback --------------------------------------------------------


def test_self_check_passes_on_the_pinned_paho() -> None:
    assert fast_path_problem() is None


def test_self_check_refuses_a_paho_without_its_packet_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """paho 2.1 has neither paho.mqtt._packet nor paho.mqtt.exception."""
    monkeypatch.setattr(
        mc, "_IMPORT_PROBLEM", "cannot import paho's packet decoder: No module named 'paho.mqtt._packet'"
    )
    assert "_packet" in (fast_path_problem() or "")


def test_self_check_refuses_internals_that_decode_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder whose result changed meaning (here: the DUP flag lost) is caught by comparing with stock paho."""
    real = mc.decode_publish
    monkeypatch.setattr(mc, "decode_publish", lambda h, p, v: real(h & ~0x08, p, v))
    assert "the fast path delivers" in (fast_path_problem() or "")


def test_self_check_refuses_when_keepalive_reads_another_receive_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """paho 2.1 called it `_last_msg_in`: writing `_last_bytes_received` there would starve keepalive."""

    def _check_keepalive(self: mc.mqtt.Client) -> float:
        return self._last_msg_in  # type: ignore[attr-defined]

    monkeypatch.setattr(mc.mqtt.Client, "_check_keepalive", _check_keepalive)
    assert fast_path_problem() == "paho's keepalive no longer reads _last_bytes_received"


def test_self_check_refuses_when_a_method_it_uses_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mc.mqtt.Client, "_packet_queue")
    assert fast_path_problem() == "paho's Client has no method _packet_queue"


def test_make_client_falls_back_to_stock_paho_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(make_client("auto", "ingest-0")) is BufferedClient
    assert type(make_client("stock", "ingest-0")) is StockClient
    monkeypatch.setattr(mc, "_IMPORT_PROBLEM", "simulated")
    with structlog.testing.capture_logs() as logs:
        client = make_client("auto", "ingest-0")
    assert type(client) is StockClient and client._manual_ack
    assert [(e["log_level"], e["problem"]) for e in logs] == [("warning", "simulated")]
