"""Staggered difference-in-differences: Callaway and Sant'Anna (2021) beside two-way fixed effects.

A unit (village, county) is first treated in period g (its cohort) and stays treated; g = 0 or blank
means never treated. For every cohort g and period t the group-time effect ATT(g,t) is a 2x2
difference-in-differences of cohort g against a control group between t and a base period:

- base period "varying": t - 1 before treatment (t < g, pre-period placebo effects), g - 1 from g on;
- controls "never" (default): units with first-treated 0 or blank; "notyet": those plus the units
  first treated after t (never cohort g itself, as in R's `did`);
- without covariates ATT(g,t) is the plain difference of mean changes; with covariates (measured in
  the base period) the doubly robust panel estimator of Sant'Anna and Zhao (2020): a logit
  propensity score, an OLS outcome regression of the change on the controls' covariates, control
  weights p(X)/(1-p(X)) (controls with p(X) >= 0.995 trimmed), and its influence function;
- aggregations (as R's `aggte`): simple (every post-treatment cell weighted by its cohort's share of
  the units), dynamic (by event time e = t - g, negative and positive, cells weighted by cohort
  shares), group (each cohort's mean over its post periods; overall weighted by cohort shares) and
  calendar (each period's cohort-share-weighted mean; overall their mean); the influence functions
  include the estimation of the cohort shares;
- standard errors by the multiplier bootstrap clustered by unit: one Mammen (1993) two-point weight
  per unit and draw ((1 - sqrt 5)/2 with probability (sqrt 5 + 1)/(2 sqrt 5), else (1 + sqrt 5)/2;
  mean 0, variance 1), numpy's PCG64 seeded with `seed`, draws laid out (reps, units) with units in
  sorted order; the standard error is the draws' interquartile range / (z(0.75) - z(0.25)) as in R's
  `did`; the uniform band of the event study uses the (1 - alpha) quantile of the draws' sup-t
  statistic max_e |draw_e| / se_e.

Beside it: the two-way fixed-effects regression y_it = a_i + l_t + b D_it (+ controls) with errors
clustered by unit (analytics.panel.fixed_effects, linearmodels), its event-study form (relative
period dummies, e = -1 left out; with no never-treated unit the earliest one too), and the weights
TWFE gives each treated cell (de Chaisemartin and D'Haultfoeuille 2020, Theorem 1): the residuals e_it
of D_it on the unit and period effects (and controls) make b = sum e_it y_it / sum e_it D_it, so under
parallel trends b = sum over treated cells of W_it ATT_it with W_it = e_it / sum_{D=1} e_it. Some
W_it are negative when cohorts are treated at different times (already-treated units act as
controls); with effects that differ across cohorts or grow with exposure b is then biased, possibly
of the wrong sign. sigma_fe = |b| / sd(N1 W) is the smallest spread of the cell effects under which b
could come out while their average is 0.

The panel must be balanced after units with a missing value are dropped (R's `did` does the same);
units already treated in the first period and units first treated after the last one are not
cohorts (the first have no pre-period and are dropped, the second are not-yet-treated throughout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from analytics.results import STAR_NOTE, RegressionResult, Result, Table, jsonable, key_values, stars

ControlGroup = Literal["never", "notyet"]
SQRT5 = math.sqrt(5.0)
MAMMEN_LOW, MAMMEN_HIGH = (1 - SQRT5) / 2, (1 + SQRT5) / 2
MAMMEN_P_LOW = (SQRT5 + 1) / (2 * SQRT5)
TRIM_LEVEL = 0.995
IQR_Z = float(stats.norm.ppf(0.75) - stats.norm.ppf(0.25))
TREATED = "treated"

CONVENTIONS = {
    "method": "Callaway and Sant'Anna (2021), ATT(g,t) for every cohort g and period t",
    "base_period": "varying: t-1 before treatment (t < g), g-1 from g on",
    "control_group": {
        "never": "units with first-treated 0 or blank",
        "notyet": "never treated, or first treated after t (cohort g itself excluded)",
    },
    "estimator": {
        "unconditional": "difference of mean changes of cohort g and the controls between base period and t",
        "dr": "doubly robust panel estimator of Sant'Anna and Zhao (2020): logit propensity score, OLS outcome "
        f"regression of the change on the controls; covariates from the base period; controls with p >= {TRIM_LEVEL} "
        "trimmed",
    },
    "aggregations": "weighted by cohort shares of the units: simple (post cells), dynamic (event time e = t - g, "
    "negative and positive), group (mean over post periods per cohort), calendar; influence functions include "
    "the estimation of the shares",
    "bootstrap": "multiplier bootstrap clustered by unit, one Mammen weight per unit and draw, numpy PCG64 seeded "
    "with `seed`; se = IQR of the draws / (z.75 - z.25); uniform band from the sup-t of the draws",
    "twfe": "y_it = a_i + l_t + b D_it (+ controls), D_it = 1(t >= g), PanelOLS, errors clustered by unit",
    "twfe_weights": "de Chaisemartin and D'Haultfoeuille (2020): W_it = e_it / sum_{D=1} e_it, e the residual of D "
    "on unit and period effects (and controls)",
    "panel": "balanced; units with a missing value dropped; units treated in the first period dropped; units "
    "first treated after the last period are not-yet-treated throughout (controls only under notyet)",
}


class DidInputError(ValueError):
    """The data cannot be used as given (missing column, non-numeric values, unbalanced after cleaning, ...)."""


class PanelTooShort(DidInputError):
    """No cohort has both a pre-treatment and a post-treatment period in the panel, or no control unit."""


# ---------------------------------------------------------------- data


@dataclass
class DidPanel:
    """A balanced panel as arrays: units sorted, periods sorted."""

    units: np.ndarray  # (n,)
    periods: np.ndarray  # (T,) ints
    y: np.ndarray  # (n, T)
    g: np.ndarray  # (n,) first-treated period, 0 = never treated
    x: np.ndarray | None  # (n, T, k) covariates
    outcome: str
    controls: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def cohorts(self) -> list[int]:
        lo, hi = int(self.periods[0]), int(self.periods[-1])
        return sorted(int(c) for c in np.unique(self.g) if lo < c <= hi)

    def cohort_sizes(self) -> dict[int, int]:
        return {c: int((self.g == c).sum()) for c in self.cohorts}

    @property
    def never(self) -> int:
        return int((self.g == 0).sum())

    @property
    def later(self) -> int:
        """Units first treated after the last period (not yet treated throughout)."""
        return int((self.g > self.periods[-1]).sum())


def _numeric(frame: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna() & frame[col].notna() & (frame[col].astype(str).str.strip() != "")
    if bad.any():
        row = bad.idxmax()
        raise DidInputError(f"{col}: {frame.at[row, col]!r} is not a number (row {row})")
    return values


def prepare_panel(
    data: pd.DataFrame,
    *,
    unit: str,
    time: str,
    first_treated: str,
    outcome: str,
    controls: Sequence[str] = (),
) -> DidPanel:
    """Check and lay out a long panel (one row per unit and period) for the estimators."""
    frame = data.reset_index() if isinstance(data.index, pd.MultiIndex) else data
    cols = [unit, time, first_treated, outcome, *controls]
    missing = [c for c in dict.fromkeys(cols) if c not in frame.columns]
    if missing:
        raise KeyError(f"unknown column(s): {', '.join(missing)}")
    if len(set(cols)) != len(cols):
        raise DidInputError(f"a column is used twice: {', '.join(cols)}")
    frame = frame[cols].copy().reset_index(drop=True)
    frame.index = frame.index + 2  # the CSV line of a row (after the header), for messages
    notes: list[str] = []
    t = _numeric(frame, time)
    if t.isna().any():
        row = t.isna().idxmax()
        raise DidInputError(f"{time}: missing period (line {row})")
    if (t != t.round()).any():
        raise DidInputError(f"{time}: periods must be whole numbers (years)")
    frame[time] = t.astype(int)
    g = _numeric(frame, first_treated).fillna(0)
    if (g != g.round()).any() or (g < 0).any():
        raise DidInputError(f"{first_treated}: first-treated periods must be whole numbers, 0 or blank for never")
    frame[first_treated] = g.astype(int)
    varying = frame.groupby(unit)[first_treated].nunique()
    if (varying > 1).any():
        raise DidInputError(f"{first_treated} differs between the rows of unit {varying[varying > 1].index[0]!r}")
    if frame.duplicated([unit, time]).any():
        dup = frame[frame.duplicated([unit, time])].iloc[0]
        raise DidInputError(f"duplicate rows for unit {dup[unit]!r} and period {dup[time]}")
    for c in [outcome, *controls]:
        frame[c] = _numeric(frame, c).replace([np.inf, -np.inf], np.nan)
    na = frame[[outcome, *controls]].isna()
    if na.to_numpy().any():
        rows = na.any(axis=1)
        first = frame[rows].iloc[0]
        var = next(c for c in [outcome, *controls] if pd.isna(first[c]))
        dropped = frame.loc[rows, unit].unique()
        notes.append(
            f"{len(dropped)} unit(s) dropped for missing values (first: {var} of unit {first[unit]} in "
            f"{first[time]}, line {frame.index[rows.to_numpy()][0]})"
        )
        frame = frame[~frame[unit].isin(dropped)]
    periods = np.sort(frame[time].unique())
    counts = frame.groupby(unit).size()
    short = counts[counts < len(periods)].index
    if len(short):
        notes.append(f"{len(short)} unit(s) dropped for not being observed in every period (first: {short[0]})")
        frame = frame[~frame[unit].isin(short)]
    if frame.empty or len(periods) < 2:
        raise DidInputError("need at least two periods of complete observations")
    first_period, last_period = int(periods[0]), int(periods[-1])
    early = frame.loc[(frame[first_treated] > 0) & (frame[first_treated] <= first_period), unit].unique()
    if len(early):
        notes.append(
            f"{len(early)} unit(s) treated in or before the first period {first_period} dropped (no pre-period)"
        )
        frame = frame[~frame[unit].isin(early)]
    inside = frame[first_treated][(frame[first_treated] > first_period) & (frame[first_treated] <= last_period)]
    off = sorted(set(inside.unique()) - {int(p) for p in periods})
    if off:
        raise DidInputError(f"{first_treated}: cohort(s) {off} are not periods of the panel")
    later = frame.loc[frame[first_treated] > last_period, unit].nunique()
    if later:
        notes.append(
            f"{later} unit(s) first treated after the last period {last_period}: not yet treated throughout "
            "(controls under notyet only)"
        )
    frame = frame.sort_values([unit, time])
    units = frame[unit].drop_duplicates().to_numpy()
    n, T = len(units), len(periods)
    y = frame[outcome].to_numpy(dtype=float).reshape(n, T)
    gs = frame[first_treated].to_numpy(dtype=int).reshape(n, T)[:, 0]
    x = frame[list(controls)].to_numpy(dtype=float).reshape(n, T, len(controls)) if controls else None
    return DidPanel(units, periods.astype(int), y, gs, x, outcome, list(controls), notes)


# ---------------------------------------------------------------- the 2x2 estimator


def _logit(X: np.ndarray, d: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Fitted probabilities and (X' W X / n)^-1 of a logit of d on X (Newton-Raphson)."""
    n, k = X.shape
    beta = np.zeros(k)
    mean = float(np.clip(d.mean(), 1e-6, 1 - 1e-6))
    beta[0] = math.log(mean / (1 - mean)) if np.allclose(X[:, 0], 1.0) else 0.0
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -35, 35)))
        w = p * (1 - p)
        step = np.linalg.pinv(X.T @ (w[:, None] * X)) @ (X.T @ (d - p))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1 / (1 + np.exp(-np.clip(X @ beta, -35, 35)))
    w = p * (1 - p)
    return p, np.linalg.pinv(X.T @ (w[:, None] * X) / n)


