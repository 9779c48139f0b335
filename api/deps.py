"""Dependencies of the routes: the database session, the caller and the area their role covers.

A caller authenticates with a bearer token (OAuth2 password flow, `/api/v1/auth/token`), an API key
(`X-API-Key`, for machines), or the dashboard's session cookie (only for GET: a cookie is sent by
the browser on its own, so it never authorises a change; this is the CSRF defence). The one
exception is the dashboard's own buttons (acknowledging and resolving alerts): a change with the
cookie is accepted there only with an `X-CSRF-Token` header equal to the token the page carries
(an HMAC of the session under the signing secret), which another site can neither read nor forge.
No credentials is a 401; a role or area that does not cover the request is a 403.

Areas follow the division tiers: a province or city officer covers every county under their
division code (prefix 21 or 2111), a county administrator and an analyst their county, a township
officer their township, a village operator their village. Analysts and the officers above the
county only read. Personal
data (farm contact name and phone) is for the county administrator and the farm's own village
operator.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, OAuth2PasswordBearer
from sqlmodel import Session, select

from api.models import READ_ONLY, ApiKey, Role, User
from api.problems import Problem
from api.security import TokenError, api_key_prefix, decode_token, hash_api_key
from core.models import Township, Village
from core.scope import READ_ONLY_ROLES, Area, Scope, area_of, locate
from core.settings import Settings

SESSION_COOKIE = "village_session"
TOKEN_URL = "/api/v1/auth/token"

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (machines)")
cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="Dashboard session (GET only)")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: Role
    scope: str
    via: str  # token | key | cookie


@dataclass
class Actor:
    """The caller and their area, with the checks every registry and dashboard route applies."""

    principal: Principal
    area: Area

    @property
    def role(self) -> Role:
        return self.principal.role

    @property
    def scope(self) -> Scope:
        """The actor as the importers see it: every reference a write makes is checked against it."""
        return Scope(self.area, self.role.value, f"{self.role.value} of {self.principal.scope}")

    def can_read_village(self, village_code: str | None) -> bool:
        return village_code is not None and village_code in self.area.villages

    def require_read_row(self, session: Session, entity: str, row: Any, what: str) -> None:
        """403 unless `row` (of an entity declared in core/scope.py) lies in the actor's area."""
        if not any(self.area.covers(code) for code in locate(session, entity, row)):
            raise Problem(
                403,
                "outside-scope",
                f"{what} is outside the area of your role ({self.role} of {self.principal.scope})",
            )

    def sees_personal_data(self, village_code: str | None) -> bool:
        if self.role == Role.county_admin:
            return self.can_read_village(village_code)
        return self.role == Role.village_operator and village_code == self.principal.scope

    def require_read(self, village_code: str | None, what: str) -> None:
        if not self.can_read_village(village_code):
            raise Problem(
                403,
                "outside-scope",
                f"{what} is outside the area of your role ({self.role} of {self.principal.scope})",
            )

    def require_write(self, village_code: str | None, what: str) -> None:
        if self.role in READ_ONLY:
            raise Problem(403, "read-only-role", READ_ONLY_ROLES[self.role.value])
        self.require_read(village_code, what)

    def require_county_admin(self, county_code: str | None, what: str) -> None:
        if self.role != Role.county_admin:
            raise Problem(403, "forbidden-role", f"only a county administrator may change {what}")
        if county_code not in self.area.counties:
            raise Problem(403, "outside-scope", f"{what} is outside your county {self.principal.scope}")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="village"'})


def _principal_from_token(request: Request, session: Session, token: str, via: str) -> Principal:
    try:
        claims = decode_token(request.app.state.jwt_secret, token)
    except TokenError as e:
        raise _unauthorized(str(e)) from None
    user = session.exec(select(User).where(User.username == claims["sub"])).first()
    if user is None or not user.active or user.id is None:
        raise _unauthorized("the account of this token no longer exists or is disabled")
    return Principal(user.id, user.username, Role(user.role), user.scope, via)


def _principal_from_key(session: Session, key: str) -> Principal:
    prefix = api_key_prefix(key)
    row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first() if prefix else None
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, hash_api_key(key)):
        raise _unauthorized("unknown or revoked API key")
    user = session.get(User, row.user_id)
    if user is None or not user.active or user.id is None:
        raise _unauthorized("the account of this API key is disabled")
    now = datetime.now(UTC)
    last = row.last_used_at
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if last is None or now - last > timedelta(minutes=5):  # not a write on every request
        row.last_used_at = now
        session.add(row)
        session.commit()
    return Principal(user.id, user.username, Role(user.role), user.scope, "key")


def current_principal(
    request: Request,
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
    cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> Principal:
    if token:
        return _principal_from_token(request, session, token, "token")
    if api_key:
        return _principal_from_key(session, api_key)
    if cookie and request.method in ("GET", "HEAD"):
        return _principal_from_token(request, session, cookie, "cookie")
    if cookie:
        raise _unauthorized("the dashboard session cookie only authorises reading; send a bearer token or an API key")
    raise _unauthorized("sign in: a bearer token from /api/v1/auth/token, or an X-API-Key header")


PrincipalDep = Annotated[Principal, Depends(current_principal)]
CSRF_HEADER = "X-CSRF-Token"


def csrf_token(secret: str, session_cookie: str) -> str:
    """The token a dashboard page carries for its own session: HMAC-SHA256 of the cookie."""
    return hmac.new(secret.encode(), b"csrf:" + session_cookie.encode(), "sha256").hexdigest()


def current_principal_or_page(
    request: Request,
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
    cookie: Annotated[str | None, Depends(cookie_scheme)],
    csrf: Annotated[str | None, Header(alias=CSRF_HEADER, max_length=128, description="The page's token")] = None,
) -> Principal:
    """As current_principal, and also the dashboard's session cookie with the page's CSRF token."""
    if not token and not api_key and cookie and csrf is not None:
        if not hmac.compare_digest(csrf, csrf_token(request.app.state.jwt_secret, cookie)):
            raise Problem(403, "csrf", "the X-CSRF-Token does not belong to this session: reload the page")
        return _principal_from_token(request, session, cookie, "cookie")
    return current_principal(request, session, token, api_key, cookie)


def current_actor(principal: PrincipalDep, session: SessionDep) -> Actor:
    return Actor(principal, area_of(session, principal.role.value, principal.scope))


ActorDep = Annotated[Actor, Depends(current_actor)]


def page_actor(principal: Annotated[Principal, Depends(current_principal_or_page)], session: SessionDep) -> Actor:
    return Actor(principal, area_of(session, principal.role.value, principal.scope))


PageActorDep = Annotated[Actor, Depends(page_actor)]


def page_actor_from_cookie(request: Request, session: Session) -> Actor | None:
    """The caller of a page (GET) from the session cookie, or None (the page then asks to sign in)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        principal = current_principal(request, session, None, None, token)
    except Problem:
        return None
    return Actor(principal, area_of(session, principal.role.value, principal.scope))


def county_of_village(session: Session, village_code: str) -> str | None:
    v = session.get(Village, village_code)
    t = session.get(Township, v.township_code) if v else None
    return t.county_code if t else None
