"""Trace lookups for the public endpoints, cached so that a scan is answered in milliseconds.

Verification is event-driven and runs off the threads that answer scans (api/services/verifier.py):

- a lot's result stands until something it depends on changes: a record of the lot or of its
  lineage written, a window of its records anchored, confirmed, finalised or re-queued, a late
  reading digested, a registry row its records embed changed. The database announces each change
  at commit (migration 0014, `NOTIFY ledger_change`), every worker listens, and drops what it
  derived from the lot (its result, the JSON, pages and micro-cached answers) at once;
- the chain can change without a database event (a reorganisation drops an anchor before the
  anchoring worker notices), so what the chain said of a window is re-asked after
  API_VERIFY_CACHE_S (10 s for "unverifiable"); a result is never served past that, counted from
  when the chain was asked, and a lookup in its second half re-checks it in the background.
  Verification is incremental: records rebuilt (from the database and InfluxDB) are shared by
  lots (bags of one paddy lot share its records) and reused until a change of a lot of their
  lineage, or API_VERIFY_REBUILD_S at most (InfluxDB announces nothing); a re-check asks the chain
  only about windows, and a window's answer is shared by every lot in it; when nothing was heard of
  the lot and its records may still be reused, the re-check reads nothing from the database: the
  chain is asked about the lot's windows and, if it says what it said, the result is renewed;
- the work is done by API_VERIFY_THREADS background threads per worker, scanned lots first: a
  page or the trace JSON never waits: with no current result it says "checking", with the lot's
  last result, when any, and its age under `previous`; /verify waits for the check.

When the chain or InfluxDB cannot be reached the badge says "unverifiable" (never a 500, never
"tampered"); an anchor that a reorganisation dropped is "pending", with the reason (ledger.verify).
Without PostgreSQL (no notifications) a result stands for API_VERIFY_CACHE_S, as a timer.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.microcache import code_of
from api.services.cache import TtlCache
from api.services.shared_checks import CLOCK_SLACK_S, SharedChecks
from api.services.trace_view import build_view
from api.services.verifier import EVERYTHING, ChangeListener, Records, VerifierPool, WindowChecks
from core.influx import InfluxError, InfluxV1
from core.settings import Settings
from ledger import codes
from ledger.anchor_models import ON_CHAIN, AnchorWindow
from ledger.chain import Chain, ChainError, ChainUnavailable
from ledger.connect import reading_chain
from ledger.models import Lot, Product
from ledger.records import LOT
from ledger.verify import VERIFIED, Verification, WindowCheck, check_window, verify_lot, window_key

log = logging.getLogger(__name__)

UNVERIFIABLE = "unverifiable"
CHECKING = "checking"  # no result yet: being computed in the background
_MISSING = object()


@dataclass(frozen=True)
class Checked:
    """A verification result (the badge: the records, compressed, apart) and its lifetime, in
    time.monotonic() seconds, and the lot's change token it was computed under."""

    result: dict[str, Any]
    expires: float  # never served after: when the chain was asked (the oldest answer used) plus the TTL
    refresh: float  # a lookup from then on re-checks it in the background
    token: Any = None
    records: bytes = b""  # zlib(orjson(records)), for /verify

    def full(self) -> dict[str, Any]:
        """The result with its records (what /verify answers)."""
        if not self.records:
            return self.result
        return {**self.result, "records": orjson.loads(zlib.decompress(self.records))}

    def seconds_left(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def freshness(self) -> Freshness:
        """How long an answer showing this result may be kept: shared caches until it is due for a re-check
        (or, once a re-check is under way, until it expires), anyone else until it expires."""
        now = time.monotonic()
        keep = (self.refresh if now < self.refresh else self.expires) - now
        return Freshness(max(0.0, self.expires - now), max(0.0, keep))


@dataclass(frozen=True)
class Freshness:
    """Seconds an answer that shows a verification may be kept: `max_age` by anyone (Cache-Control
    max-age), `shared` by this worker's caches and other shared caches (s-maxage)."""

    max_age: float
    shared: float


def badge(v: Verification) -> dict[str, Any]:
    """The summary a page shows: status, counts, and the newest block that anchors a verified record."""
    anchored = [c for c in v.records if c.status == VERIFIED and c.block_number is not None]
    latest = max(anchored, key=lambda c: (c.block_number or 0, c.anchored_at or "")) if anchored else None
    return {
        "status": v.status,
        "counts": v.counts,
        "block": latest.block_number if latest else None,
        "anchored_at": latest.anchored_at if latest else None,
        "tx": latest.tx_hash if latest else None,
        "window": latest.window if latest else None,
        "anchor_state": latest.anchor_state if latest else None,
        "chain_id": v.chain_id,
        "contract": v.contract,
        "checked_at": v.checked_at,
        "reason": v.reason,
        "requeued": v.requeued,
    }


@dataclass(frozen=True)
class Deps:
    """What a lot's last verification read: the lots of its lineage and the windows of its records."""

    lots: frozenset[int]
    windows: frozenset[int]
    unwindowed: bool  # a record outside any window (a new window may take it)
    # for renewal: each window as the ledger held it (detached rows) and what the chain said of it
    chain_checks: tuple[tuple[AnchorWindow, WindowCheck], ...] = ()
    built: float = 0.0  # time.monotonic() of the full verification
    basis: float = 0.0  # time.time() when it began reading (shared with other workers: api/services/shared_checks.py)

    def payload(self) -> dict[str, Any]:
        return {
            "lots": sorted(self.lots),
            "windows": sorted(self.windows),
            "unwindowed": self.unwindowed,
            "checks": [[w.model_dump(mode="json"), asdict(c)] for w, c in self.chain_checks],
        }

    @classmethod
    def of(cls, d: dict[str, Any], basis: float) -> Deps:
        """Deps read back from another worker's `payload()`, begun at `basis` (time.time())."""
        checks = tuple(
            (AnchorWindow.model_validate(w), WindowCheck(**{**c, "reasons": tuple(c["reasons"])}))
            for w, c in d["checks"]
        )
        built = time.monotonic() - max(0.0, time.time() - basis)
        return cls(frozenset(d["lots"]), frozenset(d["windows"]), bool(d["unwindowed"]), checks, built, basis)


def _wall(mono: float) -> float:
    """time.time() of a time.monotonic() instant."""
    return time.time() - (time.monotonic() - mono)


class TraceService:
    def __init__(self, engine: Engine, settings: Settings, share_key: bytes | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.share_key = share_key  # signs verifications shared with the other workers (None: not shared)
        self.shared: SharedChecks | None = None  # set by open() when the database announces changes
        self._absent = TtlCache(2.0, max_entries=20_000)  # codes with no shared row just now
        self._view_basis: dict[str, float] = {}  # code -> time.time() its cached view began reading
        ttl = settings.api_verify_cache_s
        self.json = TtlCache(ttl, max_entries=20_000)  # code -> (JSON bytes, expiry, token)
        self.pages = TtlCache(ttl, max_entries=5_000)  # (code, lang) -> (HTML bytes, expiry, token)
        self.responses = TtlCache(ttl, max_entries=20_000)  # whole answers, replayed by api.microcache
        self.bundles = TtlCache(ttl, max_entries=500)
        self.epcis_docs = TtlCache(ttl, max_entries=500)
        self.qr = TtlCache(10 * 365 * 86_400, max_entries=2_000)  # (code, kind) -> image bytes
        self.known = TtlCache(10 * 365 * 86_400, max_entries=100_000)  # code | (gtin, lot_no) -> code
        self.windows = WindowChecks(ttl)  # what the chain said of each window, shared by lots
        self.pool = VerifierPool(self._verify_into_cache, settings.api_verify_threads)
        self.listener: ChangeListener | None = None
        self._results: dict[str, Checked] = {}  # code -> the lot's last verification (kept as "previous")
        self._deps: dict[str, Deps] = {}
        # rebuilt records are reused until a change is heard; without notifications (not PostgreSQL) no
        # longer than a result stands (API_VERIFY_CACHE_S; 0: never)
        listens = engine.dialect.name == "postgresql"
        reuse_s = settings.api_verify_rebuild_s if listens else min(settings.api_verify_rebuild_s, ttl)
        self.records = Records(reuse_s, settings.api_verify_memo_records)
        # the trace view (no verification in it) lives as long as rebuilt records may be reused
        self.views = TtlCache(reuse_s, max_entries=20_000)  # code -> (view dict, token)
        self.curves = TtlCache(reuse_s, max_entries=5_000)  # growth summary -> its daily curves (build_view)
        self._gens: dict[str, int] = {}  # code -> changes heard of the lot
        self._epoch = 0  # changes heard that concern every lot
        self._events: deque[tuple[int, frozenset[str], float]] = deque(maxlen=10_000)  # (no, keys, time.time())
        self._event_no = 0
        self._state = threading.RLock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._outlived = False  # a check took longer than API_VERIFY_CACHE_S: lookups wait for theirs
        self.renewed = 0  # results renewed without a full verification (tests)
        self.adopted = 0  # results taken from another worker (tests)
        self._chain: Chain | object | None = _MISSING
        self._influx: InfluxV1 | None = None
        self.closed = False

    # ---- services the lookups depend on

    def influx(self) -> InfluxV1:
        if self._influx is None:
            s = self.settings
            self._influx = InfluxV1(
                s.influx_url,
                s.influx_db,
                s.influx_rp,
                s.influx_username,
                s.influx_password.get_secret_value(),
                min(s.influx_timeout_s, 5.0),
                s.influx_token.get_secret_value(),
            )
        return self._influx

    def chain(self) -> Chain | None:
        """The read-only chain connection (None when no TraceAnchor is known); ChainError when unreachable."""
        if self._chain is _MISSING:
            self._chain = reading_chain(self.settings)
        return self._chain  # type: ignore[return-value]

    def open(self) -> None:
        self.closed = False
        self.pool.start()
        if self.engine.dialect.name == "postgresql" and self.listener is None:
            self.listener = ChangeListener(self.engine, self.changed).start()
            if self.share_key is not None:
                self.shared = SharedChecks(self.engine, self.share_key)

    def close(self) -> None:
        self.closed = True  # background verifications stop quietly
        self.pool.stop()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self._influx is not None:
            self._influx.close()
            self._influx = None  # a later use (an app started again) opens a new client

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    # ---- changes

    def token(self, code: str) -> tuple[int, int]:
        """Changes heard of the lot so far: anything derived under another token is out of date."""
        return (self._epoch, self._gens.get(code, 0))

    def token_for_key(self, key: tuple[str, ...]) -> tuple[int, int] | None:
        """The change token of the lot a micro-cache key names (None while the code is not known)."""
        code = code_of(key, self.known)
        return None if code is None else self.token(code)

    def changed(self, keys: list[str]) -> None:
        """Keys of a `ledger_change` notification (migration 0014): drop what was derived from them."""
        keyset = frozenset(k for k in keys if k)
        with self._state:
            self._event_no += 1
            self._events.append((self._event_no, keyset, time.time()))
            if EVERYTHING in keyset:
                self._epoch += 1
                self.records.clear()
                return
            lots = {int(k[1:]) for k in keyset if k[0] == "l" and k[1:].isdigit()}
            windows = {int(k[1:]) for k in keyset if k[0] == "w" and k[1:].isdigit()}
            if lots:
                self.records.drop_lots(lots)
            for code, deps in self._deps.items():
                if deps.lots & lots or deps.windows & windows or (deps.unwindowed and (windows or "u" in keyset)):
                    self._gens[code] = self._gens.get(code, 0) + 1

    @staticmethod
    def _concerns(keys: frozenset[str], deps: Deps) -> bool:
        """Whether a change's keys concern what a verification read."""
        if EVERYTHING in keys or ("u" in keys and deps.unwindowed):
            return True
        for k in keys:
            if not k[1:].isdigit():
                continue
            if k[0] == "l" and int(k[1:]) in deps.lots:
                return True
            if k[0] == "w" and (int(k[1:]) in deps.windows or deps.unwindowed):
                return True
        return False

    def _affected_since(self, event_no: int, deps: Deps) -> bool:
        """Whether a change heard after `event_no` concerns what a verification read."""
        with self._state:
            if self._events and self._events[0][0] > event_no + 1:
                return True  # the log no longer reaches back: assume so
            return any(self._concerns(keys, deps) for n, keys, _ in self._events if n > event_no)

    def _heard_since(self, wall: float, deps: Deps) -> bool:
        """Whether a change that concerns `deps` may have been committed after `wall` (time.time(), maybe
        another worker's clock): heard since then (less the clocks' slack), or before this worker listened."""
        since = self.listener.since if self.listener is not None else None
        wall -= CLOCK_SLACK_S
        if since is None or wall < since:
            return True
        with self._state:
            if len(self._events) == self._events.maxlen and self._events[0][2] >= wall:
                return True  # the log no longer reaches back
            return any(self._concerns(keys, deps) for _, keys, at in self._events if at >= wall)

    def _current(self, cache: TtlCache, key: Any, code: str) -> Any | None:
        """A cached value (its last element the token it was made under) while the lot has not changed."""
        hit = cache.get(key)
        if hit is None or hit[-1] != self.token(code):
            return None
        return hit

    # ---- finding lots

    def code_for(self, text: str) -> str | None:
        """The stored code of a lot named by a typed code; None if no lot has it. TraceCodeError if malformed."""
        code = codes.normalize_code(text)
        if self.known.get(code):
            return code
        with Session(self.engine) as s:
            found = s.exec(select(Lot.code).where(Lot.code == code)).first()
        return self.known.set(code, found) if found else None

    def code_for_gtin_lot(self, gtin: str, lot_no: str) -> str | None:
        """The code of lot `lot_no` of the product with GTIN `gtin` (any GTIN form); DigitalLinkError if malformed."""
        gtin14 = codes.normalize_gtin(gtin)
        codes.check_lot_no(lot_no)
        key = (gtin14, lot_no)
        hit = self.known.get(key)
        if hit:
            return hit
        with Session(self.engine) as s:
            found = s.exec(
                select(Lot.code).join(Product).where(Product.gtin == gtin14, Lot.lot_no == lot_no)  # type: ignore[arg-type]
            ).first()
        return self.known.set(key, found) if found else None

    def learn_codes(self, limit: int = 100_000) -> int:
        """Remember the codes of the newest `limit` lots and their (GTIN, lot number), so that a scan of one
        finds it without a query (what is not remembered is looked up as before). Returns how many."""
        try:
            with Session(self.engine) as s:
                rows = s.exec(
                    select(Lot.code, Product.gtin, Lot.lot_no)
                    .join(Product, col(Product.id) == Lot.product_id, isouter=True)
                    .order_by(col(Lot.id).desc())
                    .limit(min(limit, self.known.max_entries // 2))
                ).all()
        except Exception as e:  # scans look their codes up one by one instead
            log.warning("lot codes not learned at start-up: %s", e)
            return 0
        for code, gtin, lot_no in reversed(rows):  # the newest last: the last to be evicted
            self.known.set(code, code)
            if gtin:
                self.known.set((gtin, lot_no), code)
        return len(rows)

    def _lot(self, session: Session, code: str) -> Lot:
        lot = session.exec(select(Lot).where(Lot.code == code)).first()
        assert lot is not None, f"lot {code} vanished"
        return lot

    # ---- the view

    def view(self, code: str) -> dict[str, Any]:
        hit = self._current(self.views, code, code)
        if hit is not None:
            return hit[0]  # type: ignore[no-any-return]
        with self._lock(f"view:{code}"):
            token, basis = self.token(code), time.time()
            hit = self._current(self.views, code, code)
            if hit is not None:
                return hit[0]  # type: ignore[no-any-return]
            with Session(self.engine) as s:
                lot = self._lot(s, code)
                try:
                    influx: InfluxV1 | None = self.influx()
                except InfluxError:
                    influx = None
                view = build_view(
                    s, lot, self.settings.trace_base_url, influx, self.settings.county_timezone, self.curves
                )
            self.views.set(code, (view, basis, token))
            return view

    def view_json(self, code: str) -> tuple[bytes, Freshness | None]:
        """The trace JSON with the verification badge, and how long it may be kept (None: not at all, the
        badge says "checking")."""
        hit = self._cached(self.json, code, code)
        if hit is not None:
            return hit
        checked = self.checked(code, wait=False)
        body = orjson.dumps({**self.view(code), "verification": checked.result})
        return body, self._keep(self.json, code, body, checked)

    def page(
        self, code: str, lang: str, render: Callable[[dict[str, Any], dict[str, Any]], bytes]
    ) -> tuple[bytes, Freshness | None]:
        """The rendered page, and how long it may be kept, as for `view_json`."""
        hit = self._cached(self.pages, (code, lang), code)
        if hit is not None:
            return hit
        checked = self.checked(code, wait=False)
        body = render(self.view(code), checked.result)
        return body, self._keep(self.pages, (code, lang), body, checked)

    def _keep(self, cache: TtlCache, key: Any, body: bytes, checked: Checked) -> Freshness | None:
        """Cache `body` (with the expiry of the verification it shows) as a shared cache may keep it."""
        if checked.result["status"] == CHECKING:
            return None
        freshness = checked.freshness()
        if checked.token is not None:
            cache.set(key, (body, checked.expires, checked.token), ttl=freshness.shared)
        return freshness

    def _cached(self, cache: TtlCache, key: Any, code: str) -> tuple[bytes, Freshness] | None:
        hit = cache.entry(key)
        if hit is None:
            return None
        (body, expires, token), shared = hit
        if token != self.token(code):
            return None
        return body, Freshness(max(0.0, expires - time.monotonic()), shared)

    # ---- verification

    def _compute_verification(self, code: str, answers: Any, memo: Any) -> tuple[dict[str, Any], Deps | None]:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with Session(self.engine) as s:
                lot = self._lot(s, code)
                chain = self.chain()
                if (
                    chain is None
                    and s.exec(select(AnchorWindow.seq).where(col(AnchorWindow.state).in_(ON_CHAIN))).first()
                ):
                    return {
                        "status": UNVERIFIABLE,
                        "reason": "no TraceAnchor contract is configured",
                        "checked_at": now,
                    }, None
                v = verify_lot(s, lot, chain, self.influx(), self.settings, answers, memo)
                windows = {c.window for c in v.records if c.window}
                rows = (
                    list(s.exec(select(AnchorWindow).where(col(AnchorWindow.window_id).in_(windows))).all())
                    if windows
                    else []
                )
                s.expunge_all()  # the window rows are kept (detached) for renewal
                checks = tuple((w, answers.local[window_key(w)]) for w in rows if window_key(w) in answers.local)
                deps = Deps(
                    frozenset(c.record_id for c in v.records if c.kind == LOT and c.record_id is not None),
                    frozenset(w.seq for w in rows if w.seq is not None),
                    any(c.window is None for c in v.records),
                    checks if len(checks) == len(rows) else (),
                    time.monotonic(),
                )
                return {**badge(v), "records": v.to_dict()["records"]}, deps
        except ChainError as e:
            self._chain = _MISSING  # reconnect next time (the contract may have been deployed again)
            log.warning("verification of %s: chain unavailable: %s", code, e)
            reason = (
                "the blockchain node cannot be reached"
                if isinstance(e, ChainUnavailable)
                else "the blockchain node does not hold the county's TraceAnchor contract (was the chain reset?)"
            )
            return {"status": UNVERIFIABLE, "reason": reason, "checked_at": now}, None
        except InfluxError as e:
            log.warning("verification of %s: InfluxDB unavailable: %s", code, e)
            return {
                "status": UNVERIFIABLE,
                "reason": "the monitoring database cannot be reached",
                "checked_at": now,
            }, None
        except Exception:  # the page must still show; the reason is logged
            if not self.closed:
                log.exception("verification of %s failed", code)
            return {"status": UNVERIFIABLE, "reason": "verification failed unexpectedly", "checked_at": now}, None

    def _ttl_for(self, result: dict[str, Any]) -> float:
        # an unverifiable answer is retried sooner than a real one
        ttl = self.settings.api_verify_cache_s
        return min(ttl, 10.0) if result["status"] == UNVERIFIABLE else ttl

    def _current_result(self, code: str) -> Checked | None:
        hit = self._results.get(code)
        if hit is None or hit.token != self.token(code) or time.monotonic() >= hit.expires:
            return None
        return hit

    def _verify_into_cache(self, code: str) -> Checked:
        with self._lock(f"verify:{code}"):  # one computation per lot at a time; others wait for it
            for _ in range(3):  # a change heard during the check: check again
                hit = self._current_result(code) or self._adopted_or_renewed(code)
                if hit is not None and time.monotonic() < hit.refresh:
                    return hit
                token, event_no, basis = self.token(code), self._event_no, time.time()
                renewed = self._renew(code, token)
                if renewed is not None:
                    return renewed
                answers = self.windows.view()
                memo = self.records.view()
                result, deps = self._compute_verification(code, answers, memo)  # type: ignore[arg-type]
                if deps is not None:
                    deps = replace(deps, basis=basis)
                ttl = self._ttl_for(result)
                asked = answers.oldest  # the result is as old as the oldest chain answer it used
                took = time.monotonic() - answers.started
                if (took >= ttl) != self._outlived and result["status"] != UNVERIFIABLE:
                    self._outlived = took >= ttl
                    if self._outlived:
                        log.warning("a verification took %.1f s, more than API_VERIFY_CACHE_S: lookups wait", took)
                records = result.pop("records", None)
                stale = deps is not None and (token != self.token(code) or self._affected_since(event_no, deps))
                checked = Checked(
                    result,
                    asked + ttl,
                    asked + max(ttl / 2, ttl - 2 * took - 1),
                    None if stale or self.settings.api_verify_cache_s <= 0 else token,
                    zlib.compress(orjson.dumps(records), 1) if records is not None else b"",
                )
                with self._state:
                    self._results[code] = checked
                    if deps is not None:
                        self._deps[code] = deps
                if not stale:
                    if deps is not None:
                        memo.commit(deps.lots)  # the records rebuilt, shared from now on
                        self._share(code, checked, deps)
                    return checked
            return checked

    def _share(self, code: str, checked: Checked, deps: Deps) -> None:
        """Store a verification for the other workers (api/services/shared_checks.py), with the trace
        view when this worker holds one that nothing heard since has changed."""
        if self.shared is None or checked.token is None or not deps.chain_checks:
            return
        if checked.result["status"] in (UNVERIFIABLE, CHECKING):
            return
        view, view_basis = None, None
        hit = self._current(self.views, code, code)
        if hit is None:  # built here, in the background, so that no worker builds it on a scan
            try:
                self.view(code)
            except Exception as e:
                log.warning("trace view of %s not built for sharing: %s", code, e)
            hit = self._current(self.views, code, code)
        if hit is not None and not self._heard_since(hit[1], deps):
            view, view_basis = hit[0], hit[1]
        asked = _wall(checked.expires - self._ttl_for(checked.result))
        payload = {"result": checked.result, "deps": deps.payload(), "view": view, "view_basis": view_basis}
        try:
            self.shared.store(code, deps.basis, asked, payload, checked.records)
            self._absent.pop(code)
        except Exception as e:  # a cache: the verification stands without it
            log.warning("verification of %s not shared with the other workers: %s", code, e)

    def _adopt(self, code: str) -> Checked | None:
        """Another worker's verification of the lot (api/services/shared_checks.py), made this worker's
        last result when it is signed and nothing it read has changed since (it may have expired: then
        `_renew` asks the chain again); None if there is none such."""
        if self.shared is None or self._absent.get(code):
            return None
        try:
            row = self.shared.load(code)
        except Exception as e:
            log.warning("shared verification of %s unreadable: %s", code, e)
            row = None
        if row is None:
            self._absent.set(code, True)
            return None
        try:
            deps = Deps.of(row.payload["deps"], row.basis)
            result = row.payload["result"]
        except (KeyError, TypeError, ValueError) as e:
            log.warning("shared verification of %s malformed: %s", code, e)
            return None
        ttl = self._ttl_for(result)
        asked = time.monotonic() - max(0.0, time.time() - row.asked)
        with self._state:
            if self._heard_since(row.basis, deps):
                self._absent.set(code, True)
                return None
            token = self.token(code)
            checked = Checked(result, asked + ttl, asked + ttl / 2, token, row.records)
            self._results[code] = checked
            self._deps[code] = deps
            if checked.expires <= time.monotonic():  # held here now, to be renewed: not read again soon
                self._absent.set(code, True)
            view, view_basis = row.payload.get("view"), row.payload.get("view_basis")
            fresh_view = view is not None and view_basis is not None and not self._heard_since(view_basis, deps)
            if fresh_view and self._current(self.views, code, code) is None:
                self.views.set(code, (view, view_basis, token))
        self.adopted += 1
        return checked

    def _renew(self, code: str, token: tuple[int, int], *, ask: bool = True) -> Checked | None:
        """The lot's last result renewed without reading the database, when nothing it read can have
        changed: no change of its lineage or windows heard since (the token, PostgreSQL's notifications),
        its rebuilt records still reusable (API_VERIFY_REBUILD_S: InfluxDB announces nothing), and the
        chain saying of each of its windows what it said then (asked again, once per window for every
        lot; with `ask` False only answers at hand are used: no I/O at all). Otherwise None: a full
        verification."""
        last, deps = self._results.get(code), self._deps.get(code)
        if (
            self.listener is None
            or last is None
            or deps is None
            or not deps.chain_checks
            or last.token != token
            or last.result.get("status") in (UNVERIFIABLE, CHECKING)
            or time.monotonic() - deps.built >= self.records.max_age
        ):
            return None
        answers = self.windows.view()
        try:
            chain = self.chain()
            for window, before in deps.chain_checks:
                key = window_key(window)
                now = answers.get(key)
                if now is None:
                    if not ask:
                        return None
                    now = answers[key] = check_window(chain, window)
                if now != before:
                    return None
        except ChainError:
            return None  # the full verification says why
        ttl = self._ttl_for(last.result)
        took = time.monotonic() - answers.started
        result = {**last.result, "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}
        refresh = answers.oldest + max(ttl / 2, ttl - 2 * took - 1)
        checked = Checked(result, answers.oldest + ttl, refresh, token, last.records)
        with self._state:
            if token != self.token(code):
                return None  # a change heard meanwhile
            self._results[code] = checked
        self.renewed += 1
        if ask:  # a renewal from the background: the other workers may take it
            self._share(code, checked, deps)
        return checked

    def checked(self, code: str, *, wait: bool = True) -> Checked:
        """The lot's verification while it is current (no change heard, the chain asked less than
        API_VERIFY_CACHE_S ago); from half-way through, a lookup re-checks it in the background. None
        current: with `wait`, check now; without, queue the check and answer "checking", with the lot's
        last result and its age under `previous` (pages and the trace JSON do not make a consumer wait)."""
        hit = self._current_result(code) or self._adopted_or_renewed(code)
        if hit is not None:
            if time.monotonic() >= hit.refresh and not self.closed:
                self.pool.submit(code)
            return hit
        if wait or self.settings.api_verify_cache_s <= 0 or self.closed or self._outlived:
            return self._verify_into_cache(code)  # (else born expired, never shown)
        self.pool.submit(code)
        now = time.monotonic()
        answer: dict[str, Any] = {"status": CHECKING, "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}
        last = self._results.get(code)
        if last is not None:
            answer["previous"] = {
                "status": last.result["status"],
                "checked_at": last.result.get("checked_at"),
                "age_s": round(max(0.0, now - (last.expires - self._ttl_for(last.result))), 1),
            }
        return Checked(answer, now, now)

    def _adopted_or_renewed(self, code: str) -> Checked | None:
        """With no current result: another worker's, if shared and current, or the last one renewed
        from the chain answers at hand (no I/O but one row read); None otherwise."""
        if self.closed:
            return None
        last = self._results.get(code)
        if last is None or last.token != self.token(code) or time.monotonic() >= last.expires:
            self._adopt(code)
            hit = self._current_result(code)
            if hit is not None:
                return hit
        if self.listener is None:
            return None
        return self._renew(code, self.token(code), ask=False)

    def verification(self, code: str, *, wait: bool = True) -> dict[str, Any]:
        """The lot's verification result (`checked`), with its records."""
        return self.checked(code, wait=wait).full()

    def warm(self, codes: list[str]) -> None:
        """Verify lots in the background (at start-up, so the first scans find a badge); scans go first."""
        for code in codes:
            self.pool.submit(code, urgent=False)

    # ---- proof bundle, EPCIS, QR

    def bundle(self, code: str) -> dict[str, Any]:
        """The lot's proof bundle; ChainError / InfluxError propagate (the caller answers 503)."""
        from ledger.bundle import lot_bundle

        hit = self.bundles.get(code)
        if hit is not None:
            return hit
        with Session(self.engine) as s:
            lot = self._lot(s, code)
            try:
                chain = self.chain()
            except ChainError:
                self._chain = _MISSING
                chain = None  # the bundle names chain and contract from the ledger's own records
            return self.bundles.set(code, lot_bundle(s, lot, chain, self.influx(), self.settings))

    def epcis(self, code: str) -> dict[str, Any]:
        """An EPCIS 2.0 document of the events of the lot and its ancestors."""
        from ledger.epcis import to_document
        from ledger.records import EVENT, epcis_event, records_of_lot

        hit = self.epcis_docs.get(code)
        if hit is not None:
            return hit
        with Session(self.engine) as s:
            lot = self._lot(s, code)
            assert lot.id is not None
            events = [epcis_event(s, r.id) for r in records_of_lot(s, lot.id) if r.kind == EVENT]
        doc = to_document(events, created=datetime.now(UTC).replace(microsecond=0))
        return self.epcis_docs.set(code, doc)

    def qr_image(self, code: str, kind: str) -> bytes:
        hit = self.qr.get((code, kind))
        if hit is not None:
            return hit
        with Session(self.engine) as s:
            uri = codes.lot_uri(self.settings.trace_base_url, self._lot(s, code))
        image = codes.qr_svg(uri) if kind == "svg" else codes.qr_png(uri)
        return self.qr.set((code, kind), image)

    def forget(self) -> None:
        """Drop the cached views of this worker (after a change through the admin API: a new event of
        a paddy lot belongs to the trace of every bag made from it). Other workers hear of the change
        from the database (`changed`)."""
        for cache in (
            self.views,
            self.json,
            self.pages,
            self.responses,
            self.bundles,
            self.epcis_docs,
        ):
            cache.clear()
        self.changed([EVERYTHING])
