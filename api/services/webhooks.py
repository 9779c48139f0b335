"""Webhook notifications of alert events: the endpoints (data, ALERT_WEBHOOKS_FILE), the message
formats, and the delivery worker with its log.

Formats:
- `json`: a generic JSON document (`event`, `at`, `actor`, `note`, `alert`, `url`); with a
  `secret_env`, the body is signed: `X-Village-Signature: sha256=<hex HMAC-SHA256 of the body>`.
- `wecom`: a WeCom (企业微信) group robot message, `{"msgtype": "markdown", "markdown": {"content": ...}}`.
- `dingtalk`: a DingTalk (钉钉) group robot message, `{"msgtype": "markdown", "markdown": {"title":
  ..., "text": ...}}`; with a `secret_env` (加签) the URL gets `timestamp` (ms) and `sign`
  (base64 of HMAC-SHA256 of "timestamp\\nsecret" keyed by the secret), as DingTalk requires.

Secrets: a robot URL carries its key (WeCom `key=`, DingTalk `access_token=`), so URLs with a
credential and signing secrets are never written in the file or the database: the file names the
environment variable (or SECRETS_DIR file) that holds each, the worker reads them when it starts,
and logs and the delivery log name the endpoint, never its URL. The API needs only the file (to
queue deliveries), not the secrets.

Delivery: an alert event queues one `webhook_delivery` row per endpoint whose scope covers the
alert's village (in the transaction that records the event, so nothing is lost and the request or
the evaluation never waits for a receiver). The worker claims due rows, posts them and records each
attempt (status code, error, duration, time); a failure (network error, 408, 429, 5xx, or a robot's
non-zero `errcode`) queues the next attempt after ALERT_WEBHOOK_BACKOFF_S * 2^(attempt-1), at most
ALERT_WEBHOOK_BACKOFF_MAX_S, until ALERT_WEBHOOK_MAX_ATTEMPTS; any other 4xx is final.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from api.i18n import strings
from api.models import Alert, AlertAction, AlertEvent, WebhookDelivery
from core.settings import Settings

__all__ = [
    "Deliverer",
    "Endpoint",
    "EndpointConfig",
    "WebhookConfigError",
    "Webhooks",
    "dingtalk_signed_url",
    "load_config",
    "message",
    "queue",
]

log = logging.getLogger(__name__)
SYSTEM = "system"
ENV_NAME = r"^[A-Z][A-Z0-9_]{0,63}$"


class WebhookConfigError(ValueError):
    """The endpoints file is wrong, or a secret it names is missing."""


class EndpointConfig(BaseModel):
    """One endpoint as the file declares it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    format: Literal["json", "wecom", "dingtalk"]
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", description="a URL without a credential")
    url_env: str | None = Field(default=None, pattern=ENV_NAME, description="the variable holding the URL")
    secret_env: str | None = Field(default=None, pattern=ENV_NAME, description="the variable holding the secret")
    scope: str = Field(default="", pattern=r"^(\d{6}(\d{3}(\d{3})?)?)?$", description="division code; empty: all")
    events: list[AlertAction] = Field(default_factory=lambda: list(AlertAction))

    @model_validator(mode="after")
    def _one_url(self) -> EndpointConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url (a URL without a credential) and url_env")
        if self.url and re.search(r"(key|token|secret|sign|password)=", self.url, re.IGNORECASE):
            raise ValueError("this URL carries a credential: put it in an environment variable and name it in url_env")
        return self

    def covers(self, village_code: str, action: AlertAction) -> bool:
        return village_code.startswith(self.scope) and action in self.events


class WebhooksFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> WebhooksFile:
        names = [e.name for e in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError("endpoint names must be unique")
        return self


@cache
def _load(path: Path, mtime: float) -> tuple[EndpointConfig, ...]:
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        return tuple(WebhooksFile.model_validate(data).endpoints)
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise WebhookConfigError(f"{path}: {e}") from None


def load_config(settings: Settings) -> tuple[EndpointConfig, ...]:
    """The endpoints of ALERT_WEBHOOKS_FILE (none when unset); read again when the file changes."""
    path = settings.alert_webhooks_file
    if path is None:
        return ()
    try:
        mtime = path.stat().st_mtime
    except OSError as e:
        raise WebhookConfigError(f"ALERT_WEBHOOKS_FILE {path}: {e.strerror}") from None
    return _load(path, mtime)


def _secret(name: str) -> str:
    value = os.environ.get(name)
    secrets_dir = os.environ.get("SECRETS_DIR")
    if not value and secrets_dir and (Path(secrets_dir) / name).is_file():
        value = (Path(secrets_dir) / name).read_text("utf-8")
    if not value or not value.strip():
        raise WebhookConfigError(f"{name} is not set (neither in the environment nor in SECRETS_DIR)")
    return value.strip()


@dataclass(frozen=True)
class Endpoint:
    """An endpoint with its URL and secret, read from the environment (never printed)."""

    config: EndpointConfig
    url: SecretStr
    secret: SecretStr | None

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {self.config.format})"


