"""Late readings: seals, and supplementary digests (record kind "late_digest/1").

Anchored facts are append-only (DESIGN "Ledger"). A daily digest hashes the readings InfluxDB
holds for a plot's day; a reading written for that day afterwards (an offline backfill that
crossed midnight, or a device rewriting a point with the same series and time) would change the
digest and flip every lot grown there to "tampered". So days are sealed before they are digested:

1. Seal. Each pass, for every village with a plot or herd that a lot came from, the worker moves
   the village's seal (`telemetry_seal`) to yesterday, in a transaction of its own, and records
   when (`sealed_at`). The seal is per village because a growth summary also reads the village's
   weather stations, which may stand on plots of no lot.
2. Route. Ingest (ingest/late.py) re-reads the seals at least every INGEST_REGISTRY_TTL_S and,
   right before each InfluxDB write (spool replays included), stores readings of a sealed
   village-day in the retention policy `late` with the tag `sealed_through=<the seal it saw>`:
   they can overwrite no point a digest was computed from.
3. Wait. A seal is *safe* ANCHOR_SEAL_WAIT_S after it moved: by then every replica has re-read
   it and any write it had in flight has landed. Days are digested only up to the safe seal, and a
   lot's growth summary only once its whole season is safely sealed.
4. Supplement. Late readings of batch B (tag `sealed_through=B`) stop arriving once the seal has
   moved past B and that move is safe. Then each plot's (herd's) late readings of one day in
   batch B get a supplementary digest, numbered per plot-day (supplement 1, 2, ...), hashed like
   a daily digest, anchored in a later window and listed by the lot's manifest. The seal does not
   move again before batch B is digested, so a batch is digested exactly once and never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlmodel import Session, col, func, select

from core.influx import LATE_RP, InfluxRejected, InfluxV1
from core.models import Herd, Plot
from ledger import digests
from ledger.anchor_models import LateDigest, TelemetrySeal
from ledger.models import LotSource
from ledger.records import RecordNotFound, RecordRef, register_kind, rows_where_in

LATE_DIGEST = "late_digest/1"
BATCH_TAG = "sealed_through"  # the tag ingest gives late readings (ingest/late.py)


def late_source(influx: InfluxV1) -> str:
    """InfluxQL source of every measurement of the late retention policy."""
    return f'"{influx.db}"."{LATE_RP}"./.*/'


def _batch_where(batch: date) -> str:
    return f'"{BATCH_TAG}" = {digests.quote(batch.isoformat())}'


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _age(seal: TelemetrySeal, now: datetime) -> float:
    return (now - _aware(seal.sealed_at)).total_seconds()


def end_ms(day: date, tz: str) -> int:
    """Epoch ms of the end of a local day: readings before it belong to that day or earlier."""
    return int(digests.day_bounds(day, tz)[1].timestamp() * 1000)


def origin_villages(session: Session) -> dict[tuple[str, str], str]:
    """("plot", plot_no) or ("herd", herd_no) of every lot origin -> its village code."""
    out: dict[tuple[str, str], str] = {}
    for src in session.exec(select(LotSource)).all():
        if src.plot_id is not None and (plot := session.get(Plot, src.plot_id)):
            out[("plot", plot.plot_no)] = plot.village_code
        if src.herd_id is not None and (herd := session.get(Herd, src.herd_id)):
            out[("herd", herd.herd_no)] = herd.village_code
    return out


def safe_through(seal: TelemetrySeal, now: datetime, wait_s: float) -> date | None:
    """The last day that every ingest replica must now keep apart, or None."""
    return seal.sealed_through if _age(seal, now) >= wait_s else seal.previous


def safe_days(session: Session, now: datetime, wait_s: float) -> dict[str, date]:
    """Village code -> the last safely sealed day, for villages that have one."""
    out = {}
    for seal in session.exec(select(TelemetrySeal)).all():
        day = safe_through(seal, now, wait_s)
        if day is not None:
            out[seal.village] = day
    return out


@dataclass
class SealReport:
    sealed: int = 0  # seals created or moved
    late_digests: int = 0  # supplementary digests added
    wait_s: float | None = None  # seconds until the newest seal is safe (None: all safe)
    villages: list[str] = field(default_factory=list)


def advance_seals(
    session: Session, influx: InfluxV1, villages: set[str], up_to: date, now: datetime, wait_s: float, tz: str
) -> SealReport:
    """Seal `villages` through `up_to` (a finished local day), digesting each closed late batch first.

    Commit the session right after: the seals must be visible to ingest before their wait starts.
    """
    report = SealReport()
    for village in sorted(villages):
        seal = session.get(TelemetrySeal, village)
        if seal is None:
            session.add(TelemetrySeal(village=village, sealed_through=up_to, until_ms=end_ms(up_to, tz), sealed_at=now))
            report.sealed += 1
            report.villages.append(village)
            continue
        if _age(seal, now) < wait_s:
            continue  # the last move is not safe yet: its batch may still be growing
        if seal.previous is not None and seal.late_digested != seal.previous:
            report.late_digests += ensure_late_digests(session, influx, village, seal.previous, tz)
            seal.late_digested = seal.previous
        if seal.sealed_through < up_to:
            seal.previous, seal.sealed_through = seal.sealed_through, up_to
            seal.until_ms, seal.sealed_at = end_ms(up_to, tz), now
            report.sealed += 1
            report.villages.append(village)
        session.add(seal)
    session.flush()
    pending = [wait_s - _age(s, now) for s in session.exec(select(TelemetrySeal)).all() if _age(s, now) < wait_s]
    report.wait_s = max(pending) if pending else None
    return report


def ensure_late_digests(session: Session, influx: InfluxV1, village: str, batch: date, tz: str) -> int:
    """Supplementary digests of a village's closed late batch: one per plot (herd) and day."""
    try:
        series = influx.query(
            f'SELECT * FROM {late_source(influx)} WHERE "village" = {digests.quote(village)} '
            f'AND {_batch_where(batch)} GROUP BY "plot", "herd"'
        )
    except InfluxRejected as e:
        if "not found" not in str(e):
            raise
        return 0  # no retention policy (bucket) `late`: no late reading was ever written
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    for s in series:
        tags = s.get("tags", {})
        origin = ("plot", tags["plot"]) if tags.get("plot") else ("herd", tags["herd"]) if tags.get("herd") else None
        if origin is None or not s["values"]:
            continue  # a device on no plot or herd: kept, but no digest covers it
        times = [row[0] for row in s["values"]]
        lo, hi = spans.get(origin, (min(times), max(times)))
        spans[origin] = (min(lo, *times), max(hi, *times))
    added = 0
    for (tag, value), (lo, hi) in sorted(spans.items()):
        first, last = (digests.local_day(t, tz) for t in (lo, hi))
        days = digests.canonical_days(
            influx, tag, value, first, last, tz, source=late_source(influx), where=_batch_where(batch)
        )
        for day, lines in sorted(days.items()):
            same_day = (LateDigest.tag == tag, LateDigest.value == value, LateDigest.day == day)
            if session.exec(select(LateDigest.id).where(*same_day, LateDigest.batch == batch)).first():
                continue
            before = session.exec(select(func.count()).select_from(LateDigest).where(*same_day)).one()
            n, sha = digests.digest(lines)
            session.add(
                LateDigest(tag=tag, value=value, day=day, supplement=before + 1, batch=batch, readings=n, sha256=sha)
            )
            session.flush()
            added += 1
    return added


