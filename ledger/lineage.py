"""Lineage that balances: a lot holds no more than its parents released to it.

Each parent link says how much of the parent the child takes (`quantity`, in the parent's unit).
Two things must hold, per unit of measure:
- a parent releases no more than it holds: the quantities all its children take add up to at most
  the parent's quantity;
- a child holds no more than what it took times the yield its relation allows (ledger/data/vocab.yaml
  `lineage`): 1 for a merge or a split, and for a transformation the yield of the kind of facility
  that makes the child (drying only loses water; a mill turns paddy into at most 0.8 of its mass of
  rice). Quantities in different units are compared in kilograms, through the units' masses
  (`kg`, `t`) or the product's `unit_kg` (a 5 kg bag); quantities that cannot be compared are an error.

Unknown quantities (a lot recorded without one) constrain nothing; the check names the parent, the
quantities and units whenever it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.vocab import Vocabulary

__all__ = ["Draw", "Holding", "in_kg", "max_yield", "over_release", "over_yield"]

EPSILON = 1e-9


@dataclass(frozen=True)
class Holding:
    """A quantity of a lot: how much, in which unit, and the mass of one unit of its product."""

    quantity: float | None
    unit: str
    unit_kg: float | None = None  # the product's unit mass (for units that are not masses, e.g. bag)


@dataclass(frozen=True)
class Draw:
    """What a child takes of one parent."""

    parent: str  # the parent's trace code, for messages
    parent_holding: Holding
    quantity: float | None  # in the parent's unit
    relation: str


def in_kg(vocab: Vocabulary, quantity: float, unit: str, unit_kg: float | None) -> float | None:
    """`quantity` of `unit` in kilograms, or None when the unit has no known mass."""
    u = vocab.units.get(unit)
    kg = u.kg if u is not None and u.kg is not None else unit_kg
    return None if kg is None else quantity * kg


def _fmt(x: float) -> str:
    return f"{x:,.3f}".rstrip("0").rstrip(".")


def over_release(parent: str, holding: Holding, taken_before: float, taking: float) -> str | None:
    """Why a parent cannot release `taking` more when `taken_before` is already taken, or None."""
    if holding.quantity is None:
        return None
    if taken_before + taking > holding.quantity * (1 + EPSILON) + EPSILON:
        left = max(0.0, holding.quantity - taken_before)
        return (
            f"lot {parent} holds {_fmt(holding.quantity)} {holding.unit} of which {_fmt(taken_before)} "
            f"{holding.unit} already went to other lots: {_fmt(left)} {holding.unit} left, not {_fmt(taking)}"
        )
    return None


def max_yield(vocab: Vocabulary, relation: str, facility_kind: str | None) -> float:
    rule = vocab.lineage.get(relation, 1.0)
    if isinstance(rule, dict):
        return float(rule.get(facility_kind or "", rule.get("default", 1.0)))
    return float(rule)


def over_yield(vocab: Vocabulary, child: Holding, draws: list[Draw], facility_kind: str | None) -> str | None:
    """Why `child` holds more than its parents released to it, or None (also when quantities are unknown)."""
    if child.quantity is None or not draws or any(d.quantity is None for d in draws):
        return None
    allowed = 0.0
    same_unit = all(d.parent_holding.unit == child.unit for d in draws)
    for d in draws:
        assert d.quantity is not None
        y = max_yield(vocab, d.relation, facility_kind)
        if same_unit:
            allowed += d.quantity * y
            continue
        kg = in_kg(vocab, d.quantity, d.parent_holding.unit, d.parent_holding.unit_kg)
        if kg is None:
            return f"cannot compare {d.parent_holding.unit} of lot {d.parent} with {child.unit}: declare unit_kg"
        allowed += kg * y
    held = child.quantity
    unit = child.unit
    if not same_unit:
        kg = in_kg(vocab, child.quantity, child.unit, child.unit_kg)
        if kg is None:
            return f"cannot compare {child.unit} with its parents' units: declare the product's unit_kg"
        held, unit = kg, "kg"
    if held > allowed * (1 + EPSILON) + EPSILON:
        taken = ", ".join(
            f"{_fmt(d.quantity or 0)} {d.parent_holding.unit} of {d.parent} ({d.relation})" for d in draws
        )
        return (
            f"the lot would hold {_fmt(held)} {unit} but its parents released at most {_fmt(allowed)} {unit} "
            f"({taken}, times the yield its relation allows)"
        )
    return None