class Webhooks:
    """The configured endpoints with their secrets (the worker's view)."""

    def __init__(self, configs: tuple[EndpointConfig, ...]) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        for c in configs:
            url = c.url if c.url is not None else _secret(c.url_env or "")
            if not re.match(r"^https?://[^\s]+$", url):
                raise WebhookConfigError(f"{c.url_env}: not an http(s) URL")
            secret = SecretStr(_secret(c.secret_env)) if c.secret_env else None
            self.endpoints[c.name] = Endpoint(c, SecretStr(url), secret)

    @classmethod
    def from_settings(cls, settings: Settings) -> Webhooks:
        return cls(load_config(settings))


def queue(session: Session, event: AlertEvent, alert: Alert, configs: tuple[EndpointConfig, ...]) -> int:
    """Queue the event for every endpoint whose scope covers the alert (in the caller's transaction)."""
    n = 0
    for c in configs:
        if c.covers(alert.village_code, event.action):
            session.add(WebhookDelivery(event_id=event.id, endpoint=c.name, due_at=event.at))
            n += 1
    return n


# ---------------------------------------------------------------- messages


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat(timespec="seconds") if t else None


def alert_document(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "state": str(alert.state),
        "device": alert.device_id,
        "village": alert.village_code,
        "place": alert.place,
        "metric": alert.metric,
        "value": alert.value,
        "threshold": alert.threshold,
        "opened_at": _iso(alert.opened_at),
    }


def _markdown(alert: Alert, event: AlertEvent, lang: str, link: str) -> tuple[str, str]:
    t = strings(lang)
    a = t["alerts"]
    kind = t["alert_kinds"].get(alert.kind, alert.kind)
    title = f"{a['actions'][str(event.action)]} · {kind}"
    lines = [
        f"**{title}**",
        f"> {a['where']}: {alert.place or '-'} ({alert.device_id}) · {alert.village_code}",
        f"> {a['value']}: {alert.value:g} ({a['threshold']} {alert.threshold:g}, {alert.metric})",
        f"> {a['by']}: {event.actor if event.actor != SYSTEM else a['system']} · {_iso(event.at)}",
    ]
    if event.note:
        lines.append(f"> {a['note']}: {event.note}")
    lines.append(f"[{a['open_link']}]({link})")
    return title, "\n".join(lines)


def message(fmt: str, alert: Alert, event: AlertEvent, lang: str, base_url: str) -> dict[str, Any]:
    """The body posted to an endpoint of format `fmt` for `event` of `alert`."""
    link = f"{base_url.rstrip('/')}/dashboard/alerts/{alert.id}"
    if fmt == "json":
        return {
            "event": str(event.action),
            "event_id": event.id,
            "at": _iso(event.at),
            "actor": event.actor,
            "note": event.note,
            "alert": alert_document(alert),
            "url": link,
        }
    title, text = _markdown(alert, event, lang, link)
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": text}}
    return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """DingTalk's 加签: `&timestamp=<ms>&sign=<urlencoded base64 HMAC-SHA256("ts\\nsecret", key=secret)>`."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    sign = base64.b64encode(hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()).decode()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={urllib.parse.quote_plus(sign)}"


# ---------------------------------------------------------------- delivery


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    retry: bool

    @property
    def delivered(self) -> bool:
        return self.error is None


def _clean(text: str, endpoint: Endpoint) -> str:
    """An error text without the endpoint's URL, its query or its secret."""
    for s in (endpoint.url.get_secret_value(), endpoint.secret.get_secret_value() if endpoint.secret else None):
        if s:
            text = text.replace(s, "…")
    return re.sub(r"https?://\S+", "<url>", text)[:300]


def post(client: httpx.Client, endpoint: Endpoint, body: dict[str, Any]) -> Outcome:
    """One attempt: POST the body, judge the answer."""
    raw = orjson.dumps(body)
    url = endpoint.url.get_secret_value()
    headers = {"Content-Type": "application/json; charset=utf-8"}
    fmt = endpoint.config.format
    if endpoint.secret is not None:
        secret = endpoint.secret.get_secret_value()
        if fmt == "dingtalk":
            url = dingtalk_signed_url(url, secret, int(time.time() * 1000))
        elif fmt == "json":
            headers["X-Village-Signature"] = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    try:
        r = client.post(url, content=raw, headers=headers)
    except httpx.HTTPError as e:
        return Outcome(None, _clean(f"{type(e).__name__}: {e}", endpoint), retry=True)
    if r.status_code >= 300:
        retry = r.status_code in (408, 425, 429) or r.status_code >= 500
        return Outcome(r.status_code, f"HTTP {r.status_code}", retry=retry)
    if fmt in ("wecom", "dingtalk"):  # the robots answer 200 with an error code
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        code = answer.get("errcode", 0) if isinstance(answer, dict) else 0
        if code:
            msg = str(answer.get("errmsg", ""))[:120]
            return Outcome(r.status_code, _clean(f"errcode {code}: {msg}", endpoint), retry=True)
    return Outcome(r.status_code, None, retry=False)


