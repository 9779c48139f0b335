"""Security headers on every answer, and who the client is behind the trusted proxies.

`SecurityHeaders` adds to every response (pages, JSON, static files, cached replays, 429s, redirects):
- `Content-Security-Policy`: scripts, styles, images and fetches from this origin only (no inline
  script or style anywhere: the templates load api/static files, Swagger UI its packaged assets; the
  one exception is the pages' stylesheet, inlined and allowed by its SHA-256 hash, api/assets.py),
  images also from `data:` (Swagger UI's icons) and `blob:` (its previews of image answers), no
  plugins, no `<base>`, forms only to this origin, and no framing (`frame-ancestors 'none'`);
- `X-Frame-Options: DENY` (the same for older browsers), `X-Content-Type-Options: nosniff`,
  `Referrer-Policy: same-origin`;
- `Strict-Transport-Security` only when the request came over https, directly or as a trusted proxy
  reports it (`X-Forwarded-Proto`): over plain http the header would be ignored, or would pin a
  local stack that has no TLS.

api.app wraps the app in uvicorn's ProxyHeadersMiddleware for the proxies of API_TRUSTED_PROXIES only:
the client is the nearest X-Forwarded-For address that is not a trusted proxy, so a client cannot pick
its own address by sending the header (the public rate limit and the sign-in throttle key on it).
With no trusted proxy the headers are ignored. `village serve` leaves uvicorn's own proxy handling
off, so the app is the one place that reads them, whatever server runs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.assets import STYLE_HASH

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        f"style-src 'self' {STYLE_HASH}",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HSTS = "max-age=31536000"
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def security_headers(https: bool) -> list[tuple[bytes, bytes]]:
    return [*HEADERS, (b"strict-transport-security", HSTS.encode())] if https else HEADERS


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope.get("scheme") == "https")

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers + [h for h in extra if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, with_headers)
