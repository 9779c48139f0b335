"""From raw messages to stored readings: validate, enrich, write, spool, dead-letter.

`Pipeline.handle(batch)` returns only when every reading of the batch is stored in
InfluxDB or in the durable spool, and every rejection is in the dead-letter store; only
then may the caller acknowledge the messages to the broker. When neither InfluxDB nor
the spool can take a batch (the spool is full, or its disk is), or the registry cannot
say which device sent it or store its dead letters, it waits and tries again
(backpressure), never drops.

How InfluxDB's answers are handled (core/influx.py reads them):

- 204: stored.
- 400/422 naming lines (unparsable, a field type conflict): those lines are dead-lettered as
  `influx_rejected` (their line protocol kept, replayable), the rest written again.
- 413: the request is halved until InfluxDB takes the parts.
- 401, 403, 404, a 400 naming no line, 429, 5xx, a timeout, no connection: the batch is spooled
  (then acknowledged) and retried with exponential backoff up to INGEST_RETRY_MAX_S, never sooner
  than Retry-After; `village_ingest_influx_errors{status}` counts it and one log line says what
  to fix.

Right before each write to InfluxDB (a fresh batch or a spool replay), readings of days that the
anchoring worker has sealed are routed to the retention policy `late` (ingest/late.py).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from influxdb_client import Point, WritePrecision
from sqlalchemy import Engine

from core.catalogue import Catalogue
from core.influx import LATE_RP, InfluxError, InfluxV1
from core.log import get_logger
from ingest import rejects
from ingest.enrich import DeviceDirectory, DeviceInfo, RegistryUnavailable
from ingest.late import BATCH_TAG, Seals, SealsUnavailable, route
from ingest.metrics import IngestMetrics
from ingest.payload import Parsed, Reading, Rejection, Validator, device_from_topic
from ingest.rejects import RejectedMessage
from ingest.spool import Spool

log = get_logger("ingest")

#: Topic of the dead letters of lines InfluxDB refused: their payload is line protocol (one line per
#: reading, before late routing), replayed by `village deadletters replay` as it is.
INFLUX_TOPIC = "influx"
#: Longest wait a Retry-After header can impose, in seconds.
RETRY_AFTER_MAX_S = 600.0
_KEY_END = re.compile(r"(?<!\\) ")
_SEAL_TAG = re.compile(rf",{BATCH_TAG}=[^ ,]*$")
_DEVICE_TAG = re.compile(r"(?<!\\),device=((?:[^ ,\\]|\\.)*)")


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
        retry_max_s: float = 30.0,
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
        self.retry_s = retry_s  # first wait after a failed write; doubled per failure up to retry_max_s
        self.retry_max_s = max(retry_s, retry_max_s)
        self._backoff = retry_s
        self._failing: str | None = None  # the status of the failure InfluxDB is in, for the recovery log
        self._spool_stuck_until = 0.0
        self.stop = stop or threading.Event()
        self.deadletter_rows = deadletter_rows  # rows of their own per message (INGEST_DEADLETTER_ROWS_PER_MESSAGE)
        self.seqs = SeqTracker()
        self._influx_down_until = 0.0
        # the seals are reloaded as often as the device directory (INGEST_REGISTRY_TTL_S)
        self.seals = seals or Seals(engine, ttl=directory.ttl, retry_s=retry_s)
        self._late_rp_ready = False

    # -- processing ---------------------------------------------------------------------------
    def lookup(self, batch: list[Message]) -> dict[str, DeviceInfo | None]:
        """The registry entry of every device of the batch (raises `RegistryUnavailable`)."""
        ids = {device_id for msg in batch if (device_id := device_from_topic(msg.topic))}
        return {device_id: self.directory.get(device_id) for device_id in ids}

    def process(
        self, batch: list[Message], devices: dict[str, DeviceInfo | None] | None = None
    ) -> tuple[list[str], list[int], list[DeadLetterRow]]:
        """Validate and enrich a batch: line-protocol lines, their reading timestamps, rejections."""
        lines: list[str] = []
        stamps: list[int] = []
        dead: list[DeadLetterRow] = []
        redelivered = duplicates = gaps = ts_missing = 0
        for msg in batch:
            redelivered += msg.redelivered
            device_id = device_from_topic(msg.topic)
            if device_id is None:
                info = None
            else:
                info = devices[device_id] if devices is not None else self.directory.get(device_id)
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
        while True:
            try:
                devices = self.lookup(batch)
                break
            except RegistryUnavailable as e:  # which device sent what is unknown: hold the batch
                log.error("registry unavailable; holding acknowledgements until it answers", error=str(e)[:300])
                if self.stop.wait(self.retry_s):
                    raise InterruptedError("stopped before the registry answered") from e
        lines, stamps, dead = self.process(batch, devices)
        self.store_lines(lines, stamps)
        self.store_dead_letters(dead)

    # -- storing --------------------------------------------------------------------------------
    def store_lines(self, lines: list[str], stamps: list[int]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode()
        while not self.stop.is_set():
            refused = self._try_write(lines, body) if self.drain_spool() else None
            if refused is not None:
                self.store_refused(refused)
                now = time.time() * 1000
                self.metrics.stored.inc(len(lines) - len(refused))
                for ts in stamps:
                    self.metrics.lag.observe(max(0.0, (now - ts) / 1000))
                return
            if self._spool_push(body, len(lines)):
                return
            self.stop.wait(self.retry_s)
        raise InterruptedError("stopped before the batch was stored")

    def _spool_push(self, body: bytes, count: int) -> bool:
        """Keep a batch in the spool; False when the spool is full or cannot be written (disk full)."""
        if self.spool.full:
            log.warning(
                "spool full; holding acknowledgements until InfluxDB returns", spool_bytes=self.spool.size_bytes
            )
            return False
        try:
            self.spool.push(body, count)
        except sqlite3.Error as e:  # SQLITE_FULL (ENOSPC), an I/O error: nothing was kept
            log.error(
                "spool cannot be written (disk full?); holding acknowledgements until InfluxDB or the disk has room",
                error=str(e),
                spool=str(self.spool.path),
            )
            return False
        self.metrics.spooled.inc(count)
        self.metrics.spool_batches.set(len(self.spool))
        return True

    def _try_write(self, lines: list[str], body: bytes) -> list[tuple[str, str]] | None:
        """Route and write to InfluxDB. Returns the lines it refused by name, with its reasons (the
        caller dead-letters them), or None when it (or the registry's seals) cannot take the batch
        now: the caller spools the unrouted batch, and it is written again whole later."""
        if time.monotonic() < self._influx_down_until:
            return None
        try:
            seals, horizon = self.seals.current()
        except SealsUnavailable as e:
            log.warning("telemetry seals unavailable; spooling until the registry answers", error=str(e))
            return None
        on_time, late = route(lines, seals, horizon)
        refused: list[tuple[str, str]] = []
        if on_time:
            part = self._write_part(on_time, None if late else body, None)
            if part is None:
                return None
            refused += part
        if late:
            part = self._write_part(late, None, LATE_RP)
            if part is None:
                return None  # the on-time part is written again on replay: same points, no change
            refused += part
            self.metrics.late.inc(len(late) - len(part))
        if self._failing is not None:
            log.info("InfluxDB takes writes again", after=self._failing)
        self._failing, self._backoff = None, self.retry_s
        return refused

    def _write_part(self, lines: list[str], body: bytes | None, rp: str | None) -> list[tuple[str, str]] | None:
        try:
            if rp is not None and not self._late_rp_ready:
                self.influx.ensure_retention_policy(rp)  # 1.x; on 2.x the bucket <db>/late must exist
                self._late_rp_ready = True
            refused = self.influx.write_lines(lines, rp=rp, body=body)
        except InfluxError as e:
            self._influx_failed(e, rp)
            return None
        if refused:
            self.metrics.influx_errors.labels("refused_lines").inc()
            first = next(iter(refused.values()))
            log.error(
                "InfluxDB refused lines by name; dead-lettered as influx_rejected (after fixing the cause: "
                "village deadletters replay --reason influx_rejected)",
                refused=len(refused),
                written=len(lines) - len(refused),
                first_reason=first[:300],
                retention_policy=rp,
            )
        return [(lines[i], reason) for i, reason in sorted(refused.items())]

    def _influx_failed(self, e: InfluxError, rp: str | None) -> None:
        """Count the failure, wait before the next write (backoff, never less than Retry-After), say what to fix."""
        self.metrics.influx_errors.labels(e.label).inc()
        wait = max(self._backoff, min(e.retry_after or 0.0, RETRY_AFTER_MAX_S))
        self._influx_down_until = time.monotonic() + wait
        self._backoff = min(self._backoff * 2, self.retry_max_s)
        self._failing = e.label
        if rp is not None:
            self._late_rp_ready = False  # created again on the next try (the database may be new)
        log.error(
            f"{self.influx.what_to_fix(e)}; spooling, next try in {wait:.1f} s",
            status=e.label,
            error=str(e)[:300],
            retention_policy=rp,
        )

    def drain_spool(self) -> bool:
        """Replay spooled batches oldest first; True when InfluxDB has taken them all (or they are all
        written and only the spool's full disk keeps them there: new batches may then go straight on)."""
        if time.monotonic() < self._spool_stuck_until:
            return True
        while len(self.spool):
            batch = self.spool.peek()
            if batch is None:
                break
            batch_id, count, body = batch
            refused = self._try_write(body.decode().split("\n"), body)
            if refused is None:
                return False
            self.store_refused(refused)
            try:
                self.spool.remove(batch_id)
            except sqlite3.Error as e:  # a delete needs room in the WAL: written now, written again later
                log.error(
                    "spool cannot remove a replayed batch (disk full?); it stays and is written again", error=str(e)
                )
                self._spool_stuck_until = time.monotonic() + self.retry_s
                return True
            self.metrics.replayed.inc(count - len(refused))
            self.metrics.stored.inc(count - len(refused))
            self.metrics.spool_batches.set(len(self.spool))
            log.info("replayed spooled batch", readings=count, left=len(self.spool))
        return True

    def store_refused(self, refused: list[tuple[str, str]]) -> None:
        """Dead-letter the lines InfluxDB refused: one message of line protocol (as before routing), a
        row per line up to the per-message limit, reason `influx_rejected` with InfluxDB's words."""
        if not refused:
            return
        plain = [unroute(line) for line, _ in refused]
        devices = {_device_tag(line) for line in plain}
        msg = Message(INFLUX_TOPIC, "\n".join(plain).encode(), int(time.time() * 1000))
        device = devices.pop() if len(devices) == 1 else None
        self.store_dead_letters(
            [
                DeadLetterRow(msg, device, Rejection("influx_rejected", reason, i))
                for i, (_, reason) in enumerate(refused)
            ]
        )

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
        counted = False
        while True:
            try:
                # a redelivered message, or refused lines replayed from the spool, may have been
                # dead-lettered before: store them once
                messages = [
                    m
                    for msg, m in grouped.values()
                    if not ((msg.redelivered or msg.topic == INFLUX_TOPIC) and self._already_dead(m))
                ]
                if not counted:
                    for reason, n in Counter(r.reason for m in messages for r in m.rejections).items():
                        self.metrics.rejected.labels(reason).inc(n)
                    counted = True
                if messages:
                    with self.engine.begin() as conn:
                        rejects.store(conn, messages, self.deadletter_rows)
                return
            except Exception as e:  # the registry database is away: hold the acks and retry
                log.error("dead-letter store unavailable; retrying", error=str(e)[:300])
                if self.stop.wait(self.retry_s):
                    raise InterruptedError("stopped before dead letters were stored") from e

    def _already_dead(self, m: RejectedMessage) -> bool:
        """A redelivered message that was dead-lettered before its ack was lost: do not store it twice."""
        with self.engine.connect() as conn:
            return rejects.already_stored(conn, m.topic, m.payload)


def unroute(line: str) -> str:
    """A line as it was before late routing (without the `sealed_through` tag `route` added)."""
    end = _KEY_END.search(line)
    if end is None:
        return line
    return _SEAL_TAG.sub("", line[: end.start()]) + line[end.start() :]


def _device_tag(line: str) -> str | None:
    end = _KEY_END.search(line)
    found = _DEVICE_TAG.search(line[: end.start()] if end else line)
    return re.sub(r"\\(.)", r"\1", found.group(1)) if found else None
