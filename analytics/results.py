"""Result objects shared by the models: tables a researcher recognises, a statsmodels Summary, JSON for the API.

Every result has `tables()` (what the CLI prints as rich tables), `summary()` (a statsmodels `Summary`
built from those tables: `as_text()`, `as_html()`, `as_latex()`, as linearmodels' results give),
`__str__` (its text) and `to_dict()` (plain JSON types only: floats, ints, strings, lists, dicts and
None for a missing or non-finite number), so the API can return it as it is. Regression results keep
the linearmodels fit they came from (`fit`), and side-by-side tables are built on
`linearmodels.panel.compare`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from statsmodels.iolib.summary import Summary

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


def as_summary(tables: Sequence[Table]) -> Summary:
    """A statsmodels Summary of `tables` (one SimpleTable each, their notes below), as linearmodels builds its own."""
    from statsmodels.iolib.summary import Summary
    from statsmodels.iolib.table import SimpleTable

    smry = Summary()
    notes: list[str] = []
    for table in tables:
        headers = table.headers[1:] if any(table.headers) else None
        data = [[fmt(c, table.digits) for c in r[1:]] for r in table.rows] or [[""] * max(1, len(table.headers) - 1)]
        stubs = [str(r[0]) for r in table.rows] or [""]
        smry.tables.append(SimpleTable(data, headers=headers, stubs=stubs, title=table.title or ""))
        notes += table.notes
    if notes:
        smry.add_extra_txt(notes)
    return smry


class Result:
    """Base: `summary()` is a statsmodels Summary of `tables()`; `__str__` is its text."""

    def tables(self) -> list[Table]:  # pragma: no cover - overridden
        raise NotImplementedError

    def summary(self) -> Summary:
        return as_summary(self.tables())

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __str__(self) -> str:
        return str(self.summary())


# ---------------------------------------------------------------- regression


COEF_COLUMNS = ("coef", "std_err", "t", "p", "ci_lower", "ci_upper")

SE = Literal["lsdv", "stata", "linearmodels"]
SE_DEFAULT: SE = "lsdv"
# How each convention scales the cluster-robust sandwich S = (X'X)^-1 (sum_g X_g'e_g e_g'X_g) (X'X)^-1 of the
# within-transformed regressors; G clusters (entities), N observations, k regressors, n entities, T periods.
SE_CONVENTIONS: dict[str, str] = {
    "lsdv": (
        "V = G/(G-1) (N-1)/(N-K) S, K = k + n + T - 1 (every entity and year dummy and the constant counted, as an OLS "
        "with dummies and cluster-robust errors; linearmodels debiased=True, group_debias=True); t(N-K)"
    ),
    "stata": (
        "V = G/(G-1) (N-1)/(N-K) S, K = k + (T-1) + 1 (year dummies and the constant counted, entity effects nested "
        "in the clusters not: Stata's xtreg y x i.year, fe vce(cluster id)); t(G-1)"
    ),
    "linearmodels": (
        "V = N/(N-K) S, K = k + n + T - 1 (linearmodels' PanelOLS.fit(cov_type='clustered', cluster_entity=True) "
        "defaults: debiased=True, no group correction); t(N-K)"
    ),
}
SE_LABELS: dict[str, str] = {
    "lsdv": "clustered by entity, LSDV correction",
    "stata": "clustered by entity, Stata xtreg fe",
    "linearmodels": "clustered by entity, linearmodels default",
}
R2_WITHIN = (
    "within R² as Stata's xtreg y x i.year, fe reports it: 1 - SSR / sum (y - mean_i y)², the year effects counted "
    "as explained"
)


@dataclass
class RegressionResult(Result):
    """One fixed-effects regression: coefficient table and fit statistics, and the linearmodels fit itself.

    `coefficients` has the columns coef, std_err, t, p, ci_lower, ci_upper, one row per regressor.
    `r2_within` counts the year effects as explained (as Stata's `xtreg y x i.year, fe`);
    `r2` is linearmodels' R-squared of the model once both effects are removed; `r2_inclusive`
    counts the effects too (the R-squared of the dummy-variable regression). `fit` is the
    linearmodels `PanelEffectsResults` the numbers come from (with `se="stata"` the model with year
    dummies and a constant that `xtreg` estimates, its t distribution with G - 1 degrees of freedom).
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
    se: str = SE_DEFAULT
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    fit: Any = field(default=None, repr=False, compare=False)

    @property
    def params(self) -> pd.Series:
        return self.coefficients["coef"]

    @property
    def std_errors(self) -> pd.Series:
        return self.coefficients["std_err"]

    @property
    def tstats(self) -> pd.Series:
        return self.coefficients["t"]

    @property
    def pvalues(self) -> pd.Series:
        return self.coefficients["p"]

    def effects_label(self) -> str:
        effects = [name for flag, name in ((self.entity_effects, "Entity"), (self.time_effects, "Time")) if flag]
        return ", ".join(effects) or "None"

    def se_label(self) -> str:
        return SE_LABELS.get(self.se, self.cov_type) if self.cov_type == "Clustered" else self.cov_type

    def _info(self) -> list[tuple[str, Any]]:
        return [
            ("Dep. Variable", self.dependent),
            ("R² within (xtreg)", self.r2_within),
            ("Estimator", self.estimator),
            ("R² (effects removed)", self.r2),
            ("No. Observations", self.nobs),
            ("R² (incl. effects)", self.r2_inclusive),
            ("Entities", self.entities),
            ("Effects", self.effects_label()),
            ("Time periods", self.periods),
            ("Std. errors", self.se_label()),
        ]

    def tables(self) -> list[Table]:
        info = self._info()
        pairs = [[*info[i], *info[i + 1]] for i in range(0, len(info), 2)]
        rows = [
            [name, r["coef"], r["std_err"], r["t"], f"{r['p']:.4f}", r["ci_lower"], r["ci_upper"]]
            for name, r in self.coefficients.iterrows()
        ]
        notes = [f"Std. errors: {self.cov_note}" if self.cov_note else "", f"R² within: {R2_WITHIN}", *self.notes]
        return [
            Table(["", "", "", ""], pairs, title=f"{self.estimator} Estimation Summary"),
            Table(
                ["", "Parameter", "Std. Err.", "T-stat", "P-value", "Lower CI", "Upper CI"],
                rows,
                title="Parameter Estimates",
                notes=[n for n in notes if n],
            ),
        ]

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
                "r2_within_definition": R2_WITHIN,
                "r2_inclusive": self.r2_inclusive,
                "entity_effects": self.entity_effects,
                "time_effects": self.time_effects,
                "cov_type": self.cov_type,
                "se": self.se,
                "cov_note": self.cov_note,
                "notes": self.notes,
                **self.extra,
            }
        )


