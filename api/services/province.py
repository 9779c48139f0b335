"""The comparison of counties for the caller's area: which counties, the period, a per-worker cache.

Who sees what: a province officer every county of the registry under their province's prefix (21),
a city officer those under their city's (2111), a county administrator or an analyst their own
county only (the comparison then has one row: a county never sees its neighbours' figures); a
township officer or village operator is refused. `within` narrows to a city or county inside the
caller's area and is refused outside it.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlmodel import Session

from analytics.periods import MAX_REPORT_DAYS, PeriodTooLong
from analytics.province import compare, counties_under
from analytics.rollups import from_settings
from api.deps import Actor
from api.models import Role
from api.problems import Problem, unavailable
from api.services.cache import TtlCache
from api.services.indicators import period_of
from core.influx import InfluxError
from core.scope import division_prefix
from core.settings import Settings

CACHE_S = 120.0
COMPARING = (Role.province_officer, Role.city_officer, Role.county_admin, Role.analyst)
_cache = TtlCache(CACHE_S, max_entries=100)
_lock = threading.Lock()


def prefix_of(actor: Actor) -> str:
    """The division prefix the caller's role covers (21, 2111, or a county's own code)."""
    return division_prefix(actor.principal.scope)


def scope_prefix(actor: Actor, within: str | None) -> str:
    """The prefix compared: the caller's, or `within`'s when it lies inside it (403 otherwise)."""
    if actor.role not in COMPARING:
        raise Problem(403, "forbidden-role", "the county comparison is for county, city and province roles")
    mine = prefix_of(actor)
    if within is None:
        return mine
    asked = division_prefix(within)
    if not asked.startswith(mine):
        raise Problem(
            403,
            "outside-scope",
            f"division {within} is outside the area of your role ({actor.role} of {actor.principal.scope})",
        )
    return asked


def comparison(
    session: Session, settings: Settings, actor: Actor, period: str | None, within: str | None
) -> dict[str, Any]:
    """The comparison (analytics.province.compare) of the counties in scope, cached per worker for CACHE_S."""
    prefix = scope_prefix(actor, within)
    try:
        p = period_of(period, settings)
    except PeriodTooLong as e:
        raise Problem(422, "period-too-long", f"period: {e}", max_days=MAX_REPORT_DAYS) from None
    except ValueError as e:
        raise Problem(422, "validation", f"period: {e}") from None
    counties = [c for c in counties_under(session, [prefix]) if c.code in actor.area.counties]
    key = (settings.resolved_database_url(), prefix, tuple(c.code for c in counties), p.label)
    hit = _cache.get(key)
    if hit is None:
        with _lock:
            hit = _cache.get(key)
            if hit is None:
                rollups = from_settings(settings)
                try:
                    result = compare(session, rollups, counties, p, prefixes=[prefix])
                except InfluxError as e:
                    raise unavailable("the monitoring database", e) from None
                finally:
                    rollups.influx.close()
                    rollups.store.close()
                hit = _cache.set(key, result)
    return {**hit, "scope": {"role": str(actor.role), "code": actor.principal.scope, "prefix": prefix}}


def clear() -> None:
    _cache.clear()
