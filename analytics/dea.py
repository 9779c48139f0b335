"""Data envelopment analysis and the three-stage DEA of Fried, Lovell, Schmidt and Yaisawarng (2002).

Stage 1, DEA (input orientation, envelopment form), for every unit o under constant (CRS, CCR) and
variable returns to scale (VRS, BCC):

    phase 1   min theta  s.t.  X lambda <= theta x_o,  Y lambda >= y_o,  lambda >= 0  (VRS: sum lambda = 1)
    phase 2   max sum(s-) + sum(s+)  s.t.  X lambda + s- = theta* x_o,  Y lambda - s+ = y_o,  lambda, s >= 0

Phase 2 is the second-phase LP of Ali and Seiford: the unweighted sum of input and output slacks in
the data's own units, at the radial optimum theta*. Technical efficiency is the CRS theta, pure
technical efficiency the VRS theta, scale efficiency CRS / VRS. Returns to scale follow DEAP (Coelli
1996): "crs" when |1 - scale| <= 1e-6, otherwise "irs" when the CRS lambdas sum below 1 and "drs"
above. The total slack of input i is (1 - theta*) x_io + s-_i of the slack model (VRS by default), in
the input's own units. Every LP is solved by SciPy's HiGHS (`scipy.optimize.linprog(method="highs")`).

Ties. theta* is unique, lambda often is not (several peers span the same facet). The rule for
returns to scale does not depend on which optimal lambda HiGHS returns: when the CRS and VRS scores
differ, the CRS lambdas sum below 1 in every optimal solution or above 1 in every one (Seiford and
Zhu 1999, Omega 27:1-11); when they agree the unit is "crs" whatever the sum. The maximal slack sum
is unique too, but how it splits among the inputs may not be: for every unit with slack, the range
of each input slack over all max-slack solutions is computed (two more LPs per input) and reported
under `slack_ranges` when it is wider than 1e-7 of the input's scale; the value used downstream is
the vertex HiGHS returns (deterministic for the same data).

The multipliers (v, u, u0) of the multiplier form are read from the phase-1 duals (HiGHS
marginals): theta* = u'y_o - u0 with v'x_o = 1, the dual check the tests make.

Stage 2 (analytics/sfa.py): per input, a half-normal cost frontier of its total slack on the
environmental variables z, by maximum likelihood; noise v separated with the JLMS conditional mean.

Stage 3: each input adjusted to the least favourable environment and the worst luck of the sample,

    x_adj = x + [max(z beta) - z beta] + [max(v_hat) - v_hat],

and DEA run again on (x_adj, y). Only the input orientation is implemented: the adjustment is one of
inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import linprog

from analytics.results import STAR_NOTE, Result, Table, jsonable, stars
from analytics.sfa import FrontierResult, cost_frontier

Rts = Literal["crs", "vrs"]
SCALE_TOL = 1e-6
RANGE_TOL = 1e-7
DUST = 1e-10  # a slack below this share of its variable's largest value is solver noise, set to 0
THETA_SNAP = 1e-9  # a score this close to 1 is 1 (HiGHS solves to ~1e-9): no dust in the radial slacks

# the default county specification (village models dea without --csv): see `county_dea`
DEFAULT_INPUTS = ("employment_primary", "optical_cable_length")
DEFAULT_OUTPUTS = ("gross_output_agri", "farm_ecommerce_sales")
DEFAULT_ENV = ("gdp_per_capita", "fiscal_agri_support", "rural_ageing_rate")

CONVENTIONS = {
    "dea": "input orientation, envelopment form; LPs by SciPy HiGHS",
    "slacks": (
        "second-phase LP maximising the unweighted sum of input and output slacks at the radial optimum; "
        "slacks[input] = total slack of the slack model (radial (1 - theta) x plus non-radial), in the input's units"
    ),
    "scale": "scale = CRS / VRS",
    "rts": "crs when |1 - scale| <= 1e-6, else irs when the CRS lambdas sum below 1, drs above (DEAP)",
    "stage2": (
        "cost frontier per input: slack = const + z'beta + v + u, u >= 0 half-normal, v normal, ML; "
        "sigma2 = sigma_u2 + sigma_v2, gamma = sigma_u2 / sigma2; LR = 2 (lnL - lnL_OLS), p = P(chi2_1 > LR) / 2"
    ),
    "jlms": (
        "E[u|eps] = sigma* [phi(a)/Phi(a) + a], a = lambda eps / sigma, lambda = sigma_u / sigma_v, "
        "sigma* = sigma_u sigma_v / sigma; v = eps - E[u|eps]"
    ),
    "stage3": "x_adj = x + [max(z beta) - z beta] + [max(v) - v], then DEA again",
}


# ---------------------------------------------------------------- the LPs


@dataclass
class Envelopment:
    """DEA of every unit under one returns-to-scale assumption (arrays in unit order)."""

    rts: Rts
    theta: np.ndarray  # (n,)
    lambdas: np.ndarray  # (n, n): row o = the phase-2 (max-slack) lambdas of unit o
    input_slacks: np.ndarray  # (n, m) non-radial
    output_slacks: np.ndarray  # (n, s)
    v: np.ndarray  # (n, m) input multipliers (phase-1 duals)
    u: np.ndarray  # (n, s) output multipliers
    u0: np.ndarray  # (n,) VRS free multiplier: theta = u'y_o - u0 (0 under CRS)
    slack_ranges: dict[int, np.ndarray] = field(default_factory=dict)  # unit -> (m, 2) min/max input slacks

    @property
    def lambda_sum(self) -> np.ndarray:
        return self.lambdas.sum(axis=1)

    def total_input_slacks(self, x: np.ndarray) -> np.ndarray:
        """(1 - theta) x + s-: how much of each input the unit could save, in the input's units."""
        return (1.0 - self.theta)[:, None] * x + self.input_slacks


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError("inputs and outputs must be matrices with one row per unit")
    if x.shape[0] < 2:
        raise ValueError("DEA needs at least two units")
    for name, a in (("input", x), ("output", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"an {name} value is missing or infinite")
        if np.any(a < 0):
            raise ValueError(f"{name}s must not be negative")
        if np.any(a.sum(axis=1) <= 0):
            raise ValueError(f"every unit needs a positive {name}")


def _solve(c: np.ndarray, **kw: Any) -> Any:
    return linprog(c, method="highs", **kw)


def envelopment(x: np.ndarray, y: np.ndarray, rts: Rts = "vrs", *, ranges: bool = True) -> Envelopment:
    """Input-oriented DEA of every unit; `x` is (n, m) inputs, `y` (n, s) outputs."""
    if rts not in ("crs", "vrs"):
        raise ValueError(f"rts {rts!r}: use crs or vrs")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    _check(x, y)
    n, m = x.shape
    s = y.shape[1]
    vrs = rts == "vrs"
    theta = np.empty(n)
    lambdas = np.empty((n, n))
    s_in = np.empty((n, m))
    s_out = np.empty((n, s))
    v = np.empty((n, m))
    u = np.empty((n, s))
    u0 = np.zeros(n)
    out = Envelopment(rts, theta, lambdas, s_in, s_out, v, u, u0)

    # phase 1: variables (theta, lambda_1..n)
    c1 = np.zeros(1 + n)
    c1[0] = 1.0
    a_ub = np.zeros((m + s, 1 + n))
    a_ub[:m, 1:] = x.T
    a_ub[m:, 1:] = -y.T
    a_eq1 = np.concatenate([[0.0], np.ones(n)])[None, :] if vrs else None
    b_eq1 = np.ones(1) if vrs else None
    bounds1 = [(None, None)] + [(0, None)] * n

    # phase 2: variables (lambda, s-, s+)
    c2 = np.concatenate([np.zeros(n), -np.ones(m + s)])
    a_eq2 = np.zeros((m + s + int(vrs), n + m + s))
    a_eq2[:m, :n] = x.T
    a_eq2[:m, n : n + m] = np.eye(m)
    a_eq2[m : m + s, :n] = y.T
    a_eq2[m : m + s, n + m :] = -np.eye(s)
    if vrs:
        a_eq2[m + s, :n] = 1.0

    for o in range(n):
        a_ub[:m, 0] = -x[o]
        b_ub = np.concatenate([np.zeros(m), -y[o]])
        r1 = _solve(c1, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq1, b_eq=b_eq1, bounds=bounds1)
        if r1.status != 0:
            raise ValueError(f"DEA phase 1 of unit {o}: {r1.message}")
        theta[o] = 1.0 if abs(1.0 - r1.x[0]) <= THETA_SNAP else r1.x[0]
        v[o] = -r1.ineqlin.marginals[:m]
        u[o] = -r1.ineqlin.marginals[m:]
        if vrs:
            u0[o] = -r1.eqlin.marginals[0]

        r2 = None
        for relax in (0.0, 1e-9, 1e-7):  # theta* carries the solver's tolerance; widen it if phase 2 disagrees
            b_eq2 = np.concatenate([theta[o] * (1.0 + relax) * x[o], y[o], [1.0] if vrs else []])
            r2 = _solve(c2, A_eq=a_eq2, b_eq=b_eq2, bounds=[(0, None)] * (n + m + s))
            if r2.status == 0:
                break
        assert r2 is not None
        if r2.status != 0:
            raise ValueError(f"DEA phase 2 of unit {o}: {r2.message}")
        lambdas[o] = r2.x[:n]
        s_in[o] = r2.x[n : n + m]
        s_out[o] = r2.x[n + m :]
        if ranges and -r2.fun > RANGE_TOL * max(1.0, float(np.abs(b_eq2).max())) and _may_have_ties(r2):
            spread = _slack_ranges(a_eq2, b_eq2, -float(r2.fun), n, m, s)
            scale = np.maximum(np.abs(x).max(axis=0), 1.0)
            if np.any(spread[:, 1] - spread[:, 0] > RANGE_TOL * scale):
                out.slack_ranges[o] = spread
    lambdas[np.abs(lambdas) < 1e-12] = 0.0
    # solver dust (-0.0, 1e-15 of a variable's scale) is no slack
    s_in[s_in <= DUST * x.max(axis=0)] = 0.0
    s_out[s_out <= DUST * np.maximum(y.max(axis=0), 1.0)] = 0.0
    return out


def _may_have_ties(res: Any) -> bool:
    """False when the LP optimum is certainly unique: every variable at zero has a positive reduced cost
    (HiGHS' `lower.marginals`), so none can enter the basis without losing. True also for a degenerate basis."""
    at_zero = res.x <= 1e-9
    flat = np.abs(res.lower.marginals) <= 1e-9
    return bool(np.any(at_zero & flat))


def _slack_ranges(a_eq: np.ndarray, b_eq: np.ndarray, best: float, n: int, m: int, s: int) -> np.ndarray:
    """Min and max of each input slack over the max-slack solutions of one unit."""
    total = np.concatenate([np.zeros(n), np.ones(m + s)])[None, :]
    a_ub = -total
    b_ub = np.array([-(best - 1e-9 * max(1.0, best))])  # sum of slacks stays at its maximum
    out = np.empty((m, 2))
    for i in range(m):
        for j, sign in enumerate((1.0, -1.0)):
            c = np.zeros(n + m + s)
            c[n + i] = sign
            r = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=[(0, None)] * (n + m + s), method="highs")
            out[i, j] = r.x[n + i] if r.status == 0 else np.nan
    return out


