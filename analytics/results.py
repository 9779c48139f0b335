"""Result objects shared by the models: text tables a researcher recognises, and JSON for the API.

Every result has `summary()` (a fixed-width text table in the style linearmodels and statsmodels
print), `__str__` (the same) and `to_dict()` (plain JSON types only: floats, ints, strings, lists,
dicts and None for a missing or non-finite number), so the API can return it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
STAR_NOTE = "* p<0.05, ** p<0.01, *** p<0.001"


def jsonable(value: Any) -> Any:
    """`value` with numpy/pandas scalars, arrays and frames turned into JSON types; NaN and inf become None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return [jsonable(r) for r in value.reset_index().to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def stars(p: float) -> str:
    for level, mark in STARS:
        if p < level:
            return mark
    return ""


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: fixed decimals, scientific for very small or large ones, '' for None/NaN."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "Yes" if value else "No"
    if isinstance(value, int | np.integer):
        return str(int(value))
    f = float(value)
    if not math.isfinite(f):
        return ""
    if f != 0 and (abs(f) < 10 ** -(digits - 1) or abs(f) >= 1e7):
        return f"{f:.{digits - 1}e}"
    return f"{f:.{digits}f}"


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    digits: int = 4,
    notes: Sequence[str] = (),
) -> str:
    """A fixed-width table: the first column left-aligned, the others right-aligned, rules like linearmodels."""
    cells = [[fmt(c, digits) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    width = sum(widths) + 3 * (len(widths) - 1)
    if title:
        width = max(width, len(title))

    def line(values: Sequence[str]) -> str:
        out = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "   ".join(out).rstrip()

    parts = []
    if title:
        parts.append(title.center(width).rstrip())
    parts += ["=" * width, line(list(headers)), "-" * width]
    parts += [line(r) for r in cells]
    parts.append("=" * width)
    parts += list(notes)
    return "\n".join(parts)


def key_values(pairs: Sequence[tuple[str, Any]], *, columns: int = 2, digits: int = 4) -> str:
    """'label: value' pairs laid out in columns, as the header block of a linearmodels summary."""
    items = [(k, fmt(v, digits)) for k, v in pairs]
    rows = [items[i : i + columns] for i in range(0, len(items), columns)]
    kw = max((len(k) for k, _ in items), default=0)
    vw = max((len(v) for _, v in items), default=0)
    out = []
    for r in rows:
        out.append("   ".join(f"{k + ':':<{kw + 1}} {v:>{vw}}" for k, v in r).rstrip())
    return "\n".join(out)


@dataclass
class Table:
    """One table of a result: rendered as text by `summary()` and as a rich table by the CLI."""

    headers: list[str]
    rows: list[list[Any]]
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    digits: int = 4

    def text(self) -> str:
        return text_table(self.headers, self.rows, title=self.title, notes=self.notes, digits=self.digits)


class Result:
    """Base: `summary()` renders `tables()` as text; `__str__` is the summary."""

    def tables(self) -> list[Table]:  # pragma: no cover - overridden
        raise NotImplementedError

    def summary(self) -> str:
        return "\n\n".join(t.text() for t in self.tables())

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------- regression


COEF_COLUMNS = ("coef", "std_err", "t", "p", "ci_lower", "ci_upper")


@dataclass
class RegressionResult(Result):
    """One fixed-effects regression: coefficient table and fit statistics.

    `coefficients` has the columns coef, std_err, t, p, ci_lower, ci_upper, one row per regressor.
    `r2_within` counts the year effects as explained (as Stata's `xtreg y x i.year, fe`);
    `r2` is linearmodels' R-squared of the model once both effects are removed; `r2_inclusive`
    counts the effects too (the R-squared of the dummy-variable regression).
    """

    dependent: str
    coefficients: pd.DataFrame
    nobs: int
    entities: int
    periods: int
    r2: float
    r2_within: float
    r2_inclusive: float
    entity_effects: bool
    time_effects: bool
    cov_type: str
    cov_note: str = ""
    estimator: str = "PanelOLS"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> pd.Series:
        return self.coefficients["coef"]

    @property
    def std_errors(self) -> pd.Series:
        return self.coefficients["std_err"]

    @property
    def pvalues(self) -> pd.Series:
        return self.coefficients["p"]

    def effects_label(self) -> str:
        effects = [name for flag, name in ((self.entity_effects, "Entity"), (self.time_effects, "Time")) if flag]
        return ", ".join(effects) or "None"

    def _info(self) -> list[tuple[str, Any]]:
        return [
            ("Dep. Variable", self.dependent),
            ("R-squared (within)", self.r2_within),
            ("Estimator", self.estimator),
            ("R-squared (effects removed)", self.r2),
            ("No. Observations", self.nobs),
            ("R-squared (incl. effects)", self.r2_inclusive),
            ("Entities", self.entities),
            ("Cov. Estimator", self.cov_type),
            ("Time periods", self.periods),
            ("Effects", self.effects_label()),
        ]

    def tables(self) -> list[Table]:
        info = self._info()
        pairs = [[*info[i], *info[i + 1]] for i in range(0, len(info), 2)]
        rows = [
            [name, r["coef"], r["std_err"], r["t"], f"{r['p']:.4f}", r["ci_lower"], r["ci_upper"]]
            for name, r in self.coefficients.iterrows()
        ]
        return [
            Table(["", "", "", ""], pairs, title=f"{self.estimator} Estimation Summary"),
            Table(
                ["", "Parameter", "Std. Err.", "T-stat", "P-value", "Lower CI", "Upper CI"],
                rows,
                title="Parameter Estimates",
                notes=[self.cov_note] if self.cov_note else [],
            ),
        ]

    def summary(self) -> str:
        header = key_values(self._info())
        table = self.tables()[1].text()
        title = f"{self.estimator} Estimation Summary"
        width = max(len(x) for x in [*header.splitlines(), table.splitlines()[1]])
        return "\n".join([title.center(width).rstrip(), "=" * width, header, "", table])

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "fixed_effects",
                "estimator": self.estimator,
                "dependent": self.dependent,
                "coefficients": [
                    {"variable": str(name), **{c: row[c] for c in COEF_COLUMNS}}
                    for name, row in self.coefficients.iterrows()
                ],
                "nobs": self.nobs,
                "entities": self.entities,
                "periods": self.periods,
                "r2": self.r2,
                "r2_within": self.r2_within,
                "r2_inclusive": self.r2_inclusive,
                "entity_effects": self.entity_effects,
                "time_effects": self.time_effects,
                "cov_type": self.cov_type,
                "cov_note": self.cov_note,
                **self.extra,
            }
        )


