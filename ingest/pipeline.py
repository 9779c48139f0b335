"""From raw messages to stored readings: validate, enrich, write, spool, dead-letter.

`Pipeline.handle(batch)` returns only when every reading of the batch is stored in
InfluxDB or in the durable spool, and every rejection is in the dead-letter store; only
then may the caller acknowledge the messages to the broker. When neither InfluxDB nor
the spool can take a batch, it waits and tries again (backpressure), never drops.

Right before each write to InfluxDB (a fresh batch or a spool replay), readings of days that the
anchoring worker has sealed are routed to the retention policy `late` (ingest/late.py).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from influxdb_client import Point, WritePrecision
from sqlalchemy import Engine

from core.catalogue import Catalogue
from core.influx import LATE_RP, InfluxRejected, InfluxUnavailable, InfluxV1
from core.log import get_logger
from ingest import rejects
from ingest.enrich import DeviceDirectory
from ingest.late import Seals, SealsUnavailable, route
from ingest.metrics import IngestMetrics
from ingest.payload import Parsed, Reading, Rejection, Validator, device_from_topic
from ingest.rejects import RejectedMessage
from ingest.spool import Spool

log = get_logger("ingest")


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    received_ms: int
    redelivered: bool = False
    mid: int = 0
    generation: int = 0


@dataclass(slots=True)
class DeadLetterRow:
    message: Message
    device_id: str | None
    rejection: Rejection


def to_line(reading: Reading, tags: tuple[tuple[str, str], ...]) -> str:
    """One reading as line protocol: measurement = kind, registry tags, metric fields, ms time.

    Every byte comes from influxdb-client's `Point`. The series key (measurement and tags) is
    the same for all readings of a device, so it is built once per device (`series_key`) and
    spliced in front of the fields and time that `Point` writes for each reading.
    """
    point = Point(reading.kind)
    for key, value in reading.values.items():
        point.field(key, value)
    if reading.ts_missing:
        point.field("ts_missing", True)
    line = point.time(reading.ts_ms, WritePrecision.MS).to_line_protocol()
    measurement, key = _measurement(reading.kind), series_key(reading.kind, tags)
    return key + line[len(measurement) :]


@functools.lru_cache(maxsize=100_000)
def series_key(kind: str, tags: tuple[tuple[str, str], ...]) -> str:
    """`measurement,tag=value,...` escaped by `Point` (built with a placeholder field, cut off)."""
    point = Point(kind)
    for key, value in tags:
        point.tag(key, value)
    line = point.field("_", 0).to_line_protocol()
    assert line.endswith(" _=0i"), line
    return line[: -len(" _=0i")]


@functools.lru_cache(maxsize=256)
def _measurement(kind: str) -> str:
    return series_key(kind, ())


class SeqTracker:
    """Recent sequence numbers per device, to count duplicates and gaps (bounded memory)."""

    def __init__(self, window: int = 512, devices: int = 100_000) -> None:
        self.window = window
        self.devices = devices
        self._seen: OrderedDict[str, tuple[set[int], deque[int], list[int]]] = OrderedDict()

    def observe(self, device_id: str, seq: int) -> tuple[bool, int]:
        """Return (is_duplicate, gap) for this sequence number."""
        entry = self._seen.get(device_id)
        if entry is not None:
            self._seen.move_to_end(device_id)  # least recently seen devices are forgotten first
        else:
            entry = self._seen[device_id] = (set(), deque(), [seq - 1])
            if len(self._seen) > self.devices:
                self._seen.popitem(last=False)
        seen, order, top = entry
        if seq in seen:
            return True, 0
        seen.add(seq)
        order.append(seq)
        if len(order) > self.window:
            seen.discard(order.popleft())
        gap = max(0, seq - top[0] - 1)
        top[0] = max(top[0], seq)
        return False, gap


class Pipeline:
    def __init__(
        self,
        *,
        catalogue: Catalogue,
        validator: Validator,
        directory: DeviceDirectory,
        influx: InfluxV1,
        spool: Spool,
        engine: Engine,
        metrics: IngestMetrics,
        retry_s: float = 1.0,
        stop: threading.Event | None = None,
        deadletter_rows: int = 20,
        seals: Seals | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.validator = validator
        self.directory = directory
        self.influx = influx
        self.spool = spool
        self.engine = engine
        self.metrics = metrics
        self.retry_s = retry_s
        self.stop = stop or threading.Event()
        self.deadletter_rows = deadletter_rows  # rows of their own per message (INGEST_DEADLETTER_ROWS_PER_MESSAGE)
        self.seqs = SeqTracker()
        self._influx_down_until = 0.0
        # the seals are reloaded as often as the device directory (INGEST_REGISTRY_TTL_S)
        self.seals = seals or Seals(engine, ttl=directory.ttl, retry_s=retry_s)
        self._late_rp_ready = False

    # -- processing ---------------------------------------------------------------------------
    def process(self, batch: list[Message]) -> tuple[list[str], list[int], list[DeadLetterRow]]:
        """Validate and enrich a batch: line-protocol lines, their reading timestamps, rejections."""
        lines: list[str] = []
        stamps: list[int] = []
        dead: list[DeadLetterRow] = []
        redelivered = duplicates = gaps = ts_missing = 0
        for msg in batch:
            redelivered += msg.redelivered
            device_id = device_from_topic(msg.topic)
            info = self.directory.get(device_id) if device_id else None
            kind = info.kind if info is not None and info.kind in self.catalogue.kinds else None
            try:
                parsed = self.validator.parse(msg.topic, msg.payload, kind, msg.received_ms)
            except Exception as e:  # a bug must not turn one message into a crash loop: keep it, say why
                log.exception("validation failed unexpectedly", topic=msg.topic)
                parsed = Parsed(device_id, rejections=[Rejection("internal_error", f"{type(e).__name__}: {e}")])
            if info is not None and not info.active:
                reason = Rejection("device_not_active", f"device {info.id!r} is {info.status}, not active")
                parsed.rejections, parsed.readings = [reason], []
            for rejection in parsed.rejections:
                dead.append(DeadLetterRow(msg, parsed.device_id, rejection))
            for reading in parsed.readings:
                if reading.seq is not None:
                    duplicate, gap = self.seqs.observe(reading.device_id, reading.seq)
                    duplicates += duplicate
                    gaps += gap
                ts_missing += reading.ts_missing
                assert info is not None
                lines.append(to_line(reading, info.tags))
                stamps.append(reading.ts_ms)
        m = self.metrics
        m.messages.inc(len(batch))
        m.redelivered.inc(redelivered)
        m.received.inc(len(lines) + len(dead))
        m.duplicates.inc(duplicates)
        m.gaps.inc(gaps)
        m.ts_missing.inc(ts_missing)
        return lines, stamps, dead

    def handle(self, batch: list[Message]) -> None:
        """Process and durably store a batch; returns only when it is safe to acknowledge it."""
        lines, stamps, dead = self.process(batch)
        self.store_lines(lines, stamps)
        self.store_dead_letters(dead)

    # -- storing --------------------------------------------------------------------------------
    def store_lines(self, lines: list[str], stamps: list[int]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        while not self.stop.is_set():
            if self.drain_spool() and self._try_write(lines, body):
                now = time.time() * 1000
                self.metrics.stored.inc(len(lines))
                for ts in stamps:
                    self.metrics.lag.observe(max(0.0, (now - ts) / 1000))
                return
            if not self.spool.full:
                self.spool.push(body, len(lines))
                self.metrics.spooled.inc(len(lines))
                self.metrics.spool_batches.set(len(self.spool))
                return
            log.warning(
                "spool full; holding acknowledgements until InfluxDB returns", spool_bytes=self.spool.size_bytes
            )
            self.stop.wait(self.retry_s)
        raise InterruptedError("stopped before the batch was stored")

    def _try_write(self, lines: list[str], body: bytes) -> bool:
        """Route and write to InfluxDB; False when it (or the registry's seals) is unavailable, so
        the caller spools the unrouted batch. Refused lines are dead-lettered."""
        if time.monotonic() < self._influx_down_until:
            return False
        try:
            seals, horizon = self.seals.current()
        except SealsUnavailable as e:
            log.warning("telemetry seals unavailable; spooling until the registry answers", error=str(e))
            return False
        on_time, late = route(lines, seals, horizon)
        if on_time and not self._write_part(on_time, None if late else body, None):
            return False
        if late:
            if not self._write_part(late, None, LATE_RP):
                return False  # the on-time part is written again on replay: same points, no change
            self.metrics.late.inc(len(late))
        return True

    def _write_part(self, lines: list[str], body: bytes | None, rp: str | None) -> bool:
        try:
            if rp is not None and not self._late_rp_ready:
                self.influx.ensure_retention_policy(rp)  # 1.x; on 2.x the bucket <db>/late must exist
                self._late_rp_ready = True
            self.influx.write(body if body is not None else "\n".join(lines), rp=rp)
            return True
        except InfluxUnavailable as e:
            self.metrics.influx_errors.inc()
            self._influx_down_until = time.monotonic() + self.retry_s
            log.warning("InfluxDB unavailable; spooling", error=str(e), retention_policy=rp)
            return False
        except InfluxRejected as e:
            self.metrics.influx_errors.inc()
            if rp is not None and "not found" in str(e):  # the late bucket is missing: keep, do not drop
                self._influx_down_until = time.monotonic() + self.retry_s
                log.error("InfluxDB has no retention policy (bucket) for late readings; spooling", error=str(e))
                return False
            log.error("InfluxDB refused a batch; isolating the refused lines", error=str(e))
            self._write_isolating(lines, rp)
            return True

    def _write_isolating(self, lines: list[str], rp: str | None = None) -> None:
        """Write halves recursively so that only the lines InfluxDB refuses are dead-lettered."""
        try:
            self.influx.write("\n".join(lines), rp=rp)
            return
        except InfluxRejected as e:
            if len(lines) == 1:
                msg = Message("influx", lines[0].encode(), int(time.time() * 1000))
                self.store_dead_letters([DeadLetterRow(msg, None, Rejection("influx_rejected", str(e)[:1000]))])
                return
        mid = len(lines) // 2
        self._write_isolating(lines[:mid], rp)
        self._write_isolating(lines[mid:], rp)

    def drain_spool(self) -> bool:
        """Replay spooled batches oldest first; True when the spool is empty."""
        while len(self.spool):
            batch = self.spool.peek()
            if batch is None:
                break
            batch_id, count, body = batch
            if not self._try_write(body.decode().split("\n"), body):
                return False
            self.spool.remove(batch_id)
            self.metrics.replayed.inc(count)
            self.metrics.stored.inc(count)
            self.metrics.spool_batches.set(len(self.spool))
            log.info("replayed spooled batch", readings=count, left=len(self.spool))
        return True

    def store_dead_letters(self, dead: list[DeadLetterRow]) -> None:
        """Store the rejections message by message: one payload copy each, bounded rows (ingest/rejects.py)."""
        if not dead:
            return
        grouped: dict[int, tuple[Message, RejectedMessage]] = {}
        for d in dead:
            entry = grouped.get(id(d.message))
            if entry is None:
                msg = d.message
                rejected = RejectedMessage(msg.topic, msg.payload, msg.received_ms, d.device_id, [])
                entry = grouped[id(msg)] = (msg, rejected)
            entry[1].rejections.append(d.rejection)
        messages = [m for msg, m in grouped.values() if not (msg.redelivered and self._already_dead(m))]
        for reason, n in Counter(r.reason for m in messages for r in m.rejections).items():
            self.metrics.rejected.labels(reason).inc(n)
        while messages:
            try:
                with self.engine.begin() as conn:
                    rejects.store(conn, messages, self.deadletter_rows)
                return
            except Exception as e:  # the registry database is away: hold the acks and retry
                log.error("dead-letter store unavailable; retrying", error=str(e))
                if self.stop.wait(self.retry_s):
                    raise InterruptedError("stopped before dead letters were stored") from e

    def _already_dead(self, m: RejectedMessage) -> bool:
        """A redelivered message that was dead-lettered before its ack was lost: do not store it twice."""
        with self.engine.connect() as conn:
            return rejects.already_stored(conn, m.topic, m.payload)
