"""Agronomic thresholds per crop (core/data/crops.yaml): data shared by the ledger and analytics."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

CROPS_FILE = Path(__file__).parent / "data" / "crops.yaml"


@functools.cache
def _load() -> dict[str, Any]:
    return yaml.safe_load(CROPS_FILE.read_text(encoding="utf-8"))


def thresholds(crop: str | None) -> dict[str, float]:
    """The crop's thresholds, falling back to the defaults for anything it does not set."""
    data = _load()
    own = data["crops"].get((crop or "").lower(), {})
    return {**data["default"], **{k: v for k, v in own.items() if k != "name"}}
