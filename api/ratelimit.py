"""Rate limits on the public endpoints: a token bucket per client IP, in each worker's memory.

API_RATE_LIMIT_PER_MIN requests per minute, with bursts up to that many; beyond it the answer is
429 with a problem body and `Retry-After`. Pure ASGI (no per-request task or body copying), so a
request under the limit costs a dictionary lookup. Buckets of idle clients are dropped now and then.
The client is `scope["client"]`: the peer, or behind reverse proxies named in API_TRUSTED_PROXIES the
nearest address they report that is not one of them (api/headers.py), so a forged X-Forwarded-For
does not give a client a fresh bucket per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from api.problems import PROBLEM_JSON, TYPE_BASE

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

PUBLIC_PREFIXES = ("/01/", "/t/", "/api/v1/trace/")


class RateLimiter:
    def __init__(self, app: ASGIApp, per_minute: int, prefixes: tuple[str, ...] = PUBLIC_PREFIXES) -> None:
        self.app = app
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.prefixes = prefixes
        self.buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last time)
        self._last_sweep: float | None = None

    def take(self, client: str, now: float | None = None) -> float:
        """Take one token; 0 when allowed, else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self.buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if self._last_sweep is None:
            self._last_sweep = now
        elif now - self._last_sweep > 60:
            self._sweep(now)
        return wait

    def _sweep(self, now: float) -> None:
        full_after = self.capacity / self.rate
        self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < full_after}
        self._last_sweep = now

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.take(client[0] if client else "unknown")
        if not wait:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        body = orjson.dumps(
            {
                "type": f"{TYPE_BASE}rate-limited",
                "title": "Too many requests",
                "status": 429,
                "detail": f"more than {int(self.capacity)} requests a minute from your address; retry in {retry} s",
                "instance": scope["path"],
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"retry-after", str(retry).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