@dataclass
class RegressionTable(Result):
    """Several regressions side by side, the layout of a paper's results table, built on linearmodels' `compare`.

    Each cell is the coefficient with its significance stars and, beneath it, the t statistic
    in parentheses (`show="t"`) or the standard error (`show="se"`). The numbers are those of
    `comparison` (`linearmodels.panel.compare(..., stars=True)` of the kept fits, whose own
    `summary` marks stars at linearmodels' 10/5/1 %); the stars here are the papers' (STAR_NOTE).
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

    @property
    def comparison(self) -> Any:
        """`linearmodels.panel.compare` of the models' fits (t statistics, stars)."""
        from linearmodels.panel import compare

        return compare(dict(zip(self.column_names(), (m.fit for m in self.models), strict=True)), stars=True)

    def _frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Coefficients, precision (t or se) and p-values, variables x columns: compare's, or the results' own
        where a model was not fitted here (a result built by hand has no fit). The p-values (the stars) are
        always the results' own: with se="stata" they use t(G-1), which compare's do not."""
        cols, variables = self.column_names(), self.variables()
        own = [
            pd.DataFrame({c: getattr(m, attr) for c, m in zip(cols, self.models, strict=True)})
            for attr in ("params", "tstats" if self.show == "t" else "std_errors", "pvalues")
        ]
        frames = own
        if all(m.fit is not None for m in self.models):
            comp = self.comparison
            frames = [comp.params, comp.tstats if self.show == "t" else comp.std_errors, own[2]]
        return tuple(f.reindex(index=variables, columns=cols) for f in frames)  # type: ignore[return-value]

    def tables(self) -> list[Table]:
        cols = self.column_names()
        params, precision, pvalues = self._frames()
        rows: list[list[Any]] = []
        for v in params.index:
            top: list[Any] = [v]
            below: list[Any] = [""]
            for c in cols:
                coef, prec, p = params.at[v, c], precision.at[v, c], pvalues.at[v, c]
                if pd.isna(coef):
                    top.append("")
                    below.append("")
                    continue
                top.append(f"{coef:.4f}{stars(p)}")
                below.append(f"({prec:.2f})" if self.show == "t" else f"({prec:.4f})")
            rows += [top, below]
        rows.append(["Dependent", *(m.dependent for m in self.models)])
        rows.append(["Entity FE", *("Yes" if m.entity_effects else "No" for m in self.models)])
        rows.append(["Year FE", *("Yes" if m.time_effects else "No" for m in self.models)])
        rows.append(["N", *(str(m.nobs) for m in self.models)])
        rows.append(["R² within (xtreg)", *(f"{m.r2_within:.4f}" for m in self.models)])
        rows.append(["Std. errors", *(m.se for m in self.models)])
        below_label = "t statistics" if self.show == "t" else "standard errors"
        notes = [f"{below_label} in parentheses; {STAR_NOTE}"]
        for se in dict.fromkeys(m.se for m in self.models):
            first = next(m for m in self.models if m.se == se)
            notes.append(f"Std. errors {first.cov_note}")
        notes.append(f"R² within: {R2_WITHIN}")
        for note in dict.fromkeys(n for m in self.models for n in m.notes):
            notes.append(note)
        return [Table(["", *cols], rows, title=self.title, notes=notes)]

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