def compute(influx: InfluxV1, d: LateDigest, tz: str) -> tuple[int, str]:
    """(readings, SHA-256 hex) of a supplementary digest, recomputed from the late readings."""
    days = digests.canonical_days(
        influx, d.tag, d.value, d.day, d.day, tz, source=late_source(influx), where=_batch_where(d.batch)
    )
    return digests.digest(days.get(d.day, []))


def content(d: LateDigest) -> dict[str, Any]:
    return {
        "batch": d.batch.isoformat(),
        "day": d.day.isoformat(),
        "readings": d.readings,
        "sha256": d.sha256,
        "supplement": d.supplement,
        "tag": d.tag,
        "value": d.value,
    }


def _load(session: Session, digest_id: int) -> tuple[dict[str, Any], str]:
    d = session.get(LateDigest, digest_id)
    if d is None:
        raise RecordNotFound(f"supplementary digest {digest_id} does not exist")
    return content(d), d.salt


def of_lots(session: Session, lot_ids: list[int]) -> list[LateDigest]:
    """The supplementary digests of the days of the lots' seasons, for their plots and herds (a few
    queries whatever the number of lots and origins: digests.in_seasons_many)."""
    ids = digests.in_seasons_many(session, LateDigest, {0: list(lot_ids)}).get(0, set())
    if not ids:
        return []
    rows = session.exec(select(LateDigest).where(col(LateDigest.id).in_(sorted(ids)))).all()
    return sorted(rows, key=lambda d: (d.day, d.tag, d.value, d.supplement))


def _collect(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    return sorted((RecordRef(LATE_DIGEST, d.id) for d in of_lots(session, lot_ids) if d.id), key=lambda r: r.id)


def _collect_many(session: Session, lineages: Mapping[int, list[int]]) -> dict[int, set[RecordRef]]:
    found = digests.in_seasons_many(session, LateDigest, lineages)
    return {lot: {RecordRef(LATE_DIGEST, i) for i in ids} for lot, ids in found.items()}


def summary(session: Session, lot_ids: list[int]) -> list[dict[str, Any]]:
    """Which days of the lots' plots and herds had late readings, for the trace page and JSON."""
    days: dict[tuple[str, str, str], dict[str, Any]] = {}
    for d in of_lots(session, lot_ids):
        entry = days.setdefault(
            (d.day.isoformat(), d.tag, d.value),
            {"day": d.day.isoformat(), d.tag: d.value, "readings": 0, "supplements": 0},
        )
        entry["readings"] += d.readings
        entry["supplements"] += 1
    return [days[k] for k in sorted(days)]


def _load_many(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    t = LateDigest.__table__  # type: ignore[attr-defined]
    return {r.id: (content(r), r.salt) for r in rows_where_in(session, [t], t.c.id, ids)}


register_kind(LATE_DIGEST, _load, _collect, bulk=_load_many, collect_many=_collect_many)
