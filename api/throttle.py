"""Sign-in throttling: failed sign-ins counted per account and per client address, in the registry
database so that every uvicorn worker (and every machine of a deployment) shares the counts.

Each key (`account:` + user name, `address:` + client IP, both stored as SHA-256) counts failures in a
fixed window of API_LOGIN_WINDOW_S that starts at its first failure. An attempt is counted *before*
the password is checked, in one atomic UPDATE, so that a burst of parallel guesses cannot all pass
the check before any failure is recorded; a successful sign-in clears its account's count and gives
the address its attempt back. Once a key is over its limit (API_LOGIN_MAX_FAILURES per account,
API_LOGIN_MAX_FAILURES_PER_ADDRESS per address) every attempt, the right password included, is a 429
until its window ends. Unknown user names are counted like real ones, so the answer never tells
whether an account exists. The price is that a guesser can lock an account out for one window.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from sqlalchemy import Engine, case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.models import LoginThrottle

TABLE = LoginThrottle.__table__  # type: ignore[attr-defined]


def _key(kind: str, value: str) -> str:
    return f"{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


@dataclass(frozen=True)
class Attempt:
    """A counted sign-in attempt: `retry_after` seconds to wait (0: go ahead and check the password)."""

    account_key: str
    address_key: str
    retry_after: int


class SignInThrottle:
    def __init__(self, engine: Engine, max_per_account: int, max_per_address: int, window_s: float) -> None:
        self.engine = engine
        self.limits = {"account": max_per_account, "address": max_per_address}
        self.window_s = float(window_s)

    def attempt(self, username: str, address: str, now: float | None = None) -> Attempt:
        """Count one attempt for the account and the address; say how long to wait if either is over."""
        now = time.time() if now is None else now
        keys = {"account": _key("account", username), "address": _key("address", address)}
        for tries in range(3):
            try:
                with Session(self.engine) as session:
                    for key in keys.values():
                        self._count(session, key, now)
                    rows = {
                        r.key: (r.failures, r.window_start)
                        for r in session.execute(select(TABLE).where(TABLE.c.key.in_(list(keys.values()))))
                    }
                    session.commit()
                break
            except IntegrityError:  # another worker inserted the same key first: count again
                if tries == 2:
                    raise
        wait = 0.0
        for kind, key in keys.items():
            failures, start = rows[key]
            if failures > self.limits[kind]:
                wait = max(wait, start + self.window_s - now)
        return Attempt(keys["account"], keys["address"], math.ceil(wait) if wait > 0 else 0)

    def succeeded(self, attempt: Attempt) -> None:
        """A right password: the account starts afresh, the address gets its attempt back."""
        with Session(self.engine) as session:
            session.execute(delete(TABLE).where(TABLE.c.key == attempt.account_key))
            session.execute(
                update(TABLE)
                .where(TABLE.c.key == attempt.address_key, TABLE.c.failures > 0)
                .values(failures=TABLE.c.failures - 1)
            )
            session.commit()

    def _count(self, session: Session, key: str, now: float) -> None:
        expired = TABLE.c.window_start < now - self.window_s
        result = session.execute(
            update(TABLE)
            .where(TABLE.c.key == key)
            .values(
                failures=case((expired, 1), else_=TABLE.c.failures + 1),
                window_start=case((expired, now), else_=TABLE.c.window_start),
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            # a new key: drop the keys whose window is over first, so the table stays small
            session.execute(delete(TABLE).where(TABLE.c.window_start < now - self.window_s))
            session.execute(insert(TABLE).values(key=key, failures=1, window_start=now))
