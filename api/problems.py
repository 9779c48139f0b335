"""Errors as RFC 9457 problem details, everywhere: raised problems, HTTP errors, validation errors.

Every error answer is `application/problem+json` with `type`, `title`, `status`, `detail` (the
precise reason) and `instance` (the path). A detail never carries an internal address (InfluxDB, the
chain's RPC URL) or an exception's text: a dependency that fails is named by what it is
(`unavailable()`), an unexpected error is logged with an id and answered with a generic 500 that
carries that id (`error_id`), so an operator can find the log line. Validation errors list each problem under `errors`
(where and why) without echoing the input, which may be personal data. A browser that asks for
HTML on a page route (not under /api/) gets the same status with a readable page instead.
"""

from __future__ import annotations

import logging
import re
import secrets
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.headers import security_headers

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://w3id.org/village-trace/problems/"


class ProblemDetail(BaseModel):
    """RFC 9457 problem details (the OpenAPI schema of every error answer)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


# Titles of the problem types (the `type` URI is TYPE_BASE + slug); a slug not listed gets its words.
TITLES = {
    "gtin-check-digit": "Wrong GTIN check digit",
    "digital-link-syntax": "Not a valid GS1 Digital Link",
    "bad-trace-code": "Malformed trace code",
    "unknown-lot": "No such lot",
    "lot-required": "A lot number is required",
    "validation": "Invalid request",
    "rate-limited": "Too many requests",
    "unauthenticated": "Authentication required",
    "bad-credentials": "Wrong user name or password",
    "sign-in-throttled": "Too many failed sign-ins",
    "period-too-long": "Period too long",
    "outside-scope": "Outside your area",
    "read-only-role": "Read-only role",
    "forbidden-role": "Not allowed for your role",
    "not-found": "Not found",
    "conflict": "Already exists",
    "dependency-unavailable": "A service this needs is unavailable",
    "alert-state": "The alert is not in a state that allows this",
    "csrf": "Missing or wrong CSRF token",
    "did-panel-too-short": "The data cannot give a difference-in-differences panel",
}


class Problem(Exception):
    """Raise to answer with a problem: `Problem(404, "unknown-lot", "no lot M35C-...")`.

    `slug` names the problem type (`{TYPE_BASE}{slug}`); extension members go in `extra`.
    """

    def __init__(
        self,
        status: int,
        slug: str | None,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.type = f"{TYPE_BASE}{slug}" if slug else "about:blank"
        self.title = title or (
            TITLES.get(slug) or slug.replace("-", " ").capitalize() if slug else HTTPStatus(status).phrase
        )
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail)


def error_id() -> str:
    """A short random id that ties an answer to its log line."""
    return secrets.token_hex(6)


def unavailable(what: str, exc: BaseException, retry_after: int = 30) -> Problem:
    """A 503 problem for a dependency that failed (`what`: "the blockchain node", ...). The exception,
    which may name internal URLs, goes to the log under an id; the answer carries only the id."""
    eid = error_id()
    log.warning("%s unavailable (error id %s): %s: %s", what, eid, type(exc).__name__, exc)
    return Problem(
        503,
        "dependency-unavailable",
        f"{what} cannot be reached now; try again later (error id {eid})",
        headers={"Retry-After": str(retry_after)},
        error_id=eid,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems an operation can answer with."""
    return {
        s: {"model": ProblemDetail, "description": HTTPStatus(s).phrase, "content": {PROBLEM_JSON: {}}}
        for s in statuses
    }


def wants_html(request: Request) -> bool:
    """A page route asked for by a browser (HTML preferred over JSON)."""
    if request.url.path.startswith("/api/"):
        return False
    accept = request.headers.get("accept", "")
    if not accept:
        return False
    html = "text/html" in accept
    json_first = "json" in accept.split(",")[0]
    return html and not json_first


def render(
    request: Request,
    status: int,
    title: str,
    detail: str | None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(extra)
    if wants_html(request):
        templates = getattr(request.app.state, "templates", None)
        if templates is not None:
            from api.i18n import language, strings

            lang = language(request)
            return templates.TemplateResponse(
                request,
                "error.html",
                {"problem": body, "lang": lang, "t": strings(lang)},
                status_code=status,
                headers=headers,
            )
        return HTMLResponse(f"<h1>{status} {title}</h1><p>{detail or ''}</p>", status_code=status, headers=headers)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        out.append({"loc": ".".join(loc), "message": e.get("msg", "invalid"), "type": e.get("type", "")})
    return out


def _path_patterns(app: FastAPI) -> list[tuple[re.Pattern[str], str]]:
    cached = getattr(app.state, "allow_patterns", None)
    if cached is None:
        cached = []
        for path, operations in app.openapi().get("paths", {}).items():
            regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
            if path.endswith("/{lot}"):  # a lot number may hold an escaped slash
                regex = regex[: -len("[^/]+")] + ".+"
            methods = ", ".join(m.upper() for m in operations if m in ("get", "post", "put", "patch", "delete"))
            cached.append((re.compile(f"^{regex}$"), methods))
        app.state.allow_patterns = cached
    return cached


def allowed_methods(request: Request) -> str | None:
    """Every method the path has (all of its routes), for the Allow header of a 405."""
    found = [methods for pattern, methods in _path_patterns(request.app) if pattern.match(request.url.path)]
    return ", ".join(dict.fromkeys(", ".join(found).split(", "))) if found else None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return render(request, exc.status, exc.title, exc.detail, exc.type, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        phrase = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if exc.detail and exc.detail != phrase else None
        if exc.status_code == 404 and detail is None:
            detail = f"nothing at {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = allowed_methods(request) or headers.get("Allow") or headers.get("allow") or ""
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"Allow": allowed}
            if detail is None:
                detail = f"{request.method} is not allowed on {request.url.path}" + (
                    f"; use {allowed}" if allowed else ""
                )
        return render(request, exc.status_code, phrase, detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": "", "message": "invalid request"}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        detail = f"{first['loc']}: {first['message']}{more}"
        return render(request, 422, "Invalid request", detail, f"{TYPE_BASE}validation", errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Answered by Starlette's outermost middleware, outside SecurityHeaders: add them here.
        eid = error_id()
        log.error(
            "unhandled error %s on %s %s: %s", eid, request.method, request.url.path, type(exc).__name__, exc_info=exc
        )
        headers = {k.decode(): v.decode() for k, v in security_headers(request.url.scheme == "https")}
        detail = f"an unexpected error; it has been logged with id {eid}"
        return render(request, 500, "Internal Server Error", detail, headers=headers, error_id=eid)
