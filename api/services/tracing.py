"""Trace lookups for the public endpoints, cached so that a scan is answered in milliseconds.

The promise: no answer says more about a lot's verification than API_VERIFY_CACHE_S old (10 s at
most for "unverifiable"), counted from the start of the check that produced it. So:

- a verification result carries its expiry (`Checked`) and is never served after it; a lookup
  in its second half (from `refresh`) recomputes it in one background thread, so a scanned lot
  always has a fresh one; a lot with none fresh answers "checking" (pages and the trace JSON do
  not make a consumer wait) or, for /verify, waits for the check;
- what embeds a result (the trace JSON, each rendered page, and the whole answers replayed by
  api/microcache.py) is kept no longer than that result: `Freshness` says how long, to browsers
  (`Cache-Control: max-age`, until it expires) and to shared caches such as the micro-cache
  (`s-maxage`, until it is due for a re-check, so that a lookup then reaches the service and
  starts one); the micro-cache adds `Age` when it replays;
- the lot's view (no verification in it) is read once per API_VERIFY_CACHE_S, QR images are
  kept as long as the process lives (a code never changes).

When the chain or InfluxDB cannot be reached the badge says "unverifiable" (never a 500, never
"tampered"); an anchor that a reorganisation dropped is "pending", with the reason (ledger.verify).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api.services.cache import TtlCache
from api.services.trace_view import build_view
from core.influx import InfluxError, InfluxV1
from core.settings import Settings
from ledger import codes
from ledger.anchor_models import ON_CHAIN, AnchorWindow
from ledger.chain import Chain, ChainError, ChainUnavailable
from ledger.connect import reading_chain
from ledger.models import Lot, Product
from ledger.verify import VERIFIED, Verification, verify_lot

log = logging.getLogger(__name__)

UNVERIFIABLE = "unverifiable"
CHECKING = "checking"  # no result yet: being computed in the background
_MISSING = object()


@dataclass(frozen=True)
class Checked:
    """A verification result and its lifetime, in time.monotonic() seconds."""

    result: dict[str, Any]
    expires: float  # never served after: the start of its computation plus its TTL
    refresh: float  # a lookup from then on recomputes it in the background

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


class TraceService:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        ttl = settings.api_verify_cache_s
        self.views = TtlCache(ttl)  # code -> view dict
        self.json = TtlCache(ttl)  # code -> JSON bytes
        self.pages = TtlCache(ttl)  # (code, lang) -> HTML bytes
        self.responses = TtlCache(ttl, max_entries=20_000)  # whole answers, replayed by api.microcache
        self.verifications = TtlCache(ttl, max_entries=2_000)  # code -> verification dict
        self.bundles = TtlCache(ttl, max_entries=500)
        self.epcis_docs = TtlCache(ttl, max_entries=500)
        self.qr = TtlCache(10 * 365 * 86_400, max_entries=2_000)  # (code, kind) -> image bytes
        self.known = TtlCache(10 * 365 * 86_400, max_entries=100_000)  # code | (gtin, lot_no) -> code
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._refreshing: set[str] = set()
        self._outlived = False  # a check took longer than API_VERIFY_CACHE_S: lookups wait for theirs
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

    def close(self) -> None:
        self.closed = True  # background verifications stop quietly
        if self._influx is not None:
            self._influx.close()
            self._influx = None  # a later use (an app started again) opens a new client

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

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

    def _lot(self, session: Session, code: str) -> Lot:
        lot = session.exec(select(Lot).where(Lot.code == code)).first()
        assert lot is not None, f"lot {code} vanished"
        return lot

    # ---- the view

    def view(self, code: str) -> dict[str, Any]:
        hit = self.views.get(code)
        if hit is not None:
            return hit
        with self._lock(f"view:{code}"):
            hit = self.views.get(code)
            if hit is not None:
                return hit
            with Session(self.engine) as s:
                lot = self._lot(s, code)
                try:
                    influx: InfluxV1 | None = self.influx()
                except InfluxError:
                    influx = None
                view = build_view(s, lot, self.settings.trace_base_url, influx, self.settings.county_timezone)
            return self.views.set(code, view)

    def view_json(self, code: str) -> tuple[bytes, Freshness | None]:
        """The trace JSON with the verification badge, and how long it may be kept (None: not at all, the
        badge says "checking")."""
        hit = self._cached(self.json, code)
        if hit is not None:
            return hit
        checked = self.checked(code, wait=False)
        badge_only = {k: v for k, v in checked.result.items() if k != "records"}  # the records: /verify
        body = orjson.dumps({**self.view(code), "verification": badge_only})
        return body, self._keep(self.json, code, body, checked)

    def page(
        self, code: str, lang: str, render: Callable[[dict[str, Any], dict[str, Any]], bytes]
    ) -> tuple[bytes, Freshness | None]:
        """The rendered page, and how long it may be kept, as for `view_json`."""
        hit = self._cached(self.pages, (code, lang))
        if hit is not None:
            return hit
        checked = self.checked(code, wait=False)
        body = render(self.view(code), checked.result)
        return body, self._keep(self.pages, (code, lang), body, checked)

    @staticmethod
    def _keep(cache: TtlCache, key: Any, body: bytes, checked: Checked) -> Freshness | None:
        """Cache `body` (with the expiry of the verification it shows) as a shared cache may keep it."""
        if checked.result["status"] == CHECKING:
            return None
        freshness = checked.freshness()
        cache.set(key, (body, checked.expires), ttl=freshness.shared)
        return freshness

    @staticmethod
    def _cached(cache: TtlCache, key: Any) -> tuple[bytes, Freshness] | None:
        hit = cache.entry(key)
        if hit is None:
            return None
        (body, expires), shared = hit
        return body, Freshness(max(0.0, expires - time.monotonic()), shared)

    # ---- verification

    def _compute_verification(self, code: str) -> dict[str, Any]:
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
                    }
                v = verify_lot(s, lot, chain, self.influx(), self.settings)  # the chain asked once per window
                return {**badge(v), "records": v.to_dict()["records"]}
        except ChainError as e:
            self._chain = _MISSING  # reconnect next time (the contract may have been deployed again)
            log.warning("verification of %s: chain unavailable: %s", code, e)
            reason = (
                "the blockchain node cannot be reached"
                if isinstance(e, ChainUnavailable)
                else "the blockchain node does not hold the county's TraceAnchor contract (was the chain reset?)"
            )
            return {"status": UNVERIFIABLE, "reason": reason, "checked_at": now}
        except InfluxError as e:
            log.warning("verification of %s: InfluxDB unavailable: %s", code, e)
            return {"status": UNVERIFIABLE, "reason": "the monitoring database cannot be reached", "checked_at": now}
        except Exception:  # the page must still show; the reason is logged
            if not self.closed:
                log.exception("verification of %s failed", code)
            return {"status": UNVERIFIABLE, "reason": "verification failed unexpectedly", "checked_at": now}

    def _ttl_for(self, result: dict[str, Any]) -> float:
        # an unverifiable answer is retried sooner than a real one
        ttl = self.settings.api_verify_cache_s
        return min(ttl, 10.0) if result["status"] == UNVERIFIABLE else ttl

    def _verify_into_cache(self, code: str) -> Checked:
        with self._lock(f"verify:{code}"):  # one computation per lot at a time; others wait for it
            hit = self.verifications.get(code)
            if hit is not None and time.monotonic() < hit.refresh:
                return hit
            started = time.monotonic()
            result = self._compute_verification(code)
            ttl, took = self._ttl_for(result), time.monotonic() - started
            if (took >= ttl) != self._outlived and result["status"] != UNVERIFIABLE:
                self._outlived = took >= ttl
                if self._outlived:
                    log.warning("a verification took %.1f s, more than API_VERIFY_CACHE_S: lookups wait", took)
            # refresh ahead, late enough to check once per TTL, early enough to finish before the expiry
            checked = Checked(result, started + ttl, started + max(ttl / 2, ttl - 2 * took - 1))
            self.verifications.set(code, checked, ttl=checked.expires - time.monotonic())
            return checked

    def _spawn(self, code: str) -> None:
        if code in self._refreshing or self.closed:
            return
        self._refreshing.add(code)

        def run() -> None:
            try:
                self._verify_into_cache(code)
            finally:
                self._refreshing.discard(code)

        threading.Thread(target=run, daemon=True, name=f"verify-{code}").start()

    def checked(self, code: str, *, wait: bool = True) -> Checked:
        """The lot's verification while it is valid (API_VERIFY_CACHE_S from the start of its check); from
        half-way through, a lookup recomputes it in a background thread. None valid: with `wait`, compute it
        now (a full check takes seconds: every record is rebuilt, telemetry from InfluxDB); without, start
        it in the background and answer "checking" (pages and the trace JSON do not make a consumer wait;
        /verify does)."""
        hit = self.verifications.get(code)
        if hit is not None:
            if time.monotonic() >= hit.refresh:
                self._spawn(code)
            return hit
        if wait or self.settings.api_verify_cache_s <= 0 or self._outlived:  # else born expired, never shown
            return self._verify_into_cache(code)
        self._spawn(code)
        now = time.monotonic()
        return Checked({"status": CHECKING, "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}, now, now)

    def verification(self, code: str, *, wait: bool = True) -> dict[str, Any]:
        """The lot's verification result (`checked`)."""
        return self.checked(code, wait=wait).result

    def warm(self, codes: list[str]) -> None:
        """Verify lots in the background (at start-up, so the first scans find a badge)."""
        for code in codes:
            self._spawn(code)

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
        a paddy lot belongs to the trace of every bag made from it). Other workers follow within the TTL."""
        for cache in (
            self.views,
            self.json,
            self.pages,
            self.responses,
            self.verifications,
            self.bundles,
            self.epcis_docs,
        ):
            cache.clear()