def multiplier_scores(x: np.ndarray, y: np.ndarray, rts: Rts = "vrs") -> np.ndarray:
    """Efficiency scores from the multiplier form (the dual), solved on its own: max u'y_o - u0
    s.t. v'x_o = 1, u'y_j - v'x_j - u0 <= 0, u, v >= 0 (u0 = 0 under CRS). An independent check."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, m = x.shape
    s = y.shape[1]
    scores = np.empty(n)
    for o in range(n):
        # variables (v, u, u0)
        c = np.concatenate([np.zeros(m), -y[o], [1.0]])
        a_ub = np.hstack([-x, y, -np.ones((n, 1))])
        a_eq = np.concatenate([x[o], np.zeros(s), [0.0]])[None, :]
        bounds = [(0, None)] * (m + s) + [(None, None) if rts == "vrs" else (0, 0)]
        r = linprog(c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs")
        if r.status != 0:
            raise ValueError(f"multiplier LP of unit {o}: {r.message}")
        scores[o] = -r.fun
    return scores


def returns_to_scale(scale: float, lambda_sum: float) -> str:
    """DEAP's rule: crs when |1 - scale| <= 1e-6, else irs below a CRS lambda sum of 1, drs above."""
    if abs(1.0 - scale) <= SCALE_TOL:
        return "crs"
    return "irs" if lambda_sum < 1.0 else "drs"


