"""Registry import: YAML and CSV, validation with precise errors, idempotence, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from core import registry_io
from core.db import make_engine, migrate
from core.models import Device, Farm, Plot
from core.registry_io import DEMO_FILE, ImportErrors, counts, import_csv, import_yaml

DEMO_COUNTS = {
    "counties": 1,
    "townships": 3,
    "villages": 6,
    "farms": 6,
    "plots": 23,
    "herds": 1,
    "animals": 40,
    "devices": 39,
}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    return make_engine(url)


def _import(engine: Engine, path: Path) -> registry_io.ImportResult:
    with Session(engine) as session:
        result = import_yaml(session, path)
        session.commit()
        return result


def _counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return counts(session)


def test_demo_import_is_idempotent(engine: Engine) -> None:
    first = _import(engine, DEMO_FILE)
    assert first.created == DEMO_COUNTS
    assert _counts(engine) == DEMO_COUNTS
    second = _import(engine, DEMO_FILE)
    assert not second.changed
    assert second.unchanged == DEMO_COUNTS
    assert _counts(engine) == DEMO_COUNTS


def test_demo_data_set_shape() -> None:
    doc = yaml.safe_load(DEMO_FILE.read_text(encoding="utf-8"))
    assert doc["counties"][0]["code"] == "211122"
    assert all(t["code"].startswith("211122") for t in doc["townships"])
    kinds = {d["kind"] for d in doc["devices"]}
    assert kinds == {"soil", "paddy", "weather", "collar", "barn"}
    rice = [p for p in doc["plots"] if p["crop"] == "rice"]
    assert len(rice) > len(doc["plots"]) / 2
    assert all(50 <= p["area_mu"] <= 300 for p in rice)
    assert {"maize", "peanut", "soybean"} <= {p["crop"] for p in doc["plots"]}


def test_update_changes_only_what_differs(engine: Engine, tmp_path: Path) -> None:
    _import(engine, DEMO_FILE)
    doc = yaml.safe_load(DEMO_FILE.read_text(encoding="utf-8"))
    doc["plots"][0]["area_mu"] = 123.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    result = _import(engine, changed)
    assert result.updated == {"plots": 1}
    assert result.created == {}
    with Session(engine) as session:
        plot = session.exec(select(Plot).where(Plot.plot_no == doc["plots"][0]["plot_no"])).one()
        assert plot.area_mu == 123.5


BASE = """\
counties:
  - {code: "211122", name_zh: 盘山县}
townships:
  - {code: "211122101", county_code: "211122", name_zh: 沙岭镇}
villages:
  - {code: "211122101201", township_code: "211122101", name_zh: 北郑家村}
farms:
  - {code: F1, name: 合作社, village_code: "211122101201", contact_name: 王秘密, contact_phone: "13800009999"}
plots:
  - {plot_no: P1, farm_code: F1, village_code: "211122101201", area_mu: 100, crop: rice}
herds:
  - {herd_no: H1, farm_code: F1, village_code: "211122101201", head_count: 1}
animals:
  - {ear_tag: "A1", herd_no: H1}
devices:
  - {id: paddy-1, kind: paddy, plot_no: P1}
