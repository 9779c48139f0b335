"""API accounts: people who sign in (users) and machines that call with a key (API keys).

A user has one role along the province > city > county > township > village tiers and a scope,
the division code of the area the role covers (6 digits for a province such as 210000, a city such
as 211100 or a county, 9 for a township, 12 for a village). An API
key acts as the user it belongs to, so a machine never has more rights than its owner. Passwords
and keys are stored only as hashes (api/security.py). Migration 0005 creates the tables, 0009 the
sign-in throttle, 0012 adds the city and province roles.
"""

# No `from __future__ import annotations`: SQLModel reads the annotations at class creation.

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

import core.models  # noqa: F401  (the registry tables share the metadata)
from core.models import utcnow


class Role(StrEnum):
    county_admin = "county_admin"  # everything in their county, personal data included
    township_officer = "township_officer"  # their township; no personal data
    village_operator = "village_operator"  # their village, personal data of its farms included
    analyst = "analyst"  # read-only, whole county, no personal data
    city_officer = "city_officer"  # read-only, every county of a city (scope 211100: prefix 2111)
    province_officer = "province_officer"  # read-only, every county of a province (scope 210000: prefix 21)


# The length of the division code each role's scope must have.
SCOPE_DIGITS = {
    Role.county_admin: 6,
    Role.township_officer: 9,
    Role.village_operator: 12,
    Role.analyst: 6,
    Role.city_officer: 6,
    Role.province_officer: 6,
}
# Roles above the county: their scope is a 6-digit city (prefecture, ending in 00) or province (ending in
# 0000) code and covers every county whose code starts with its prefix (core.scope.division_prefix).
ABOVE_COUNTY = {Role.city_officer: "prefecture", Role.province_officer: "province"}
# Roles that read but never change the registry or the ledger.
READ_ONLY = frozenset({Role.analyst, Role.city_officer, Role.province_officer})


class User(SQLModel, table=True):
    __tablename__ = "api_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, regex=r"^[A-Za-z][A-Za-z0-9_.@-]{1,63}$")
    password_hash: str
    role: Role
    scope: str = Field(regex=r"^\d{6}(\d{3}(\d{3})?)?$", index=True)
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A machine credential: `X-API-Key: {prefix}.{secret}`; only the SHA-256 of the whole key is kept."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    prefix: str = Field(unique=True, index=True)  # public part, names the key in lists and logs
    key_hash: str  # hex SHA-256 of the full key (the key has 256 random bits: no slow hash needed)
    name: str
    user_id: int = Field(foreign_key="api_user.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class LoginThrottle(SQLModel, table=True):
    """Sign-in attempts counted per account and per client address in a fixed window (api/throttle.py).

    `key` is `account:` or `address:` and a SHA-256 of the name or address (no raw input is kept);
    `window_start` is epoch seconds. Shared by every worker through the registry database (migration 0009).
    """

    __tablename__ = "api_login_throttle"

    key: str = Field(primary_key=True, max_length=80)
    failures: int = 0
    window_start: float = Field(index=True)


class TraceCheck(SQLModel, table=True):
    """A lot's last verification, shared by the API's workers (api/services/shared_checks.py): the
    badge, its records and what it read, and the trace view, so that one worker's check serves the
    others. A cache, not a record: rows are replaced, never trusted unless their `mac` (an HMAC under
    a key derived from the API's signing secret) holds, so a database writer cannot plant a badge.
    `basis` (epoch seconds) is when the verification began reading, `asked` when the chain was last
    asked about its windows. Migration 0015."""

    __tablename__ = "trace_check"

    code: str = Field(primary_key=True, max_length=40)
    basis: float
    asked: float
    payload: bytes  # zlib(orjson({result, deps, view, view_basis}))
    records: bytes  # zlib(orjson(records)), what /verify shows
    mac: str = Field(max_length=64)


# ---------------------------------------------------------------- alerts (migration 0011)


class AlertState(StrEnum):
    open = "open"  # raised by a reading out of range, nobody has taken it yet
    acknowledged = "acknowledged"  # someone has taken it (who, when, note)
    resolved = "resolved"  # readings back within range long enough, or closed by hand with a note


class AlertAction(StrEnum):
    opened = "opened"
    acknowledged = "acknowledged"
    resolved = "resolved"
    reopened = "reopened"


class Alert(SQLModel, table=True):
    """One episode of a device's readings out of range (api/services/alerts.py keeps it up to date).

    At most one alert per device and kind is not resolved; times are reading times (UTC).
    """

    __tablename__ = "alert"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=20, index=True)  # drought | low_water | fever
    device_id: str = Field(max_length=64, index=True)
    village_code: str = Field(max_length=12, index=True)
    place: str | None = Field(default=None, max_length=64)  # plot number, herd number or ear tag
    metric: str = Field(max_length=40)
    threshold: float
    value: float  # the latest value out of range
    state: AlertState = Field(default=AlertState.open, index=True)
    opened_at: datetime  # the first reading out of range
    last_breach_at: datetime  # the latest reading out of range
    normal_since: datetime | None = None  # the first reading back in range since then
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = Field(default=None, max_length=64)
    resolved_at: datetime | None = None
    resolved_by: str | None = Field(default=None, max_length=64)  # a user name, or "system"
    updated_at: datetime = Field(default_factory=utcnow)


class AlertEvent(SQLModel, table=True):
    """The history of an alert, append-only: the API's database role may insert but never update it."""

    __tablename__ = "alert_event"

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alert.id", index=True)
    action: AlertAction
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=64)  # a user name, or "system" (the alert worker)
    note: str | None = Field(default=None, max_length=1000)
    value: float | None = None  # the reading that caused it (system events)


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver an alert event to a webhook endpoint (api/services/webhooks.py).

    A `pending` row is an attempt waiting for `due_at`; once tried it is `delivered`, `retried` (a
    row for the next attempt was added, after an exponential backoff) or `failed` (no more tries).
    """

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="alert_event.id", index=True)
    endpoint: str = Field(max_length=64, index=True)  # its name in ALERT_WEBHOOKS_FILE
    attempt: int = 1
    state: str = Field(default="pending", max_length=12, index=True)  # pending|sending|delivered|retried|failed
    due_at: datetime = Field(default_factory=utcnow, index=True)
    attempted_at: datetime | None = None
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=300)  # never the URL, its key or the secret
    duration_ms: float | None = None
