"""Late readings at ingest: readings of a sealed village-day go to the retention policy `late`.

The anchoring worker seals days per village (table `telemetry_seal`, ledger/late.py) before it
digests them, and digests a sealed day only ANCHOR_SEAL_WAIT_S later. Ingest keeps its half of
that protocol:

- the seals are reloaded whenever this replica's copy is older than INGEST_REGISTRY_TTL_S,
  checked at every routing decision, so a replica never routes with an older copy; when the
  registry cannot be read, nothing is routed and the batch goes to the spool (`SealsUnavailable`);
- routing happens right before each InfluxDB write, for fresh batches and spool replays alike
  (the spool keeps unrouted lines), so a batch spooled while InfluxDB was away and replayed after
  its day was digested is stored as late readings too;
- a late line is the same line with the tag `sealed_through=<the seal's day>` added, written to
  `late`: it can overwrite no point of the default retention policy, and no late point of a batch
  that was already digested (each batch has its own tag value).

Only the `village` tag and the time of a line are read, so the spool's format is unchanged.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, text

from core.log import get_logger

log = get_logger("ingest")

#: The tag that marks a late reading with the batch it arrived in (ledger/late.py reads it).
BATCH_TAG = "sealed_through"

_SEALS = "SELECT village, until_ms, sealed_through FROM telemetry_seal"
_KEY_END = re.compile(r"(?<!\\) ")  # the first unescaped space ends the series key
_TAG_SEP = re.compile(r"(?<!\\),")


class SealsUnavailable(RuntimeError):
    """The registry could not be read: which days are sealed is unknown, so nothing may be written."""


@dataclass(frozen=True, slots=True)
class Seal:
    until_ms: int  # readings before this instant (the end of the sealed day) are late
    tag: str  # ",sealed_through=YYYY-MM-DD", spliced into a late line's series key


class Seals:
    """This replica's copy of the seals, never older than `ttl` seconds when it is used."""

    def __init__(
        self, engine: Engine, ttl: float = 30.0, retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.retry_s = retry_s
        self.clock = clock
        self._seals: dict[str, Seal] = {}
        self._horizon = 0
        self._loaded_at: float | None = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[dict[str, Seal], int]:
        """(seal by village code, the latest `until_ms` of all): readings at or after it are on time."""
        with self._lock:
            now = self.clock()
            if self._loaded_at is None or now - self._loaded_at >= self.ttl:
                if self._failed_at is not None and now - self._failed_at < self.retry_s:
                    raise SealsUnavailable("the registry was unreachable a moment ago")
                try:
                    with self.engine.connect() as conn:
                        rows = conn.execute(text(_SEALS)).all()
                except Exception as e:  # SQLAlchemy wraps every driver error differently
                    self._failed_at = now
                    raise SealsUnavailable(f"cannot read the telemetry seals: {type(e).__name__}: {e}") from e
                self._seals = {str(v): Seal(int(until), f",{BATCH_TAG}={str(day)[:10]}") for v, until, day in rows}
                self._horizon = max((s.until_ms for s in self._seals.values()), default=0)
                self._loaded_at, self._failed_at = now, None
            return self._seals, self._horizon


def _village(key: str) -> str | None:
    for part in _TAG_SEP.split(key)[1:]:
        name, _, value = part.partition("=")
        if name == "village":
            return value.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")
    return None


def route(lines: list[str], seals: Mapping[str, Seal], horizon: int) -> tuple[list[str], list[str]]:
    """Split line-protocol lines into (on time, late); late lines carry their batch tag.

    A line is late when its village has a seal and its time is before the seal's end. Lines with
    a time at or after `horizon` (every live reading) are passed without parsing their tags.
    """
    if not seals:
        return lines, []
    on_time: list[str] = []
    late: list[str] = []
    for line in lines:
        try:
            ts = int(line[line.rindex(" ") + 1 :])
        except ValueError:  # no timestamp: InfluxDB stamps it now, which no seal covers
            on_time.append(line)
            continue
        if ts >= horizon:
            on_time.append(line)
            continue
        end = _KEY_END.search(line)
        village = _village(line[: end.start()]) if end else None
        seal = seals.get(village) if village else None
        if end is None or seal is None or ts >= seal.until_ms:
            on_time.append(line)
        else:
            late.append(line[: end.start()] + seal.tag + line[end.start() :])
    return on_time, late