class _Redact(logging.Filter):
    """Takes the endpoints' secrets out of httpx's own log lines (it logs every request's full URL)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for s in self.secrets:
            redacted = redacted.replace(s, "…")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACT = _Redact()


def _secrets_of(endpoint: Endpoint) -> set[str]:
    """What must never be logged: the URL after its host (path and query carry keys) and the secret."""
    parts = urllib.parse.urlsplit(endpoint.url.get_secret_value())
    out = {parts.path + ("?" + parts.query if parts.query else ""), parts.query}
    if endpoint.secret is not None:
        out.add(endpoint.secret.get_secret_value())
    return {s for s in out if len(s) > 1}


class Deliverer:
    """Delivers due webhook_delivery rows; every attempt is a row of the log."""

    def __init__(self, engine: Engine, settings: Settings, webhooks: Webhooks, client: httpx.Client | None = None):
        for endpoint in webhooks.endpoints.values():
            _REDACT.secrets |= _secrets_of(endpoint)
        if _REDACT not in logging.getLogger("httpx").filters:
            logging.getLogger("httpx").addFilter(_REDACT)
        self.engine = engine
        self.settings = settings
        self.webhooks = webhooks
        self.client = client or httpx.Client(timeout=settings.alert_webhook_timeout_s, follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt `attempt + 1`."""
        s = self.settings
        return min(s.alert_webhook_backoff_s * 2 ** (attempt - 1), s.alert_webhook_backoff_max_s)

    def _claim(self, session: Session, now: datetime, limit: int) -> list[WebhookDelivery]:
        due = session.exec(
            select(WebhookDelivery)
            .where(WebhookDelivery.state == "pending", col(WebhookDelivery.due_at) <= now)
            .order_by(col(WebhookDelivery.due_at), col(WebhookDelivery.id))
            .limit(limit)
        ).all()
        claimed = []
        for d in due:  # a row another worker took first is left to it
            r = session.exec(  # type: ignore[call-overload]
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == d.id, col(WebhookDelivery.state) == "pending")
                .values(state="sending", attempted_at=now)
            )
            if r.rowcount == 1:
                claimed.append(d.id)
        session.commit()
        return [session.get(WebhookDelivery, i) for i in claimed]  # type: ignore[misc]

    def rescue(self, older_than_s: float | None = None) -> int:
        """Rows left `sending` by a worker that died: due again."""
        limit = older_than_s if older_than_s is not None else 10 * self.settings.alert_webhook_timeout_s + 60
        cutoff = datetime.now(UTC) - timedelta(seconds=limit)
        with Session(self.engine) as session:
            r = session.exec(  # type: ignore[call-overload]
                update(WebhookDelivery)
                .where(col(WebhookDelivery.state) == "sending", col(WebhookDelivery.attempted_at) < cutoff)
                .values(state="pending")
            )
            session.commit()
            return int(r.rowcount)

    def run_once(self, limit: int = 50) -> int:
        """Attempt every due delivery (up to `limit`); the number attempted."""
        now = datetime.now(UTC)
        with Session(self.engine) as session:
            rows = self._claim(session, now, limit)
            for d in rows:
                self._attempt(session, d)
            return len(rows)

    def _attempt(self, session: Session, d: WebhookDelivery) -> None:
        event = session.get(AlertEvent, d.event_id)
        alert = session.get(Alert, event.alert_id) if event else None
        endpoint = self.webhooks.endpoints.get(d.endpoint)
        started = time.monotonic()
        if endpoint is None or event is None or alert is None:
            outcome = Outcome(None, "endpoint no longer configured", retry=False)
        else:
            body = message(
                endpoint.config.format, alert, event, self.settings.alert_webhook_lang, self.settings.trace_base_url
            )
            outcome = post(self.client, endpoint, body)
        d.duration_ms = round((time.monotonic() - started) * 1000, 1)
        d.attempted_at = datetime.now(UTC)
        d.status_code = outcome.status_code
        d.error = outcome.error
        if outcome.delivered:
            d.state = "delivered"
        elif outcome.retry and d.attempt < self.settings.alert_webhook_max_attempts:
            d.state = "retried"
            due = d.attempted_at + timedelta(seconds=self.backoff(d.attempt))
            session.add(WebhookDelivery(event_id=d.event_id, endpoint=d.endpoint, attempt=d.attempt + 1, due_at=due))
        else:
            d.state = "failed"
        session.add(d)
        session.commit()
        level = logging.INFO if outcome.delivered else logging.WARNING
        log.log(
            level,
            "webhook %s event %s attempt %d: %s",
            d.endpoint,
            d.event_id,
            d.attempt,
            d.state if outcome.delivered else f"{d.state} ({outcome.error})",
        )

    def run_forever(self, stop: threading.Event) -> None:
        self.rescue()
        while not stop.is_set():
            try:
                n = self.run_once()
            except Exception:  # a database hiccup: log, keep going
                log.exception("webhook delivery pass failed")
                n = 0
            if not n:
                stop.wait(self.settings.alert_webhook_poll_s)
