"""What arrived: stored readings per device kind and village, rejections per reason."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Engine, func, select

from core.catalogue import Catalogue
from core.influx import InfluxV1
from core.models import DeadLetter


def stored_by_kind_and_village(influx: InfluxV1, catalogue: Catalogue) -> dict[tuple[str, str], int]:
    """Readings stored in InfluxDB, counted per (kind, village) over all time."""
    out: dict[tuple[str, str], int] = {}
    for kind, spec in catalogue.kinds.items():
        # A reading has at least one metric; count the points of the kind's metrics and keep the largest.
        counts: Counter[str] = Counter()
        for metric in spec.metrics:
            for series in influx.query(f'SELECT COUNT("{metric}") FROM "{kind}" GROUP BY "village"'):
                village = series.get("tags", {}).get("village", "")
                counts[village] = max(counts[village], int(series["values"][0][1]))
        for village, n in counts.items():
            out[(kind, village)] = n
    return out


def rejected_by_reason(engine: Engine) -> dict[str, int]:
    """Rejected readings per reason (a row counts itself and the `more` it stands for)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(DeadLetter.reason, func.sum(1 + DeadLetter.more)).group_by(DeadLetter.reason)  # type: ignore[operator]
        ).all()
    return {reason: int(n) for reason, n in rows}
