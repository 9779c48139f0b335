"""What the dashboard shows for a caller's area, as data: indicators, device health, open alerts,
traceability coverage and the latest anchoring windows; and the same as CSV and Excel exports.

Every section is computed on its own, so one unavailable service (InfluxDB down) blanks only the
sections that need it, with the reason, and the rest still shows.

Device health, traceability coverage and anchoring read the whole area (every device's last reading,
every lot's anchoring), so each worker keeps them per area for API_DASHBOARD_CACHE_S and past that
serves the kept ones while one background thread recomputes them (api.services.cache.Refreshing);
at start-up (API_INDICATORS_WARM) the areas of the dashboard's users are computed in the background.
Each section says when it was computed (`as_of`). Indicators have their own cache
(api/services/indicators.py).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.deps import Actor
from api.models import Role, User
from api.services import coverage as coverage_mod
from api.services import indicators as indicators_mod
from api.services.cache import Refreshing
from api.services.health import device_health, health_counts, open_alerts
from core.catalogue import get_catalogue
from core.influx import InfluxError, InfluxV1
from core.settings import Settings
from ledger import anchoring

log = logging.getLogger(__name__)
SECTIONS = ("indicators", "rankings", "devices", "alerts", "traceability", "anchoring")
STALE_S = 600.0  # a section past API_DASHBOARD_CACHE_S is served (while recomputed) this long more


def section_cache(settings: Settings) -> Refreshing:
    """A worker's cache of the area-wide sections (app.state.dashboard)."""
    return Refreshing(settings.api_dashboard_cache_s, STALE_S, "dashboard section")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _kept(cache: Refreshing | None, session: Session, key: tuple[Any, ...], make: Any) -> dict[str, Any]:
    """`make(session)` with `as_of`, through `cache` when given (then computed in a session of its own)."""
    if cache is None:
        return {**make(session), "as_of": _now()}
    engine = session.get_bind()

    def compute() -> dict[str, Any]:
        with Session(engine) as own:
            return {**make(own), "as_of": _now()}

    return cache.get(key, compute)[0]  # type: ignore[no-any-return]


def county_of(actor: Actor) -> str | None:
    return next(iter(sorted(actor.area.counties)), None)


def indicators_section(
    session: Session, settings: Settings, actor: Actor, period: str | None, village: str | None
) -> dict[str, Any]:
    county = county_of(actor)
    if county is None:
        return {"available": False, "reason": "your area has no county in the registry"}
    whole = actor.role in (Role.county_admin, Role.analyst, Role.city_officer, Role.province_officer)
    return indicators_mod.indicators(
        session, settings, county, actor.area.villages, whole_county=whole, period=period, village=village
    )


def _devices(session: Session, settings: Settings, villages: frozenset[str], influx: InfluxV1) -> dict[str, Any]:
    catalogue = get_catalogue(settings.catalogue_file)
    try:
        devices = device_health(session, influx, catalogue, set(villages))
        available, reason = True, None
    except InfluxError as e:
        log.warning("device health without InfluxDB: %s", e)
        devices = device_health(session, None, catalogue, set(villages))
        available, reason = False, "the monitoring database cannot be reached: last readings unknown"
    return {
        "available": available,
        "reason": reason,
        "counts": health_counts(devices),
        "devices": [asdict(d) for d in devices],
        "alerts": open_alerts(devices, settings.county_timezone) if available else [],
    }


def devices_section(
    session: Session, settings: Settings, villages: set[str], influx: InfluxV1, cache: Refreshing | None = None
) -> dict[str, Any]:
    """Device health and open alerts of the villages (kept per area)."""
    area = frozenset(villages)
    return _kept(cache, session, ("devices", area), lambda s: _devices(s, settings, area, influx))


def traceability_section(session: Session, villages: set[str], cache: Refreshing | None = None) -> dict[str, Any]:
    """Traceability coverage of the villages' lots (kept per area)."""
    area = frozenset(villages)
    return _kept(cache, session, ("traceability", area), lambda s: coverage_mod.coverage(s, set(area)))


def anchoring_section(session: Session, cache: Refreshing | None = None) -> dict[str, Any]:
    return _kept(cache, session, ("anchoring",), anchoring.status)


