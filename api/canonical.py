"""Canonical trace paths: every spelling of a lot's code answers from one path.

A typed code may come in any case, with any hyphens, with I/L for 1 and O for 0 (ledger.codes
.normalize_code), and a Digital Link GTIN with 8, 12 or 13 digits. Served as they came, each spelling
would be its own micro-cache entry (api/microcache.py) and its own answer. So a well-formed but
non-canonical spelling of `/t/{code}`, `/api/v1/trace/{code}[/...]` or `/01/{gtin}/10/{lot}` is
redirected (301, permanent; query kept) to the canonical path: the stored code, the 14-digit GTIN.
So is a trailing slash after a well-formed `/t/{code}` or `/01/{gtin}/10/{lot}` (a slash inside a lot
number is written %2F, so a raw trailing '/' never belongs to the lot); any other segment after the lot is
the route's 400. A malformed code or GTIN goes on to the routes, which answer 400 with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from ledger.codes import DigitalLinkError, TraceCodeError, normalize_code, normalize_gtin

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

TRACE_JSON = "/api/v1/trace/"
# The OpenAPI entry of the redirect, for the operations whose paths it covers.
REDIRECT: dict[int | str, dict[str, Any]] = {
    301: {"description": "A non-canonical spelling of the code or GTIN: redirected to the canonical path"}
}


def canonical_code(text: str) -> str | None:
    """The stored form of a well-formed code, else None."""
    try:
        return normalize_code(text)
    except TraceCodeError:
        return None


def canonical_gtin(text: str) -> str | None:
    try:
        return normalize_gtin(text)
    except DigitalLinkError:  # GtinCheckDigitError is one
        return None


def canonical_path(scope: Scope) -> str | None:
    """The canonical raw path when the request's path is a non-canonical spelling of one, else None."""
    path: str = scope["path"]
    raw: str = (scope.get("raw_path") or path.encode()).decode("latin-1")
    if path.startswith("/t/"):
        code = path[3:]
        stripped = code.rstrip("/")
        if "/" in stripped:
            return None
        canon = canonical_code(stripped)
        return f"/t/{canon}" if canon is not None and canon != code else None
    if path.startswith(TRACE_JSON):
        code, slash, rest = path[len(TRACE_JSON) :].partition("/")
        canon = canonical_code(code)
        if canon is None or canon == code:
            return None
        raw_rest = raw[len(TRACE_JSON) :].partition("/")[2] if raw.startswith(TRACE_JSON) else quote(rest)
        return f"{TRACE_JSON}{canon}{slash}{raw_rest}"
    if path.startswith("/01/"):
        parts = raw.split("/", 4)  # '', '01', gtin, '10', lot (still escaped)
        if len(parts) < 5 or parts[1] != "01" or parts[3] != "10":
            return None
        lot = parts[4].rstrip("/")
        if not lot or "/" in lot:  # no lot, or more segments after it: the route's 400
            return None
        canon = canonical_gtin(parts[2])
        if canon is None or (canon == parts[2] and lot == parts[4]):
            return None
        return f"/01/{canon}/10/{lot}"
    return None


class CanonicalPaths:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = canonical_path(scope) if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") else None
        if target is None:
            await self.app(scope, receive, send)
            return
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        await send(
            {
                "type": "http.response.start",
                "status": 301,
                "headers": [
                    (b"location", target.encode("latin-1")),
                    (b"cache-control", b"public, max-age=86400"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
