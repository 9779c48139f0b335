"""Dead letters: list them, and replay them after a fix (a catalogue change, a late registration).

Replaying re-validates the stored raw payload against the current catalogue and registry.
A reading that now passes is written to InfluxDB (idempotently: same series and time)
and its dead letter is marked `stored`; one that fails again keeps its row, marked with
the new reason, so nothing is ever deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from core.catalogue import Catalogue
from core.influx import InfluxV1
from core.models import DeadLetter
from ingest.enrich import DeviceDirectory
from ingest.payload import Rejection, Validator, device_from_topic
from ingest.pipeline import to_line


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
) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(col(DeadLetter.id).desc()).limit(limit)
    if reason:
        query = query.where(DeadLetter.reason == reason)
    if device_id:
        query = query.where(DeadLetter.device_id == device_id)
    if not include_replayed:
        query = query.where(col(DeadLetter.replayed_at).is_(None))
    return list(session.exec(query))


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
        rows = list(session.exec(query))
        lines: list[str] = []
        for row in rows:
            report.examined += 1
            device_id = device_from_topic(row.topic)
            info = directory.get(device_id) if device_id else None
            kind = info.kind if info is not None and info.kind in catalogue.kinds else None
            # Time limits are judged at the time the message was received, not now.
            received = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
            parsed = validator.parse(row.topic, row.payload, kind, int(received.timestamp() * 1000))
            if row.index is None:  # the whole message: every reading must pass now
                problems, readings = parsed.rejections, parsed.readings
            else:  # one element of an array
                problems = [r for r in parsed.rejections if r.index == row.index]
                readings = [] if problems else [parsed.readings[_position(parsed.rejections, row.index)]]
            row.replayed_at = datetime.now(UTC)
            if info is not None and not info.active:
                row.replay_result = f"rejected: device_not_active: device {info.id!r} is {info.status}"
            elif problems or not readings or info is None:
                first = problems[0] if problems else None
                row.replay_result = f"rejected: {first.reason}: {first.detail}" if first else "rejected"
            else:
                lines += [to_line(r, info.tags) for r in readings]
                row.replay_result = "stored"
            report.stored += row.replay_result == "stored"
            report.still_rejected += row.replay_result != "stored"
            session.add(row)
        if lines:
            influx.write("\n".join(lines))  # raises when InfluxDB is away: nothing is marked then
        session.commit()
    return report


def _position(rejections: list[Rejection], index: int) -> int:
    """Position among the accepted readings of array element `index` (rejected elements are skipped)."""
    return index - sum(1 for r in rejections if r.index is not None and r.index < index)
