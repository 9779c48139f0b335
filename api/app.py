"""The FastAPI application: public trace pages and JSON, authentication, registry admin, dashboard,
time series. `create_app(settings)` builds one; `village serve` runs it with uvicorn workers
(`api.app:app_from_env` as the factory, so each worker builds its own from the environment).

Paths: public pages at `/01/{gtin}/10/{lot}` (GS1 Digital Link), `/t/{code}` and `/dashboard`;
everything machine-readable under `/api/v1` (OpenAPI at `/api/v1/openapi.json`, docs at
`/api/v1/docs`). Every error is an RFC 9457 problem (api/problems.py).

Around the routes, outermost first: the trusted proxies' client address and scheme (uvicorn's
ProxyHeadersMiddleware, only for API_TRUSTED_PROXIES), security headers (api/headers.py), CORS and HEAD
on the public lookups (api/public_http.py), the public rate limit (api/ratelimit.py), redirects of
non-canonical code spellings and trailing slashes (api/canonical.py), gzip for clients that accept it, and
the micro-cache of public lookups (api/microcache.py). The app's static files are versioned and cached
(api/assets.py).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api import charts, problems
from api.assets import STYLE, Assets
from api.canonical import CanonicalPaths
from api.headers import SecurityHeaders
from api.microcache import MicroCache
from api.public_http import HeadAsGet, PublicCors
from api.ratelimit import RateLimiter
from api.routers import admin, alerts, auth, dashboard, models, province, resolver, timeseries, trace
from api.routers import charts as chart_routes
from api.security import jwt_secret
from api.services import dashboard as dashboard_data
from api.services import indicators, webhooks
from api.services.shared_checks import mac_key
from api.services.tracing import TraceService
from api.throttle import SignInThrottle
from core.db import make_engine
from core.settings import Settings, get_settings
from ledger.models import Lot, Product

HERE = Path(__file__).parent
API_VERSION = "1.0.0"
SWAGGER_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-dist 5.x, packaged
DOCS_URL = "/api/v1/docs"
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Digital village API</title>
<link rel="stylesheet" href="/api/v1/docs/assets/swagger-ui.css">
<link rel="icon" href="/api/v1/docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="/api/v1/openapi.json"></div>
<script src="/api/v1/docs/assets/swagger-ui-bundle.js"></script>
<script src="/static/swagger-init.js"></script>
</body>
</html>
"""

PAGES = ("trace.html", "dashboard.html", "login.html", "home.html", "error.html")
# answers not worth compressing again: images and archives (an Excel workbook is a zip file)
NO_GZIP = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
TAGS = [
    {"name": "resolver", "description": "GS1 Digital Link resolver and the consumer trace page (public)."},
    {"name": "trace", "description": "A lot's trace as JSON, its verification, proof bundle, QR code, EPCIS (public)."},
    {"name": "auth", "description": "OAuth2 password flow (JWT) and API keys."},
    {"name": "admin", "description": "Registry administration, by role and area."},
    {"name": "dashboard", "description": "County indicators, device health, alerts, coverage, anchoring; exports."},
    {"name": "alerts", "description": "Alerts of your area: history, acknowledge, resolve; webhook delivery log."},
    {"name": "province", "description": "Every county of a city or province side by side, ranked; exports."},
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


def templates(tz: str = "Asia/Shanghai", assets: Assets | None = None) -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.globals["asset"] = (assets or Assets()).url  # /static/NAME?v=HASH (api/assets.py)
    t.env.globals["inline_style"] = Markup(STYLE)  # allowed by its hash in the CSP (api/headers.py)
    t.env.filters["local"] = local_time(tz)
    t.env.filters["chart_indicator"] = charts.chart_indicator
    t.env.globals["growth_chart"] = charts.growth_chart
    t.env.globals.update(sparkline=charts.sparkline, range_bar=charts.range_bar, hbars=charts.hbars, pairs=charts.pairs)
    t.env.trim_blocks = True
    t.env.lstrip_blocks = True
    t.env.auto_reload = False  # templates ship with the code: no file check on every render
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
        for page in PAGES:  # compiled now, not on the first view of each
            app.state.templates.get_template(page)
        if settings.api_verify_cache_s > 0:
            app.state.trace.warm(retail_lots(engine))
        threading.Thread(target=app.state.trace.learn_codes, name="learn-codes", daemon=True).start()
        if settings.api_indicators_warm and settings.api_indicators_cache_s > 0:
            app.state.indicators_warm = indicators.warm(engine, settings)  # the first dashboard view finds them
        if settings.api_indicators_warm and settings.api_dashboard_cache_s > 0:
            app.state.dashboard_warm = dashboard_data.warm(
                engine, settings, app.state.trace.influx(), app.state.dashboard
            )
        yield
        app.state.trace.close()
        engine.dispose()

    app = FastAPI(
        title="Digital village API",
        version=API_VERSION,
        description=__doc__,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served below from the packaged assets, under the Content-Security-Policy
        redoc_url=None,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    static = Assets()
    app.state.templates = templates(settings.county_timezone, static)
    app.state.jwt_secret = jwt_secret(settings)  # SecretError (refusing to start) when missing or short
    # verifications shared by the workers are signed with a key only the API holds
    app.state.trace = TraceService(engine, settings, share_key=mac_key(app.state.jwt_secret))
    app.state.dashboard = dashboard_data.section_cache(settings)  # area-wide dashboard sections, per worker
    app.state.sign_in_throttle = SignInThrottle(
        engine,
        max_per_account=settings.api_login_max_failures,
        max_per_address=settings.api_login_max_failures_per_address,
        window_s=settings.api_login_window_s,
    )
    webhooks.load_config(settings)  # WebhookConfigError (refusing to start) when ALERT_WEBHOOKS_FILE is wrong
    problems.install(app)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    # Each middleware added runs before the ones added earlier.
    # gzip for clients that accept it (pages, JSON, CSS, JS), inside the micro-cache, which keeps and
    # replays the compressed answer (its key says whether the client takes gzip)
    app.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=6, exclude_content_types=NO_GZIP)
    app.add_middleware(MicroCache, cache=app.state.trace.responses, token=app.state.trace.token_for_key)
    app.add_middleware(CanonicalPaths)
    app.add_middleware(RateLimiter, per_minute=settings.api_rate_limit_per_min)
    app.add_middleware(HeadAsGet)
    app.add_middleware(PublicCors)
    app.add_middleware(SecurityHeaders)
    if settings.trusted_proxies():
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies())
    for module in (resolver, trace, auth, admin, dashboard, chart_routes, alerts, province, timeseries, models):
        app.include_router(module.router)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> RedirectResponse:  # browsers that ask for it anyway: the pages' icon
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    app.mount(f"{DOCS_URL}/assets", StaticFiles(directory=str(SWAGGER_ASSETS)), name="swagger-ui")
    app.mount("/static", static, name="static")
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory (`uvicorn --factory api.app:app_from_env`): settings from the environment."""
    return create_app(get_settings())