def drdid_panel(dy: np.ndarray, d: np.ndarray, X: np.ndarray) -> tuple[float, np.ndarray]:
    """ATT and its influence function (per unit) of the doubly robust panel DID (Sant'Anna and Zhao 2020).

    `dy` the change of the outcome between base and post period, `d` 1 for the treated cohort and 0
    for the controls, `X` the covariates with a leading column of ones. With only the constant it is
    the difference of the mean changes, and its influence function that of two means.
    """
    n = len(d)
    ps, hessian = _logit(X, d)
    ps = np.minimum(ps, 1 - 1e-6)
    keep = np.where(d == 1, True, ps < TRIM_LEVEL)
    ctrl = d == 0
    coef = np.linalg.lstsq(X[ctrl], dy[ctrl], rcond=None)[0]
    out = X @ coef
    w_t = keep * d
    w_c = keep * ps * (1 - d) / (1 - ps)
    att_t, att_c = w_t * (dy - out), w_c * (dy - out)
    eta_t = att_t.mean() / w_t.mean()
    eta_c = att_c.mean() / w_c.mean()
    # influence function: the two means, the outcome regression and the propensity score estimated
    w_ols = 1.0 - d
    xpx_inv = np.linalg.pinv((w_ols[:, None] * X).T @ X / n)
    lin_ols = ((w_ols * (dy - out))[:, None] * X) @ xpx_inv
    lin_ps = ((d - ps)[:, None] * X) @ hessian
    inf_t = (att_t - w_t * eta_t - lin_ols @ (w_t[:, None] * X).mean(axis=0)) / w_t.mean()
    m2 = ((w_c * (dy - out - eta_c))[:, None] * X).mean(axis=0)
    m3 = (w_c[:, None] * X).mean(axis=0)
    inf_c = (att_c - w_c * eta_c + lin_ps @ m2 - lin_ols @ m3) / w_c.mean()
    return float(eta_t - eta_c), inf_t - inf_c


