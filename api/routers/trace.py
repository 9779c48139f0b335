"""Public JSON of a lot's trace under `/api/v1/trace/{code}`: the trace, its verification, the proof
bundle, QR codes and an EPCIS 2.0 document. `{code}` is the lot's short trace code in any typed form
(case, hyphens, I/L for 1, O for 0); a malformed code is a 400, an unknown one a 404.

Answers come from the per-worker cache (api/services/tracing.py); a miss is computed in the thread
pool so that the event loop keeps serving cached lookups meanwhile.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from api.canonical import REDIRECT
from api.problems import Problem, problem_responses, unavailable
from api.services.tracing import Freshness, TraceService
from core.influx import InfluxError
from ledger.chain import ChainError
from ledger.codes import TraceCodeError, normalize_code

router = APIRouter(prefix="/api/v1/trace", tags=["trace"])
CACHE_CONTROL = "public, max-age=30"  # answers that embed no verification


def verification_cache_control(freshness: Freshness | None) -> str:
    """Cache-Control of an answer that shows a verification: kept by browsers no longer than the
    verification stays valid, by shared caches (api/microcache.py) until it is due for a re-check;
    not at all while "checking"."""
    if freshness is None:
        return "no-store"
    return f"public, max-age={int(freshness.max_age)}, s-maxage={int(freshness.shared)}"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProductOut(_Open):
    code: str
    gtin: str | None = None
    name_zh: str
    name_en: str = ""
    variety: str | None = None


class LotOut(_Open):
    code: str
    lot_no: str
    product: ProductOut | None = None
    quantity: float | None = None
    unit: str
    harvest_year: int | None = None
    farm: str | None = None
    facility: dict[str, Any] | None = None
    parents: list[dict[str, Any]] = []


class VerificationOut(_Open):
    status: Literal["verified", "pending", "tampered", "unverifiable", "checking"]
    counts: dict[str, int] | None = None
    block: int | None = None
    anchored_at: str | None = None
    tx: str | None = None
    window: str | None = None
    anchor_state: str | None = None
    chain_id: int | None = None
    contract: str | None = None
    checked_at: str
    reason: str | None = None
    requeued: list[str] | None = None
    records: list[dict[str, Any]] | None = None


class TraceOut(_Open):
    code: str
    code_display: str
    uri: str
    lot_no: str
    product: ProductOut | None = None
    quantity: float | None = None
    unit: str
    harvest_year: int | None = None
    origin: list[dict[str, Any]]
    lineage: list[LotOut]
    events: list[dict[str, Any]]
    inspections: list[dict[str, Any]]
    growth: list[dict[str, Any]]
    verification: VerificationOut


def service(request: Request) -> TraceService:
    return request.app.state.trace


def normalized(code: str) -> str:
    try:
        return normalize_code(code)
    except TraceCodeError as e:
        raise Problem(400, "bad-trace-code", str(e)) from None


async def known_code(trace: TraceService, code: str) -> str:
    """The stored code, or a 400 (malformed) / 404 (no such lot) problem."""
    stored = normalized(code)
    if trace.known.get(stored):
        return stored
    found = await run_in_threadpool(trace.code_for, stored)
    if found is None:
        raise Problem(404, "unknown-lot", f"no lot has the trace code {stored}")
    return found


def _json(body: bytes, media_type: str = "application/json") -> Response:
    return Response(body, media_type=media_type, headers={"Cache-Control": CACHE_CONTROL})


@router.get(
    "/{code}",
    response_model=TraceOut,
    summary="A lot's trace",
    responses={**REDIRECT, **problem_responses(400, 404, 429)},
)
async def get_trace(code: str, request: Request) -> Response:
    """Product and lot, origin plots, processing steps, events, inspections, growth summaries and the
    verification badge (`checking` while a lot's first verification runs: ask again, or call /verify,
    which waits for it). Farms appear by code only; no personal data."""
    trace = service(request)
    stored = await known_code(trace, code)
    body, freshness = await run_in_threadpool(trace.view_json, stored)
    return Response(
        body, media_type="application/json", headers={"Cache-Control": verification_cache_control(freshness)}
    )


@router.get(
    "/{code}/verify",
    response_model=VerificationOut,
    summary="Verify a lot against the chain",
    responses={**REDIRECT, **problem_responses(400, 404, 429)},
)
async def verify(code: str, request: Request) -> Response:
    """Every record of the lot recomputed and checked against its anchored Merkle root: verified,
    pending (not yet anchored, or its anchor dropped by a reorganisation and waiting to be re-sent:
    `reason`, `requeued`), tampered (naming what differs), or unverifiable now (the chain or InfluxDB
    cannot be reached). Kept until a change of the lot is heard, and re-checked against the chain every
    API_VERIFY_CACHE_S."""
    trace = service(request)
    stored = await known_code(trace, code)
    checked = await run_in_threadpool(trace.checked, stored)
    return Response(
        orjson.dumps(checked.full()),
        media_type="application/json",
        headers={"Cache-Control": verification_cache_control(checked.freshness())},
    )


@router.get(
    "/{code}/proof",
    summary="Proof bundle of a lot",
    responses={
        200: {"description": "A village-proof/1 bundle", "content": {"application/json": {}}},
        **REDIRECT,
        **problem_responses(400, 404, 429, 503),
    },
)
async def proof(code: str, request: Request) -> Response:
    """Everything needed to check the lot's records with only an Ethereum RPC endpoint
    (format village-proof/1; see the README for the algorithm)."""
    trace = service(request)
    stored = await known_code(trace, code)
    try:
        bundle = await run_in_threadpool(trace.bundle, stored)
    except ChainError as e:
        raise unavailable("the blockchain node", e) from None
    except InfluxError as e:
        raise unavailable("the monitoring database", e) from None
    return Response(
        orjson.dumps(bundle),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="proof-{stored}.json"'},
    )


@router.get(
    "/{code}/epcis",
    summary="EPCIS 2.0 document of a lot",
    responses={
        200: {"description": "EPCISDocument (JSON-LD)", "content": {"application/ld+json": {}}},
        **REDIRECT,
        **problem_responses(400, 404, 429),
    },
)
async def epcis(code: str, request: Request) -> Response:
    """The events of the lot and its ancestors as an EPCIS 2.0 JSON-LD document, each event with its
    GS1 event hash as eventID; validates against GS1's EPCIS 2.0 JSON schema."""
    trace = service(request)
    stored = await known_code(trace, code)
    doc = await run_in_threadpool(trace.epcis, stored)
    return _json(orjson.dumps(doc), "application/ld+json")


@router.get(
    "/{code}/qr.svg",
    summary="QR code (SVG) of a lot's URI",
    responses={
        200: {"content": {"image/svg+xml": {}}, "description": "SVG"},
        **REDIRECT,
        **problem_responses(400, 404, 429),
    },
    response_class=Response,
)
async def qr_svg(code: str, request: Request) -> Response:
    trace = service(request)
    stored = await known_code(trace, code)
    image = await run_in_threadpool(trace.qr_image, stored, "svg")
    return Response(image, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


@router.get(
    "/{code}/qr.png",
    summary="QR code (PNG) of a lot's URI",
    responses={
        200: {"content": {"image/png": {}}, "description": "PNG"},
        **REDIRECT,
        **problem_responses(400, 404, 429),
    },
    response_class=Response,
)
async def qr_png(code: str, request: Request) -> Response:
    trace = service(request)
    stored = await known_code(trace, code)
    image = await run_in_threadpool(trace.qr_image, stored, "png")
    return Response(image, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})
