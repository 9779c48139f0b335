"""How a message's rejections are stored: one copy of its payload, a bounded number of rows.

One message of 30,000 bad readings used to become 30,000 dead-letter rows, each carrying the
whole payload (60 KB x 30,000 = 1.8 GB). Now a message with rejections stores its raw bytes once
(`dead_letter_payload`, with size and SHA-256; a payload_too_large message keeps only its first
`PREFIX_BYTES`), and at most `limit` rejections get a row of their own. The rest are counted per
reason: the first rejection of each further reason gets a row whose `more` says how many others
of that reason have none. Details quote the payload (a metric name, a timestamp), so they are
clipped too. A message costs at most one payload plus (limit + reason codes) short rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select

from core.models import DeadLetter, DeadLetterPayload
from ingest.payload import Rejection

PREFIX_BYTES = 1024  # what a payload_too_large message keeps of itself
DETAIL_CHARS = 500  # longest detail stored


@dataclass(slots=True)
class RejectedMessage:
    """A message with at least one rejection, as it will be stored."""

    topic: str
    payload: bytes
    received_ms: int
    device_id: str | None
    rejections: list[Rejection]


def clip(detail: str, limit: int = DETAIL_CHARS) -> str:
    return detail if len(detail) <= limit else detail[: limit - 1] + "…"


def rows_for(rejections: list[Rejection], limit: int) -> list[tuple[Rejection, int]]:
    """The rejections that get a row, each with the number of further ones of its reason it stands for.

    The first `limit` rejections (in the message's order) get a row each; of the rest, the first
    of each reason gets a row that counts the others of that reason.
    """
    out = [(r, 0) for r in rejections[:limit]]
    firsts: dict[str, list] = {}  # reason -> [first rejection, how many more, index of the last]
    for r in rejections[limit:]:
        entry = firsts.get(r.reason)
        if entry is None:
            firsts[r.reason] = [r, 0, r.index]
        else:
            entry[1] += 1
            entry[2] = r.index
    for first, more, last in firsts.values():
        detail = first.detail
        if more:
            suffix = f" (and {more} more for this reason up to index {last}, without rows of their own)"
            detail = clip(detail, DETAIL_CHARS - len(suffix)) + suffix
        out.append((Rejection(first.reason, detail, first.index), more))
    return out


def payload_row(message: RejectedMessage) -> dict[str, object]:
    """The message's one stored copy: whole, or a prefix when the message was too large."""
    truncated = any(r.reason == "payload_too_large" for r in message.rejections)
    return {
        "size": len(message.payload),
        "sha256": hashlib.sha256(message.payload).hexdigest(),
        "payload": message.payload[:PREFIX_BYTES] if truncated else message.payload,
        "truncated": truncated,
    }


def store(conn: Connection, messages: list[RejectedMessage], limit: int) -> int:
    """Insert the messages' payloads and their rows (in the caller's transaction); rows written."""
    if not messages:
        return 0
    p = DeadLetterPayload.__table__
    ids = conn.execute(
        insert(p).returning(p.c.id, sort_by_parameter_order=True), [payload_row(m) for m in messages]
    ).scalars()
    rows = []
    for message, payload_id in zip(messages, ids, strict=True):
        received_at = datetime.fromtimestamp(message.received_ms / 1000, UTC)
        for rejection, more in rows_for(message.rejections, limit):
            rows.append(
                {
                    "received_at": received_at,
                    "topic": message.topic,
                    "device_id": message.device_id,
                    "reason": rejection.reason,
                    "detail": clip(rejection.detail),
                    "payload_id": payload_id,
                    "index": rejection.index,
                    "more": more,
                }
            )
    conn.execute(insert(DeadLetter), rows)
    return len(rows)


def already_stored(conn: Connection, topic: str, payload: bytes) -> bool:
    """A message (same topic and bytes) already has dead letters: a redelivery after a lost ack."""
    d, p = DeadLetter.__table__, DeadLetterPayload.__table__
    query = (
        select(d.c.id)
        .join(p, p.c.id == d.c.payload_id)
        .where(d.c.topic == topic, p.c.sha256 == hashlib.sha256(payload).hexdigest(), p.c.size == len(payload))
        .limit(1)
    )
    return conn.execute(query).first() is not None
