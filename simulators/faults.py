"""Fault injection: turn a device's clean readings into the MQTT messages a real device sends.

Faults, each drawn per reading at its own rate from `random.Random(f"{seed}:{device_id}:faults")`
(so the clean readings are the same with or without faults):

- duplicate: the same payload (same ts and seq) is sent twice;
- out_of_order: a reading is held back and sent after the next one;
- offline: the device goes offline for a number of readings, buffers them and sends them as
  one JSON array when it is back (split so that no payload exceeds `MAX_ARRAY`);
- malformed: the payload is replaced by a broken one (truncated JSON, a metric as a string,
  a NaN literal, or no `values` object); that reading is lost;
- out_of_range: one metric gets a value outside the catalogue's range (or a sensor error code).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from core.catalogue import get_catalogue
from simulators.devices import Reading, generate

FAULTS = ("duplicate", "out_of_order", "offline", "malformed", "out_of_range")
MALFORMED_VARIANTS = ("truncated", "wrong_type", "nan", "missing_values")
MAX_ARRAY = 200  # readings per backfill array; ~100 bytes each keeps payloads far below 64 KiB


@dataclass(frozen=True)
class FaultRates:
    """Per-reading probabilities of each fault; `offline_readings` bounds an outage's length."""

    duplicate: float = 0.0
    out_of_order: float = 0.0
    offline: float = 0.0
    malformed: float = 0.0
    out_of_range: float = 0.0
    offline_readings: tuple[int, int] = (5, 60)

    def __post_init__(self) -> None:
        for name in FAULTS:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} rate must be between 0 and 1, got {rate}")
        if self.duplicate + self.out_of_order + self.malformed > 1.0:
            raise ValueError("duplicate + out_of_order + malformed rates must not exceed 1")
        lo, hi = self.offline_readings
        if not 1 <= lo <= hi:
            raise ValueError(f"offline_readings must be 1 <= min <= max, got {self.offline_readings}")

    @property
    def any(self) -> bool:
        return any(getattr(self, name) > 0.0 for name in FAULTS)


@dataclass(slots=True)
class Message:
    """One MQTT payload of a device, due at simulated time `send_ms`."""

    send_ms: int
    payload: bytes
    readings: int  # readings carried; 0 for a malformed payload
    faults: tuple[str, ...] = field(default=())
    detail: str = ""  # malformed variant, or the metric pushed out of range


def encode(reading: Reading | list[Reading]) -> bytes:
    """The UTF-8 JSON payload of one reading or an array of readings."""
    return orjson.dumps(reading)


def malformed_payload(reading: Reading, variant: str) -> bytes:
    """A broken payload made from `reading` (see `MALFORMED_VARIANTS`)."""
    values = reading["values"]
    first = next(iter(values))
    if variant == "truncated":
        raw = encode(reading)
        return raw[: max(1, len(raw) // 2)]
    if variant == "wrong_type":
        return encode({**reading, "values": {**values, first: str(values[first])}})
    if variant == "nan":
        return json.dumps({**reading, "values": {**values, first: float("nan")}}, separators=(",", ":")).encode()
    if variant == "missing_values":
        return encode({"ts": reading["ts"], "seq": reading["seq"]})
    raise ValueError(f"unknown malformed variant {variant!r}")


def out_of_range_value(kind: str, metric: str, rng: random.Random) -> float:
    """A value outside the catalogue range of `metric`: beyond a bound, or the error code -999."""
    m = get_catalogue().kinds[kind].metrics[metric]
    lo, hi = m.min, m.max
    if rng.random() < 0.25 and (lo is None or lo > -999):
        return -999.0
    span = (hi - lo) if hi is not None and lo is not None else 100.0
    beyond = round(span * (0.05 + 0.5 * rng.random()) + 1.0, 2)
    if hi is not None and (lo is None or rng.random() < 0.5):
        return hi + beyond
    return (lo if lo is not None else 0.0) - beyond


def inject(readings: Iterator[Reading], kind: str, rates: FaultRates, rng: random.Random) -> Iterator[Message]:
    """The messages that carry `readings` with faults drawn from `rng` at `rates`."""
    if not rates.any:
        for r in readings:
            yield Message(r["ts"], encode(r), 1)
        return
    p_dup = rates.duplicate
    p_ooo = p_dup + rates.out_of_order
    p_bad = p_ooo + rates.malformed
    buffer: list[Reading] = []
    buffer_oor = False
    offline_left = 0
    held: Message | None = None
    rand = rng.random
    for r in readings:
        oor = ()
        detail = ""
        if rates.out_of_range and rand() < rates.out_of_range:
            metric = rng.choice(sorted(r["values"]))
            r["values"] = {**r["values"], metric: out_of_range_value(kind, metric, rng)}
            oor = ("out_of_range",)
            detail = metric
        ts = r["ts"]
        if offline_left == 0 and held is None and rates.offline and rand() < rates.offline:
            offline_left = rng.randint(*rates.offline_readings)
        if offline_left > 0:
            buffer.append(r)
            buffer_oor = buffer_oor or bool(oor)
            offline_left -= 1
            if offline_left == 0:
                faults = ("offline", "out_of_range") if buffer_oor else ("offline",)
                for i in range(0, len(buffer), MAX_ARRAY):
                    chunk = buffer[i : i + MAX_ARRAY]
                    yield Message(ts, encode(chunk), len(chunk), faults)
                buffer = []
                buffer_oor = False
            continue
        if held is not None:  # the next reading overtakes the held one
            yield Message(ts, encode(r), 1, oor, detail)
            held.send_ms = ts
            yield held
            held = None
            continue
        u = rand()
        if u < p_dup:
            payload = encode(r)
            yield Message(ts, payload, 1, oor, detail)
            yield Message(ts, payload, 1, ("duplicate", *oor), detail)
        elif u < p_ooo:
            held = Message(ts, encode(r), 1, ("out_of_order", *oor), detail)
        elif u < p_bad:
            variant = MALFORMED_VARIANTS[int(rand() * len(MALFORMED_VARIANTS))]
            yield Message(ts, malformed_payload(r, variant), 0, ("malformed", *oor), variant)
        else:
            yield Message(ts, encode(r), 1, oor, detail)
    if held is not None:
        yield held
    if buffer:
        faults = ("offline", "out_of_range") if buffer_oor else ("offline",)
        for i in range(0, len(buffer), MAX_ARRAY):
            chunk = buffer[i : i + MAX_ARRAY]
            yield Message(chunk[-1]["ts"], encode(chunk), len(chunk), faults)


def messages(
    device_id: str,
    kind: str,
    start_ms: int,
    interval_ms: int | None = None,
    count: int | None = None,
    seed: int | str = 0,
    rates: FaultRates | None = None,
    seq_start: int = 0,
) -> Iterator[Message]:
    """A device's MQTT messages in send order: `generate()` readings with faults injected.

    Deterministic for a seed; `count` counts readings (endless when None).
    """
    rng = random.Random(f"{seed}:{device_id}:faults")
    readings = generate(device_id, kind, start_ms, interval_ms, count, seed, seq_start)
    return inject(readings, kind, rates or FaultRates(), rng)
