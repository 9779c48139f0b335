"""A micro-cache in front of the routes for the public trace lookups (as a reverse proxy would keep).

A scanned bag is looked up again and again; its answer changes when the lot changes (a change the
database announces: api/services/tracing.py) or its verification is re-checked. So the complete
200 answer (status, headers, body) of `GET /api/v1/trace/{code}`, `/t/{code}` and
`/01/{gtin}/10/{lot}` without a query string is kept per worker, keyed by path and, for pages, by
the language Accept-Language selects and by whether the client takes gzip (the answer is kept as
it was sent, compressed or not: a replay compresses nothing), and replayed without routing,
validation, rendering or compression.
Like a shared HTTP cache it keeps an answer no longer than its `Cache-Control: s-maxage` (else
`max-age`), which the routes set from the verification it shows (api/services/tracing.py
`Freshness`), not at all with `no-store`, and replays it with an `Age` header, so that a
browser's copy expires with the verification; and only while the lot's change token (`token`:
changes heard of the lot) is the one it was stored under, so a change drops it at once.
Only canonical paths (the stored code, a 14-digit GTIN) are kept: api/canonical.py redirects the
other spellings of a code before they get here, so a client cannot fill the cache with spellings.
Anything else (a query string, a linkset asked for by Accept, an error, another path) goes to the routes.
The rate limiter stays in front of it, and an admin change clears it with the other trace caches.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.canonical import canonical_code
from api.conneg import choose
from api.i18n import DEFAULT, from_accept_language
from api.services.cache import TtlCache

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

JSON_PREFIX = "/api/v1/trace/"
MAX_AGE = re.compile(rb"(?:^|[,\s])max-age=(\d+)")
S_MAXAGE = re.compile(rb"(?:^|[,\s])s-maxage=(\d+)")
PAGE = "text/html"
# What the Digital Link URI answers by Accept (api/routers/resolver.py): the page, or the linkset.
RESOLVER_OFFERS = (PAGE, "application/linkset+json", "application/json")


def page_variant(accept: str) -> str:
    """The representation an Accept header selects at a lot's URI (the page when it accepts none)."""
    return choose(accept, RESOLVER_OFFERS) or PAGE


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return ""


def _is_gtin14(text: str) -> bool:
    return len(text) == 14 and text.isascii() and text.isdigit()


def cache_key(scope: Scope) -> tuple[str, ...] | None:
    """The key of a cacheable lookup, or None for anything the routes must answer."""
    if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
        return None
    path: str = scope["path"]
    coding = "gzip" if "gzip" in _header(scope, b"accept-encoding") else "identity"  # as GZipMiddleware decides
    if path.startswith(JSON_PREFIX):
        code = path[len(JSON_PREFIX) :]
        return ("json", path, coding) if "/" not in code and canonical_code(code) == code else None
    if path.startswith("/t/"):
        if canonical_code(path[3:]) != path[3:]:
            return None
    elif not (path.startswith("/01/") and _is_gtin14(path[4:18]) and path[18:22] == "/10/"):
        return None
    if page_variant(_header(scope, b"accept")) != PAGE:  # a linkset (or JSON) asked for by Accept
        return None
    lang = from_accept_language(_header(scope, b"accept-language")) or DEFAULT
    return ("page", path, lang, coding)


def keep_for(headers: list[tuple[bytes, bytes]], default: float) -> float:
    """Seconds an answer with these headers may be kept: 0 with no-store, at most its s-maxage (else max-age)."""
    for k, v in headers:
        if k.lower() == b"cache-control":
            if b"no-store" in v or b"private" in v:
                return 0.0
            if m := S_MAXAGE.search(v) or MAX_AGE.search(v):
                return min(default, float(m.group(1)))
    return default


def code_of(key: tuple[str, ...], known: TtlCache | None = None) -> str | None:
    """The lot code a cache key names (a Digital Link through `known`, once the routes resolved it)."""
    path = key[1]
    if key[0] == "json":
        return path[len(JSON_PREFIX) :]
    if path.startswith("/t/"):
        return path[3:]
    return known.get((path[4:18], path[22:])) if known is not None else None


def _no_token(_key: tuple[str, ...]) -> Any:
    return 0


class MicroCache:
    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        cache: TtlCache,
        token: Callable[[tuple[str, ...]], Any] = _no_token,
    ) -> None:
        self.app = app
        self.cache = cache
        self.token = token  # key -> the lot's change token (None: unknown, do not keep)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = cache_key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        hit = self.cache.get(key)
        if hit is not None and hit[4] == self.token(key):
            status, headers, body, stored, _ = hit
            age = (b"age", str(int(time.monotonic() - stored)).encode())
            await send({"type": "http.response.start", "status": status, "headers": [*headers, age]})
            await send({"type": "http.response.body", "body": body})
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        complete = False

        async def capture(message: Any) -> None:
            nonlocal complete
            if message["type"] == "http.response.start":  # a copy: outer middleware may edit the list
                start.update(message, headers=list(message.get("headers", [])))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        stored = time.monotonic()  # before the answer is made: its age counts from there
        token = self.token(key)
        await self.app(scope, receive, capture)
        headers = list(start.get("headers", []))
        ttl = keep_for(headers, self.cache.ttl)
        kept = token is not None and token == self.token(key)  # no change heard while it was made
        if complete and start.get("status") == 200 and ttl > 0 and kept:
            self.cache.set(key, (200, headers, b"".join(chunks), stored, token), ttl=ttl - (time.monotonic() - stored))