@dataclass
class RegressionTable(Result):
    """Several regressions side by side, the layout of a paper's results table.

    Each cell is the coefficient with its significance stars and, beneath it, the t statistic
    in parentheses (`show="t"`) or the standard error (`show="se"`).
    """

    models: list[RegressionResult]
    names: list[str] | None = None
    title: str = "Two-way fixed effects"
    show: str = "t"

    def column_names(self) -> list[str]:
        return self.names or [f"({i + 1})" for i in range(len(self.models))]

    def variables(self) -> list[str]:
        seen: list[str] = []
        for m in self.models:
            for v in m.coefficients.index:
                if v not in seen:
                    seen.append(str(v))
        return seen

    def tables(self) -> list[Table]:
        cols = self.column_names()
        rows: list[list[Any]] = []
        for v in self.variables():
            top: list[Any] = [v]
            below: list[Any] = [""]
            for m in self.models:
                if v in m.coefficients.index:
                    r = m.coefficients.loc[v]
                    top.append(f"{r['coef']:.4f}{stars(r['p'])}")
                    below.append(f"({r['t']:.2f})" if self.show == "t" else f"({r['std_err']:.4f})")
                else:
                    top.append("")
                    below.append("")
            rows += [top, below]
        rows.append(["Dependent", *(m.dependent for m in self.models)])
        rows.append(["Entity FE", *("Yes" if m.entity_effects else "No" for m in self.models)])
        rows.append(["Year FE", *("Yes" if m.time_effects else "No" for m in self.models)])
        rows.append(["N", *(str(m.nobs) for m in self.models)])
        rows.append(["Within R²", *(f"{m.r2_within:.4f}" for m in self.models)])
        below_label = "t statistics" if self.show == "t" else "standard errors"
        cov = self.models[0].cov_type if self.models else ""
        return [
            Table(["", *cols], rows, title=self.title, notes=[f"{below_label} in parentheses ({cov}); {STAR_NOTE}"])
        ]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "regression_table",
                "title": self.title,
                "columns": self.column_names(),
                "regressions": [m.to_dict() for m in self.models],
            }
        )


@dataclass
class DescriptiveResult(Result):
    """Descriptive statistics per variable: N, mean, standard deviation, min, max."""

    table: pd.DataFrame

    def tables(self) -> list[Table]:
        rows = [[v, int(r["n"]), r["mean"], r["sd"], r["min"], r["max"]] for v, r in self.table.iterrows()]
        return [Table(["Variable", "N", "Mean", "Std. Dev.", "Min", "Max"], rows, title="Descriptive statistics")]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "describe",
                "variables": [{"variable": str(v), **r.to_dict()} for v, r in self.table.iterrows()],
            }
        )


def describe(data: pd.DataFrame, variables: Sequence[str] | None = None) -> DescriptiveResult:
    """The descriptive statistics table of `variables` (all numeric columns by default)."""
    cols = list(variables) if variables else [c for c in data.columns if pd.api.types.is_numeric_dtype(data[c])]
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise KeyError(f"unknown variable(s): {', '.join(missing)}")
    frame = data[cols].astype(float)
    table = pd.DataFrame(
        {
            "n": frame.count(),
            "mean": frame.mean(),
            "sd": frame.std(ddof=1),
            "min": frame.min(),
            "max": frame.max(),
        }
    )
    return DescriptiveResult(table)
