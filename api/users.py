"""Making and changing API users (`village users add`, tests, the demo): checked against the registry."""

from __future__ import annotations

from sqlmodel import Session, col, select

from api.models import ABOVE_COUNTY, SCOPE_DIGITS, Role, User
from api.security import hash_password
from core.models import County, Township, Village

MIN_PASSWORD = 8


class UserError(ValueError):
    """A user that cannot be made as asked; the message says why."""


def check_scope(session: Session, role: Role, scope: str) -> None:
    digits = SCOPE_DIGITS[role]
    if not (scope.isdigit() and len(scope) == digits):
        raise UserError(f"a {role} covers a {digits}-digit division code, got {scope!r}")
    if role in ABOVE_COUNTY:
        _check_division(session, role, scope)
        return
    table = {6: County, 9: Township, 12: Village}[digits]
    if session.get(table, scope) is None:
        raise UserError(f"no {table.__name__.lower()} {scope} in the registry")


def _check_division(session: Session, role: Role, scope: str) -> None:
    """A city officer's scope is a prefecture code (211100), a province officer's a province code (210000):
    known to the bundled division list (analytics/data/divisions.yaml) or with a county of the registry under it."""
    from analytics.statistics_io import load_divisions
    from core.scope import division_prefix

    level = ABOVE_COUNTY[role]
    shaped = scope.endswith("0000") if level == "province" else scope.endswith("00") and not scope.endswith("0000")
    if not shaped:
        example = "210000" if level == "province" else "211100"
        raise UserError(f"a {role} covers a {level} code such as {example}, got {scope!r}")
    known = load_divisions().get(scope)
    under = session.exec(select(County.code).where(col(County.code).startswith(division_prefix(scope)))).first()
    if (known is None or known.level != level) and under is None:
        raise UserError(f"no {level} {scope} in the division list and no county of the registry under it")


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
