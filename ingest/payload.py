"""Parse and validate one MQTT message into readings and rejections.

A message is one reading or an array of readings (offline backfill). Every reading is
checked on its own: a bad element of an array is rejected with its index while the good
ones are kept. Each rejection carries a stable `reason` code and a precise `detail`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from core.catalogue import Catalogue
from core.settings import Settings

TOPIC_PREFIX = "v1/devices/"
TOPIC_SUFFIX = "/telemetry"


@dataclass(slots=True)
class Reading:
    device_id: str
    kind: str
    ts_ms: int
    values: dict[str, float | bool | str]
    seq: int | None = None
    ts_missing: bool = False


@dataclass(slots=True)
class Rejection:
    reason: str
    detail: str
    index: int | None = None


@dataclass(slots=True)
class Parsed:
    device_id: str | None
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    is_array: bool = False


class _NonFinite(ValueError):
    pass


def _raise_non_finite(token: str) -> Any:
    raise _NonFinite(token)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def device_from_topic(topic: str) -> str | None:
    if topic.startswith(TOPIC_PREFIX) and topic.endswith(TOPIC_SUFFIX):
        device = topic[len(TOPIC_PREFIX) : -len(TOPIC_SUFFIX)]
        if device and "/" not in device:
            return device
    return None


def _decode(payload: bytes) -> tuple[Any, Rejection | None]:
    try:
        return orjson.loads(payload), None
    except orjson.JSONDecodeError as e:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as ue:
            return None, Rejection("not_utf8", f"payload is not UTF-8: {ue.reason} at byte {ue.start}")
        try:
            json.loads(text, parse_constant=_raise_non_finite, parse_float=_finite_float)
        except _NonFinite as nf:
            return None, Rejection("not_finite", f"payload contains the non-finite number {nf.args[0]}")
        except RecursionError:
            return None, Rejection("not_json", "payload is nested too deeply")
        except ValueError:
            pass
        return None, Rejection("not_json", f"payload is not JSON: {e}")


class Validator:
    """Checks readings against the catalogue and time limits."""

    def __init__(self, catalogue: Catalogue, max_payload_bytes: int, max_future_s: int, retention_days: int):
        self.catalogue = catalogue
        self.max_payload_bytes = max_payload_bytes
        self.max_future_ms = max_future_s * 1000
        self.retention_ms = retention_days * 86_400_000

    @classmethod
    def from_settings(cls, catalogue: Catalogue, settings: Settings) -> Validator:
        return cls(
            catalogue, settings.ingest_max_payload_bytes, settings.ingest_max_future_s, settings.ingest_retention_days
        )

    def parse(self, topic: str, payload: bytes, kind: str | None, now_ms: int) -> Parsed:
        """Validate `payload` published on `topic` by a device of `kind` (None: unknown device)."""
        device_id = device_from_topic(topic)
        out = Parsed(device_id)
        if device_id is None:
            out.rejections.append(Rejection("bad_topic", f"topic {topic!r} is not v1/devices/{{id}}/telemetry"))
            return out
        if len(payload) > self.max_payload_bytes:
            out.rejections.append(
                Rejection(
                    "payload_too_large",
                    f"payload of {len(payload)} bytes exceeds the limit of {self.max_payload_bytes}",
                )
            )
            return out
        if kind is None:
            out.rejections.append(Rejection("unknown_device", f"device {device_id!r} is not in the registry"))
            return out
        doc, rejection = _decode(payload)
        if rejection:
            out.rejections.append(rejection)
            return out
        if isinstance(doc, list):
            out.is_array = True
            if not doc:
                out.rejections.append(Rejection("bad_shape", "payload is an empty array"))
            for i, item in enumerate(doc):
                self._one(out, device_id, kind, item, now_ms, i)
        else:
            self._one(out, device_id, kind, doc, now_ms, None)
        return out

    def _one(self, out: Parsed, device_id: str, kind: str, doc: Any, now_ms: int, index: int | None) -> None:
        problem = self._check(doc, kind, now_ms)
        if isinstance(problem, Rejection):
            problem.index = index
            out.rejections.append(problem)
        else:
            ts_ms, seq, values, missing = problem
            out.readings.append(Reading(device_id, kind, ts_ms, values, seq, missing))

    def _check(self, doc: Any, kind: str, now_ms: int) -> Rejection | tuple[int, int | None, dict, bool]:
        if not isinstance(doc, dict):
            return Rejection("bad_shape", f"a reading must be a JSON object, got {type(doc).__name__}")
        unknown_keys = set(doc) - {"ts", "seq", "values"}
        if unknown_keys:
            return Rejection("bad_shape", f"unknown keys {sorted(unknown_keys)}; expected ts, seq, values")
        ts = doc.get("ts")
        missing = ts is None
        if missing:
            ts_ms = now_ms
        else:
            parsed = _timestamp_ms(ts)
            if isinstance(parsed, Rejection):
                return parsed
            ts_ms = parsed
            if ts_ms > now_ms + self.max_future_ms:
                return Rejection(
                    "future_timestamp",
                    f"ts {ts!r} is {(ts_ms - now_ms) / 1000:.0f} s in the future "
                    f"(limit {self.max_future_ms // 1000} s)",
                )
            if ts_ms < now_ms - self.retention_ms:
                hint = " (it looks like seconds, not milliseconds)" if 1e9 <= ts_ms < 1e10 else ""
                return Rejection(
                    "too_old",
                    f"ts {ts!r} is older than the retention window of {self.retention_ms // 86_400_000} days{hint}",
                )
        seq = doc.get("seq")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
            return Rejection("bad_seq", f"seq must be a non-negative integer, got {seq!r}")
        values = doc.get("values")
        if not isinstance(values, dict) or not values:
            return Rejection("no_values", "a reading needs a non-empty object 'values'")
        metrics = self.catalogue.kinds[kind].metrics
        clean: dict[str, float | bool | str] = {}
        for name, value in values.items():
            metric = metrics.get(name)
            if metric is None:
                return Rejection(
                    "unknown_metric", f"metric {name!r} is not defined for kind {kind!r} (known: {', '.join(metrics)})"
                )
            problem = metric.check(value)
            if problem:
                return Rejection(problem[0], f"{name}: {problem[1]}")
            clean[name] = float(value) if metric.type == "number" else value
        return ts_ms, seq, clean, missing


def _timestamp_ms(ts: Any) -> int | Rejection:
    if isinstance(ts, bool):
        return Rejection("bad_timestamp", "ts must be epoch milliseconds or an RFC 3339 string, got a boolean")
    if isinstance(ts, int):
        return ts
    if isinstance(ts, float):
        if not math.isfinite(ts):
            return Rejection("bad_timestamp", f"ts {ts} is not finite")
        return int(ts)
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return Rejection("bad_timestamp", f"ts {ts!r} is not an RFC 3339 timestamp")
        if dt.tzinfo is None:
            return Rejection("bad_timestamp", f"ts {ts!r} has no time zone offset")
        return int(dt.timestamp() * 1000)
    return Rejection("bad_timestamp", f"ts must be epoch milliseconds or an RFC 3339 string, got {type(ts).__name__}")
