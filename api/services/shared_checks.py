"""Lot verifications shared by the API's workers through the database (table trace_check).

Each uvicorn worker verifies lots in its own background threads (api/services/tracing.py); without
sharing, a lot scanned on both workers is rebuilt and verified twice, and a scan that reaches the
worker that has not checked it yet says "checking". So a worker that finishes a verification stores
it here (the badge, its records, what it read, the trace view) and another worker, missing the lot,
adopts the stored one instead of starting its own, when:

- its MAC holds: rows are signed with a key derived from the API's token-signing secret
  (API_JWT_SECRET), which only the API's processes hold, so whoever can write the table (another
  service's role, a hand-made SQL update) cannot plant a "verified" badge (test:
  test_forged_shared_verification_is_refused);
- nothing it read has changed since it began reading (`basis`): the adopting worker compares what
  it has heard of the ledger (PostgreSQL's `ledger_change` notifications, heard by every worker) since
  `basis - CLOCK_SLACK_S` with the lots and windows the verification read; a row older than the
  worker's own listening is not current (it may predate a change the worker did not hear);
- the chain was asked about its windows less than API_VERIFY_CACHE_S ago (`asked`), as for a result
  a worker computed itself; an older row is still adopted as the lot's last result, which the
  worker then renews by asking the chain about its windows (api/services/tracing.py `_renew`).

A cache, not a record: rows are replaced, deleted by nobody but the API, and a missing, unreadable
or mis-signed row just means the worker verifies the lot itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlmodel import Session, select

from api.models import TraceCheck

log = logging.getLogger(__name__)

# Workers on different hosts compare their clocks (`basis` against when they heard a change): the
# slack they may differ by.
CLOCK_SLACK_S = 2.0
_CONTEXT = b"village trace_check v1"


def mac_key(secret: str) -> bytes:
    """The key rows are signed with: derived from the token-signing secret, used for nothing else."""
    return hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()


@dataclass(frozen=True)
class Stored:
    """A row whose MAC held: `payload` decoded (result, deps, view, view_basis), records still compressed."""

    code: str
    basis: float
    asked: float
    payload: dict[str, Any]
    records: bytes


class SharedChecks:
    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self.key = key
        self.refused = 0  # rows whose MAC did not hold (tests; logged)

    def _mac(self, code: str, basis: float, asked: float, payload: bytes, records: bytes) -> str:
        m = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in (code.encode(), struct.pack("!dd", basis, asked), payload, records):
            m.update(struct.pack("!Q", len(part)))
            m.update(part)
        return m.hexdigest()

    def store(self, code: str, basis: float, asked: float, payload: dict[str, Any], records: bytes) -> None:
        body = zlib.compress(orjson.dumps(payload), 1)
        row = {
            "code": code,
            "basis": basis,
            "asked": asked,
            "payload": body,
            "records": records,
            "mac": self._mac(code, basis, asked, body, records),
        }
        stmt = pg_insert(TraceCheck).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=["code"], set_={k: v for k, v in row.items() if k != "code"})
        with Session(self.engine) as s:
            s.execute(stmt)
            s.commit()

    def load(self, code: str) -> Stored | None:
        with Session(self.engine) as s:
            row = s.exec(select(TraceCheck).where(TraceCheck.code == code)).first()
        if row is None:
            return None
        expected = self._mac(row.code, row.basis, row.asked, row.payload, row.records)
        if not hmac.compare_digest(expected, row.mac):
            self.refused += 1
            log.warning("trace_check row of %s is not signed by this API: ignored", code)
            return None
        try:
            payload = orjson.loads(zlib.decompress(row.payload))
        except (zlib.error, orjson.JSONDecodeError):
            return None
        return Stored(row.code, row.basis, row.asked, payload, row.records)
