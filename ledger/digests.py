"""Per-plot, per-day digests of stored telemetry: record kind "digest/1".

A digest is a SHA-256 over one plot's (or herd's) readings of one local day, taken from
InfluxDB in a canonical order, so anyone with read access to InfluxDB can recompute it and a
reading changed or deleted after anchoring shows as a changed digest.

Canonical form, one line per reading, joined with "\n":
  RFC 8785 JSON of {"device": id, "fields": {metric: value}, "measurement": kind, "time": epoch ms}
ordered by measurement, device, then time; fields that are null in a row are left out. The day
is cut in the county's time zone (Asia/Shanghai by default).

Only the default retention policy is read: late readings (retention policy `late`, ledger/late.py)
never change a digest; they get supplementary digests of their own. A day is digested only once
its village's seal is safe (every ingest replica keeps later readings of it apart).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import rfc8785
from sqlmodel import Session, col, select

from core.influx import InfluxV1
from core.models import Herd, Plot
from ledger.anchor_models import TelemetryDigest
from ledger.models import LotSource
from ledger.records import RecordRef, register_kind, rows_where_in

DIGEST = "digest/1"


def day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of a local day as aware datetimes."""
    start = datetime.combine(day, time(), ZoneInfo(tz))
    return start, datetime.combine(day + timedelta(days=1), time(), ZoneInfo(tz))


def local_day(ms: int, tz: str) -> date:
    """The local day of an epoch-ms instant."""
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).date()


def quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rfc3339(t: datetime) -> str:
    return t.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


TAG_COLUMNS = frozenset({"county", "village", "plot", "herd", "animal", "device", "sealed_through"})


def canonical_days(
    influx: InfluxV1,
    tag: str,
    value: str,
    first: date,
    last: date,
    tz: str,
    source: str = "/.*/",
    where: str = "",
) -> dict[date, list[bytes]]:
    """The readings of one plot or herd from `first` to `last` (local days, inclusive) as canonical
    lines per day, in canonical order (see the module docstring). One query for the whole range.
    `source` and `where` (an extra condition) select late readings for supplementary digests."""
    start, _ = day_bounds(first, tz)
    _, end = day_bounds(last, tz)
    zone = ZoneInfo(tz)
    extra = f" AND {where}" if where else ""
    series = influx.query(
        f'SELECT * FROM {source} WHERE "{tag}" = {quote(value)}{extra} '
        f"AND time >= '{_rfc3339(start)}' AND time < '{_rfc3339(end)}' GROUP BY \"device\""
    )
    days: dict[date, list[bytes]] = {}
    for s in sorted(series, key=lambda s: (s["name"], s.get("tags", {}).get("device", ""))):
        cols = s["columns"]
        device = s.get("tags", {}).get("device", "")
        for row in s["values"]:  # InfluxDB returns each series in time order
            fields = {n: v for n, v in zip(cols[1:], row[1:], strict=True) if v is not None and n not in TAG_COLUMNS}
            if not fields:
                continue
            rec: dict[str, Any] = {"device": device, "fields": fields, "measurement": s["name"], "time": row[0]}
            day = datetime.fromtimestamp(row[0] / 1000, zone).date()
            days.setdefault(day, []).append(rfc8785.dumps(rec))
    return days


def digest(lines: list[bytes]) -> tuple[int, str]:
    """(number of readings, SHA-256 hex of the lines joined by newlines)."""
    return len(lines), hashlib.sha256(b"\n".join(lines)).hexdigest()


def compute(influx: InfluxV1, tag: str, value: str, day: date, tz: str) -> tuple[int, str]:
    """(number of readings, SHA-256 hex) of a plot's or herd's day."""
    return digest(canonical_days(influx, tag, value, day, day, tz).get(day, []))


def content(d: TelemetryDigest) -> dict[str, Any]:
    return {"day": d.day.isoformat(), "readings": d.readings, "sha256": d.sha256, "tag": d.tag, "value": d.value}


def _load(session: Session, digest_id: int) -> tuple[dict[str, Any], str]:
    d = session.get(TelemetryDigest, digest_id)
    if d is None:
        from ledger.records import RecordNotFound

        raise RecordNotFound(f"telemetry digest {digest_id} does not exist")
    return content(d), d.salt


def origins_of(session: Session, lot_ids: list[int]) -> list[tuple[str, str]]:
    """(tag, value) of the plots and herds the lots came from."""
    out: set[tuple[str, str]] = set()
    for src in session.exec(select(LotSource).where(col(LotSource.lot_id).in_(lot_ids))):
        if src.plot_id is not None and (plot := session.get(Plot, src.plot_id)):
            out.add(("plot", plot.plot_no))
        if src.herd_id is not None and (herd := session.get(Herd, src.herd_id)):
            out.add(("herd", herd.herd_no))
    return sorted(out)