# ---------------------------------------------------------------- results


@dataclass
class Estimate:
    """One estimated effect with its bootstrap standard error and intervals."""

    att: float
    se: float = math.nan
    se_analytic: float = math.nan
    ci_lower: float = math.nan
    ci_upper: float = math.nan
    band_lower: float | None = None
    band_upper: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {**self.labels, "att": self.att, "se": self.se, "ci_lower": self.ci_lower, "ci_upper": self.ci_upper}
        if self.band_lower is not None:
            out["band_lower"], out["band_upper"] = self.band_lower, self.band_upper
        out["se_analytic"] = self.se_analytic
        return out


@dataclass
class TwfeWeights:
    """The weights of the treated cells in the TWFE coefficient (de Chaisemartin and D'Haultfoeuille 2020)."""

    cells: pd.DataFrame  # g, t, units, weight (summed over the cohort's units), per_unit
    treated_obs: int
    negative_obs: int
    negative_sum: float
    sigma_fe: float

    @property
    def negative_cells(self) -> int:
        return int((self.cells["weight"] < 0).sum())

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "treated_observations": self.treated_obs,
                "negative_observations": self.negative_obs,
                "treated_cells": len(self.cells),
                "negative_cells": self.negative_cells,
                "negative_weight_sum": self.negative_sum,
                "sigma_fe": self.sigma_fe,
                "cells": [
                    {"g": int(r.g), "t": int(r.t), "units": int(r.units), "weight": float(r.weight)}
                    for r in self.cells.itertuples()
                ],
            }
        )


