"""Alerts under `/api/v1/alerts`: list, detail with history and delivery log, acknowledge, resolve;
and the dashboard's alerts page (`/dashboard/alerts`) with its buttons.

Everyone reads the alerts of their area (a village operator their village, a township officer their
township, a county administrator and an analyst the county); acknowledging and resolving need a
role that writes (not an analyst) and the alert's village in the caller's area; anything else is a
403 problem. Alerts are opened and resolved by the readings (`village alerts run`,
api/services/alerts.py); people acknowledge them and resolve them by hand.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from api.deps import SESSION_COOKIE, Actor, ActorDep, PageActorDep, SessionDep, csrf_token, page_actor_from_cookie
from api.i18n import language, strings
from api.models import Alert, AlertEvent, AlertState, WebhookDelivery
from api.schemas import Page
from api.schemas.alerts import (
    AlertAcknowledge,
    AlertDetailPublic,
    AlertEventPublic,
    AlertPublic,
    AlertResolve,
    WebhookDeliveryPublic,
)
from api.services import alerts as service
from api.services import webhooks
from api.services.admin import READ, WRITE, Limit, Offset, RowId, VillageQ, not_found, page, village_filter

router = APIRouter(tags=["alerts"])
API = "/api/v1/alerts"

DeviceQ = Annotated[str | None, Query(max_length=64, description="Only alerts of this device")]
KindQ = Annotated[str | None, Query(pattern=r"^(drought|low_water|fever)$", description="Only alerts of this kind")]


def _alert(session: Session, actor: Actor, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise not_found(f"alert {alert_id}")
    actor.require_read(alert.village_code, f"alert {alert_id} (village {alert.village_code})")
    return alert


def _detail(session: Session, alert: Alert) -> AlertDetailPublic:
    events = session.exec(select(AlertEvent).where(AlertEvent.alert_id == alert.id).order_by(col(AlertEvent.id))).all()
    deliveries = session.exec(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.event_id).in_([e.id for e in events]))
        .order_by(col(WebhookDelivery.id))
    ).all()
    return AlertDetailPublic(
        **AlertPublic.model_validate(alert).model_dump(),
        history=[AlertEventPublic.model_validate(e) for e in events],
        deliveries=[WebhookDeliveryPublic.model_validate(d) for d in deliveries],
    )


def _query(actor: Actor, state: AlertState | None, village: str | None, device: str | None, kind: str | None):  # type: ignore[no-untyped-def]
    stmt = select(Alert).where(col(Alert.village_code).in_(village_filter(actor, village)))
    if state is not None:
        stmt = stmt.where(Alert.state == state)
    if device:
        stmt = stmt.where(Alert.device_id == device)
    if kind:
        stmt = stmt.where(Alert.kind == kind)
    return stmt.order_by(col(Alert.opened_at).desc(), col(Alert.id).desc())


@router.get(API, response_model=Page[AlertPublic], responses=READ, summary="Alerts of your area")
def list_alerts(
    actor: ActorDep,
    session: SessionDep,
    state: AlertState | None = None,
    village: VillageQ = None,
    device: DeviceQ = None,
    kind: KindQ = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AlertPublic]:
    """Newest first; filter by state (open, acknowledged, resolved), village, device and kind."""
    return page(session, _query(actor, state, village, device, kind), limit, offset, AlertPublic.model_validate)


@router.get(f"{API}/{{alert_id}}", response_model=AlertDetailPublic, responses=READ, summary="An alert")
def get_alert(alert_id: RowId, actor: ActorDep, session: SessionDep) -> AlertDetailPublic:
    """The alert with its history (opened, acknowledged, resolved, reopened: who, when, note) and the
    log of its webhook deliveries (every attempt)."""
    return _detail(session, _alert(session, actor, alert_id))


@router.post(
    f"{API}/{{alert_id}}/acknowledge",
    response_model=AlertDetailPublic,
    responses=WRITE,
    summary="Acknowledge an open alert",
)
def acknowledge_alert(
    request: Request, alert_id: RowId, body: AlertAcknowledge, actor: PageActorDep, session: SessionDep
) -> AlertDetailPublic:
    """Take the alert (with an optional note); 409 unless it is open."""
    alert = _alert(session, actor, alert_id)
    actor.require_write(alert.village_code, f"alert {alert_id} (village {alert.village_code})")
    configs = webhooks.load_config(request.app.state.settings)
    service.acknowledge(session, alert, actor.principal.username, body.note, configs)
    session.refresh(alert)
    return _detail(session, alert)


@router.post(
    f"{API}/{{alert_id}}/resolve",
    response_model=AlertDetailPublic,
    responses=WRITE,
    summary="Resolve an alert by hand",
)
def resolve_alert(
    request: Request, alert_id: RowId, body: AlertResolve, actor: PageActorDep, session: SessionDep
) -> AlertDetailPublic:
    """Close the alert with a note saying why; 409 when it is resolved already. A reading out of range
    newer than the resolution reopens it."""
    alert = _alert(session, actor, alert_id)
    actor.require_write(alert.village_code, f"alert {alert_id} (village {alert.village_code})")
    configs = webhooks.load_config(request.app.state.settings)
    service.resolve(session, alert, actor.principal.username, body.note, configs)
    session.refresh(alert)
    return _detail(session, alert)


# ---------------------------------------------------------------- pages


def _page(request: Request, template: str, context: dict) -> Response:  # type: ignore[type-arg]
    lang = language(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return request.app.state.templates.TemplateResponse(
        request,
        template,
        {"lang": lang, "t": strings(lang), "csrf": csrf_token(request.app.state.jwt_secret, cookie), **context},
        headers={"Cache-Control": "no-store", "Vary": "Accept-Language, Cookie"},
    )


@router.get(
    "/dashboard/alerts",
    response_class=HTMLResponse,
    summary="Alerts page",
    responses={303: {"description": "Sign in first"}},
)
def alerts_page(
    request: Request,
    session: SessionDep,
    state: AlertState | None = None,
    village: VillageQ = None,
    offset: Offset = 0,
) -> Response:
    actor = page_actor_from_cookie(request, session)
    if actor is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    rows = page(session, _query(actor, state, village, None, None), 100, offset, AlertPublic.model_validate)
    return _page(
        request,
        "alerts.html",
        {"actor": actor, "alerts": rows, "state": state, "writes": actor.role != "analyst"},
    )


@router.get(
    "/dashboard/alerts/{alert_id}",
    response_class=HTMLResponse,
    summary="An alert's page",
    responses={303: {"description": "Sign in first"}},
)
def alert_page(request: Request, alert_id: RowId, session: SessionDep) -> Response:
    actor = page_actor_from_cookie(request, session)
    if actor is None:
        return RedirectResponse("/dashboard/login", status_code=303)
    detail = _detail(session, _alert(session, actor, alert_id))
    return _page(request, "alert.html", {"actor": actor, "a": detail, "writes": actor.role != "analyst"})
