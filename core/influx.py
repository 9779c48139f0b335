"""InfluxDB through its v1 HTTP API: `/write` with line protocol, `/query` with InfluxQL.

Every InfluxDB release serves this API (1.x natively, 2.x through its v1 compatibility
endpoints, 3 Core natively), so one small client covers them all. Errors are split into
`InfluxUnavailable` (retry later: the server is down or overloaded) and `InfluxRejected`
(the data itself is wrong: retrying the same body will not help).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from typing import Any

import httpx

from core.settings import Settings

#: Retention policy of late readings (readings for a village-day already sealed by the anchoring
#: worker): the same measurements and tags as the raw data plus the tag `sealed_through`, so that
#: they can never overwrite an anchored point, and queries of the default retention policy (daily
#: digests, growth summaries, rollups, dashboards) never see them. On 2.x: the bucket `<db>/late`.
LATE_RP = "late"


class InfluxError(RuntimeError):
    pass


class InfluxUnavailable(InfluxError):
    """The server could not be reached or answered 5xx/429."""


class InfluxRejected(InfluxError):
    """The server refused the request (4xx): bad line protocol, type conflict, auth."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA store costs ~80 ms of CPU, too much per client."""
    return ssl.create_default_context()


class InfluxV1:
    def __init__(
        self,
        url: str,
        db: str,
        rp: str = "",
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        token: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self.rp = rp
        auth = httpx.BasicAuth(username, password) if username or password else None
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            verify=_tls_context(),
            auth=auth,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=4),
        )

    @classmethod
    def from_settings(cls, s: Settings) -> InfluxV1:
        return cls(
            s.influx_url,
            s.influx_db,
            s.influx_rp,
            s.influx_username,
            s.influx_password.get_secret_value(),
            s.influx_timeout_s,
            s.influx_token.get_secret_value(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfluxV1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise InfluxUnavailable(f"InfluxDB at {self.url} unreachable: {e.__class__.__name__}: {e}") from e
        if r.status_code >= 500 or r.status_code == 429:
            raise InfluxUnavailable(f"InfluxDB answered {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            raise InfluxRejected(f"InfluxDB refused {path} with {r.status_code}: {r.text[:500]}")
        return r

    def ping(self) -> bool:
        try:
            return self._http.get("/ping", timeout=2).status_code == 204
        except httpx.HTTPError:
            return False

    def ensure_database(self) -> None:
        """Create the database if it does not exist (1.x). 2.x maps an existing bucket of that name."""
        # 2.x's v1 API has no CREATE DATABASE; there the bucket must exist (see docker-compose.yml).
        with contextlib.suppress(InfluxRejected):
            self._request("POST", "/query", data={"q": f'CREATE DATABASE "{self.db}"'})

    def ensure_retention_policy(self, rp: str, duration: str = "INF") -> None:
        """Create a retention policy of the database when it is missing (1.x; best effort: a write to a
        missing one fails loudly). On 2.x the bucket `<db>/<rp>` must exist: the v1 API maps it by name."""
        q = f'CREATE RETENTION POLICY "{rp}" ON "{self.db}" DURATION {duration} REPLICATION 1'
        with contextlib.suppress(InfluxRejected):
            self._request("POST", "/query", data={"q": q})

    def write(self, body: bytes | str, precision: str = "ms", rp: str | None = None) -> None:
        """Write line protocol to the configured retention policy, or to `rp`."""
        params = {"db": self.db, "precision": precision}
        if rp or self.rp:
            params["rp"] = rp or self.rp
        data = body.encode() if isinstance(body, str) else body
        self._request("POST", "/write", params=params, content=data)

    def query(self, q: str, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run InfluxQL; return the series of the first statement (name, tags, columns, values)."""
        params = {"db": self.db, "q": q, "epoch": epoch}
        if self.rp:
            params["rp"] = self.rp
        result = self._request("POST", "/query", data=params).json()["results"][0]
        if "error" in result:
            raise InfluxRejected(f"query failed: {result['error']}")
        return result.get("series", [])

    def count(self, measurement: str, field: str, where: str = "") -> int:
        """Number of points with `field` set in `measurement` (0 when there are none)."""
        clause = f" WHERE {where}" if where else ""
        series = self.query(f'SELECT COUNT("{field}") FROM "{measurement}"{clause}')
        return int(series[0]["values"][0][1]) if series else 0
