"""Dead letters: list them, and replay them after a fix (a catalogue change, a late registration).

Replaying re-validates each message's stored raw payload once, against the current catalogue
and registry. A reading that now passes is written to InfluxDB (idempotently: same series and
time) and its dead letter is marked `stored`; one that fails again keeps its row, marked with
the new reason, so nothing is ever deleted. A row that counts further rejections of its reason
(`more` > 0, see ingest/rejects.py) stands for its own reading and for every reading after it
that has no row of its own: those that pass now are written with it (readings of them that were
stored the first time are written again unchanged, which InfluxDB keeps once), and the row counts
as stored when none of them fails again for its reason. A payload_too_large message kept only a
prefix of itself and cannot be replayed.

Lines InfluxDB refused (`influx_rejected`, topic `influx`) keep their line protocol: they are
written again as they are, after the fix InfluxDB's reason called for (a measurement dropped
after a field type conflict, say). Every replayed line is routed like ingest routes it (readings
of a sealed day go to the retention policy `late`), and a line InfluxDB refuses again by name
leaves its row rejected with InfluxDB's reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from core.catalogue import Catalogue
from core.influx import LATE_RP, InfluxV1
from core.models import DeadLetter, DeadLetterPayload
from ingest.enrich import DeviceDirectory
from ingest.late import Seals, route
from ingest.payload import Parsed, Reading, Validator, device_from_topic
from ingest.pipeline import INFLUX_TOPIC, to_line


@dataclass
class ReplayReport:
    examined: int = 0
    stored: int = 0
    still_rejected: int = 0


def list_dead_letters(
    session: Session,
    reason: str | None = None,
    device_id: str | None = None,
    include_replayed: bool = False,
    limit: int = 50,
) -> list[tuple[DeadLetter, DeadLetterPayload | None]]:
    """The newest dead letters, each with its message's stored payload."""
    query = (
        select(DeadLetter, DeadLetterPayload)
        .join(DeadLetterPayload, col(DeadLetterPayload.id) == col(DeadLetter.payload_id), isouter=True)
        .order_by(col(DeadLetter.id).desc())
        .limit(limit)
    )
    if reason:
        query = query.where(DeadLetter.reason == reason)
    if device_id:
        query = query.where(DeadLetter.device_id == device_id)
    if not include_replayed:
        query = query.where(col(DeadLetter.replayed_at).is_(None))
    return [(row, payload) for row, payload in session.exec(query)]


def replay(
    engine: Engine,
    catalogue: Catalogue,
    validator: Validator,
    influx: InfluxV1,
    reason: str | None = None,
    ids: list[int] | None = None,
) -> ReplayReport:
    """Re-validate dead letters that have not been stored yet; store those that now pass."""
    report = ReplayReport()
    directory = DeviceDirectory(engine, ttl=0)
    with Session(engine) as session:
        query = (
            select(DeadLetter)
            .where(col(DeadLetter.replay_result).is_(None) | (DeadLetter.replay_result != "stored"))
            .order_by(col(DeadLetter.id))
        )
        if reason:
            query = query.where(DeadLetter.reason == reason)
        if ids:
            query = query.where(col(DeadLetter.id).in_(ids))
        messages: dict[object, list[DeadLetter]] = defaultdict(list)
        for row in session.exec(query):
            messages[row.payload_id if row.payload_id is not None else ("row", row.id)].append(row)
        lines: dict[str, int] = {}  # each line to write once, with its position
        covers: dict[int | None, list[int]] = {}  # a row's lines: it is stored only if InfluxDB takes them
        results: dict[int | None, str] = {}
        now = datetime.now(UTC)
        for rows in messages.values():
            first = rows[0]
            payload = session.get(DeadLetterPayload, first.payload_id) if first.payload_id is not None else None
            device_id = device_from_topic(first.topic)
            info = directory.get(device_id) if device_id else None
            if payload is None:
                results.update(dict.fromkeys((r.id for r in rows), "rejected: the message's payload was not kept"))
            elif first.topic == INFLUX_TOPIC:  # line protocol InfluxDB refused: written again as it is
                kept = payload.payload.decode().split("\n")
                listed = set(session.exec(select(DeadLetter.index).where(DeadLetter.payload_id == payload.id)))
                for row in rows:
                    covers[row.id] = [lines.setdefault(kept[i], len(lines)) for i in _influx_indices(row, kept, listed)]
                    results[row.id] = "stored"
            elif payload.truncated:
                kept_bytes = f"only the first {len(payload.payload)} of its {payload.size} bytes were kept"
                results.update(dict.fromkeys((r.id for r in rows), f"rejected: payload_too_large: {kept_bytes}"))
            elif info is not None and not info.active:
                results.update(
                    dict.fromkeys(
                        (r.id for r in rows), f"rejected: device_not_active: device {info.id!r} is {info.status}"
                    )
                )
            else:
                kind = info.kind if info is not None and info.kind in catalogue.kinds else None
                # Time limits are judged at the time the message was received, not now.
                received = first.received_at if first.received_at.tzinfo else first.received_at.replace(tzinfo=UTC)
                parsed = validator.parse(first.topic, payload.payload, kind, int(received.timestamp() * 1000))
                listed = set(session.exec(select(DeadLetter.index).where(DeadLetter.payload_id == payload.id)))
                for row in rows:
                    readings, result = _replay_row(row, parsed, listed)
                    if info is not None:  # an unknown device's message fails as a whole (unknown_device)
                        covers[row.id] = [lines.setdefault(to_line(r, info.tags), len(lines)) for r in readings]
                    results[row.id] = result
        # raises when InfluxDB is away or refuses the batch as a whole: nothing is marked then
        refused = _write_routed(engine, influx, list(lines))
        for rows in messages.values():
            for row in rows:
                result = results[row.id]
                again = next((refused[i] for i in covers.get(row.id, []) if i in refused), None)
                if result == "stored" and again is not None:
                    result = f"rejected: influx_rejected: {again}"
                row.replayed_at = now
                row.replay_result = result
                report.examined += 1
                report.stored += result == "stored"
                report.still_rejected += result != "stored"
                session.add(row)
        session.commit()
    return report


