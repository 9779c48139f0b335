"""The README's file formats are true: its registry and trace examples import as they are, the
correction it describes works on them, and its table of who may reference what is the declaration."""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import Session, select
from typer.testing import CliRunner

from cli.main import app
from core.db import get_engine, migrate
from core.registry_io import import_yaml
from ledger.models import EventCorrection, Lot, TraceEvent
from ledger.records import records_of_lot
from ledger.trace_io import import_trace, import_trace_data

README = Path(__file__).parents[1] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Registry and trace files")
    return text[start : text.index("\n## ", start + 5)]


def test_readme_examples_import_and_correct(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", _section(), re.S)
    assert len(blocks) == 2
    (tmp_path / "registry.yaml").write_text(blocks[0], encoding="utf-8")
    (tmp_path / "trace.yaml").write_text(blocks[1], encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'r.db'}"
    migrate(url)
    with Session(get_engine(url)) as session:
        registry = import_yaml(session, tmp_path / "registry.yaml")
        assert sum(registry.created.values()) == 9 and not registry.updated
        trace = import_trace(session, tmp_path / "trace.yaml")
        assert dict(trace.created) == {"products": 2, "facilities": 1, "lots": 2, "events": 5, "inspections": 1}
        session.commit()
        again = import_trace(session, tmp_path / "trace.yaml")
        assert not again.changed
        typo = session.exec(
            select(TraceEvent).where(TraceEvent.attributes["water_mm"].as_float() == 500)  # type: ignore[index]
        ).one()
        fixed = session.exec(
            select(TraceEvent).where(TraceEvent.attributes["water_mm"].as_float() == 50)  # type: ignore[index]
        ).one()
        corrections = [
            {
                "event": typo.event_id,
                "reason": "incorrect_data",
                "time": "2026-07-16T09:00:00+08:00",
                "corrective": fixed.event_id,
            }
        ]
        import_trace_data(session, {"corrections": corrections})
        session.commit()
        dried = session.exec(select(Lot).where(Lot.lot_no == "2026-D01")).one()
        kinds = {r.kind for r in records_of_lot(session, dried.id)}  # type: ignore[arg-type]
        assert "correction/1" in kinds
        assert session.exec(select(EventCorrection)).one().corrective_event_id == fixed.id


def test_readme_rules_table_is_the_declaration() -> None:
    result = CliRunner().invoke(app, ["registry", "rules", "--markdown"])
    assert result.exit_code == 0
    assert result.output.strip() in _section(), "README 'Who may reference what' differs from core/scope.py"


def _tests_named_in(heading: str) -> set[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    section = text[start : text.index("\n## ", start + 5)]
    return set(re.findall(r"(test_[a-z0-9_]+)(?:`|\b)", section)) - {p.stem for p in _test_files()}


def _test_files() -> list[Path]:
    return sorted(Path(__file__).parent.glob("test_*.py"))


def _defined_tests() -> set[str]:
    defined: set[str] = set()
    for path in _test_files():
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(encoding="utf-8"), re.M))
    return defined


def test_every_test_the_threat_model_names_exists() -> None:
    names = _tests_named_in("## Threat model")
    assert len(names) > 30
    assert names <= _defined_tests(), f"README threat model names missing tests: {sorted(names - _defined_tests())}"


def test_every_guarantee_of_nothing_is_lost_names_an_existing_test() -> None:
    names = _tests_named_in("## Nothing is lost")
    assert len(names) > 15
    missing = names - _defined_tests()
    assert not missing, f"README 'Nothing is lost' names missing tests: {sorted(missing)}"
