"""Models of the alerts API: the bodies of acknowledge and resolve, an alert, its history and the
delivery log of its notifications."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from api.models import AlertAction, AlertState
from api.schemas import STRICT, Public

__all__ = [
    "AlertAcknowledge",
    "AlertDetailPublic",
    "AlertEventPublic",
    "AlertPublic",
    "AlertResolve",
    "WebhookDeliveryPublic",
]


class AlertAcknowledge(BaseModel):
    """Taking an alert: an optional note (what is being done)."""

    model_config = STRICT
    note: str | None = Field(default=None, max_length=1000)


class AlertResolve(BaseModel):
    """Closing an alert by hand: the note saying why is required."""

    model_config = STRICT
    note: str = Field(min_length=1, max_length=1000)


class AlertPublic(Public):
    id: int
    kind: str
    state: AlertState
    device_id: str
    village_code: str
    place: str | None
    metric: str
    value: float
    threshold: float
    opened_at: datetime
    last_breach_at: datetime
    normal_since: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None


class AlertEventPublic(Public):
    id: int
    action: AlertAction
    at: datetime
    actor: str
    note: str | None
    value: float | None


class WebhookDeliveryPublic(Public):
    event_id: int
    endpoint: str
    attempt: int
    state: str
    due_at: datetime
    attempted_at: datetime | None
    status_code: int | None
    error: str | None
    duration_ms: float | None


class AlertDetailPublic(AlertPublic):
    history: list[AlertEventPublic]
    deliveries: list[WebhookDeliveryPublic]