def warm(engine: Engine, settings: Settings, influx: InfluxV1, cache: Refreshing) -> threading.Thread:
    """Compute the area-wide sections of every active dashboard user's area in a background thread,
    so that the first dashboard view after start-up finds them kept."""
    from core.scope import area_of

    def run() -> None:
        try:
            with Session(engine) as session:
                users = session.exec(select(User.role, User.scope).where(col(User.active))).all()
                areas = {frozenset(area_of(session, str(role), scope).villages) for role, scope in set(users)}
            for villages in sorted(areas, key=len, reverse=True):  # the county's first
                with Session(engine) as session:
                    devices_section(session, settings, set(villages), influx, cache)
                    traceability_section(session, set(villages), cache)
            with Session(engine) as session:
                anchoring_section(session, cache)
        except Exception as e:  # the dashboard computes on its first view instead
            log.warning("dashboard sections not warmed: %s", e)

    thread = threading.Thread(target=run, name="dashboard-warm", daemon=True)
    thread.start()
    return thread


def snapshot(
    session: Session,
    settings: Settings,
    actor: Actor,
    influx: InfluxV1,
    *,
    period: str | None = None,
    village: str | None = None,
    cache: Refreshing | None = None,
) -> dict[str, Any]:
    devices = devices_section(session, settings, actor.area.villages, influx, cache)
    return {
        "scope": {"role": str(actor.role), "code": actor.principal.scope, "villages": sorted(actor.area.villages)},
        "indicators": indicators_section(session, settings, actor, period, village),
        "devices": {k: v for k, v in devices.items() if k != "alerts"},
        "alerts": devices["alerts"],
        "traceability": traceability_section(session, actor.area.villages, cache),
        "anchoring": anchoring_section(session, cache),
    }


def rows(snap: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The rows of one section as flat records (for CSV and Excel)."""
    if section == "indicators":
        ind = snap["indicators"]
        keep = ("code", "period", "indicator", "name_zh", "name_en", "dimension", "unit", "value", "previous", "change")
        return [{k: r.get(k) for k in keep} for r in ind.get("indicators", [])] if ind.get("available") else []
    if section == "rankings":
        out = []
        for indicator, ranking in (snap["indicators"].get("rankings") or {}).items():
            out += [{"indicator": indicator, **r} for r in ranking]
        return out
    if section == "devices":
        return [
            {k: v for k, v in d.items() if k != "last_values"} | {f"last_{m}": x for m, x in d["last_values"].items()}
            for d in snap["devices"]["devices"]
        ]
    if section == "alerts":
        return list(snap["alerts"])
    if section == "traceability":
        return list(snap["traceability"]["by_product"])
    if section == "anchoring":
        return list(snap["anchoring"]["latest"])
    raise KeyError(section)


def _columns(records: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in records:
        cols += [k for k in r if k not in cols]
    return cols


# A cell a spreadsheet would read as a formula (or as DDE, in older Excel): text that starts with one
# of these (OWASP "CSV injection"). Such text comes from operators (farm, village, product names).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def is_formula_like(value: Any) -> bool:
    """Text a spreadsheet would evaluate; numbers, and text that is just a number such as "-3.5", are not."""
    return isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value)


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: formula-like text gets a leading apostrophe (shown as text)."""
    value = _cell(value)
    return "'" + value if is_formula_like(value) else value


def to_csv(records: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    cols = _columns(records)
    w = csv.writer(buf)
    w.writerow([csv_cell(c) for c in cols])
    w.writerows([csv_cell(r.get(c)) for c in cols] for r in records)
    return ("\ufeff" + buf.getvalue()).encode("utf-8")  # BOM: Excel opens UTF-8 Chinese text correctly


def to_xlsx(snap: dict[str, Any]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)  # type: ignore[arg-type]
    for section in SECTIONS:
        ws = wb.create_sheet(section)
        records = rows(snap, section)
        cols = _columns(records)
        ws.append(cols)
        for r in records:
            ws.append([_cell(r.get(c)) for c in cols])
        for row in ws.iter_rows():
            for cell in row:
                if is_formula_like(cell.value):  # openpyxl would store "=..." as a formula: keep it text,
                    cell.data_type = "s"  # and marked as typed text (Excel's quote prefix), so that
                    cell.quotePrefix = True  # editing the cell does not turn it into one either
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        import orjson

        return orjson.dumps(value).decode()
    return value
