"""The app's own static files (api/static), served compressed with a cache policy, and their URLs.

Pages name a file by `asset("style.css")`, which gives `/static/style.css?v=<hash of its content>`:
such a URL never changes its content, so it is cached for a year (`immutable`); a deployment that
changes the file changes its URL. A file asked for without the right version (ECharts loaded by
charts.js, the favicon, old links) may be kept a day (`max-age=86400`), and revalidated by ETag after.

The stylesheet (6 kB, 2 kB compressed) is inlined in every page (`<style>`), so a page paints from its
own HTML, without waiting for a second request (a trace page is mostly a first visit, from a scan); the
Content-Security-Policy allows that one stylesheet by its hash (STYLE_HASH) and no other inline style.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from starlette.responses import Response
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
DAILY = "public, max-age=86400"
STYLE = (HERE / "style.css").read_text(encoding="utf-8")
STYLE_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'"  # CSP source


def versions(folder: Path = HERE) -> dict[str, str]:
    """File name (relative to the folder, '/'-separated) -> the first 12 hex digits of its SHA-256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Assets(StaticFiles):
    """StaticFiles with the cache policy above; `url(name)` the versioned URL of a file."""

    def __init__(self, directory: Path = HERE, prefix: str = "/static") -> None:
        super().__init__(directory=str(directory))
        self.prefix = prefix
        self.versions = versions(directory)

    def url(self, name: str) -> str:
        version = self.versions.get(name)
        return f"{self.prefix}/{name}?v={version}" if version else f"{self.prefix}/{name}"

    def file_response(self, full_path: Any, stat_result: Any, scope: Any, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        name = Path(full_path).relative_to(self.directory).as_posix()  # type: ignore[arg-type]
        query = scope.get("query_string", b"").decode("latin-1")
        current = self.versions.get(name)
        response.headers["Cache-Control"] = IMMUTABLE if current and query == f"v={current}" else DAILY
        return response
