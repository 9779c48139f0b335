"""Helpers of the fault tests (tests/test_faults_*.py): ingest metrics and logs, InfluxDB fault servers.

`InfluxFaults` is a small real HTTP server in front of the real InfluxDB: it forwards every request
unchanged, or answers `/write` the way InfluxDB 2.x/3 do and Debian's InfluxDB 1.6 never does
(429 and 503 with Retry-After, a hanging answer, 2.x's 422 partial write). Everything else in the
fault tests is produced by the real servers themselves.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, col, select

from core.db import get_engine
from core.localstack import LocalStack
from core.models import DeadLetter, DeadLetterPayload
from tests.conftest import wait_until


def metric(port: int, name: str, **labels: str) -> float:
    """A sample of a replica's Prometheus metrics (counters by their `_total` name), 0 when absent."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_subscribed(port: int, timeout: float = 60) -> None:
    """Until the replica with metrics on `port` holds its subscription."""
    assert wait_until(lambda: metric(port, "village_ingest_subscribed") == 1, timeout), "ingest never subscribed"


def log_events(path: Path) -> list[dict]:
    """The JSON log lines (LOG_FORMAT=json) of a log file; other lines are skipped."""
    events = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            events.append(doc)
    return events


def dead_letters(stack: LocalStack, reason: str | None = None) -> list[tuple[DeadLetter, DeadLetterPayload]]:
    with Session(get_engine(stack.database_url)) as session:
        query = select(DeadLetter, DeadLetterPayload).join(
            DeadLetterPayload, col(DeadLetterPayload.id) == col(DeadLetter.payload_id)
        )
        if reason:
            query = query.where(DeadLetter.reason == reason)
        return [(d, p) for d, p in session.exec(query.order_by(col(DeadLetter.id)))]


class InfluxFaults:
    """A real HTTP server in front of InfluxDB. `mode`: "forward"; ("status", code, retry_after);
    ("hang", seconds) then forward; "2.x" forwards and answers a 1.x partial write as 2.x does
    (422, `{"code": "unprocessable entity", "message": ...}`). `writes` logs (time, status) per /write."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: object = "forward"
        self.writes: list[tuple[float, int]] = []
        faults = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                faults._handle(self)

            def do_POST(self) -> None:
                faults._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, status: int | None = None, since: float = 0.0) -> int:
        return sum(1 for t, s in list(self.writes) if t >= since and (status is None or s == status))

    def _answer(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            h.send_response(status)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:  # the client gave up waiting (the "hang" mode)
            pass

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        mode = self.mode
        is_write = h.path.startswith("/write")
        if is_write and isinstance(mode, tuple) and mode[0] == "status":
            _, status, retry_after = mode
            headers = {"Content-Type": "application/json"}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            self.writes.append((time.monotonic(), status))
            message = {429: "too many requests", 503: "service unavailable"}.get(status, "error")
            self._answer(h, status, json.dumps({"code": "too many requests", "message": message}).encode(), headers)
            return
        if is_write and isinstance(mode, tuple) and mode[0] == "hang":
            time.sleep(mode[1])
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("authorization", "content-type")}
        try:
            r = httpx.request(h.command, self.upstream + h.path, content=body, headers=headers, timeout=30)
        except httpx.HTTPError:
            self._answer(h, 502, b'{"error": "upstream unreachable"}', {})
            return
        status, out = r.status_code, r.content
        if is_write and mode == "2.x" and status == 400 and "partial write" in r.text:
            status = 422
            message = "failure writing points to database: " + r.json()["error"]
            out = json.dumps({"code": "unprocessable entity", "message": message}).encode()
        if is_write:
            self.writes.append((time.monotonic(), status))
        self._answer(h, status, out, {"Content-Type": r.headers.get("Content-Type", "application/json")})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