@dataclass
class DidResult(Result):
    """Callaway and Sant'Anna's group-time effects and aggregations, beside the TWFE estimate."""

    panel: DidPanel
    control_group: ControlGroup
    estimator: str  # "unconditional" or "dr"
    att_gt: list[Estimate]
    overall: Estimate
    dynamic: list[Estimate]
    dynamic_overall: Estimate
    group: list[Estimate]
    group_overall: Estimate
    calendar: list[Estimate]
    calendar_overall: Estimate
    band_critical: float
    att_gt_band_critical: float
    reps: int
    seed: int | None
    alpha: float
    twfe: RegressionResult
    twfe_event: RegressionResult | None
    twfe_event_ref: list[int]
    weights: TwfeWeights
    heterogeneity: dict[str, float]
    skipped: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    influence: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    # ------------------------------------------------ views

    @property
    def twfe_coef(self) -> float:
        return float(self.twfe.params[TREATED])

    def twfe_dynamic(self) -> dict[int, tuple[float, float]]:
        """TWFE event-study coefficients by event time (the reference periods at 0)."""
        out = {e: (0.0, math.nan) for e in self.twfe_event_ref}
        if self.twfe_event is not None:
            for name, row in self.twfe_event.coefficients.iterrows():
                if str(name).startswith("e="):
                    out[int(str(name)[2:])] = (float(row["coef"]), float(row["std_err"]))
        return dict(sorted(out.items()))

    def warning(self) -> str:
        w = self.weights
        b, cs = self.twfe_coef, self.overall.att
        het = self.heterogeneity
        spread = ""
        if het:
            spread = (
                f"; the cohorts' effects differ (chi2({int(het['df'])}) = {het['chi2']:.2f}, p = {het['p']:.4f})"
                if het["p"] < 0.05
                else f"; equal cohort effects are not rejected (p = {het['p']:.4f})"
            )
        if w.negative_obs == 0:
            return (
                f"TWFE {b:.4f} against Callaway-Sant'Anna {cs:.4f}: no treated cell has a negative TWFE weight, "
                f"but TWFE weights cells by treatment variance, not by cohort size{spread}."
            )
        return (
            f"TWFE {b:.4f} against Callaway-Sant'Anna {cs:.4f}: TWFE gives {w.negative_cells} of {len(w.cells)} "
            f"treated cohort-period cells ({w.negative_obs} of {w.treated_obs} unit-periods) a negative weight "
            f"(sum {w.negative_sum:.4f}), because already-treated units serve as controls for later cohorts. "
            "When effects differ across cohorts or grow with time since treatment, the TWFE coefficient is not "
            "a positively weighted average of them and can even have the wrong sign (de Chaisemartin and "
            f"D'Haultfoeuille 2020; Goodman-Bacon 2021){spread}; sigma_fe = {w.sigma_fe:.4f} (the smallest spread "
            "of cell effects compatible with their average being 0). Read the Callaway-Sant'Anna estimates."
        )

    def _level(self) -> str:
        return f"{100 * (1 - self.alpha):g} %"

    def tables(self) -> list[Table]:
        p = self.panel
        sizes = p.cohort_sizes()
        info = [
            ("Outcome", p.outcome),
            ("Estimator", "doubly robust (Sant'Anna-Zhao)" if self.estimator == "dr" else "unconditional"),
            ("Units", len(p.units)),
            ("Control group", "never treated" if self.control_group == "never" else "not yet treated"),
            ("Periods", f"{p.periods[0]}-{p.periods[-1]}"),
            ("Covariates", ", ".join(p.controls) or "none"),
            ("Cohorts (units)", ", ".join(f"{g} ({k})" for g, k in sizes.items())),
            ("Never treated", p.never),
            ("Bootstrap", f"{self.reps} x Mammen, by unit"),
            ("Seed", "" if self.seed is None else str(self.seed)),
        ]
        head = Table(
            ["", "", "", ""],
            [[*info[i], *info[i + 1]] for i in range(0, len(info), 2)],
            title="Staggered difference-in-differences (Callaway and Sant'Anna 2021)",
            notes=[*self.source_lines(), *p.notes, *self.skipped, *self.convention_lines()],
        )
        lvl = self._level()
        gt_rows = [
            [
                e.labels["g"],
                e.labels["t"],
                e.labels["base"],
                e.labels["e"],
                e.att,
                e.se,
                e.ci_lower,
                e.ci_upper,
                e.labels["n_treated"],
                e.labels["n_control"],
            ]
            for e in self.att_gt
        ]
        gt = Table(
            ["g", "t", "base", "e", "ATT(g,t)", "Std. Err.", "Lower CI", "Upper CI", "N treated", "N control"],
            gt_rows,
            title="Group-time average treatment effects",
            notes=[
                f"pointwise {lvl} intervals; base period varying (t-1 before g, g-1 from g on); "
                f"simultaneous critical value over all cells {self.att_gt_band_critical:.3f}"
            ],
        )
        twfe_dyn = self.twfe_dynamic()
        dyn_rows = []
        for e in self.dynamic:
            k = int(e.labels["e"])
            tw = twfe_dyn.get(k)
            dyn_rows.append([k, e.att, e.se, e.ci_lower, e.ci_upper, e.band_lower, e.band_upper, tw[0] if tw else None])
        dyn = Table(
            ["e", "ATT(e)", "Std. Err.", "Lower CI", "Upper CI", "Lower band", "Upper band", "TWFE"],
            dyn_rows,
            title="Event study (dynamic aggregation)",
            notes=[
                f"{lvl} pointwise intervals and uniform band (sup-t critical value {self.band_critical:.3f} from "
                f"the bootstrap); TWFE: event-study dummies, reference e = {', '.join(map(str, self.twfe_event_ref))}"
            ],
        )
        agg_rows: list[list[Any]] = [
            ["simple (overall)", "", self.overall.att, self.overall.se, self.overall.ci_lower, self.overall.ci_upper],
            ["dynamic, e >= 0", "", *self._est_cols(self.dynamic_overall)],
            ["group (overall)", "", *self._est_cols(self.group_overall)],
        ]
        agg_rows += [["  cohort", e.labels["g"], *self._est_cols(e)] for e in self.group]
        agg_rows.append(["calendar (overall)", "", *self._est_cols(self.calendar_overall)])
        agg_rows += [["  period", e.labels["t"], *self._est_cols(e)] for e in self.calendar]
        agg = Table(
            ["Aggregation", "", "ATT", "Std. Err.", "Lower CI", "Upper CI"],
            agg_rows,
            title="Aggregated effects",
            notes=["weighted by cohort shares; simple: every post-treatment ATT(g,t) weighted by its cohort's share"],
        )
        r = self.twfe.coefficients.loc[TREATED]
        w = self.weights
        twfe = Table(
            ["", "Estimate", "Std. Err.", "Note"],
            [
                ["Callaway-Sant'Anna, simple", self.overall.att, self.overall.se, "bootstrap, by unit"],
                [
                    "Two-way FE, D_it",
                    f"{r['coef']:.4f}{stars(r['p'])}",
                    r["std_err"],
                    f"t = {r['t']:.2f}, {self.twfe.cov_type.lower()} by unit",
                ],
                ["Treated cohort-period cells", len(w.cells), "", f"{w.negative_cells} with a negative weight"],
                ["Treated unit-periods", w.treated_obs, "", f"{w.negative_obs} with a negative weight"],
                ["Sum of negative weights", w.negative_sum, "", ""],
                ["sigma_fe", w.sigma_fe, "", "dCDH robustness measure"],
            ],
            title="Two-way fixed effects beside it",
            notes=[self.warning(), STAR_NOTE],
        )
        return [head, gt, dyn, agg, twfe]

    def source_lines(self) -> list[str]:
        src = self.source
        if not src:
            return []
        lines = [f"data: {src.get('source')}" + (f" ({src['treatment']})" if "treatment" in src else "")]
        if "county_first_treated" in src:
            firsts = ", ".join(f"{c}: {g or 'never'}" for c, g in src["county_first_treated"].items())
            lines.append(f"first full year with monitoring devices by county: {firsts}")
        return lines

    def convention_lines(self) -> list[str]:
        return [
            f"base period: {CONVENTIONS['base_period']}",
            f"controls: {CONVENTIONS['control_group'][self.control_group]}",
            f"estimator: {CONVENTIONS['estimator'][self.estimator]}",
            f"bootstrap: {self.reps} draws, seed {self.seed}; {CONVENTIONS['bootstrap']}",
        ]

    @staticmethod
    def _est_cols(e: Estimate) -> list[Any]:
        return [e.att, e.se, e.ci_lower, e.ci_upper]

    def summary(self) -> str:
        tables = self.tables()
        first = tables[0]
        header = key_values([(r[0], r[1]) for r in first.rows] + [(r[2], r[3]) for r in first.rows])
        top = "\n".join([first.title or "", "=" * len(first.title or ""), header, "", *first.notes])
        return "\n\n".join([top, *(t.text() for t in tables[1:])]).strip()

    def to_dict(self) -> dict[str, Any]:
        p = self.panel
        r = self.twfe.coefficients.loc[TREATED]
        return jsonable(
            {
                "model": "did",
                "method": "Callaway and Sant'Anna (2021)",
                "estimator": self.estimator,
                "outcome": p.outcome,
                "controls": p.controls,
                "control_group": self.control_group,
                "att_gt": [e.to_dict() for e in self.att_gt],
                "overall": {**self.overall.to_dict(), "aggregation": "simple"},
                "dynamic": [e.to_dict() for e in self.dynamic],
                "dynamic_overall": self.dynamic_overall.to_dict(),
                "group": [e.to_dict() for e in self.group],
                "group_overall": self.group_overall.to_dict(),
                "calendar": [e.to_dict() for e in self.calendar],
                "calendar_overall": self.calendar_overall.to_dict(),
                "bands": {
                    "alpha": self.alpha,
                    "dynamic_critical_value": self.band_critical,
                    "att_gt_critical_value": self.att_gt_band_critical,
                },
                "bootstrap": {
                    "reps": self.reps,
                    "seed": self.seed,
                    "weights": "mammen",
                    "cluster": "unit",
                    "generator": "numpy PCG64",
                    "se": "IQR / (z.75 - z.25)",
                },
                "twfe": {
                    "coef": r["coef"],
                    "se": r["std_err"],
                    "t": r["t"],
                    "p": r["p"],
                    "ci_lower": r["ci_lower"],
                    "ci_upper": r["ci_upper"],
                    "cov_note": self.twfe.cov_note,
                    "nobs": self.twfe.nobs,
                    "weights": self.weights.to_dict(),
                    "event_study": [
                        {"e": e, "coef": c, "se": s, "reference": e in self.twfe_event_ref}
                        for e, (c, s) in self.twfe_dynamic().items()
                    ],
                    "warning": self.warning(),
                },
                "heterogeneity": self.heterogeneity or None,
                "panel": {
                    "units": len(p.units),
                    "periods": [int(t) for t in p.periods],
                    "cohorts": {str(g): k for g, k in p.cohort_sizes().items()},
                    "never_treated": p.never,
                    "treated_after_panel": p.later,
                    "notes": p.notes,
                },
                "skipped": self.skipped,
                "source": self.source,
                "conventions": CONVENTIONS,
            }
        )