# ---------------------------------------------------------------- one DEA stage


@dataclass
class DEAStage:
    """CRS and VRS DEA of all units on given inputs and outputs (one stage of the three)."""

    inputs: pd.DataFrame
    outputs: pd.DataFrame
    crs: Envelopment
    vrs: Envelopment
    slack_rts: Rts = "vrs"

    @property
    def units(self) -> pd.Index:
        return self.inputs.index

    @property
    def slack_model(self) -> Envelopment:
        return self.vrs if self.slack_rts == "vrs" else self.crs

    @property
    def scale(self) -> np.ndarray:
        return self.crs.theta / self.vrs.theta

    @property
    def rts(self) -> list[str]:
        return [returns_to_scale(sc, ls) for sc, ls in zip(self.scale, self.crs.lambda_sum, strict=True)]

    def total_slacks(self) -> pd.DataFrame:
        """Total slack of each input (radial + non-radial) of the slack model, in the input's units."""
        x = self.inputs.to_numpy(dtype=float)
        return pd.DataFrame(self.slack_model.total_input_slacks(x), index=self.units, columns=self.inputs.columns)

    def frame(self) -> pd.DataFrame:
        """One row per unit: crs, vrs, scale, rts, the CRS lambda sum and the total input slacks."""
        out = pd.DataFrame(
            {"crs": self.crs.theta, "vrs": self.vrs.theta, "scale": self.scale, "rts": self.rts},
            index=self.units,
        )
        out["lambda_sum"] = self.crs.lambda_sum
        for name, col in self.total_slacks().items():
            out[f"slack_{name}"] = col
        return out

    def rows(self, names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The JSON rows: unit, crs, vrs, scale, rts, slacks {input: total}, and the details."""
        x = self.inputs.to_numpy(dtype=float)
        model = self.slack_model
        total = self.total_slacks()
        radial = (1.0 - model.theta)[:, None] * x
        rows = []
        for o, unit in enumerate(self.units):
            row: dict[str, Any] = {"unit": str(unit)}
            if names and str(unit) in names:
                row["name"] = names[str(unit)]
            row |= {
                "crs": float(self.crs.theta[o]),
                "vrs": float(self.vrs.theta[o]),
                "scale": float(self.scale[o]),
                "rts": self.rts[o],
                "lambda_sum_crs": float(self.crs.lambda_sum[o]),
                "slacks": {str(k): float(total.iloc[o][k]) for k in total.columns},
                "slacks_radial": {str(k): float(radial[o, i]) for i, k in enumerate(self.inputs.columns)},
                "slacks_nonradial": {
                    str(k): float(model.input_slacks[o, i]) for i, k in enumerate(self.inputs.columns)
                },
                "output_slacks": {str(k): float(model.output_slacks[o, r]) for r, k in enumerate(self.outputs.columns)},
                "peers": {str(self.units[j]): float(w) for j, w in enumerate(model.lambdas[o]) if w > 1e-9},
            }
            if o in model.slack_ranges:
                row["slack_ranges"] = {
                    str(k): [float(v) for v in model.slack_ranges[o][i]] for i, k in enumerate(self.inputs.columns)
                }
            rows.append(row)
        return rows


def run_dea(inputs: pd.DataFrame, outputs: pd.DataFrame, *, slack_rts: Rts = "vrs", ranges: bool = True) -> DEAStage:
    """CRS and VRS input-oriented DEA of the units (rows) of `inputs` and `outputs`; `ranges`: check
    the slack model's max-slack solutions for ties (2 LPs per input and unit with slack)."""
    if not inputs.index.equals(outputs.index):
        raise ValueError("inputs and outputs must have the same units")
    x = inputs.to_numpy(dtype=float)
    y = outputs.to_numpy(dtype=float)
    crs = envelopment(x, y, "crs", ranges=ranges and slack_rts == "crs")
    vrs = envelopment(x, y, "vrs", ranges=ranges and slack_rts == "vrs")
    return DEAStage(inputs, outputs, crs, vrs, slack_rts)


# ---------------------------------------------------------------- three stages


@dataclass
class ThreeStageDEA(Result):
    """The three-stage DEA: stage 1 DEA, stage 2 frontiers of the slacks, stage 3 DEA on adjusted inputs.

    `frontiers` maps each input to its FrontierResult (the statsmodels fit is on it); `adjusted` holds
    the stage-3 inputs. Without environmental variables only stage 1 is computed."""

    stage1: DEAStage
    environment: list[str]
    frontiers: dict[str, FrontierResult]
    stage3: DEAStage | None
    adjusted: pd.DataFrame | None
    orientation: str = "input"
    names: dict[str, str] = field(default_factory=dict)
    specification: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return [str(c) for c in self.stage1.inputs.columns]

    @property
    def outputs(self) -> list[str]:
        return [str(c) for c in self.stage1.outputs.columns]

    def side_by_side(self) -> pd.DataFrame:
        """Stage 1 and stage 3 per unit (crs, vrs, scale, rts each), as the applied papers print them."""
        one = self.stage1.frame()[["crs", "vrs", "scale", "rts"]].add_prefix("stage1_")
        if self.stage3 is None:
            return one
        three = self.stage3.frame()[["crs", "vrs", "scale", "rts"]].add_prefix("stage3_")
        return one.join(three)

    # ---- tables

    def _label(self, unit: Any) -> str:
        name = self.names.get(str(unit))
        return f"{unit} {name}" if name else str(unit)

    def _spec_table(self) -> Table:
        spec = self.specification
        rows: list[list[Any]] = [
            ["Units", f"{len(self.stage1.units)}" + (f" ({spec['units']})" if spec.get("units") else "")],
            ["Inputs", ", ".join(self.inputs)],
            ["Outputs", ", ".join(self.outputs)],
            ["Environment", ", ".join(self.environment) or "none (stage 1 only)"],
            ["Orientation", f"{self.orientation}, envelopment form"],
            ["Slack model", f"{self.stage1.slack_rts.upper()} (stage-2 slacks and the slacks columns)"],
        ]
        rows += [
            [str(k).replace("_", " ").capitalize(), str(v)] for k, v in spec.items() if k not in ("units", "default")
        ]
        notes = [f"Default specification: {spec['default']}"] if spec.get("default") else []
        return Table(["", ""], rows, title="Three-stage DEA: specification", notes=notes)

    def _stage1_table(self) -> Table:
        frame = self.stage1.frame()
        headers = ["Unit", "TE (CRS)", "PTE (VRS)", "SE", "RTS", *(f"slack {i}" for i in self.inputs)]
        rows = [
            [self._label(u), r["crs"], r["vrs"], r["scale"], r["rts"], *(r[f"slack_{i}"] for i in self.inputs)]
            for u, r in frame.iterrows()
        ]
        rows.append(
            ["mean", frame["crs"].mean(), frame["vrs"].mean(), frame["scale"].mean(), "", *("" for _ in self.inputs)]
        )
        notes = [
            "TE = technical efficiency (CRS), PTE = pure technical efficiency (VRS), SE = scale efficiency = CRS/VRS.",
            f"RTS: {CONVENTIONS['rts']}.",
            f"Slacks: {CONVENTIONS['slacks']} ({self.stage1.slack_rts.upper()}).",
        ]
        ranged = [self._label(self.stage1.units[o]) for o in self.stage1.slack_model.slack_ranges]
        if ranged:
            notes.append("Slack split not unique (ranges in the JSON): " + ", ".join(ranged) + ".")
        return Table(headers, rows, title="Stage 1: DEA on the observed inputs", notes=notes)

    def _stage2_table(self) -> Table:
        cols = [i for i in self.inputs if i in self.frontiers]
        variables = ["const", *self.environment]
        rows: list[list[Any]] = []
        for var in variables:
            top: list[Any] = [var]
            below: list[Any] = [""]
            for i in cols:
                f = self.frontiers[i]
                coef, t = float(f.params[var]), float(f.tvalues[var])
                p = _t_pvalue(t)
                top.append(f"{coef:.8g}{stars(p) if np.isfinite(p) else ''}")
                below.append(f"({t:.3f})" if np.isfinite(t) else "")
            rows += [top, below]
        for label, attr in (("sigma2", "sigma2"), ("gamma", "gamma")):
            top = [label]
            below = [""]
            for i in cols:
                f = self.frontiers[i]
                t = float(f.tvalues[attr])
                top.append(f"{getattr(f, attr):.8g}")
                below.append(f"({t:.3f})" if np.isfinite(t) else "")
            rows += [top, below]
        rows.append(["log likelihood", *(f"{self.frontiers[i].loglik:.8g}" for i in cols)])
        rows.append(["LR (one-sided)", *(f"{self.frontiers[i].lr:.8g}" for i in cols)])
        rows.append(["p (LR)", *(f"{self.frontiers[i].lr_pvalue:.4g}" for i in cols)])
        rows.append(["N", *(str(self.frontiers[i].nobs) for i in cols)])
        rows.append(
            [
                "converged",
                *(
                    f"{'yes' if f.converged else 'NO'} ({f.starts_at_best}/{len(f.starts)} starts)"
                    for f in (self.frontiers[i] for i in cols)
                ),
            ]
        )
        notes = [
            f"Dependent: each input's total slack. {CONVENTIONS['stage2']}.",
            f"JLMS: {CONVENTIONS['jlms']}.",
            f"z statistics in parentheses (ML standard errors); {STAR_NOTE}; full precision in the JSON.",
        ]
        for i in cols:
            notes += [f"{i}: {note}" for note in self.frontiers[i].notes]
        return Table(
            ["", *(f"slack {i}" for i in cols)],
            rows,
            title="Stage 2: stochastic cost frontiers of the slacks",
            notes=notes,
        )

    def _side_table(self) -> Table:
        frame = self.side_by_side()
        headers = ["Unit", "TE 1", "PTE 1", "SE 1", "RTS 1", "TE 3", "PTE 3", "SE 3", "RTS 3"]
        rows = [
            [
                self._label(u),
                r["stage1_crs"],
                r["stage1_vrs"],
                r["stage1_scale"],
                r["stage1_rts"],
                r["stage3_crs"],
                r["stage3_vrs"],
                r["stage3_scale"],
                r["stage3_rts"],
            ]
            for u, r in frame.iterrows()
        ]
        means = [frame[c].mean() for c in ("stage1_crs", "stage1_vrs", "stage1_scale")]
        means3 = [frame[c].mean() for c in ("stage3_crs", "stage3_vrs", "stage3_scale")]
        rows.append(["mean", *means, "", *means3, ""])
        return Table(
            headers,
            rows,
            title="Stage 1 and stage 3 side by side",
            notes=[f"Stage 3: {CONVENTIONS['stage3']}; TE = CRS, PTE = VRS, SE = CRS/VRS."],
        )

    def tables(self) -> list[Table]:
        out = [self._spec_table(), self._stage1_table()]
        if self.frontiers:
            out.append(self._stage2_table())
        if self.stage3 is not None:
            out.append(self._side_table())
        if self.notes:
            out[-1].notes += self.notes
        return out

    def summary(self) -> Any:  # a statsmodels Summary (text, HTML, LaTeX), as linearmodels gives
        from statsmodels.iolib.summary import Summary
        from statsmodels.iolib.table import SimpleTable

        from analytics.results import fmt

        smry = Summary()
        extra: list[str] = []
        for table in self.tables():
            headers = table.headers[1:] if any(table.headers) else None
            data = [[fmt(c, table.digits) for c in r[1:]] for r in table.rows]
            stubs = [str(r[0]) for r in table.rows]
            smry.tables.append(SimpleTable(data, headers=headers, stubs=stubs, title=table.title or ""))
            extra += table.notes
        smry.add_extra_txt(extra)
        return smry

    def __str__(self) -> str:
        return str(self.summary())

    def to_dict(self) -> dict[str, Any]:
        stage2: dict[str, Any] = {}
        for i, f in self.frontiers.items():
            stage2[i] = {
                "dependent": f"total slack of {i}",
                **f.to_dict(),
                "units": [
                    {
                        "unit": str(u),
                        "slack": float(self.stage1.total_slacks().loc[u, i]),
                        "epsilon": float(f.epsilon[u]),
                        "zbeta": float(f.zbeta[u]),
                        "u": float(f.u_hat[u]),
                        "v": float(f.v_hat[u]),
                    }
                    for u in self.stage1.units
                ],
            }
        stage3 = self.stage3.rows(self.names) if self.stage3 is not None else []
        if self.adjusted is not None:
            for row, (_, adj) in zip(stage3, self.adjusted.iterrows(), strict=True):
                row["inputs_adjusted"] = {str(k): float(v) for k, v in adj.items()}
        return jsonable(
            {
                "model": "three_stage_dea",
                "orientation": self.orientation,
                "rts": self.stage1.slack_rts,
                "inputs": self.inputs,
                "outputs": self.outputs,
                "environment": self.environment,
                "specification": self.specification,
                "conventions": CONVENTIONS,
                "stage1": self.stage1.rows(self.names),
                "stage2": stage2,
                "stage3": stage3,
                "notes": self.notes,
            }
        )


def _t_pvalue(t: float) -> float:
    from scipy import stats

    return float(2 * stats.norm.sf(abs(t))) if np.isfinite(t) else float("nan")


def three_stage_dea(
    data: pd.DataFrame,
    inputs: Sequence[str],
    outputs: Sequence[str],
    environment: Sequence[str] = (),
    *,
    unit: str | None = None,
    rts: Rts = "vrs",
    orientation: str = "input",
    names: Mapping[str, str] | None = None,
    specification: Mapping[str, Any] | None = None,
) -> ThreeStageDEA:
    """The three-stage DEA of the rows of `data` (one per unit: the index, or the column `unit`).

    `rts` is the model whose slacks feed stage 2 (VRS, as Fried et al.); both CRS and VRS scores are
    always reported. Raises KeyError for an unknown column and ValueError for unusable data."""
    if orientation != "input":
        raise ValueError(f"orientation {orientation!r}: only input orientation is implemented (stage 3 adjusts inputs)")
    if rts not in ("crs", "vrs"):
        raise ValueError(f"rts {rts!r}: use crs or vrs")
    inputs, outputs, environment = list(inputs), list(outputs), list(environment)
    if not inputs or not outputs:
        raise ValueError("DEA needs at least one input and one output")
    names_used = inputs + outputs + environment
    dupes = sorted({v for v in names_used if names_used.count(v) > 1})
    if dupes:
        raise ValueError(f"variable(s) used twice: {', '.join(dupes)}")
    frame = data.copy()
    if unit is not None:
        if unit not in data.columns:
            raise KeyError(f"unknown unit column {unit!r}")
        frame = frame.set_index(unit)
    missing = [v for v in names_used if v not in frame.columns]
    if missing:
        raise KeyError(f"unknown variable(s): {', '.join(missing)}")
    frame.index = frame.index.map(str)
    if frame.index.duplicated().any():
        raise ValueError(f"units appear more than once: {', '.join(frame.index[frame.index.duplicated()][:5])}")
    values = frame[names_used].apply(pd.to_numeric, errors="coerce")
    bad = values[values.isna().any(axis=1)]
    if len(bad):
        where = "; ".join(f"{u}: {', '.join(bad.columns[bad.loc[u].isna()])}" for u in bad.index[:5])
        raise ValueError(f"missing or non-numeric values ({where})")
    for kind, cols in (("input", inputs), ("output", outputs)):
        part = values[cols]
        negative = part[(part < 0).any(axis=1)]
        if len(negative):
            raise ValueError(f"negative {kind}s (units {', '.join(negative.index[:5])}): DEA needs values >= 0")
        empty = part.index[part.sum(axis=1) <= 0]
        if len(empty):
            raise ValueError(f"units without a positive {kind}: {', '.join(empty[:5])}")

    x, y = values[inputs], values[outputs]
    stage1 = run_dea(x, y, slack_rts=rts)
    notes: list[str] = []
    n, k = len(values), len(environment)
    if n < 3 * (len(inputs) + len(outputs)):
        notes.append(
            f"{n} units for {len(inputs)} inputs and {len(outputs)} outputs: fewer than 3 (m + s) = "
            f"{3 * (len(inputs) + len(outputs))}, so the frontier discriminates weakly "
            "(the rule of thumb of Cooper, Seiford and Tone)."
        )
    if not environment:
        notes.append("No environmental variables: stages 2 and 3 are not computed.")
    elif n <= k + 3:
        notes.append(f"Stage 2 has {k + 3} parameters per frontier and there are {n} units: stages 2 and 3 skipped.")
    if not environment or n <= k + 3:
        return ThreeStageDEA(
            stage1, environment, {}, None, None, orientation, dict(names or {}), dict(specification or {}), notes
        )

    slacks = stage1.total_slacks()
    z = values[environment]
    frontiers: dict[str, FrontierResult] = {}
    adjusted = x.copy()
    for i in inputs:
        spread = float(slacks[i].max() - slacks[i].min())
        if spread <= DUST * max(float(x[i].abs().max()), 1.0):
            notes.append(
                f"{i}: every unit has the same total slack ({slacks[i].iloc[0]:g}): no frontier, not adjusted."
            )
            continue
        f = cost_frontier(slacks[i].rename(f"slack_{i}"), z)
        frontiers[i] = f
        adjusted[i] = x[i] + (f.zbeta.max() - f.zbeta) + (f.v_hat.max() - f.v_hat)
    if n < 10 * (k + 3):
        notes.append(f"Stage 2 estimates {k + 3} parameters from {n} units per frontier: read its tests with care.")
    stage3 = run_dea(adjusted, y, slack_rts=rts, ranges=False)  # stage-3 slacks feed nothing
    return ThreeStageDEA(
        stage1,
        environment,
        frontiers,
        stage3,
        adjusted,
        orientation,
        dict(names or {}),
        dict(specification or {}),
        notes,
    )


# ---------------------------------------------------------------- county data


def county_dea(
    wide: pd.DataFrame,
    *,
    year: int | None = None,
    inputs: Sequence[str] = DEFAULT_INPUTS,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    environment: Sequence[str] = DEFAULT_ENV,
    rts: Rts = "vrs",
    orientation: str = "input",
    names: Mapping[str, str] | None = None,
) -> ThreeStageDEA:
    """The three-stage DEA of the counties in one year of the statistics (`statistics_io.to_wide`).

    Variables are model variable names (analytics.dataset: indicator ids, indices, `ln_`...). The
    year defaults to the latest one in which every county of the panel has all the variables."""
    from analytics.dataset import build_variables

    variables = build_variables(wide, list(dict.fromkeys([*inputs, *outputs, *environment])))
    years = sorted(variables.index.get_level_values("year").unique())
    if year is None:
        complete = variables.dropna().groupby(level="year").size()
        full = [y for y in years if complete.get(y, 0) == variables.xs(y, level="year").shape[0]]
        if not full:
            raise ValueError("no year in which every county has all the DEA variables; pass a year")
        year = int(full[-1])
    if year not in years:
        raise ValueError(f"no statistics for {year}")
    cross = variables.xs(year, level="year")
    incomplete = cross[cross.isna().any(axis=1)]
    if len(incomplete):
        cross = cross.dropna()
    spec: dict[str, Any] = {
        "units": f"counties, {year}",
        "year": year,
        "source": "county statistics (village stats import / demo)",
    }
    if list(inputs) == list(DEFAULT_INPUTS) and list(outputs) == list(DEFAULT_OUTPUTS):
        spec["default"] = DEFAULT_SPEC_NOTE
    if len(incomplete):
        spec["dropped"] = ", ".join(map(str, incomplete.index)) + " (missing values)"
    result = three_stage_dea(
        cross,
        inputs,
        outputs,
        environment,
        rts=rts,
        orientation=orientation,
        names=names,
        specification=spec,
    )
    return result


DEFAULT_SPEC_NOTE = (
    "the counties of one year (the latest complete one); inputs labour (primary-industry employment) and "
    "digital infrastructure (optical cable length), outputs the gross output of farming, forestry, animal "
    "husbandry and fishery and the online retail sales of farm products (two and two, so that 14 counties "
    "meet the rule of thumb n >= 3 (m + s)); environment economic development (GDP per capita), fiscal "
    "support for agriculture and rural ageing, which a county's farms do not control. Add machinery with "
    "--inputs employment_primary,agri_machinery_power,optical_cable_length. Registry device counts are not an "
    "input: the registry holds the villages of one county, too few units for a frontier of their own."
)
