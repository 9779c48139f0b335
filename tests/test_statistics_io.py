"""County statistics import: long and wide CSV, every validation error with its line and column,
all-or-nothing, idempotent upserts, the demo panel, and the `village stats` / `village models` CLI.

The database is a real SQLite file migrated with Alembic to revision 0004 (the county statistics
branch), so the migration itself is exercised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from analytics import statistics_io as sio
from analytics.models import CountyStatistic
from core.db import alembic_config, make_engine
from core.models import County
from core.settings import get_settings


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    url = f"sqlite:///{tmp_path / 'stats.db'}"
    make_engine(url).dispose()
    command.upgrade(alembic_config(url), "0004")
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def count(engine: Engine) -> int:
    with Session(engine) as s:
        return s.exec(select(func.count()).select_from(CountyStatistic)).one()


LONG = """county_code,year,indicator_id,value,unit,source
211122,2022,rural_5g_coverage,81.5,%,county yearbook 2023
211122,2023,rural_5g_coverage,90,%,county yearbook 2024
210726,2022,employment_primary,17.2,10k persons,
210726,2022,employment_total,40.1,,
"""


def test_migration_creates_the_table_with_its_unique_key(db: tuple[str, Engine]) -> None:
    _, engine = db
    insp = inspect(engine)
    assert "county_statistic" in insp.get_table_names()
    uniques = insp.get_unique_constraints("county_statistic")
    assert any(u["column_names"] == ["county_code", "year", "indicator_id"] for u in uniques)


def test_long_import_is_idempotent_and_updates_changed_values(db: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = db
    path = write(tmp_path, "long.csv", LONG)
    with Session(engine) as s:
        r = sio.import_statistics(s, path, source_note="fallback note")
        s.commit()
    assert (r.created, r.updated, r.unchanged) == (4, 0, 0)
    assert r.counties == {"211122", "210726"} and r.years == {2022, 2023}
    with Session(engine) as s:
        row = s.exec(select(CountyStatistic).where(CountyStatistic.indicator_id == "rural_5g_coverage")).first()
        assert row is not None and row.unit == "%" and row.source_note == "county yearbook 2023"
        total = s.exec(select(CountyStatistic).where(CountyStatistic.indicator_id == "employment_total")).one()
        assert total.source_note == "fallback note" and total.value == 40.1
    with Session(engine) as s:
        r2 = sio.import_statistics(s, path, source_note="fallback note")
        s.commit()
    assert (r2.created, r2.updated, r2.unchanged) == (0, 0, 4)
    changed = write(tmp_path, "changed.csv", LONG.replace("81.5", "82.0"))
    with Session(engine) as s:
        r3 = sio.import_statistics(s, changed, source_note="fallback note")
        s.commit()
    assert (r3.created, r3.updated, r3.unchanged) == (0, 1, 3)
    assert count(engine) == 4
    with Session(engine) as s:
        frame = sio.load_statistics(s, indicators=["rural_5g_coverage"])
    assert sorted(frame["value"]) == [82.0, 90.0]


def test_wide_import_skips_empty_cells(db: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = db
    text = (
        "county_code,year,county_name,rural_5g_coverage,internet_penetration,employment_total\n"
        "211122,2022,盘山县,81.5,,20.5\n"
        "211104,2022,大洼区,85,60.2,21\n"
    )
    with Session(engine) as s:
        r = sio.import_statistics(s, write(tmp_path, "wide.csv", text))
        s.commit()
    assert r.created == 5
    with Session(engine) as s:
        wide = sio.to_wide(sio.load_statistics(s))
    assert wide.shape == (2, 3)
    assert wide.loc[("211104", 2022), "internet_penetration"] == 60.2


@pytest.mark.parametrize(
    ("body", "line", "column", "fragment"),
    [
        ("211122,2022,no_such_indicator,1", 2, "indicator_id", "unknown indicator 'no_such_indicator'"),
        ("211122,2022,device_online_rate,90", 2, "indicator_id", "computed from influx data"),
        ("21112,2022,rural_5g_coverage,50", 2, "county_code", "malformed county code '21112'"),
        ("991122,2022,rural_5g_coverage,50", 2, "county_code", "unknown county code '991122'"),
        ("211122,1900,rural_5g_coverage,50", 2, "year", "year 1900 outside 1949.."),
        ("211122,2999,rural_5g_coverage,50", 2, "year", "year 2999 outside"),
        ("211122,22,rural_5g_coverage,50", 2, "year", "malformed year '22'"),
        ("211122,2022,rural_5g_coverage,lots", 2, "value", "'lots' is not a number"),
        ("211122,2022,rural_5g_coverage,nan", 2, "value", "'nan' is not a number"),
        ("211122,2022,rural_5g_coverage,120", 2, "value", "above the maximum 100 %"),
        ("211122,2022,employment_total,-3", 2, "value", "below the minimum 0"),
        ("211122,2022,rural_5g_coverage,", 2, "value", "missing value"),
    ],
)
def test_each_bad_cell_is_reported_with_line_and_column(
    tmp_path: Path, body: str, line: int, column: str, fragment: str
) -> None:
    path = write(tmp_path, "bad.csv", f"county_code,year,indicator_id,value\n{body}\n")
    with pytest.raises(sio.StatisticsImportError) as exc:
        sio.parse_statistics(path, known_counties=sio.known_county_codes())
    errors = exc.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    assert (errors[0].line, errors[0].field) == (line, column)
    assert fragment in errors[0].message
    assert str(errors[0]).startswith(f"{path}:{line}: statistics field '{column}'")


def test_unit_mismatch_duplicate_and_extra_cells(tmp_path: Path) -> None:
    text = (
        "county_code,year,indicator_id,value,unit\n"
        "211122,2022,employment_total,40,persons\n"
        "211122,2022,rural_5g_coverage,80,%\n"
        "\n"
        "211122,2022,rural_5g_coverage,81,%\n"
        "211122,2022,rural_5g_coverage,81,%,extra\n"
    )
    with pytest.raises(sio.StatisticsImportError) as exc:
        sio.parse_statistics(write(tmp_path, "bad.csv", text), known_counties=sio.known_county_codes())
    got = [(e.line, e.field) for e in exc.value.errors]
    assert got == [(2, "unit"), (5, "value"), (6, None)]
    messages = [e.message for e in exc.value.errors]
    assert "differs from the catalogue's '10k persons'" in messages[0]
    assert "already given at line 3" in messages[1]
    assert "6 cells but the header has 5 columns" in messages[2]


def test_wide_header_errors_and_missing_columns(tmp_path: Path) -> None:
    wide = write(tmp_path, "w.csv", "county_code,year,rural_5g_coverage,bogus,fever_alerts\n211122,2022,50,1,2\n")
    with pytest.raises(sio.StatisticsImportError) as exc:
        sio.parse_statistics(wide, known_counties=None)
    assert [(e.line, e.field) for e in exc.value.errors] == [(1, "bogus"), (1, "fever_alerts")]
    nokeys = write(tmp_path, "n.csv", "code,yr,value\n211122,2022,1\n")
    with pytest.raises(sio.StatisticsImportError, match="missing column"):
        sio.parse_statistics(nokeys)
    with pytest.raises(sio.StatisticsImportError, match="cannot read"):
        sio.parse_statistics(tmp_path / "absent.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"county_code,year\n\xff\xfe\x00bad\n")
    with pytest.raises(sio.StatisticsImportError, match="not a valid UTF-8 CSV"):
        sio.parse_statistics(binary)


def test_all_or_nothing(db: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = db
    text = LONG + "211122,2024,rural_5g_coverage,101,%,\n"
    with Session(engine) as s, pytest.raises(sio.StatisticsImportError) as exc:
        sio.import_statistics(s, write(tmp_path, "partly.csv", text))
    assert len(exc.value.errors) == 1 and exc.value.errors[0].line == 6
    assert count(engine) == 0


def test_registry_counties_are_known(db: tuple[str, Engine], tmp_path: Path) -> None:
    _, engine = db
    path = write(tmp_path, "x.csv", "county_code,year,indicator_id,value\n130123,2022,rural_5g_coverage,50\n")
    with Session(engine) as s, pytest.raises(sio.StatisticsImportError, match="unknown county code"):
        sio.import_statistics(s, path)
    with Session(engine) as s:
        s.add(County(code="130123", name_zh="正定县", name_en="Zhengding County"))
        s.commit()
    with Session(engine) as s:
        assert sio.import_statistics(s, path).created == 1
        assert sio.county_names(s)["130123"] == "正定县 Zhengding County"


def test_demo_panel_imports_cleanly_and_is_balanced(db: tuple[str, Engine]) -> None:
    _, engine = db
    with Session(engine) as s:
        first = sio.load_demo(s)
        s.commit()
    with Session(engine) as s:
        second = sio.load_demo(s)
        s.commit()
        long = sio.load_statistics(s)
    assert first.created > 6000 and first.updated == 0
    assert (second.created, second.updated) == (0, 0) and second.unchanged == first.created
    wide = sio.to_wide(long)
    assert wide.index.get_level_values("county_code").nunique() == 14
    assert sorted(wide.index.get_level_values("year").unique()) == list(range(2015, 2025))
    assert "210000" not in wide.index.get_level_values("county_code")  # province rows are kept apart
    province = long[long["county_code"] == "210000"]
    dif2020 = province[(province["indicator_id"] == "dif_index") & (province["year"] == 2020)]["value"]
    assert dif2020.tolist() == [326.29]  # RESEARCH.md section 3
    assert set(long[long["county_code"] != "210000"]["source_note"]) == {sio_demo_note()}
    # the anchors: county means of 2022 close to Liaoning's published figures
    y2022 = wide.xs(2022, level="year")
    assert abs(y2022["rural_5g_coverage"].mean() - 79) < 1.5
    assert abs(y2022["agri_production_digitalization_rate"].mean() - 28.3) < 1.0
    assert y2022["farm_ecommerce_share"].mean() < 15 and y2022["agri_iot_installation_rate"].mean() < 10


def sio_demo_note() -> str:
    from analytics.demo_data import ILLUSTRATIVE

    return ILLUSTRATIVE


def test_demo_file_is_what_the_generator_makes(tmp_path: Path) -> None:
    from analytics.demo_data import write as write_demo

    regenerated = write_demo(tmp_path / "demo.csv")
    assert regenerated.read_text(encoding="utf-8") == sio.DEMO_FILE.read_text(encoding="utf-8")


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli_db(db: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url, _ = db
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_cli_import_reports_errors_and_imports_nothing(cli_db: str, tmp_path: Path) -> None:
    from cli.main import app

    runner = CliRunner()
    bad = write(tmp_path, "bad.csv", LONG + "211122,2024,rural_5g_coverage,abc,%,\n")
    result = runner.invoke(app, ["stats", "import", str(bad)])
    assert result.exit_code == 1
    assert "bad.csv:6: statistics field 'value': rural_5g_coverage: 'abc' is not a number" in result.output
    assert "nothing was imported" in result.output
    good = write(tmp_path, "good.csv", LONG)
    result = runner.invoke(app, ["stats", "import", str(good), "--source", "test"])
    assert result.exit_code == 0, result.output
    assert "4 new, 0 updated, 0 unchanged" in result.output
    result = runner.invoke(app, ["stats", "import", str(good), "--source", "test"])
    assert "0 new, 0 updated, 4 unchanged" in result.output


def test_cli_demo_then_models(cli_db: str) -> None:
    from cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["stats", "demo"]).exit_code == 0
    result = runner.invoke(app, ["models", "entropy", "--index", "dvi", "--year", "2024", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["index"] == "dvi" and doc["m"] == 14
    assert abs(sum(w["weight"] for w in doc["weights"]) - 1) < 1e-12
    result = runner.invoke(app, ["models", "fe", "--controls", "fiscal_agri_support"])
    assert result.exit_code == 0, result.output
    assert "Fixed effects" in result.output and "dvi" in result.output
    result = runner.invoke(app, ["models", "fe", "--x", "no_such_variable"])
    assert result.exit_code == 2 and "unknown variable 'no_such_variable'" in result.output


def test_cli_models_read_a_csv_without_the_database(tmp_path: Path) -> None:
    from cli.main import app

    runner = CliRunner()
    demo = str(sio.DEMO_FILE)
    result = runner.invoke(app, ["models", "lq", "--csv", demo, "--year", "2024", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert len(rows) == 14
    agri = sum(r["agri"] for r in rows)
    total = sum(r["total"] for r in rows)
    assert abs(sum(r["lq"] * r["total"] for r in rows) / total - 1) < 1e-9  # LQs average to 1, weighted
    assert abs(rows[0]["region_share"] - agri / total) < 1e-12
    result = runner.invoke(app, ["models", "threshold", "--csv", demo, "--reps", "20", "--no-double"])
    assert result.exit_code == 0, result.output
    assert "Threshold effect test" in result.output and "Single" in result.output


def test_attack_statistics_of_another_county(cli_db: str, tmp_path: Path) -> None:
    """A county's statistics are that county's: imported as a county administrator, a file with another
    county's values is refused (403-like, every offending line named) and nothing is kept."""
    from api.users import add_user
    from cli.main import app
    from core.db import get_engine

    runner = CliRunner()
    assert runner.invoke(app, ["registry", "demo"]).exit_code == 0
    with Session(get_engine(cli_db)) as session:
        add_user(session, "panshan", "a-long-password-1", "county_admin", "211122")
        add_user(session, "reader", "a-long-password-1", "analyst", "211122")
        session.commit()
    good = write(tmp_path, "mixed.csv", LONG)  # 211122 and 210726 (another county)
    result = runner.invoke(app, ["stats", "import", str(good), "--as", "panshan"])
    assert result.exit_code == 1
    assert "mixed.csv:4: statistics field 'county_code': county 210726 is outside your area" in result.output
    assert "mixed.csv:5:" in result.output and "mixed.csv:2:" not in result.output
    result = runner.invoke(app, ["stats", "import", str(good), "--as", "reader"])
    assert result.exit_code == 1 and "an analyst may read" in result.output
    own = write(tmp_path, "own.csv", "\n".join(LONG.splitlines()[:3]) + "\n")
    result = runner.invoke(app, ["stats", "import", str(own), "--as", "panshan"])
    assert result.exit_code == 0 and "2 new" in result.output, result.output
