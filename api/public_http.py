"""HTTP around the public lookups (`/01/...`, `/t/...`, `/api/v1/trace/...`, the resolver description
`/.well-known/gs1resolver`): HEAD and cross-origin reads.

- `HeadAsGet`: a HEAD request is answered as the GET of the same URL (status and headers, Content-Length
  included) without the body (RFC 9110 §9.3.2); the routes, the redirects and the micro-cache see a GET.
- `PublicCors`: every answer on those paths (pages, linksets, JSON, redirects, problems, 429s) carries
  `Access-Control-Allow-Origin: *` and exposes `Link` (the linkset's address) to scripts, so a web app of
  another origin can resolve a code. Nothing there depends on a cookie or a token: the answers are public data,
  and no credentials are allowed. A CORS preflight (OPTIONS with Access-Control-Request-Method) gets 204 for
  GET and HEAD. Admin, auth, dashboard and every other path get no CORS header, so browsers keep other
  origins out of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_PREFIXES = ("/01/", "/t/", "/api/v1/trace/", "/.well-known/gs1resolver")
CORS_HEADERS: list[tuple[bytes, bytes]] = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"Link, Content-Language, Retry-After"),
]
PREFLIGHT_HEADERS: list[tuple[bytes, bytes]] = [
    *CORS_HEADERS,
    (b"access-control-allow-methods", b"GET, HEAD"),
    (b"access-control-allow-headers", b"Accept, Accept-Language"),
    (b"access-control-max-age", b"86400"),
    (b"content-length", b"0"),
]


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v
    return None


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not is_public(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Any) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # nothing of the body goes out; the last message ends the answer
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class PublicCors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await send({"type": "http.response.start", "status": 204, "headers": PREFLIGHT_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in dict(CORS_HEADERS)]
                message = {**message, "headers": headers + CORS_HEADERS}
            await send(message)

        await self.app(scope, receive, with_cors)