# ---------------------------------------------------------------- estimation


@dataclass
class _Cell:
    g: int
    t: int
    base: int
    e: int
    n_treated: int
    n_control: int


def _cells(
    panel: DidPanel, control_group: ControlGroup, X_of: Callable[[np.ndarray, int], np.ndarray]
) -> tuple[list[_Cell], list[float], np.ndarray, list[str]]:
    n, T = panel.y.shape
    index = {int(p): i for i, p in enumerate(panel.periods)}
    cells: list[_Cell] = []
    atts: list[float] = []
    psi: list[np.ndarray] = []
    skipped: list[str] = []
    no_control: list[str] = []
    for g in panel.cohorts:
        gi = index[g]
        treated = panel.g == g
        for ti in range(1, T):
            bi = ti - 1 if ti < gi else gi - 1
            t = int(panel.periods[ti])
            if control_group == "never":
                ctrl = panel.g == 0
            else:
                ctrl = (panel.g == 0) | ((panel.g > panel.periods[max(ti, bi)]) & (panel.g != g))
            if not ctrl.any():
                no_control.append(f"({g},{t})")
                continue
            sub = treated | ctrl
            d = treated[sub].astype(float)
            dy = panel.y[sub, ti] - panel.y[sub, bi]
            X = X_of(sub, bi)
            if X.shape[1] > 1 and ctrl.sum() <= X.shape[1]:
                skipped.append(
                    f"ATT({g},{t}) not estimable: {int(ctrl.sum())} controls for {X.shape[1] - 1} covariates"
                )
                continue
            att, inf = drdid_panel(dy, d, X)
            full = np.zeros(n)
            full[sub] = inf * n / sub.sum()
            cells.append(_Cell(g, t, int(panel.periods[bi]), ti - gi, int(treated.sum()), int(ctrl.sum())))
            atts.append(att)
            psi.append(full)
    if no_control:
        who = "never-treated" if control_group == "never" else "not-yet-treated"
        skipped.insert(0, f"{len(no_control)} ATT(g,t) not estimable, no {who} control unit: {', '.join(no_control)}")
    if not cells:
        raise PanelTooShort("no ATT(g,t) is estimable: " + ("; ".join(skipped[:3]) or "no cohort"))
    return cells, atts, np.column_stack(psi), skipped


