"""Languages of the pages: Chinese by default, English on request (`?lang=en` or Accept-Language).

The strings are data (api/i18n/zh.yaml, en.yaml), loaded once; templates reach them as `t`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request

LANGUAGES = ("zh", "en")
DEFAULT = "zh"
STRINGS_DIR = Path(__file__).with_name("i18n")


@cache
def strings(lang: str) -> dict[str, Any]:
    """All strings of a language (nested mappings, as in the YAML file)."""
    return yaml.safe_load((STRINGS_DIR / f"{lang if lang in LANGUAGES else DEFAULT}.yaml").read_text("utf-8"))


def from_accept_language(header: str) -> str | None:
    """The first of our languages the header accepts, by quality (RFC 9110), or None."""
    best: tuple[float, int, str] | None = None
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > 0 and (best is None or (q, -i) > (best[0], best[1])):
            best = (q, -i, primary)
    return best[2] if best else None


def language(request: Request) -> str:
    """`?lang=` wins, then Accept-Language, then Chinese."""
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    return from_accept_language(request.headers.get("accept-language", "")) or DEFAULT
