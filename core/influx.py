"""InfluxDB through its v1 HTTP API: `/write` with line protocol, `/query` with InfluxQL.

Every InfluxDB release serves this API (1.x natively, 2.x through its v1 compatibility
endpoints, 3 Core natively), so one small client covers them all. Errors carry the HTTP status
(`InfluxError.status`, None when no answer came) and split into `InfluxUnavailable` (no answer,
5xx, 429: try again later, after `retry_after` when the server said so) and `InfluxRejected`
(another 4xx: credentials, permissions, a missing database, a size limit, or the data itself).

Which lines of a write InfluxDB refused is read from its answer (`refused_lines`), never guessed:

| server | status | body names |
|---|---|---|
| 1.x, 2.x | 400 | `unable to parse 'LINE': reason` for each line it could not parse |
| 1.x | 400 | `partial write: field type conflict: input field "F" on measurement "M" is type T, ...` |
| 2.x | 422 | the same partial write, in `{"code": ..., "message": ...}` |
| 3 Core | 400 | `{"error": ..., "data": [{"line_number": n, "original_line": ..., "error_message": ...}]}` |
| IOx (Cloud) | 400 | `{"code": "invalid", "line": n, "message": ...}`: the first refused line |

A type conflict names the measurement, field and type, which picks the refused points out of the
batch. `InfluxV1.write_lines` writes a batch, collects the lines InfluxDB named and writes the
rest again (the same points: harmless) until it takes them; a 413 splits the request in halves.
Any other refusal (a 400 that names no line, such as 1.x's "points beyond retention policy")
is raised: it is the server's configuration, not the data, and retrying after the fix stores all.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import json
import re
import ssl
import time
from typing import Any

import httpx

from core.settings import Settings

#: Retention policy of late readings (readings for a village-day already sealed by the anchoring
#: worker): the same measurements and tags as the raw data plus the tag `sealed_through`, so that
#: they can never overwrite an anchored point, and queries of the default retention policy (daily
#: digests, growth summaries, rollups, dashboards) never see them. On 2.x: the bucket `<db>/late`.
LATE_RP = "late"

#: Statuses of a write whose body may name the refused lines (1.x/3: 400; 2.x partial writes: 422).
LINE_STATUSES = (400, 422)


class InfluxError(RuntimeError):
    """An InfluxDB request failed. `status`: the HTTP status, None when no answer came; `label`: the
    status or "timeout"/"connection" (for metrics); `retry_after`: seconds the server asked to wait."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.label = label or (str(status) if status is not None else "connection")


class InfluxUnavailable(InfluxError):
    """No answer (connection refused, timeout), a 5xx or a 429: the same request may succeed later."""