def _weight_if(keys: Sequence[int], pg: dict[int, float], g_all: np.ndarray) -> np.ndarray:
    """Influence of estimating the cohort shares in weights pg_k / sum pg (R did's `wif`), (n, K)."""
    share = np.array([pg[k] for k in keys])
    total = share.sum()
    ind = np.column_stack([(g_all == k).astype(float) - pg[k] for k in keys])
    return ind / total - ind.sum(axis=1, keepdims=True) * (share / total**2)[None, :]


def _aggregate(
    att: np.ndarray,
    psi: np.ndarray,
    cols: Sequence[int],
    groups: Sequence[int],
    pg: dict[int, float],
    g_all: np.ndarray,
) -> tuple[float, np.ndarray]:
    """sum_k w_k att_k with w_k = pg(g_k) / sum pg over `cols`, and its influence function."""
    share = np.array([pg[g] for g in groups])
    w = share / share.sum()
    est = float(att[list(cols)] @ w)
    inf = psi[:, list(cols)] @ w + _weight_if(groups, pg, g_all) @ att[list(cols)]
    return est, inf


def _twfe(panel: DidPanel) -> tuple[RegressionResult, RegressionResult | None, list[int], TwfeWeights, list[str]]:
    from linearmodels.panel.utility import AbsorbingEffectError

    from analytics.panel import demean, fixed_effects

    n, T = panel.y.shape
    notes: list[str] = []
    ent = np.repeat(np.arange(n), T)
    tim = np.tile(np.arange(T), n)
    controls = []
    for j, c in enumerate(panel.controls):
        v = panel.x[:, :, j].ravel()  # type: ignore[index]
        if np.linalg.norm(demean(v, ent, tim)) > 1e-9 * max(1.0, float(np.linalg.norm(v))):
            controls.append(c)
        else:
            notes.append(f"TWFE: covariate {c} does not vary within units and periods (absorbed by the effects)")
    gi = {int(p): i for i, p in enumerate(panel.periods)}
    in_panel = np.isin(panel.g, panel.cohorts)
    tt = np.broadcast_to(panel.periods, (n, T))
    D = (in_panel[:, None] & (tt >= panel.g[:, None])).astype(float)
    idx = pd.MultiIndex.from_arrays([np.repeat(panel.units, T), tt.ravel()], names=["unit", "period"])
    frame = pd.DataFrame({panel.outcome: panel.y.ravel(), TREATED: D.ravel()}, index=idx)
    for j, c in enumerate(panel.controls):
        frame[c] = panel.x[:, :, j].ravel()  # type: ignore[index]
    fit = fixed_effects(frame, panel.outcome, [TREATED], controls)

    # event-study form: dummies of e = t - g for the cohorts, e = -1 left out (and the earliest one
    # when every unit is eventually treated, else the dummies span the unit and period effects)
    rel = np.where(
        in_panel[:, None], np.arange(T)[None, :] - np.array([gi.get(int(g), 0) for g in panel.g])[:, None], 0
    )
    events = sorted({int(v) for v in rel[in_panel].ravel()})
    ref = [-1]
    if not (~in_panel).any() and len(events) > 1:
        ref.append(events[0])
    names = []
    for e in events:
        if e in ref:
            continue
        name = f"e={e}"
        frame[name] = (in_panel[:, None] & (rel == e)).astype(float).ravel()
        names.append(name)
    event: RegressionResult | None
    try:
        event = fixed_effects(frame, panel.outcome, names, controls) if names else None
    except (ValueError, np.linalg.LinAlgError, AbsorbingEffectError):
        event = None
        notes.append(
            "TWFE event study not identified: its relative-period dummies are collinear with the unit and period "
            f"effects even without e = {', '.join(map(str, ref))}"
        )

    # de Chaisemartin and D'Haultfoeuille weights: residual of D on unit and period effects (and controls)
    eps = demean(D.ravel(), ent, tim)
    if controls:
        xs = demean(frame[controls].to_numpy(dtype=float), ent, tim)
        eps = eps - xs @ np.linalg.lstsq(xs, eps, rcond=None)[0]
    treated = D.ravel() == 1
    W = np.where(treated, eps, 0.0) / eps[treated].sum()
    n1 = int(treated.sum())
    sd = math.sqrt(float(((n1 * W[treated] - 1) ** 2).mean()))
    cells = (
        pd.DataFrame({"g": np.repeat(panel.g, T)[treated], "t": tt.ravel()[treated], "w": W[treated]})
        .groupby(["g", "t"])["w"]
        .agg(weight="sum", units="size", per_unit="mean")
        .reset_index()
    )
    weights = TwfeWeights(
        cells=cells,
        treated_obs=n1,
        negative_obs=int((W[treated] < -1e-12).sum()),
        negative_sum=float(W[treated][W[treated] < -1e-12].sum()),
        sigma_fe=abs(float(fit.params[TREATED])) / sd if sd > 0 else math.nan,
    )
    return fit, event, ref, weights, notes


