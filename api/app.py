"""The FastAPI application: public trace pages and JSON, authentication, registry admin, dashboard,
time series. `create_app(settings)` builds one; `village serve` runs it with uvicorn workers
(`api.app:app_from_env` as the factory, so each worker builds its own from the environment).

Paths: public pages at `/01/{gtin}/10/{lot}` (GS1 Digital Link), `/t/{code}` and `/dashboard`;
everything machine-readable under `/api/v1` (OpenAPI at `/api/v1/openapi.json`, docs at
`/api/v1/docs`). Every error is an RFC 9457 problem (api/problems.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from api import charts, problems
from api.microcache import MicroCache
from api.ratelimit import RateLimiter
from api.routers import admin, auth, dashboard, models, resolver, timeseries, trace
from api.security import jwt_secret
from api.services.tracing import TraceService
from core.db import make_engine
from core.settings import Settings, get_settings
from ledger.models import Lot, Product

HERE = Path(__file__).parent
API_VERSION = "1.0.0"

TAGS = [
    {"name": "resolver", "description": "GS1 Digital Link resolver and the consumer trace page (public)."},
    {"name": "trace", "description": "A lot's trace as JSON, its verification, proof bundle, QR code, EPCIS (public)."},
    {"name": "auth", "description": "OAuth2 password flow (JWT) and API keys."},
    {"name": "admin", "description": "Registry administration, by role and area."},
    {"name": "dashboard", "description": "County indicators, device health, alerts, coverage, anchoring; exports."},
    {"name": "timeseries", "description": "Sensor time series of a device, plot or village."},
]


def local_time(tz: str) -> Callable[[str | None], str]:
    """A template filter: an ISO time shown in the county's time zone, to the minute ("–" for none)."""
    zone = ZoneInfo(tz)

    def fmt(value: str | None) -> str:
        if not value:
            return "–"
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return value
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(zone).strftime("%Y-%m-%d %H:%M")

    return fmt


def templates(tz: str = "Asia/Shanghai") -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters["local"] = local_time(tz)
    t.env.globals.update(sparkline=charts.sparkline, range_bar=charts.range_bar, hbars=charts.hbars, pairs=charts.pairs)
    t.env.trim_blocks = True
    t.env.lstrip_blocks = True
    return t


def retail_lots(engine: Engine, limit: int = 20) -> list[str]:
    """Codes of the newest lots of products with a GTIN: the bags consumers scan, verified at start-up."""
    with Session(engine) as session:
        rows = session.exec(
            select(Lot.code)
            .join(Product)
            .where(col(Product.gtin).is_not(None))
            .order_by(col(Lot.id).desc())
            .limit(limit)
        ).all()
    return list(rows)


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with every error answer (4xx, including FastAPI's 422) declared as what it is:
    `application/problem+json` with the ProblemDetail schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["ProblemDetail"] = problems.ProblemDetail.model_json_schema()
        ref = {"$ref": "#/components/schemas/ProblemDetail"}
        for operations in doc.get("paths", {}).values():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if "requestBody" in op:  # a body that is not JSON (or not the form) at all
                    responses.setdefault("400", {"description": "Bad Request"})
                for status, response in responses.items():
                    if status.isdigit() and int(status) >= 400 and "text/html" not in response.get("content", {}):
                        response["content"] = {problems.PROBLEM_JSON: {"schema": ref}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    return openapi


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.trace.open()
        if settings.api_verify_cache_s > 0:
            app.state.trace.warm(retail_lots(engine))
        yield
        app.state.trace.close()
        engine.dispose()

    app = FastAPI(
        title="Digital village API",
        version=API_VERSION,
        description=__doc__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.templates = templates(settings.county_timezone)
    app.state.trace = TraceService(engine, settings)
    app.state.jwt_secret = jwt_secret(settings)
    problems.install(app)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(MicroCache, cache=app.state.trace.responses)
    app.add_middleware(RateLimiter, per_minute=settings.api_rate_limit_per_min)  # added last: runs first
    for module in (resolver, trace, auth, admin, dashboard, timeseries, models):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (`uvicorn --factory api.app:app_from_env`): settings from the environment."""
    return create_app(get_settings())
