"""Device lookup and enrichment: registry tags for each reading, cached.

The whole device table is loaded at start and reloaded every `ttl` seconds, so a status
change (a revocation) is seen within that time without a restart. A device missing from
the cache is looked up once on its own, so a newly registered device is picked up at
once; an id that is still unknown is remembered briefly, so a flood of readings from an
unknown device does not become a flood of queries.

While the registry database is unreachable, the last loaded table keeps serving (a revocation
waits for it, as it waits for the TTL); a device that is not in it raises `RegistryUnavailable`,
and the pipeline holds that batch, unacknowledged, until the registry answers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from core.log import get_logger
from core.models import DeviceStatus

log = get_logger("ingest")


class RegistryUnavailable(RuntimeError):
    """The registry database could not be read, and the cached device table cannot answer."""


_QUERY = """
SELECT d.id, d.kind, d.status,
       COALESCE(pv.code, hv.code, av.code) AS village,
       COALESCE(pt.county_code, ht.county_code, ant.county_code) AS county,
       p.plot_no, COALESCE(h.herd_no, ah.herd_no) AS herd_no, a.ear_tag
FROM device d
LEFT JOIN plot p ON p.id = d.plot_id
LEFT JOIN village pv ON pv.code = p.village_code
LEFT JOIN township pt ON pt.code = pv.township_code
LEFT JOIN herd h ON h.id = d.herd_id
LEFT JOIN village hv ON hv.code = h.village_code
LEFT JOIN township ht ON ht.code = hv.township_code
LEFT JOIN animal a ON a.id = d.animal_id
LEFT JOIN herd ah ON ah.id = a.herd_id
LEFT JOIN village av ON av.code = ah.village_code
LEFT JOIN township ant ON ant.code = av.township_code
"""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    kind: str
    status: str
    tags: tuple[tuple[str, str], ...]

    @property
    def active(self) -> bool:
        return self.status == DeviceStatus.active


def _info(row: tuple) -> DeviceInfo:
    device_id, kind, status, village, county, plot_no, herd_no, ear_tag = row
    tags = {
        "county": county,
        "village": village,
        "device": device_id,
        "plot": plot_no,
        "herd": herd_no,
        "animal": ear_tag,
    }
    return DeviceInfo(device_id, kind, str(status), tuple((k, v) for k, v in tags.items() if v))


class DeviceDirectory:
    def __init__(self, engine: Engine, ttl: float = 30.0, negative_ttl: float = 2.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._devices: dict[str, DeviceInfo] = {}
        self._unknown: dict[str, float] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(text(_QUERY)).all()
        devices = {r[0]: _info(tuple(r)) for r in rows}
        with self._lock:
            self._devices = devices
            self._unknown.clear()
            self._loaded_at = time.monotonic()

    def get(self, device_id: str) -> DeviceInfo | None:
        now = time.monotonic()
        if now - self._loaded_at > self.ttl:
            try:
                self.refresh()
            except SQLAlchemyError as e:
                if not self._loaded_at:
                    raise RegistryUnavailable(f"cannot read the device table: {type(e).__name__}: {e}") from e
                self._loaded_at = now - self.ttl + min(self.ttl, self.negative_ttl)  # try again soon
                log.warning("registry unreachable; using the device table loaded earlier", error=str(e)[:300])
        info = self._devices.get(device_id)
        if info is not None:
            return info
        if now - self._unknown.get(device_id, -1e9) < self.negative_ttl:
            return None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(text(_QUERY + " WHERE d.id = :id"), {"id": device_id}).first()
        except SQLAlchemyError as e:
            raise RegistryUnavailable(f"cannot look up device {device_id!r}: {type(e).__name__}: {e}") from e
        with self._lock:
            if row is None:
                self._unknown[device_id] = now
                return None
            info = self._devices[device_id] = _info(tuple(row))
        return info