"""


def _bad(tmp_path: Path, text: str) -> list[registry_io.RowError]:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return _import_errors(path)


def _import_errors(path: Path) -> list[registry_io.RowError]:
    url = f"sqlite:///{path.parent / 'bad.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session, pytest.raises(ImportErrors) as info:
        import_yaml(session, path)
    assert _counts(engine) == dict.fromkeys(DEMO_COUNTS, 0), "nothing may be imported"
    return info.value.errors


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "entity", "field", "message"),
    [
        ('{code: "211122101", county_code', '{code: "211123101", county_code', "townships", "code", "does not start"),
        ('{code: "211122101201", township', '{code: "211122102201", township', "villages", "code", "does not start"),
        ("kind: paddy, plot_no: P1", "kind: sprinkler, plot_no: P1", "devices", "kind", "unknown device kind"),
        ("kind: paddy, plot_no: P1", "kind: collar, plot_no: P1", "devices", "plot_no", "attaches to an animal"),
        ("kind: paddy, plot_no: P1", "kind: paddy, plot_no: P9", "devices", "plot_no", "plot 'P9' does not exist"),
        ("area_mu: 100", "area_mu: -5", "plots", "area_mu", "greater than 0"),
        (
            'farm_code: F1, village_code: "211122101201", area',
            'farm_code: F7, village_code: "211122101201", area',
            "plots",
            "farm_code",
            "farm 'F7' does not exist",
        ),
        ('{code: "211122", name_zh', '{code: "21112", name_zh', "counties", "code", "should match pattern"),
    ],
)
def test_bad_row_is_reported_precisely(
    tmp_path: Path, old: str, new: str, entity: str, field: str, message: str
) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    errors = _bad(tmp_path, text)
    error = errors[0]
    # later rows may only add "does not exist" for the key the bad row failed to define
    assert all("does not exist" in e.message for e in errors[1:]), [str(e) for e in errors]
    assert (error.entity, error.field, error.index) == (entity, field, 0)
    assert message in error.message
    assert error.line == _line_of(text, new.split(",")[0])
    assert str(error).startswith(f"{tmp_path / 'bad.yaml'}:{error.line}: {entity}[0] field '{field}'")


def test_several_errors_all_reported_and_no_personal_data(tmp_path: Path) -> None:
    text = BASE.replace("area_mu: 100", "area_mu: 0").replace('"13800009999"', '"call me"')
    text += "  - {id: collar-1, kind: collar, herd_no: H1}\n  - {id: paddy-1, kind: paddy, plot_no: P1}\n"
    errors = _bad(tmp_path, text)
    fields = sorted((e.entity, e.field or "") for e in errors)
    assert fields == [("devices", "herd_no"), ("devices", "id"), ("farms", "contact_phone"), ("plots", "area_mu")]
    rendered = "\n".join(str(e) for e in errors)
    assert "call me" not in rendered and "王秘密" not in rendered
    # the device on the invalid plot is not reported again as a missing plot
    assert "does not exist" not in rendered


def test_unknown_section_and_field(tmp_path: Path) -> None:
    text = BASE + "tractors:\n  - {id: t1}\n"
    text = text.replace("crop: rice}", "crop: rice, colour: green}")
    messages = {(e.entity, e.field): e.message for e in _bad(tmp_path, text)}
    assert "unknown section" in messages[("tractors", None)]
    assert "Extra inputs" in messages[("plots", "colour")]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    errors = _bad(tmp_path, BASE + "  - {id: x, kind: [\n")
    assert errors[0].entity == "file" and errors[0].line is not None


def test_csv_import(engine: Engine, tmp_path: Path) -> None:
    _import(engine, DEMO_FILE)
    village = "211122101201"
    plots = tmp_path / "plots.csv"
    plots.write_text(
        "plot_no,farm_code,village_code,area_mu,crop,lat,lon\n"
        f"X-1,PS-F001,{village},88.5,rice,41.2,122.0\n"
        f"X-2,PS-F001,{village},60,rice,,\n",
        encoding="utf-8",
    )
    devices = tmp_path / "devices.csv"
    devices.write_text("id,kind,plot_no,herd_no,ear_tag\nsoil-9001,soil,X-1,,\nbarn-9001,barn,,PS-H001,\n")
    with Session(engine) as session:
        assert import_csv(session, "plots", plots).created == {"plots": 2}
        assert import_csv(session, "device", devices).created == {"devices": 2}
        session.commit()
    with Session(engine) as session:
        assert import_csv(session, "plots", plots).unchanged == {"plots": 2}
        plot = session.exec(select(Plot).where(Plot.plot_no == "X-2")).one()
        assert plot.lat is None and plot.area_mu == 60
        device = session.get(Device, "soil-9001")
        assert device is not None and device.plot_id is not None


def test_csv_errors_name_file_line_and_field(engine: Engine, tmp_path: Path) -> None:
    _import(engine, DEMO_FILE)
    bad = tmp_path / "plots.csv"
    bad.write_text(
        "plot_no,farm_code,village_code,area_mu,crop\n"
        "Y-1,PS-F001,211122101201,10,rice\n"
        "Y-2,PS-F001,211122101201,-3,rice\n"
        "Y-3,PS-F404,211122101201,10,rice\n",
        encoding="utf-8",
    )
    with Session(engine) as session, pytest.raises(ImportErrors) as info:
        import_csv(session, "plots", bad)
    errors = info.value.errors
    assert [(e.line, e.field) for e in errors] == [(3, "area_mu"), (4, "farm_code")]
    assert str(errors[0]).startswith(f"{bad}:3: plots[1] field 'area_mu'")
    assert _counts(engine)["plots"] == DEMO_COUNTS["plots"]


def test_farm_personal_data_is_stored_but_not_logged(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        _import(engine, DEMO_FILE)
    with Session(engine) as session:
        farm = session.exec(select(Farm).where(Farm.code == "PS-F001")).one()
        assert farm.contact_phone == "13800000101"
    assert "13800000101" not in caplog.text and farm.contact_name not in caplog.text


def test_cli_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app
    from core.db import get_engine
    from core.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("VILLAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["registry", "demo"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["registry", "show"])
        assert result.exit_code == 0, result.output
        assert "211122101201" in result.output and "39" in result.output
        bad = tmp_path / "bad.yaml"
        bad.write_text(BASE.replace("area_mu: 100", "area_mu: -1"), encoding="utf-8")
        result = runner.invoke(app, ["registry", "import", str(bad)])
        assert result.exit_code == 1
        assert "area_mu" in result.output and "Traceback" not in result.output
        result = runner.invoke(app, ["registry", "import", str(tmp_path / "missing.yaml")])
        assert result.exit_code == 2
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()