def _influx_indices(row: DeadLetter, kept: list[str], listed: set[int | None]) -> list[int]:
    """The lines of a refused-lines message a row stands for (a row with `more`: also the later
    lines without a row of their own; a row without an index: all of them)."""
    if row.index is None:
        return list(range(len(kept)))
    later = [i for i in range(row.index + 1, len(kept)) if i not in listed] if row.more else []
    return [i for i in [row.index, *later] if i < len(kept)]


def _write_routed(engine: Engine, influx: InfluxV1, lines: list[str]) -> dict[int, str]:
    """Write lines as ingest would (late readings to `late`); the ones InfluxDB refused by name."""
    if not lines:
        return {}
    seals, horizon = Seals(engine, ttl=0).current()
    on_time: list[tuple[int, str]] = []
    late: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        now, after = route([line], seals, horizon)
        (on_time if now else late).append((i, (now or after)[0]))
    refused: dict[int, str] = {}
    for part, rp in ((on_time, None), (late, LATE_RP)):
        if not part:
            continue
        if rp is not None:
            influx.ensure_retention_policy(rp)
        named = influx.write_lines([line for _, line in part], rp=rp)
        refused.update((part[i][0], reason) for i, reason in named.items())
    return refused


def _replay_row(row: DeadLetter, parsed: Parsed, listed: set[int | None]) -> tuple[list[Reading], str]:
    """The readings a dead letter stands for that pass now, and its replay result."""
    if row.index is None:  # the whole message: every reading must pass now
        first = parsed.rejections[0] if parsed.rejections else None
        if first is not None or not parsed.readings:
            return [], f"rejected: {first.reason}: {first.detail}" if first else "rejected"
        return parsed.readings, "stored"
    rejected = {r.index: r for r in parsed.rejections if r.index is not None}
    if any(r.index is None for r in parsed.rejections):
        first = next(r for r in parsed.rejections if r.index is None)
        return [], f"rejected: {first.reason}: {first.detail}"
    accepted = iter(parsed.readings)  # in element order, rejected elements skipped
    by_index = {i: next(accepted) for i in range(len(parsed.readings) + len(rejected)) if i not in rejected}
    covered = [row.index]
    if row.more:  # and every later reading without a row of its own
        covered += [i for i in range(row.index + 1, len(by_index) + len(rejected)) if i not in listed]
    readings = [by_index[i] for i in covered if i in by_index]
    if row.index in rejected:
        problem = rejected[row.index]
        return readings, f"rejected: {problem.reason}: {problem.detail}"
    again = sum(1 for i in covered if i in rejected and rejected[i].reason == row.reason)
    if again:
        return readings, f"rejected: {row.reason}: {again} of the readings it counts still fail"
    return readings, "stored"
