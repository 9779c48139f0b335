"""Alerts that are worked: opened by the readings, acknowledged and resolved by people, resolved by
the readings, with their history.

States: `open` -> `acknowledged` (who, when, note) -> `resolved`; `resolved` -> `open` again
(`reopened`). Every change appends an `alert_event` (opened, acknowledged, resolved, reopened; who,
when, note) and queues its webhook deliveries (api/services/webhooks.py) in the same transaction.

The evaluator (`evaluate`, run by `village alerts run` every ALERT_EVAL_INTERVAL_S) reads the latest
reading of every device (api/services/health.py: drought, low paddy water, fever; thresholds from
core/data/crops.yaml and analytics/data/computation.yaml) and
- opens an alert for a reading out of range when the device has no unresolved alert of that kind;
- keeps an unresolved alert's latest value, and forgets `normal_since` on a new breach;
- resolves an open or acknowledged alert (as "system") once the readings have been within range for
  ALERT_RESOLVE_AFTER_S (reading times: from the first reading back in range to the latest);
- reopens a resolved alert on a reading out of range newer than its resolution (for one resolved by
  the readings: the reading that completed the time in range; by hand: the moment of the click), if
  that comes within ALERT_REOPEN_WITHIN_S; later, a new alert is opened.
It samples the latest reading per pass: a breach that starts and ends between two passes is not seen.

People: `acknowledge` (open only) and `resolve` (open or acknowledged, with a note); a concurrent
change loses with a 409, by a conditional UPDATE on the state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from api.models import Alert, AlertAction, AlertEvent, AlertState
from api.problems import Problem
from api.services import webhooks
from api.services.health import Condition, conditions, device_health
from core.catalogue import Catalogue
from core.influx import InfluxV1
from core.models import Village
from core.settings import Settings

__all__ = ["EvalReport", "acknowledge", "evaluate", "record", "resolve", "utc"]

log = logging.getLogger(__name__)
SYSTEM = webhooks.SYSTEM


def utc(t: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives naive ones back)."""
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def record(
    session: Session,
    alert: Alert,
    action: AlertAction,
    actor: str,
    configs: tuple[webhooks.EndpointConfig, ...],
    note: str | None = None,
    value: float | None = None,
    at: datetime | None = None,
) -> AlertEvent:
    """Append an event to the alert's history and queue its webhook deliveries (no commit)."""
    when = at or datetime.now(UTC)
    event = AlertEvent(alert_id=alert.id, action=action, actor=actor, note=note, value=value, at=when)  # type: ignore[arg-type]
    session.add(event)
    session.flush()
    webhooks.queue(session, event, alert, configs)
    return event


def _transition(session: Session, alert: Alert, expected: tuple[AlertState, ...], **values: Any) -> None:
    """Change the alert's row only if its state is still one of `expected` (409 otherwise)."""
    r = session.exec(  # type: ignore[call-overload]
        update(Alert).where(col(Alert.id) == alert.id, col(Alert.state).in_(expected)).values(**values)
    )
    if r.rowcount != 1:
        session.rollback()
        current = session.get(Alert, alert.id)
        state = current.state if current else "gone"
        raise Problem(409, "alert-state", f"alert {alert.id} is {state}; this needs it {' or '.join(expected)}")


def acknowledge(
    session: Session, alert: Alert, user: str, note: str | None, configs: tuple[webhooks.EndpointConfig, ...]
) -> AlertEvent:
    now = datetime.now(UTC)
    _transition(
        session,
        alert,
        (AlertState.open,),
        state=AlertState.acknowledged,
        acknowledged_at=now,
        acknowledged_by=user,
        updated_at=now,
    )
    event = record(session, alert, AlertAction.acknowledged, user, configs, note=note, at=now)
    session.commit()
    log.info("alert %s acknowledged by %s", alert.id, user)
    return event


