"""What the dashboard's charts draw (Apache ECharts, served by the app from its own files):

- `GET /api/v1/dashboard/map`: the county map's boundaries and the caller's plots and herds (status,
  alerts), see api/services/charts.py;
- `GET /api/v1/dashboard/devices/history`: devices reporting and dead letters per day;
- `GET /dashboard/series?plot=|herd=|device=`: the page of one place's time series (hourly or daily,
  zoomable, min/mean/max band, thresholds), drawn from `/api/v1/timeseries`;
- `GET /static/vendor/echarts.min.js`: ECharts itself (npm `echarts`, pinned in package.json), from
  api/static/vendor (the image copies it there) or node_modules/echarts/dist.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import select

from analytics.rollups import Rollups, ident, quote
from api.deps import ActorDep, SessionDep, page_actor_from_cookie
from api.i18n import language, strings
from api.problems import Problem, problem_responses, unavailable
from api.routers.timeseries import _kinds_and_filter
from api.services import charts
from api.services import dashboard as dash
from core.catalogue import get_catalogue
from core.influx import InfluxError
from core.models import Device, Herd, Plot

router = APIRouter(tags=["dashboard"])
HERE = Path(__file__).resolve().parents[1]
ECHARTS = (
    HERE / "static" / "vendor" / "echarts.min.js",  # the image's copy
    HERE.parent / "node_modules" / "echarts" / "dist" / "echarts.min.js",  # a checkout after `make node`
)
READ = problem_responses(401, 403, 422)
SPAN = {"1h": timedelta(days=14), "1d": timedelta(days=120)}


def echarts_file() -> Path | None:
    return next((p for p in ECHARTS if p.is_file()), None)


@router.get("/static/vendor/echarts.min.js", include_in_schema=False)
def echarts_js() -> Response:
    path = echarts_file()
    if path is None:
        raise Problem(404, "not-found", "ECharts is not installed: run `make node` (npm ci)")
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/api/v1/dashboard/map", summary="The county map: boundaries, plots and herds", responses=READ)
def map_data(request: Request, actor: ActorDep, session: SessionDep) -> dict[str, Any]:
    """Boundaries (GeoJSON, the division code as each feature's name) of the province of your area, and
    your area's plots (at their registry coordinates) and herds (at their village's plots' centre), each
    with its devices, its status (its worst device's: alert, failing, silent, online, inactive,
    revoked, no_device) and its open alerts."""
    settings, influx = request.app.state.settings, request.app.state.trace.influx()
    health = dash.devices_section(session, settings, actor.area.villages, influx, request.app.state.dashboard)
    return charts.county_map(session, actor.area.villages, health["devices"], health["alerts"])


@router.get(
    "/api/v1/dashboard/devices/history",
    summary="Devices reporting and dead letters per day",
    responses=problem_responses(401, 403, 422, 503),
)
def devices_history(
    request: Request, actor: ActorDep, session: SessionDep, days: Annotated[int, Query(ge=1, le=366)] = 30
) -> dict[str, Any]:
    """Per local day of the last `days`: how many of your area's devices reported (daily rollups, raw points
    after their watermark), how many readings were dead-lettered, and how many devices are active."""
    settings = request.app.state.settings
    registry = dash.devices_section(session, settings, actor.area.villages, None)  # type: ignore[arg-type]
    ids = {d["id"] for d in registry["devices"]}  # the registry's devices (no last readings needed)
    influx = request.app.state.trace.influx()
    try:
        return charts.device_history(session, settings, influx, ids, days)
    except InfluxError as e:
        raise unavailable("the monitoring database", e) from None


def _latest(session: Any, request: Request, actor: Any, key: str, value: str) -> datetime:
    """The end of the window shown: an hour after the place's newest reading (InfluxQL `last()` of one tag's
    series per device kind), or now when it has none or InfluxDB does not answer."""
    settings = request.app.state.settings
    catalogue = get_catalogue(settings.catalogue_file)
    kinds, tags, _scope = _kinds_and_filter(session, actor, *(value if k == key else None for k in KEYS))
    influx = request.app.state.trace.influx()
    rollups = Rollups(influx, tz=settings.county_timezone, catalogue=catalogue)
    newest = 0
    try:
        for kind in kinds:
            metrics = rollups.metrics(kind) if kind in catalogue.kinds else []
            if not metrics:
                continue
            where = " AND ".join(f"{ident(k)} = {quote(v)}" for k, v in tags.items())
            for s in influx.query(f"SELECT last({ident(metrics[0])}) FROM {rollups.raw_source(kind)} WHERE {where}"):
                newest = max([newest, *(int(row[0]) for row in s["values"])])
    except InfluxError:
        newest = 0
    finally:
        rollups.store.close()
    if not newest:
        return datetime.now(UTC)
    return datetime.fromtimestamp(newest / 1000, UTC) + timedelta(hours=1)


KEYS = ("device", "plot", "village", "herd")  # the order of _kinds_and_filter's arguments


@router.get("/dashboard/series", response_class=HTMLResponse, summary="Time series page of a plot, herd or device")
def series_page(
    request: Request,
    session: SessionDep,
    plot: Annotated[str | None, Query(max_length=64)] = None,
    herd: Annotated[str | None, Query(max_length=64)] = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    resolution: Literal["1h", "1d"] = "1h",
) -> Response:
    actor = page_actor_from_cookie(request, session)
    if actor is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    given = [(k, v) for k, v in (("plot", plot), ("herd", herd), ("device", device)) if v]
    if len(given) != 1:
        raise Problem(422, "validation", "give exactly one of plot, herd or device")
    key, value = given[0]
    if key == "plot":
        row = session.exec(select(Plot).where(Plot.plot_no == value)).first()
        village = row.village_code if row else None
    elif key == "herd":
        row = session.exec(select(Herd).where(Herd.herd_no == value)).first()
        village = row.village_code if row else None
    else:
        row = session.get(Device, value)
        village = None
    if row is None:
        raise Problem(404, "not-found", f"no {key} {value}")
    if key == "device":
        actor.require_read_row(session, "device", row, f"device {value}")
    else:
        actor.require_read(village, f"{key} {value}")
    end = _latest(session, request, actor, key, value)
    start = end - SPAN[resolution]
    lang = language(request)
    query = f"{key}={value}"
    return request.app.state.templates.TemplateResponse(
        request,
        "series.html",
        {
            "lang": lang,
            "t": strings(lang),
            "key": key,
            "value": value,
            "row": row,
            "resolution": resolution,
            "start": start.astimezone(UTC).isoformat(timespec="seconds"),
            "end": end.astimezone(UTC).isoformat(timespec="seconds"),
            "query": query,
        },
        headers={"Cache-Control": "no-store", "Vary": "Accept-Language, Cookie"},
    )