def callaway_santanna(
    data: pd.DataFrame | DidPanel,
    *,
    unit: str = "unit",
    time: str = "year",
    first_treated: str = "first_treated",
    outcome: str = "y",
    controls: Sequence[str] = (),
    control_group: ControlGroup = "never",
    reps: int = 999,
    seed: int | None = 0,
    alpha: float = 0.05,
) -> DidResult:
    """Callaway and Sant'Anna's ATT(g,t), its aggregations with multiplier-bootstrap errors, and TWFE beside them.

    `data` is a long panel with the named columns (or a prepared `DidPanel`). `seed=None` draws a
    fresh seed and stores it in the result, so every run can be repeated.
    """
    if control_group not in ("never", "notyet"):
        raise DidInputError(f"control group {control_group!r}: use never or notyet")
    if not 0 < alpha < 1:
        raise DidInputError(f"alpha must be in (0, 1), got {alpha}")
    panel = (
        data
        if isinstance(data, DidPanel)
        else prepare_panel(data, unit=unit, time=time, first_treated=first_treated, outcome=outcome, controls=controls)
    )
    if not panel.cohorts:
        raise PanelTooShort(
            f"no cohort first treated after the first period {panel.periods[0]} and by the last {panel.periods[-1]}"
        )
    if control_group == "never" and panel.never == 0:
        raise PanelTooShort("no never-treated unit (first-treated 0 or blank): use the not-yet-treated controls")
    n = len(panel.units)
    ones = np.ones((n, 1))

    def X_of(sub: np.ndarray, bi: int) -> np.ndarray:
        if panel.x is None:
            return ones[sub]
        return np.column_stack([ones[sub], panel.x[sub, bi, :]])

    cells, att_list, psi, skipped = _cells(panel, control_group, X_of)
    att = np.array(att_list)
    pg = {g: float((panel.g == g).mean()) for g in panel.cohorts}
    estimates: list[tuple[float, np.ndarray, dict[str, Any]]] = []  # (att, influence, labels) of aggregates

    def add(est: float, inf: np.ndarray, **labels: Any) -> int:
        estimates.append((est, inf, labels))
        return len(estimates) - 1

    post = [k for k, c in enumerate(cells) if c.t >= c.g]
    if not post:
        raise PanelTooShort("no post-treatment ATT(g,t) is estimable")
    i_simple = add(*_aggregate(att, psi, post, [cells[k].g for k in post], pg, panel.g))
    i_dyn: list[int] = []
    for e in sorted({c.e for c in cells}):
        ks = [k for k, c in enumerate(cells) if c.e == e]
        i_dyn.append(add(*_aggregate(att, psi, ks, [cells[k].g for k in ks], pg, panel.g), e=e))
    pos_dyn = [i for i in i_dyn if estimates[i][2]["e"] >= 0]
    i_dyn_all = add(
        float(np.mean([estimates[i][0] for i in pos_dyn])),
        np.mean([estimates[i][1] for i in pos_dyn], axis=0),
        aggregation="dynamic, e >= 0",
    )
    i_grp: list[int] = []
    groups_with_post = sorted({cells[k].g for k in post})
    for g in groups_with_post:
        ks = [k for k in post if cells[k].g == g]
        i_grp.append(add(float(att[ks].mean()), psi[:, ks].mean(axis=1), g=g))
    theta_g = np.array([estimates[i][0] for i in i_grp])
    psi_g = np.column_stack([estimates[i][1] for i in i_grp])
    i_grp_all = add(*_aggregate(theta_g, psi_g, range(len(i_grp)), groups_with_post, pg, panel.g), aggregation="group")
    i_cal: list[int] = []
    for t in sorted({cells[k].t for k in post}):
        ks = [k for k in post if cells[k].t == t]
        i_cal.append(add(*_aggregate(att, psi, ks, [cells[k].g for k in ks], pg, panel.g), t=t))
    i_cal_all = add(
        float(np.mean([estimates[i][0] for i in i_cal])),
        np.mean([estimates[i][1] for i in i_cal], axis=0),
        aggregation="calendar",
    )

    # multiplier bootstrap over every estimate at once: the same draws for cells and aggregates
    all_psi = np.column_stack([psi, *(inf for _, inf, _ in estimates)])
    all_att = np.concatenate([att, [est for est, _, _ in estimates]])
    se_analytic = np.sqrt((all_psi**2).sum(axis=0)) / n
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    z = float(stats.norm.ppf(1 - alpha / 2))
    if reps > 0:
        rng = np.random.default_rng(seed)
        draws = np.empty((reps, all_psi.shape[1]))
        step = max(1, 2_000_000 // max(n, 1))
        for start in range(0, reps, step):
            b = min(step, reps - start)
            v = np.where(rng.random((b, n)) < MAMMEN_P_LOW, MAMMEN_LOW, MAMMEN_HIGH)
            draws[start : start + b] = v @ all_psi / n
        q = np.quantile(draws, [0.25, 0.75], axis=0, method="inverted_cdf")
        se = (q[1] - q[0]) / IQR_Z
        se = np.where(se > 0, se, np.nan)

        def sup_t(cols: list[int]) -> float:
            ok = [c for c in cols if np.isfinite(se[c])]
            if not ok:
                return z
            tmax = np.max(np.abs(draws[:, ok]) / se[ok], axis=1)
            return float(np.quantile(tmax, 1 - alpha, method="inverted_cdf"))

        k0 = len(att)
        crit_dyn = sup_t([k0 + i for i in i_dyn])
        crit_gt = sup_t(list(range(k0)))
    else:
        se = se_analytic.copy()
        crit_dyn = crit_gt = z
        k0 = len(att)

    def estimate(col: int, labels: dict[str, Any], band: float | None = None) -> Estimate:
        a, s = float(all_att[col]), float(se[col])
        out = Estimate(a, s, float(se_analytic[col]), a - z * s, a + z * s, labels=labels)
        if band is not None:
            out.band_lower, out.band_upper = a - band * s, a + band * s
        return out

    att_gt = [
        estimate(k, {"g": c.g, "t": c.t, "base": c.base, "e": c.e, "n_treated": c.n_treated, "n_control": c.n_control})
        for k, c in enumerate(cells)
    ]

    def agg(i: int, band: float | None = None) -> Estimate:
        return estimate(k0 + i, dict(estimates[i][2]), band)

    # heterogeneity across cohorts: Wald test of equal group effects (influence-function covariance)
    heterogeneity: dict[str, float] = {}
    if len(i_grp) > 1:
        cov = psi_g.T @ psi_g / n**2
        R = np.eye(len(i_grp))[1:] - np.eye(len(i_grp))[0]
        diff = R @ theta_g
        chi2 = float(diff @ np.linalg.pinv(R @ cov @ R.T) @ diff)
        df = len(i_grp) - 1
        heterogeneity = {"chi2": chi2, "df": df, "p": float(stats.chi2.sf(chi2, df))}  # Wald, analytic covariance

    twfe, twfe_event, ref, weights, twfe_notes = _twfe(panel)
    return DidResult(
        panel=panel,
        control_group=control_group,
        estimator="dr" if panel.controls else "unconditional",
        att_gt=att_gt,
        overall=agg(i_simple),
        dynamic=[agg(i, crit_dyn) for i in i_dyn],
        dynamic_overall=agg(i_dyn_all),
        group=[agg(i) for i in i_grp],
        group_overall=agg(i_grp_all),
        calendar=[agg(i) for i in i_cal],
        calendar_overall=agg(i_cal_all),
        band_critical=crit_dyn,
        att_gt_band_critical=crit_gt,
        reps=reps,
        seed=seed,
        alpha=alpha,
        twfe=twfe,
        twfe_event=twfe_event,
        twfe_event_ref=ref,
        weights=weights,
        heterogeneity=heterogeneity,
        skipped=skipped + twfe_notes,
        influence=psi,
    )
