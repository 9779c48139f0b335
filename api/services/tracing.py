"""Trace lookups for the public endpoints, cached so that a scan is answered in milliseconds.

A lookup by code reads the lot's view once per API_VERIFY_CACHE_S and keeps the serialized JSON
and each rendered page; QR images are kept as long as the process lives (a code never changes).
Verification needs the chain and InfluxDB, so its result is cached per lot for the same time:
a fresh result is served as is, a stale one is served while one background thread recomputes
it, and only a lot never verified by this worker waits for the computation. When the chain or
InfluxDB cannot be reached the badge says "unverifiable" (never a 500, never "tampered").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
from ledger.chain import Chain, ChainError
from ledger.connect import reading_chain
from ledger.models import Lot, Product
from ledger.verify import VERIFIED, Verification, verify_lot

log = logging.getLogger(__name__)

UNVERIFIABLE = "unverifiable"
CHECKING = "checking"  # no result yet: being computed in the background
_MISSING = object()


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
    }


class _AnchorMemo:
    """The chain for one verification, remembering what the contract says per root: the records of a lot
    share a few windows, so each root is asked for once instead of once per record."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._roots: dict[Any, Any] = {}

    def anchor_of(self, root: bytes | str) -> Any:
        key = root if isinstance(root, str) else root.hex()
        if key not in self._roots:
            self._roots[key] = self._chain.anchor_of(root)
        return self._roots[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


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

    def view_json(self, code: str) -> tuple[bytes, bool]:
        """The trace JSON with the verification badge; (body, final?): not final while still checking."""
        hit = self.json.get(code)
        if hit is not None:
            return hit, True
        verification = self.verification(code, wait=False)
        badge_only = {k: v for k, v in verification.items() if k != "records"}  # the records: /verify
        body = orjson.dumps({**self.view(code), "verification": badge_only})
        if verification["status"] == CHECKING:
            return body, False
        return self.json.set(code, body), True

    def page(
        self, code: str, lang: str, render: Callable[[dict[str, Any], dict[str, Any]], bytes]
    ) -> tuple[bytes, bool]:
        """The rendered page; (body, final?) as for `view_json`."""
        hit = self.pages.get((code, lang))
        if hit is not None:
            return hit, True
        verification = self.verification(code, wait=False)
        body = render(self.view(code), verification)
        if verification["status"] == CHECKING:
            return body, False
        return self.pages.set((code, lang), body), True

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
                memo = _AnchorMemo(chain) if chain is not None else None
                v = verify_lot(s, lot, memo, self.influx(), self.settings)  # type: ignore[arg-type]
                return {**badge(v), "records": v.to_dict()["records"]}
        except ChainError as e:
            self._chain = _MISSING  # reconnect next time
            log.warning("verification of %s: chain unavailable: %s", code, e)
            return {"status": UNVERIFIABLE, "reason": "the blockchain node cannot be reached", "checked_at": now}
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

    def _verify_into_cache(self, code: str) -> dict[str, Any]:
        with self._lock(f"verify:{code}"):  # one computation per lot at a time; others wait for it
            value, fresh = self.verifications.get_any(code)
            if value is not None and fresh:
                return value
            result = self._compute_verification(code)
            return self.verifications.set(code, result, ttl=self._ttl_for(result))

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

    def verification(self, code: str, *, wait: bool = True) -> dict[str, Any]:
        """The lot's verification, cached for API_VERIFY_CACHE_S; a stale one is served while a background
        thread recomputes it. Nothing cached yet: with `wait`, compute it now (a full check takes seconds:
        every record is rebuilt, telemetry from InfluxDB); without, start it in the background and answer
        "checking" (pages and the trace JSON do not make a consumer wait; /verify does)."""
        value, fresh = self.verifications.get_any(code)
        if value is not None:
            if not fresh:
                self._spawn(code)
            return value
        if wait or self.settings.api_verify_cache_s <= 0:
            return self._verify_into_cache(code)
        self._spawn(code)
        return {"status": CHECKING, "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}

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