def resolve(
    session: Session, alert: Alert, user: str, note: str, configs: tuple[webhooks.EndpointConfig, ...]
) -> AlertEvent:
    now = datetime.now(UTC)
    _transition(
        session,
        alert,
        (AlertState.open, AlertState.acknowledged),
        state=AlertState.resolved,
        resolved_at=now,
        resolved_by=user,
        updated_at=now,
    )
    event = record(session, alert, AlertAction.resolved, user, configs, note=note, at=now)
    session.commit()
    log.info("alert %s resolved by %s", alert.id, user)
    return event


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalReport:
    opened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    checked: int = 0

    def __bool__(self) -> bool:
        return bool(self.opened or self.resolved or self.reopened)


def _apply(
    session: Session,
    c: Condition,
    active: Alert | None,
    last_resolved: Alert | None,
    settings: Settings,
    configs: tuple[webhooks.EndpointConfig, ...],
    report: EvalReport,
) -> None:
    at = datetime.fromisoformat(c.at)
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    now = datetime.now(UTC)
    if c.breached:
        if active is not None:
            if at > (utc(active.last_breach_at) or at) or active.normal_since is not None:
                active.value, active.last_breach_at, active.normal_since, active.updated_at = c.value, at, None, now
                session.add(active)
            return
        resolved_at = utc(last_resolved.resolved_at) if last_resolved else None
        if last_resolved is not None and resolved_at is not None and at > resolved_at:
            if at - resolved_at <= timedelta(seconds=settings.alert_reopen_within_s):
                a = last_resolved
                a.state, a.value, a.last_breach_at, a.updated_at = AlertState.open, c.value, at, now
                a.normal_since = None
                a.acknowledged_at = a.acknowledged_by = a.resolved_at = a.resolved_by = None
                session.add(a)
                record(session, a, AlertAction.reopened, SYSTEM, configs, value=c.value, at=now)
                report.reopened.append(a.id)  # type: ignore[arg-type]
                return
        elif last_resolved is not None:
            return  # the reading that was resolved (by hand) is still the latest: nothing new
        a = Alert(
            kind=c.kind,
            device_id=c.device,
            village_code=c.village or "",
            place=c.place,
            metric=c.metric,
            threshold=float(c.threshold),
            value=c.value,
            opened_at=at,
            last_breach_at=at,
        )
        session.add(a)
        session.flush()
        record(session, a, AlertAction.opened, SYSTEM, configs, value=c.value, at=now)
        report.opened.append(a.id)  # type: ignore[arg-type]
        return
    if active is None:
        return
    since = utc(active.normal_since)
    if since is None:
        since = active.normal_since = at
        active.updated_at = now
        session.add(active)
    if at - since >= timedelta(seconds=settings.alert_resolve_after_s):
        # resolved at the reading that completed the time in range (a later breach reopens it)
        active.state, active.resolved_at, active.resolved_by, active.updated_at = AlertState.resolved, at, SYSTEM, now
        session.add(active)
        minutes = settings.alert_resolve_after_s / 60
        note = f"readings within range ({c.metric} {c.value:g}) for {minutes:g} min"
        record(session, active, AlertAction.resolved, SYSTEM, configs, note=note, value=c.value, at=now)
        report.resolved.append(active.id)  # type: ignore[arg-type]


def evaluate(
    engine: Engine, influx: InfluxV1, catalogue: Catalogue, settings: Settings, now: datetime | None = None
) -> EvalReport:
    """One pass over every device's latest reading: open, keep, resolve and reopen alerts."""
    now = now or datetime.now(UTC)
    configs = webhooks.load_config(settings)
    report = EvalReport()
    with Session(engine) as session:
        villages = set(session.exec(select(Village.code)).all())
        devices = device_health(session, influx, catalogue, villages, now)
        found = conditions(devices, settings.county_timezone, now)
        report.checked = len(found)
        active = {
            (a.device_id, a.kind): a for a in session.exec(select(Alert).where(Alert.state != AlertState.resolved))
        }
        resolved: dict[tuple[str, str], Alert] = {}
        for a in session.exec(select(Alert).where(Alert.state == AlertState.resolved).order_by(col(Alert.resolved_at))):
            resolved[(a.device_id, a.kind)] = a  # the latest resolution wins
        for c in found:
            key = (c.device, c.kind)
            _apply(session, c, active.get(key), resolved.get(key), settings, configs, report)
        session.commit()
    if report:
        log.info("alerts: opened %s resolved %s reopened %s", report.opened, report.resolved, report.reopened)
    return report
