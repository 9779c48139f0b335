"""Authentication: the OAuth2 password flow (JWT access tokens) and API keys for machines.

`POST /api/v1/auth/token` (form fields `username`, `password`) returns a bearer token that names
the user, role and scope, valid API_TOKEN_TTL_S. A signed-in user can make API keys for their own
machines (`X-API-Key`); a key acts with its owner's role and area, is shown once, and can be revoked.
Failed sign-ins are logged without the password (and without telling whether the name exists), and
throttled per account and per client address (api/throttle.py): over the limit, a 429 problem with
`Retry-After`, whatever the password.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlmodel import Session, select

from api.deps import PrincipalDep, SessionDep
from api.models import ApiKey, Role, User
from api.problems import Problem, problem_responses
from api.security import DUMMY_HASH, create_token, new_api_key, verify_password

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    role: Role
    scope: str


class MeOut(BaseModel):
    username: str
    role: Role
    scope: str
    via: str


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="What the key is for, e.g. 'weather-station importer'")


class KeyOut(BaseModel):
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown only in this answer, stored only as a hash")


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (in about the same time either way)."""
    user = session.exec(select(User).where(User.username == username)).first()
    ok = verify_password(password, user.password_hash if user else DUMMY_HASH)
    if user is None or not ok or not user.active:
        return None
    return user


def client_address(request: Request) -> str:
    """The client's address as the trusted proxies report it (api.app), else the peer's."""
    return request.client.host if request.client else "unknown"


def sign_in(request: Request, session: Session, username: str, password: str) -> User:
    """The user with this name and password; a 429 problem when sign-ins for the account or from the
    address are throttled, a 401 problem when the credentials are wrong."""
    throttle = request.app.state.sign_in_throttle
    attempt = throttle.attempt(username, client_address(request))
    if attempt.retry_after:
        log.warning("sign-in throttled")
        raise Problem(
            429,
            "sign-in-throttled",
            f"too many failed sign-ins for this account or from your address; retry in {attempt.retry_after} s",
            headers={"Retry-After": str(attempt.retry_after)},
        )
    user = authenticate(session, username, password)
    if user is None:
        log.info("sign-in refused")
        raise Problem(
            401,
            "bad-credentials",
            "wrong user name or password",
            headers={"WWW-Authenticate": 'Bearer realm="village"'},
        )
    throttle.succeeded(attempt)
    return user


def issue_token(request: Request, user: User) -> TokenOut:
    settings = request.app.state.settings
    token = create_token(request.app.state.jwt_secret, user.username, user.role, user.scope, settings.api_token_ttl_s)
    return TokenOut(access_token=token, expires_in=settings.api_token_ttl_s, role=user.role, scope=user.scope)


@router.post("/token", response_model=TokenOut, responses=problem_responses(401, 422, 429))
def token(request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    """OAuth2 password flow: a bearer token for `Authorization: Bearer ...`. Failed sign-ins are
    throttled per account and per address (429 with `Retry-After`)."""
    user = sign_in(request, session, form.username, form.password)
    log.info("sign-in of %s (%s)", user.username, user.role)
    return issue_token(request, user)


@router.get("/me", response_model=MeOut, responses=problem_responses(401))
def me(principal: PrincipalDep) -> MeOut:
    """Who the credentials belong to."""
    return MeOut(username=principal.username, role=principal.role, scope=principal.scope, via=principal.via)


@router.get("/keys", response_model=list[KeyOut], responses=problem_responses(401))
def list_keys(principal: PrincipalDep, session: SessionDep) -> list[KeyOut]:
    rows = session.exec(select(ApiKey).where(ApiKey.user_id == principal.user_id).order_by(ApiKey.id)).all()
    return [KeyOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/keys", response_model=NewKeyOut, status_code=201, responses=problem_responses(401, 403, 422))
def create_key(body: KeyIn, principal: PrincipalDep, session: SessionDep) -> NewKeyOut:
    """A new API key acting as you (your role and area). The key is in this answer only."""
    if principal.via == "key":
        raise Problem(403, "key-cannot-make-keys", "an API key cannot make further keys; sign in as the user")
    key, prefix, digest = new_api_key()
    row = ApiKey(prefix=prefix, key_hash=digest, name=body.name, user_id=principal.user_id)
    session.add(row)
    session.commit()
    session.refresh(row)
    log.info("API key %s made by %s", prefix, principal.username)
    return NewKeyOut(key=key, **KeyOut.model_validate(row, from_attributes=True).model_dump())


@router.delete("/keys/{prefix}", status_code=204, responses=problem_responses(401, 404))
def revoke_key(prefix: str, principal: PrincipalDep, session: SessionDep) -> None:
    row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.user_id == principal.user_id)).first()
    if row is None:
        raise Problem(404, "unknown-key", f"you have no API key {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.add(row)
        session.commit()
        log.info("API key %s revoked", prefix)
