"""The data files are typed: computation.yaml, crops.yaml and vocab.yaml load through pydantic models, and
every computed indicator of indicators.yaml names the function that computes it, checked at load."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from analytics.catalogue import COMPUTE_FUNCTIONS, PACKAGED_CATALOGUE, Catalogue, get_catalogue
from analytics.computation import PARAMS_FILE, ComputationParams, load_params
from analytics.compute import FUNCTIONS
from core import crops
from core.crops import CROPS_FILE, CropsFile
from ledger.vocab import VOCAB_FILE, _load, get_vocab


def write(tmp_path: Path, doc: Any, name: str = "file.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def test_an_unmapped_computed_indicator_fails_load(tmp_path: Path) -> None:
    doc = yaml.safe_load(PACKAGED_CATALOGUE.read_text("utf-8"))
    ind = next(i for i in doc["indicators"] if i["id"] == "device_coverage")
    del ind["computed_by"]
    with pytest.raises(ValueError, match=r"computed indicator 'device_coverage' \(source registry\) is mapped to no"):
        Catalogue.load(write(tmp_path, doc))
    ind["computed_by"] = "no_such_function"
    with pytest.raises(ValueError, match=r"computed_by 'no_such_function' is no function of analytics/compute\.py"):
        Catalogue.load(write(tmp_path, doc))
    stat = next(i for i in doc["indicators"] if i["source"] == "statistics")
    ind["computed_by"], stat["computed_by"] = "registry", "ledger"
    with pytest.raises(ValueError, match=f"indicator '{stat['id']}': imported statistics are not computed"):
        Catalogue.load(write(tmp_path, doc))


def test_every_computed_indicator_is_emitted_by_its_function() -> None:
    assert set(FUNCTIONS) == set(COMPUTE_FUNCTIONS)
    computed = [i for i in get_catalogue().indicators if i.source != "statistics"]
    assert len(computed) == 19
    for ind in computed:
        assert f'"{ind.id}"' in inspect.getsource(FUNCTIONS[ind.computed_by]), (ind.id, ind.computed_by)


def test_computation_parameters_are_typed(tmp_path: Path) -> None:
    raw = yaml.safe_load(PARAMS_FILE.read_text("utf-8"))
    params = load_params()
    assert isinstance(params, ComputationParams)
    assert params.online.intervals == raw["online"]["intervals"] and params.fever.above_c == raw["fever"]["above_c"]
    assert [list(w) for w in params.paddy.season] == raw["paddy"]["season"]
    bad = {**raw, "continuous_monitoring": {"day_completeness_pct": 120, "days_share_pct": 80}}
    bad["paddy"] = {**raw["paddy"], "season": [["5-25", "07-01"]]}
    bad["idle"] = {"dayz": 7}
    with pytest.raises(ValidationError) as exc:
        ComputationParams.load(write(tmp_path, bad))
    text = str(exc.value)
    assert "continuous_monitoring.day_completeness_pct" in text and "paddy.season.0.0" in text
    assert "idle.days" in text and "idle.dayz" in text


def test_crop_thresholds_are_typed(tmp_path: Path) -> None:
    assert crops.thresholds("rice") == {"gdd_base_c": 10, "soil_moisture_min": 30, "paddy_water_min_cm": -5}
    assert crops.thresholds("unknown") == crops.thresholds(None) == CropsFile.load().default.given()
    doc = yaml.safe_load(CROPS_FILE.read_text("utf-8"))
    doc["crops"]["maize"]["soil_moisture_mni"] = 18
    doc["crops"]["rice"]["gdd_base_c"] = "ten"
    with pytest.raises(ValidationError) as exc:
        CropsFile.load(write(tmp_path, doc))
    assert "crops.maize.soil_moisture_mni" in str(exc.value) and "crops.rice.gdd_base_c" in str(exc.value)


def test_vocabulary_is_typed(tmp_path: Path) -> None:
    vocab = get_vocab()
    # a flow mapping's unquoted comma used to cut this description short and add a stray key
    assert vocab.step("sowing").attributes["variety"].description == "rice variety, e.g. 盐丰47"
    doc = yaml.safe_load(VOCAB_FILE.read_text("utf-8"))
    doc["steps"]["sowing"]["attributes"]["variety"]["stray"] = None
    doc["units"]["kg"]["decimals"] = -1
    doc["lineage"]["transform"]["mill"] = 1.2
    with pytest.raises(ValueError) as exc:
        _load(write(tmp_path, doc))
    text = str(exc.value)
    assert "steps.sowing.attributes.variety.stray" in text and "units.kg.decimals" in text
    assert "lineage.transform" in text
    doc = yaml.safe_load(VOCAB_FILE.read_text("utf-8"))
    doc["steps"]["shipping"]["namespace"] = "project"
    with pytest.raises(ValueError, match="project step 'shipping' would shadow the CBV step"):
        _load(write(tmp_path, doc))
