"""Making and changing API users (`village users add`, tests, the demo): checked against the registry."""

from __future__ import annotations

from sqlmodel import Session, select

from api.models import SCOPE_DIGITS, Role, User
from api.security import hash_password
from core.models import County, Township, Village

MIN_PASSWORD = 8


class UserError(ValueError):
    """A user that cannot be made as asked; the message says why."""


def check_scope(session: Session, role: Role, scope: str) -> None:
    digits = SCOPE_DIGITS[role]
    if not (scope.isdigit() and len(scope) == digits):
        raise UserError(f"a {role} covers a {digits}-digit division code, got {scope!r}")
    table = {6: County, 9: Township, 12: Village}[digits]
    if session.get(table, scope) is None:
        raise UserError(f"no {table.__name__.lower()} {scope} in the registry")


def add_user(
    session: Session, username: str, password: str, role: Role | str, scope: str, *, update: bool = False
) -> User:
    """Create a user (or, with `update`, change the password, role and scope of an existing one)."""
    role = Role(role)
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters")
    check_scope(session, role, scope)
    user = session.exec(select(User).where(User.username == username)).first()
    if user is not None and not update:
        raise UserError(f"user {username!r} exists (use --update to change it)")
    if user is None:
        user = User.model_validate(
            {"username": username, "password_hash": hash_password(password), "role": role, "scope": scope}
        )
    else:
        user.password_hash, user.role, user.scope, user.active = hash_password(password), role, scope, True
    session.add(user)
    session.flush()
    return user
