"""The county dashboard: the page (`/dashboard`, after signing in at `/dashboard/login`) and its data
as JSON under `/api/v1/dashboard/...`, with CSV and Excel exports of what the page shows.

The page signs in with a form that sets an HttpOnly, SameSite session cookie holding the same
JWT as the token endpoint gives; the cookie only authorises GET requests (api/deps.py), so the
dashboard and its exports work in a browser while every change needs a bearer token or an API key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from analytics.periods import MAX_REPORT_DAYS, PeriodTooLong
from api.deps import SESSION_COOKIE, Actor, ActorDep, SessionDep, page_actor_from_cookie
from api.i18n import language, strings
from api.models import Role
from api.problems import Problem, problem_responses
from api.routers.auth import sign_in
from api.security import create_token
from api.services import dashboard as dash
from api.services.indicators import period_of

router = APIRouter(tags=["dashboard"])
API = "/api/v1/dashboard"
READ = problem_responses(401, 403, 422)

PeriodQ = Annotated[
    str | None,
    Query(
        max_length=40,
        description="Reporting period: 2026, 2026-Q3, 2026-07 (default: the latest month with readings), 2026-W27, "
        "a day, or 2026-01-01..2026-06-30; at most 366 days",
    ),
]
VillageQ = Annotated[str | None, Query(pattern=r"^\d{12}$", description="A village of your area")]
Section = Literal["indicators", "rankings", "devices", "alerts", "traceability", "anchoring"]


def _influx(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.trace.influx()


def _devices(request: Request, actor: Actor, session: Session) -> dict[str, Any]:
    settings, cache = request.app.state.settings, request.app.state.dashboard
    return dash.devices_section(session, settings, actor.area.villages, _influx(request), cache)


def _check(request: Request, actor: Actor, period: str | None, village: str | None) -> None:
    if village is not None:
        actor.require_read(village, f"village {village}")
    try:
        period_of(period, request.app.state.settings)
    except PeriodTooLong as e:
        raise Problem(422, "period-too-long", f"period: {e}", max_days=MAX_REPORT_DAYS) from None
    except ValueError as e:
        raise Problem(422, "validation", f"period: {e}") from None


def _snapshot(
    request: Request, session: Session, actor: Actor, period: str | None, village: str | None
) -> dict[str, Any]:
    _check(request, actor, period, village)
    return dash.snapshot(
        session,
        request.app.state.settings,
        actor,
        _influx(request),
        period=period,
        village=village,
        cache=request.app.state.dashboard,
    )


@router.get(API, summary="Everything the dashboard shows", responses=READ)
def summary(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, village: VillageQ = None
) -> dict[str, Any]:
    return _snapshot(request, session, actor, period, village)


@router.get(f"{API}/indicators", summary="Indicators with trend and village comparison", responses=READ)
def indicators(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, village: VillageQ = None
) -> dict[str, Any]:
    """The county's indicators (or a village's) for the period and the five before it, with each value's
    inputs, and the villages of your area ranked per indicator (analytics.compute)."""
    _check(request, actor, period, village)
    return dash.indicators_section(session, request.app.state.settings, actor, period, village)


@router.get(f"{API}/devices", summary="Device health", responses=READ)
def devices(request: Request, actor: ActorDep, session: SessionDep) -> dict[str, Any]:
    """Every device of your area: online, silent, failing validation (dead letters in 24 h), inactive, revoked."""
    out = _devices(request, actor, session)
    return {k: v for k, v in out.items() if k != "alerts"}


@router.get(f"{API}/alerts", summary="Open alerts", responses=READ)
def alerts(request: Request, actor: ActorDep, session: SessionDep) -> list[dict[str, Any]]:
    """Drought stress, low paddy water and fever, from the latest reading of each device."""
    return list(_devices(request, actor, session)["alerts"])


@router.get(f"{API}/traceability", summary="Traceability coverage", responses=READ)
def traceability(request: Request, actor: ActorDep, session: SessionDep) -> dict[str, Any]:
    return dash.traceability_section(session, actor.area.villages, request.app.state.dashboard)


@router.get(f"{API}/anchoring", summary="Latest anchoring windows", responses=READ)
def anchoring(request: Request, actor: ActorDep, session: SessionDep) -> dict[str, Any]:
    """Leaves waiting, windows by state (pending, included, confirmed, final, re-queued), the latest windows."""
    return dash.anchoring_section(session, request.app.state.dashboard)


@router.get(
    f"{API}/export.csv",
    summary="Export a dashboard section as CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV (UTF-8 with BOM)"}, **READ},
)
def export_csv(
    request: Request,
    actor: ActorDep,
    session: SessionDep,
    section: Section = "indicators",
    period: PeriodQ = None,
    village: VillageQ = None,
) -> Response:
    snap = _snapshot(request, session, actor, period, village)
    return Response(
        dash.to_csv(dash.rows(snap, section)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="dashboard-{section}.csv"'},
    )


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get(
    f"{API}/export.xlsx",
    summary="Export the dashboard as an Excel workbook",
    response_class=Response,
    responses={200: {"content": {XLSX: {}}, "description": "One sheet per section"}, **READ},
)
def export_xlsx(
    request: Request, actor: ActorDep, session: SessionDep, period: PeriodQ = None, village: VillageQ = None
) -> Response:
    snap = _snapshot(request, session, actor, period, village)
    return Response(
        dash.to_xlsx(snap), media_type=XLSX, headers={"Content-Disposition": 'attachment; filename="dashboard.xlsx"'}
    )


# ---------------------------------------------------------------- pages


@router.get(
    "/dashboard",
    response_class=HTMLResponse,
    summary="Dashboard page",
    responses={303: {"description": "Sign in first"}},
)
def dashboard_page(request: Request, session: SessionDep, period: PeriodQ = None, village: VillageQ = None) -> Response:
    actor = page_actor_from_cookie(request, session)
    if actor is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    if actor.role in (Role.city_officer, Role.province_officer):  # their page compares counties
        return RedirectResponse("/province", status_code=303)
    lang = language(request)
    snap = _snapshot(request, session, actor, period, village)
    query = "&".join(f"{k}={v}" for k, v in (("period", period), ("village", village)) if v)
    return request.app.state.templates.TemplateResponse(
        request,
        "dashboard.html",
        {"lang": lang, "t": strings(lang), "s": snap, "actor": actor, "query": query},
        headers={"Cache-Control": "no-store", "Vary": "Accept-Language, Cookie"},
    )


@router.get("/dashboard/login", response_class=HTMLResponse, summary="Sign-in page")
def login_page(request: Request) -> Response:
    return _login_form(request, failed=False)


def _login_form(request: Request, failed: bool, retry_after: int = 0) -> Response:
    lang = language(request)
    status = 429 if retry_after else 401 if failed else 200
    return request.app.state.templates.TemplateResponse(
        request,
        "login.html",
        {"lang": lang, "t": strings(lang), "failed": failed, "retry_after": retry_after},
        status_code=status,
        headers={"Retry-After": str(retry_after)} if retry_after else None,
    )


@router.post(
    "/dashboard/login",
    summary="Sign in (form); sets the session cookie",
    responses={
        303: {"description": "Signed in: to the dashboard"},
        401: {"description": "Wrong credentials: the form again", "content": {"text/html": {}}},
        429: {"description": "Too many failed sign-ins: the form with the wait", "content": {"text/html": {}}},
    },
    response_class=HTMLResponse,
)
def login(
    request: Request,
    session: SessionDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=200)],
) -> Response:
    try:
        user = sign_in(request, session, username, password)
    except Problem as e:  # the same throttle as the token endpoint; answered as the form again
        return _login_form(request, failed=True, retry_after=int(e.headers.get("Retry-After", 0)))
    settings = request.app.state.settings
    token = create_token(request.app.state.jwt_secret, user.username, user.role, user.scope, settings.api_token_ttl_s)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.api_token_ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/dashboard/logout", summary="Sign out", responses={303: {"description": "To the sign-in page"}})
def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