def _collect(session: Session, lot_ids: list[int]) -> list[RecordRef]:
    """The digests of the days of the lots' seasons, for their plots and herds."""
    from ledger.growth import season_of

    refs: list[RecordRef] = []
    for tag, value in origins_of(session, lot_ids):
        q = select(TelemetryDigest).where(TelemetryDigest.tag == tag, TelemetryDigest.value == value)
        for lot_id in lot_ids:
            season = season_of(session, lot_id)
            if season is None:
                continue
            rows = session.exec(
                q.where(col(TelemetryDigest.day) >= season[0], col(TelemetryDigest.day) <= season[1])
            ).all()
            refs += [RecordRef(DIGEST, d.id) for d in rows if d.id is not None]
    return sorted(set(refs), key=lambda r: r.id)


def origins_by_lot(session: Session, lot_ids: Iterable[int]) -> dict[int, set[tuple[str, str]]]:
    """`origins_of` each of many lots."""
    src = LotSource.__table__.c  # type: ignore[attr-defined]
    rows = rows_where_in(session, [src.lot_id, src.plot_id, src.herd_id], src.lot_id, lot_ids)
    plot, herd = Plot.__table__.c, Herd.__table__.c  # type: ignore[attr-defined]
    plots = dict(rows_where_in(session, [plot.id, plot.plot_no], plot.id, {r.plot_id for r in rows if r.plot_id}))
    herds = dict(rows_where_in(session, [herd.id, herd.herd_no], herd.id, {r.herd_id for r in rows if r.herd_id}))
    out: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for r in rows:
        if r.plot_id is not None and r.plot_id in plots:
            out[r.lot_id].add(("plot", plots[r.plot_id]))
        if r.herd_id is not None and r.herd_id in herds:
            out[r.lot_id].add(("herd", herds[r.herd_id]))
    return out


def in_seasons_many(session: Session, table: Any, lineages: Mapping[int, list[int]]) -> dict[int, set[int]]:
    """For each lineage, the ids of `table`'s rows (TelemetryDigest, LateDigest: tag, value, day) of
    the lineage's plots and herds on a day of any of its lots' seasons (`_collect`, late.of_lots)."""
    from ledger.growth import seasons_of

    every = {lot for lineage in lineages.values() for lot in lineage}
    origins = origins_by_lot(session, every)
    c = table.__table__.c
    values = {value for found in origins.values() for _, value in found}
    by_origin: dict[tuple[str, str], list[tuple[int, date]]] = defaultdict(list)
    for row_id, tag, value, day in rows_where_in(session, [c.id, c.tag, c.value, c.day], c.value, values):
        by_origin[(tag, value)].append((row_id, day))
    # seasons only of the lineages that have rows of their origins (none, say, before telemetry)
    mine = {
        lot: {o for m in lineage for o in origins.get(m, ()) if o in by_origin} for lot, lineage in lineages.items()
    }
    seasons = seasons_of(session, {m for lot, lineage in lineages.items() if mine[lot] for m in lineage})
    out: dict[int, set[int]] = {}
    for lot, lineage in lineages.items():
        spans = [s for s in (seasons[m] for m in lineage) if s is not None] if mine[lot] else []
        out[lot] = {i for o in mine[lot] for i, day in by_origin[o] if any(a <= day <= b for a, b in spans)}
    return out


def _collect_many(session: Session, lineages: Mapping[int, list[int]]) -> dict[int, set[RecordRef]]:
    found = in_seasons_many(session, TelemetryDigest, lineages)
    return {lot: {RecordRef(DIGEST, i) for i in ids} for lot, ids in found.items()}


def ensure_digests(
    session: Session, influx: InfluxV1, tz: str, up_to: date, safe: Mapping[tuple[str, str], date] | None = None
) -> int:
    """Compute the missing digests of every lot origin for the days of its season up to `up_to`
    (a finished day: readings of today may still arrive) and, with `safe`, up to the origin's
    safely sealed day (origins missing from it wait). Returns how many were added."""
    from ledger.growth import season_of
    from ledger.models import Lot

    added = 0
    for lot_id in session.exec(select(Lot.id)).all():
        season = season_of(session, lot_id)
        if season is None:
            continue
        for tag, value in origins_of(session, [lot_id]):
            day = season[0]
            last = min(season[1], up_to)
            if safe is not None:
                if (tag, value) not in safe:
                    continue
                last = min(last, safe[(tag, value)])
            have = set(
                session.exec(
                    select(TelemetryDigest.day).where(TelemetryDigest.tag == tag, TelemetryDigest.value == value)
                ).all()
            )
            missing = []
            while day <= last:
                if day not in have:
                    missing.append(day)
                day += timedelta(days=1)
            if not missing:
                continue
            lines = canonical_days(influx, tag, value, missing[0], missing[-1], tz)
            for d in missing:
                n, sha = digest(lines.get(d, []))
                session.add(TelemetryDigest(tag=tag, value=value, day=d, readings=n, sha256=sha))
                added += 1
            session.flush()
    return added


def _load_many(session: Session, ids: Sequence[int]) -> dict[int, tuple[dict[str, Any], str]]:
    t = TelemetryDigest.__table__  # type: ignore[attr-defined]
    return {r.id: (content(r), r.salt) for r in rows_where_in(session, [t], t.c.id, ids)}


register_kind(DIGEST, _load, _collect, bulk=_load_many, collect_many=_collect_many)