class InfluxRejected(InfluxError):
    """A 4xx other than 429: bad credentials or permissions, a missing database, a size limit, bad lines."""


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
        except httpx.TimeoutException as e:
            msg = f"InfluxDB at {self.url} did not answer in time: {e.__class__.__name__}: {e}"
            raise InfluxUnavailable(msg, label="timeout") from e
        except httpx.TransportError as e:
            raise InfluxUnavailable(f"InfluxDB at {self.url} unreachable: {e.__class__.__name__}: {e}") from e
        if r.status_code < 400:
            return r
        text = error_text(r.text)
        retry_after = parse_retry_after(r.headers.get("Retry-After"))
        if r.status_code >= 500 or r.status_code == 429:
            raise InfluxUnavailable(
                f"InfluxDB answered {r.status_code}: {text[:300]}", r.status_code, r.text, retry_after
            )
        raise InfluxRejected(f"InfluxDB refused {path} with {r.status_code}: {text[:500]}", r.status_code, r.text)

    def what_to_fix(self, e: InfluxError) -> str:
        """One sentence for the operator: what the failure means and which setting or server fix it needs."""
        db = self.db
        if e.status is None:
            return f"InfluxDB at {self.url} is unreachable ({e.label}): is it running? check INFLUX_URL"
        auth = "INFLUX_TOKEN" if "authorization" in self._http.headers else "INFLUX_USERNAME/INFLUX_PASSWORD"
        advice = {
            401: f"InfluxDB refused the credentials (401): check {auth}",
            403: f"InfluxDB denies writing to {db!r} (403): grant the user WRITE on it (2.x: a token with write)",
            404: f"InfluxDB has no database {db!r} (404): create it (2.x: the bucket, mapped by name) or fix INFLUX_DB",
            413: "InfluxDB refused a request as too large (413) even as a single line: raise its max-body-size",
            429: "InfluxDB is rate-limiting writes (429): waiting as asked (Retry-After); raise its write limits",
        }.get(e.status)
        if advice:
            return advice
        if e.status >= 500:
            return f"InfluxDB failed ({e.status}): check its log and disk; retrying"
        return (
            f"InfluxDB refused the batch ({e.status}) without naming a line: fix the server (retention policy, limits)"
        )

    def write_lines(self, lines: list[str], rp: str | None = None, body: bytes | None = None) -> dict[int, str]:
        """Write lines (`body`: the same lines already joined); return the lines InfluxDB refused by name,
        as {index: its reason}. Other failures raise `InfluxError`, with nothing known to be stored.

        The lines named in a 400/422 answer are taken out and the rest written again; a 413 halves
        the request. Each round takes out a line or halves a part, so it ends.
        """
        refused: dict[int, str] = {}
        parts = [list(range(len(lines)))]
        while parts:
            part = parts.pop()
            data = body if body is not None and len(part) == len(lines) else "\n".join(lines[i] for i in part)
            try:
                self.write(data, rp=rp)
            except InfluxRejected as e:
                named = refused_lines(e.body, [lines[i] for i in part]) if e.status in LINE_STATUSES else {}
                if named:
                    refused.update((part[i], reason) for i, reason in named.items())
                    parts.append([index for i, index in enumerate(part) if i not in named])
                elif e.status == 413 and len(part) > 1:
                    parts += [part[len(part) // 2 :], part[: len(part) // 2]]
                else:
                    raise
        return refused

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


def error_text(body: str) -> str:
    """The message of an InfluxDB error body: 1.x `{"error"}`, 2.x `{"message"}`, else the text itself."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or body).strip()
    return body.strip()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay seconds or an HTTP date), None when absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return None


_UNABLE = "unable to parse '"
_CONFLICT = re.compile(
    r'field type conflict: input field "((?:[^"\\]|\\.)*)" on measurement "((?:[^"\\]|\\.)*)" is type (\w+)'
)
_DROPPED = re.compile(r"\s*dropped=\d+\s*$")


def refused_lines(body: str, lines: list[str]) -> dict[int, str]:
    """The lines of a write that InfluxDB's error `body` names, as {index in `lines`: reason}.

    Empty when the answer names none (the caller then treats the failure as the server's)."""
    refused: dict[int, str] = {}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        data = doc.get("data")  # InfluxDB 3 Core: one object or a list of them, line numbers from 1
        items = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            index = _line_index(item.get("line_number"), item.get("original_line"), lines)
            if index is not None:
                refused[index] = str(item.get("error_message") or doc.get("error") or "refused")
        if not items and isinstance(doc.get("line"), int):  # IOx: the first refused line
            index = _line_index(doc["line"], None, lines)
            if index is not None:
                refused[index] = str(doc.get("message", "refused")).split("\n")[0]
    text = error_text(body)
    if _UNABLE in text:
        positions: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            positions.setdefault(line, []).append(i)
        for segment in text.split(_UNABLE)[1:]:
            line, sep, reason = segment.rpartition("': ")
            if line not in positions:  # an unclosed quote swallowed the lines after it: refuse its own
                line = line.split("\n", 1)[0]
            for i in positions.get(line, []) if sep else []:
                refused[i] = f"unable to parse: {_DROPPED.sub('', reason).strip()}"
    conflict = _CONFLICT.search(text)
    if conflict:
        field, measurement, kind = (_unescape_quoted(g) for g in conflict.groups())
        reason = _DROPPED.sub("", text[conflict.start() :]).strip()
        for i, line in enumerate(lines):
            parsed = line_fields(line)
            if parsed is not None and parsed[0] == measurement and parsed[1].get(field) == kind:
                refused[i] = reason
    return refused


def _line_index(number: object, original: object, lines: list[str]) -> int | None:
    if isinstance(number, int) and 1 <= number <= len(lines) and original in (None, lines[number - 1]):
        return number - 1
    if isinstance(original, str):
        with contextlib.suppress(ValueError):
            return lines.index(original)
    return None


def _unescape_quoted(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _scan(line: str, start: int, stops: str) -> int:
    """Index of the first character of `stops` at or after `start` that no backslash escapes."""
    i = start
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] in stops:
            return i
        i += 1
    return i


def _unescape(value: str) -> str:
    return re.sub(r"\\([,= \\])", r"\1", value)


def line_fields(line: str) -> tuple[str, dict[str, str]] | None:
    """The measurement of a line-protocol line and its fields' types, named as InfluxDB names them
    (float, integer, unsigned, string, boolean); None when the line is not line protocol."""
    end = _scan(line, 0, ", ")
    measurement = _unescape(line[:end])
    if end < len(line) and line[end] == ",":
        end = _scan(line, end, " ")  # past the tags
    i = end + 1
    fields: dict[str, str] = {}
    while i < len(line):
        eq = _scan(line, i, "=")
        if eq >= len(line):
            return None
        key = _unescape(line[i:eq])
        j = eq + 1
        if j < len(line) and line[j] == '"':
            j += 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            fields[key] = "string"
            j += 1
        else:
            stop = _scan(line, j, ", ")
            value = line[j:stop]
            j = stop
            if value in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
                fields[key] = "boolean"
            elif value.endswith("i"):
                fields[key] = "integer"
            elif value.endswith("u"):
                fields[key] = "unsigned"
            else:
                fields[key] = "float"
        if j >= len(line) or line[j] == " ":
            break
        i = j + 1  # past the comma
    return (measurement, fields) if fields else None
