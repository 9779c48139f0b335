"""Panel models on a county-year panel: two-way fixed effects, three-step mediation, Hansen's threshold model.

Every function takes a pandas DataFrame indexed by (entity, time) (or with `county_code` and
`year` columns) and returns a result object from `analytics.results` (text summary + JSON).

Every model has county (entity) and year effects by default (`time_effects=True`).

Fixed effects: linearmodels' PanelOLS with entity and time effects and standard errors clustered
by entity, in one of three small-sample conventions (`se`, results.SE_CONVENTIONS). "lsdv" (the
default) uses linearmodels' `debiased=True, group_debias=True`: the cluster-robust sandwich scaled
by G/(G-1) * (N-1)/(N-K), with G clusters, N observations and K the regressors plus the absorbed
effects (entities + periods - 1), exactly the correction statsmodels applies to an OLS with entity
and year dummies (LSDV) and `cov_type="cluster"` (the tests check it). "stata" is Stata's
`xtreg y x i.year, fe vce(cluster id)`: the entity effects nested in the clusters are not counted
in K (K = regressors + year dummies + constant) and t has G - 1 degrees of freedom. "linearmodels"
is its default N/(N-K) without the group factor.

Mediation (the three steps of Baron and Kenny as the Chinese literature applies them, each with
two-way fixed effects): (1) Y on X: total effect c; (2) M on X: a; (3) Y on X and M: direct effect
c' and b. The indirect effect a*b is tested with the Sobel z = ab / sqrt(b^2 s_a^2 + a^2 s_b^2)
(clustered standard errors) and percentile and bias-corrected (Efron) confidence intervals from
a cluster bootstrap that resamples whole entities.

Threshold (Hansen 1999, J. Econometrics 93:345-368):
    y_it = mu_i [+ lambda_t] + b1' x_it 1(q_it <= g) + b2' x_it 1(q_it > g) + theta' z_it + e_it.
The within transformation removes mu_i (and lambda_t with `time_effects=True`, the default); g is
found by minimising SSR(g) over every distinct value of q between its `trim` and 1 - `trim`
quantiles (thinned to `grid` evenly spaced candidates only when `grid` is given).
F1 = (S0 - S1(g^)) / s^2 with Hansen's s^2 = S1(g^) / (n(T-1)) (`sigma2="hansen"`, his code and
xthreg, with or without year effects; `sigma2="dof"`: (n-1)(T-1) with year effects); its p-value
comes from Hansen's fixed-regressor bootstrap: residual vectors of whole entities from the model
without threshold are resampled, regressors and q stay fixed, and the search is repeated on each
bootstrap sample. The confidence interval of g is the set of grid points where LR(g) = (S1(g) -
S1(g^)) / s^2 <= c(alpha) = -2 ln(1 - sqrt(1 - alpha)) (7.35 at 95 %). With `double=True` a second
threshold is searched given the first, the first is refined given the second, and F2 is bootstrapped
under the single-threshold model. The panel must be balanced.
SSR(g) for all grid points and bootstrap replications is computed at once with the
Frisch-Waugh-Lovell theorem: the regressors without threshold are projected out once, so each grid
point costs one inner product per replication.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from linearmodels.panel import PanelOLS
from scipy import stats

from analytics.results import (
    COEF_COLUMNS,
    SE,
    SE_CONVENTIONS,
    SE_DEFAULT,
    STAR_NOTE,
    RegressionResult,
    RegressionTable,
    Result,
    Table,
    jsonable,
    stars,
)

ENTITY = "county_code"
TIME = "year"
CovType = Literal["clustered", "robust", "unadjusted"]


# ---------------------------------------------------------------- data helpers


def as_panel(data: pd.DataFrame, entity: str = ENTITY, time: str = TIME) -> pd.DataFrame:
    """`data` indexed by (entity, time), sorted; accepts the two as columns or as the index."""
    if isinstance(data.index, pd.MultiIndex) and data.index.nlevels == 2:
        frame = data
    elif entity in data.columns and time in data.columns:
        frame = data.set_index([entity, time])
    else:
        raise ValueError(f"expected a (entity, time) MultiIndex or the columns {entity!r} and {time!r}")
    if frame.index.duplicated().any():
        dup = frame.index[frame.index.duplicated()][:3].tolist()
        raise ValueError(f"duplicate (entity, time) rows: {dup}")
    return frame.sort_index()


def _columns(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise KeyError(f"unknown variable(s): {', '.join(missing)}")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise ValueError(f"variable(s) used twice: {', '.join(dupes)}")
    full = frame[list(names)].astype(float).replace([np.inf, -np.inf], np.nan)
    holes = full.isna()
    out = full.dropna()
    if out.empty:
        raise ValueError("no complete observations for " + ", ".join(names) + missing_values(full))
    if holes.any().any():
        out.attrs["dropped_note"] = f"{len(full) - len(out)} row(s) dropped for missing values:" + missing_values(full)
        out.attrs["missing"] = {c: [_row(k) for k in full.index[holes[c]]] for c in full.columns if holes[c].any()}
    return out


def _row(key: Any) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


def missing_values(frame: pd.DataFrame, limit: int = 5) -> str:
    """Where `frame` has missing values: each variable with the first (entity/time) rows, or ''."""
    parts = []
    for col in frame.columns:
        rows = frame.index[frame[col].isna()]
        if len(rows):
            shown = ", ".join(_row(k) for k in rows[:limit]) + (", ..." if len(rows) > limit else "")
            parts.append(f"{col} missing in {len(rows)} row(s) ({shown})")
    return (" " + "; ".join(parts)) if parts else ""


def _codes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    ent = pd.factorize(frame.index.get_level_values(0))[0]
    tim = pd.factorize(frame.index.get_level_values(1), sort=True)[0]
    return ent, tim


def demean(
    values: np.ndarray, entity: np.ndarray, time: np.ndarray | None = None, *, tol: float = 1e-12, max_iter: int = 500
) -> np.ndarray:
    """Remove entity (and time) means from the columns of `values` (N x k).

    One pass is exact for entity effects alone and for balanced two-way panels; unbalanced
    two-way panels are handled by alternating projections until the means vanish.
    """
    out = np.array(values, dtype=float, copy=True)
    squeeze = out.ndim == 1
    if squeeze:
        out = out[:, None]

    def remove(codes: np.ndarray) -> None:
        counts = np.bincount(codes)
        for j in range(out.shape[1]):
            out[:, j] -= (np.bincount(codes, weights=out[:, j]) / counts)[codes]

    remove(entity)
    if time is not None:
        scale = max(float(np.abs(values).max()), 1.0)
        for _ in range(max_iter):
            remove(time)
            counts = np.bincount(entity)
            drift = max(np.abs(np.bincount(entity, weights=out[:, j]) / counts).max() for j in range(out.shape[1]))
            if drift <= tol * scale:
                break
            remove(entity)
    return out[:, 0] if squeeze else out


# ---------------------------------------------------------------- fixed effects


def _cov_note(cov: CovType, se: SE, entities: int) -> str:
    if cov != "clustered":
        return f"{cov} covariance (linearmodels, debiased)"
    return f"{se}: clustered by entity ({entities} clusters); {SE_CONVENTIONS[se]}"


def unbalanced_note(frame: pd.DataFrame) -> str | None:
    """A note when some entities lack some of the panel's periods: how many, and the first few."""
    periods = frame.index.get_level_values(1).nunique()
    counts = frame.groupby(level=0).size()
    gaps = counts[counts < periods]
    if gaps.empty:
        return None
    first = ", ".join(f"{e} ({periods - c} missing)" for e, c in gaps.head(5).items())
    return (
        f"unbalanced panel: {len(gaps)} of {len(counts)} entities have gaps (fewer than the {periods} periods): "
        f"{first}{', ...' if len(gaps) > 5 else ''}"
    )


def _stata_fit(frame: pd.DataFrame, y: str, regs: list[str], time_effects: bool) -> tuple[Any, pd.DataFrame]:
    """xtreg y regs [i.year], fe vce(cluster id): entity effects absorbed, year dummies and a constant as
    regressors; linearmodels does not count entity effects nested in the clusters, so debiased +
    group_debias is Stata's G/(G-1) (N-1)/(N-K), K = regressors + year dummies + constant."""
    exog = frame[regs].assign(const=1.0)
    if time_effects:
        years = pd.get_dummies(frame.index.get_level_values(1), prefix="_year", drop_first=True, dtype=float)
        years.index = frame.index
        exog = pd.concat([exog, years], axis=1)
    res = PanelOLS(frame[y], exog, entity_effects=True).fit(
        cov_type="clustered", cluster_entity=True, debiased=True, group_debias=True
    )
    return res, exog


def fixed_effects(
    data: pd.DataFrame,
    y: str,
    x: str | Sequence[str],
    controls: Sequence[str] = (),
    *,
    entity_effects: bool = True,
    time_effects: bool = True,
    cov: CovType = "clustered",
    se: SE = SE_DEFAULT,
    alpha: float = 0.05,
) -> RegressionResult:
    """Two-way (entity and year) fixed-effects regression of `y` on `x` and `controls` (PanelOLS).

    `se` picks the small-sample convention of the clustered errors (results.SE_CONVENTIONS): "lsdv"
    (default), "stata" (xtreg, fe vce(cluster), t with G - 1 degrees of freedom) or "linearmodels".
    """
    if se not in SE_CONVENTIONS:
        raise ValueError(f"se {se!r}: use one of {', '.join(SE_CONVENTIONS)}")
    if se == "stata" and not entity_effects:
        raise ValueError("se 'stata' is xtreg's fixed-effects covariance: it needs entity effects")
    regs = [x] if isinstance(x, str) else list(x)
    regs += [c for c in controls if c not in regs]
    frame = _columns(as_panel(data), [y, *regs])
    entities = int(frame.index.get_level_values(0).nunique())
    if cov == "clustered" and se == "stata" and entity_effects:
        res, _ = _stata_fit(frame, y, regs, time_effects)
        df_t = entities - 1
        tstats = res.params[regs] / res.std_errors[regs]
        pvalues = pd.Series(2 * stats.t.sf(np.abs(tstats), df_t), index=regs)
        half = stats.t.ppf(1 - alpha / 2, df_t) * res.std_errors[regs]
        coefs = pd.DataFrame(
            {
                "coef": res.params[regs],
                "std_err": res.std_errors[regs],
                "t": tstats,
                "p": pvalues,
                "ci_lower": res.params[regs] - half,
                "ci_upper": res.params[regs] + half,
            }
        )[list(COEF_COLUMNS)]
    else:
        model = PanelOLS(frame[y], frame[regs], entity_effects=entity_effects, time_effects=time_effects)
        kwargs: dict[str, Any] = {"cov_type": cov}
        if cov == "clustered":
            kwargs = {"cov_type": "clustered", "cluster_entity": True, "group_debias": se != "linearmodels"}
        res = model.fit(debiased=True, **kwargs)
        ci = res.conf_int(level=1 - alpha)
        coefs = pd.DataFrame(
            {
                "coef": res.params,
                "std_err": res.std_errors,
                "t": res.tstats,
                "p": res.pvalues,
                "ci_lower": ci.iloc[:, 0],
                "ci_upper": ci.iloc[:, 1],
            }
        )[list(COEF_COLUMNS)]
        df_t = int(res.df_resid)
    ent, tim = _codes(frame)
    yv = frame[y].to_numpy()
    resid_ss = float(res.resid_ss)
    tss_within = float(((yv - (np.bincount(ent, weights=yv) / np.bincount(ent))[ent]) ** 2).sum())
    r2_within = 1.0 - resid_ss / tss_within if tss_within > 0 else math.nan
    r2 = float(res.rsquared)
    if se == "stata" and time_effects:  # the R² with both effects removed, as PanelOLS reports it
        tss_both = float((demean(yv, ent, tim) ** 2).sum())
        r2 = 1.0 - resid_ss / tss_both if tss_both > 0 else math.nan
    notes = [n for n in (getattr(frame, "attrs", {}).get("dropped_note"), unbalanced_note(frame)) if n]
    return RegressionResult(
        dependent=y,
        coefficients=coefs,
        nobs=int(res.nobs),
        entities=entities,
        periods=int(frame.index.get_level_values(1).nunique()),
        r2=r2,
        r2_within=r2_within,
        r2_inclusive=float(res.rsquared_inclusive),
        entity_effects=entity_effects,
        time_effects=time_effects,
        cov_type="Clustered" if cov == "clustered" else cov.capitalize(),
        cov_note=_cov_note(cov, se, entities),
        se=se,
        notes=notes,
        extra={"resid_ss": resid_ss, "df_resid": int(res.df_resid), "df_t": df_t, "alpha": alpha},
        fit=res,
    )


def fixed_effects_table(
    data: pd.DataFrame,
    y: str,
    x: str | Sequence[str],
    controls: Sequence[str] = (),
    *,
    stepwise: bool = True,
    title: str | None = None,
    **kwargs: Any,
) -> RegressionTable:
    """Columns that add the controls one at a time (`stepwise`), or x alone and x with all controls."""
    xs = [x] if isinstance(x, str) else list(x)
    sets = [list(controls[:i]) for i in range(len(controls) + 1)] if stepwise else [[], list(controls)]
    if not controls:
        sets = [[]]
    models = [fixed_effects(data, y, xs, c, **kwargs) for c in sets]
    effects = models[0].effects_label().lower().replace(", ", " and ")
    return RegressionTable(models=models, title=title or f"Fixed effects ({effects}): {y}")


# ---------------------------------------------------------------- mediation


@dataclass
class MediationResult(Result):
    """The three equations of the stepwise mediation test and the decomposition of the effect."""

    x: str
    m: str
    y: str
    steps: list[RegressionResult]  # (1) y ~ x, (2) m ~ x, (3) y ~ x + m
    a: float
    b: float
    c: float
    c_prime: float
    indirect: float
    sobel_se: float
    sobel_z: float
    sobel_p: float
    boot_ci: tuple[float, float]
    boot_ci_bc: tuple[float, float]
    boot_se: float
    reps: int
    alpha: float
    seed: int | None
    boot_draws: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    @property
    def proportion(self) -> float:
        return self.indirect / self.c if self.c else math.nan

    def conclusion(self) -> str:
        p_c, p_a = self.steps[0].pvalues[self.x], self.steps[1].pvalues[self.x]
        p_b, p_cp = self.steps[2].pvalues[self.m], self.steps[2].pvalues[self.x]
        boot_excludes_zero = self.boot_ci[0] > 0 or self.boot_ci[1] < 0
        level = 0.05
        if p_a < level and p_b < level:
            kind = "partial mediation" if p_cp < level else "full mediation"
            total = "" if p_c < level else " (the total effect itself is not significant)"
            return f"{kind}: a and b are significant at 5 %{total}"
        if boot_excludes_zero or self.sobel_p < level:
            return "mediation by the Sobel test / bootstrap CI, though a or b is not significant on its own"
        return "no significant mediation"

    def tables(self) -> list[Table]:
        table = RegressionTable(
            models=self.steps,
            names=[f"(1) {self.y}", f"(2) {self.m}", f"(3) {self.y}"],
            title=f"Mediation: {self.x} -> {self.m} -> {self.y}",
        ).tables()
        lo, hi = self.boot_ci
        bc_lo, bc_hi = self.boot_ci_bc
        level = f"{100 * (1 - self.alpha):g} %"
        effects = Table(
            ["Effect", "Estimate", "Std. Err.", "z / CI"],
            [
                ["Total effect c (1)", f"{self.c:.4f}{stars(self.steps[0].pvalues[self.x])}", "", ""],
                ["Direct effect c' (3)", f"{self.c_prime:.4f}{stars(self.steps[2].pvalues[self.x])}", "", ""],
                ["Indirect effect a*b", self.indirect, self.sobel_se, f"z = {self.sobel_z:.3f}"],
                ["  Sobel p-value", self.sobel_p, "", ""],
                [f"  bootstrap {level} CI, percentile", "", self.boot_se, f"[{lo:.4f}, {hi:.4f}]"],
                [f"  bootstrap {level} CI, bias-corrected", "", "", f"[{bc_lo:.4f}, {bc_hi:.4f}]"],
                ["Share mediated a*b/c", self.proportion, "", ""],
            ],
            title="Effect decomposition",
            notes=[
                f"cluster bootstrap over entities, {self.reps} replications (seed {self.seed}); bias-corrected: "
                "quantiles Phi(2 z0 + z_a) with z0 = Phi^-1(share of draws below a*b) (Efron 1987); " + STAR_NOTE,
                f"specification: {self.steps[0].effects_label().lower()} effects; std. errors {self.steps[0].se}",
                f"conclusion: {self.conclusion()}",
            ],
        )
        return [*table, effects]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "mediation",
                "x": self.x,
                "m": self.m,
                "y": self.y,
                "steps": [s.to_dict() for s in self.steps],
                "a": self.a,
                "b": self.b,
                "total_effect": self.c,
                "direct_effect": self.c_prime,
                "indirect_effect": self.indirect,
                "proportion_mediated": self.proportion,
                "sobel": {"se": self.sobel_se, "z": self.sobel_z, "p": self.sobel_p},
                "bootstrap": {
                    "reps": self.reps,
                    "seed": self.seed,
                    "alpha": self.alpha,
                    "se": self.boot_se,
                    "ci": list(self.boot_ci),
                    "ci_percentile": list(self.boot_ci),
                    "ci_bias_corrected": list(self.boot_ci_bc),
                },
                "se": self.steps[0].se,
                "time_effects": self.steps[0].time_effects,
                "conclusion": self.conclusion(),
            }
        )


def _balanced(frame: pd.DataFrame) -> tuple[int, int] | None:
    n = frame.index.get_level_values(0).nunique()
    t = frame.index.get_level_values(1).nunique()
    return (n, t) if n * t == len(frame) else None


def _demean_blocks(arr: np.ndarray, time_effects: bool) -> np.ndarray:
    """Within transform of a balanced panel laid out as (..., n, T)."""
    out = arr - arr.mean(axis=-1, keepdims=True)
    if time_effects:
        out = out - out.mean(axis=-2, keepdims=True)
    return out


def _batched_ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of y (B, N) on x (B, N, k) for every b."""
    xtx = np.einsum("bnk,bnl->bkl", x, x)
    xty = np.einsum("bnk,bn->bk", x, y)
    return np.linalg.solve(xtx, xty[..., None])[..., 0]


def _bootstrap_ab(
    frame: pd.DataFrame,
    x: str,
    m: str,
    y: str,
    controls: list[str],
    reps: int,
    rng: np.random.Generator,
    entity_effects: bool,
    time_effects: bool,
) -> np.ndarray:
    """a*b on `reps` cluster-bootstrap samples (entities drawn with replacement, each a new entity)."""
    cols = [y, m, x, *controls]
    shape = _balanced(frame)
    entities = frame.index.get_level_values(0).unique()
    draws = np.empty(reps)
    if shape is not None and entity_effects:
        n, t = shape
        arr = frame[cols].to_numpy().reshape(n, t, len(cols)).transpose(2, 0, 1)  # (v, n, T)
        chunk = max(1, min(reps, 2_000_000 // max(1, arr.size)))
        for start in range(0, reps, chunk):
            b = min(chunk, reps - start)
            idx = rng.integers(0, n, size=(b, n))
            s = _demean_blocks(arr[:, idx, :], time_effects)  # (v, b, n, T)
            s = s.reshape(len(cols), b, n * t)
            yy, mm, xx, cc = s[0], s[1], s[2], s[3:]
            xa = np.stack([xx, *cc], axis=-1)  # m ~ x + controls
            xb = np.stack([xx, mm, *cc], axis=-1)  # y ~ x + m + controls
            a = _batched_ols(xa, mm)[:, 0]
            bb = _batched_ols(xb, yy)[:, 1]
            draws[start : start + b] = a * bb
        return draws
    groups = [np.flatnonzero(frame.index.get_level_values(0) == e) for e in entities]
    values = frame[cols].to_numpy()
    times = _codes(frame)[1]
    for r in range(reps):
        pick = rng.integers(0, len(groups), size=len(groups))
        rows = np.concatenate([groups[i] for i in pick])
        ent = np.concatenate([np.full(len(groups[i]), j) for j, i in enumerate(pick)])
        s = demean(values[rows], ent, times[rows] if time_effects else None)
        yy, mm, xx, cc = s[:, 0], s[:, 1], s[:, 2], s[:, 3:]
        a = np.linalg.lstsq(np.column_stack([xx, cc]), mm, rcond=None)[0][0]
        bb = np.linalg.lstsq(np.column_stack([xx, mm, cc]), yy, rcond=None)[0][1]
        draws[r] = a * bb
    return draws


def mediation(
    data: pd.DataFrame,
    y: str,
    x: str,
    m: str,
    controls: Sequence[str] = (),
    *,
    reps: int = 500,
    seed: int | None = 0,
    alpha: float = 0.05,
    entity_effects: bool = True,
    time_effects: bool = True,
    se: SE = SE_DEFAULT,
) -> MediationResult:
    """The three-step mediation model with two-way fixed effects, Sobel test and bootstrap CI of a*b."""
    ctrl = [c for c in controls if c not in (x, m, y)]
    frame = _columns(as_panel(data), [y, m, x, *ctrl])
    kw: dict[str, Any] = {
        "entity_effects": entity_effects,
        "time_effects": time_effects,
        "se": se,
        "alpha": alpha,
    }
    step1 = fixed_effects(frame, y, x, ctrl, **kw)
    step2 = fixed_effects(frame, m, x, ctrl, **kw)
    step3 = fixed_effects(frame, y, [x, m], ctrl, **kw)
    a, sa = float(step2.params[x]), float(step2.std_errors[x])
    b, sb = float(step3.params[m]), float(step3.std_errors[m])
    indirect = a * b
    sobel_se = math.sqrt(b * b * sa * sa + a * a * sb * sb)
    z = indirect / sobel_se if sobel_se > 0 else math.nan
    draws = np.empty(0)
    lo = hi = boot_se = math.nan
    bc = (math.nan, math.nan)
    if reps > 0:
        rng = np.random.default_rng(seed)
        draws = _bootstrap_ab(frame, x, m, y, ctrl, reps, rng, entity_effects, time_effects)
        lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        bc = bias_corrected_ci(draws, indirect, alpha)
        boot_se = float(draws.std(ddof=1)) if reps > 1 else math.nan
    return MediationResult(
        x=x,
        m=m,
        y=y,
        steps=[step1, step2, step3],
        a=a,
        b=b,
        c=float(step1.params[x]),
        c_prime=float(step3.params[x]),
        indirect=indirect,
        sobel_se=sobel_se,
        sobel_z=z,
        sobel_p=float(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan,
        boot_ci=(float(lo), float(hi)),
        boot_ci_bc=bc,
        boot_se=boot_se,
        reps=reps,
        alpha=alpha,
        seed=seed,
        boot_draws=draws,
    )


def bias_corrected_ci(draws: np.ndarray, estimate: float, alpha: float) -> tuple[float, float]:
    """Efron's bias-corrected percentile interval: the draws' quantiles at Phi(2 z0 +- z_(1-alpha/2)),
    z0 = Phi^-1(share of draws below the estimate, ties counted half)."""
    if len(draws) < 2:
        return (math.nan, math.nan)
    share = (np.sum(draws < estimate) + 0.5 * np.sum(draws == estimate)) / len(draws)
    if share <= 0 or share >= 1:
        return (math.nan, math.nan)
    z0 = float(stats.norm.ppf(share))
    z = float(stats.norm.ppf(1 - alpha / 2))
    lo, hi = np.quantile(draws, [stats.norm.cdf(2 * z0 - z), stats.norm.cdf(2 * z0 + z)])
    return (float(lo), float(hi))


# ---------------------------------------------------------------- threshold


Sigma2 = Literal["hansen", "dof"]
SIGMA2_CONVENTIONS: dict[str, str] = {"hansen": "S1/(n(T-1))", "dof": "S1/((n-1)(T-1))"}
GRID_CELLS_MAX = 60_000_000  # candidate thresholds x regime regressors x observations held at once (8 bytes each)


def c_alpha(alpha: float) -> float:
    """Hansen's critical value of the likelihood ratio for the threshold's confidence interval."""
    return -2.0 * math.log(1.0 - math.sqrt(1.0 - alpha))


@dataclass
class ThresholdTest:
    """The bootstrap test of k against k - 1 thresholds."""

    name: str
    f_stat: float
    p_value: float
    crit: dict[str, float]  # "10%", "5%", "1%"
    reps: int
    ssr: float
    sigma2: float

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "name": self.name,
                "f_stat": self.f_stat,
                "p_value": self.p_value,
                "crit": self.crit,
                "reps": self.reps,
                "ssr": self.ssr,
                "sigma2": self.sigma2,
            }
        )


@dataclass
class ThresholdEstimate:
    name: str
    estimate: float
    ci_lower: float
    ci_upper: float
    grid: np.ndarray = field(repr=False)
    lr: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "name": self.name,
                "estimate": self.estimate,
                "ci_lower": self.ci_lower,
                "ci_upper": self.ci_upper,
                "lr_curve": {"gamma": self.grid, "lr": self.lr},
            }
        )


@dataclass
class ThresholdResult(Result):
    """Hansen's panel threshold model: existence tests, threshold estimates and regime coefficients."""

    y: str
    x: list[str]
    q: str
    controls: list[str]
    tests: list[ThresholdTest]
    thresholds: list[ThresholdEstimate]
    regression: RegressionResult
    settings: dict[str, Any]

    @property
    def threshold(self) -> float:
        """The single-threshold estimate."""
        return self.thresholds[0].estimate

    @property
    def p_value(self) -> float:
        return self.tests[0].p_value

    def tables(self) -> list[Table]:
        s = self.settings
        tests = Table(
            ["Model", "F-stat", "P-value", "Crit 10%", "Crit 5%", "Crit 1%", "BS reps"],
            [
                [t.name, f"{t.f_stat:.2f}{stars(t.p_value)}", f"{t.p_value:.4f}", *(t.crit[k] for k in LEVELS), t.reps]
                for t in self.tests
            ],
            title=f"Threshold effect test (threshold variable {self.q})",
            notes=[
                f"Hansen fixed-regressor bootstrap; trim {s['trim']:g}, {s['grid_points']} candidate thresholds "
                + ("(every distinct value inside the trim)" if s["grid_max"] is None else "(thinned when asked)")
                + f", seed {s['seed']}; {STAR_NOTE}",
                f"specification: {s['specification']}; s² = {s['sigma2_formula']} ({s['sigma2']}"
                + (", Hansen's code and xthreg" if s["sigma2"] == "hansen" else "")
                + f"), n = {s['entities']} entities, T = {s['periods']} periods",
            ],
        )
        level = f"{100 * (1 - s['alpha']):g}%"
        estimates = Table(
            ["Threshold", "Estimate", f"Lower ({level})", f"Upper ({level})"],
            [[e.name, e.estimate, e.ci_lower, e.ci_upper] for e in self.thresholds],
            title="Threshold estimates",
            notes=[f"LR confidence set: LR(g) <= c(alpha) = {s['c_alpha']:.4f}"],
        )
        return [tests, estimates, *self.regression.tables()]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "panel_threshold",
                "y": self.y,
                "x": self.x,
                "q": self.q,
                "controls": self.controls,
                "tests": [t.to_dict() for t in self.tests],
                "thresholds": [e.to_dict() for e in self.thresholds],
                "regression": self.regression.to_dict(),
                "settings": self.settings,
            }
        )


class _ThresholdData:
    """A balanced panel laid out for the grid search: within-transformed arrays and the grid."""

    def __init__(
        self,
        frame: pd.DataFrame,
        y: str,
        xs: list[str],
        q: str,
        controls: list[str],
        trim: float,
        grid: int | None,
        time_effects: bool,
        sigma2: Sigma2,
    ) -> None:
        shape = _balanced(frame)
        if shape is None:
            if frame.attrs.get("dropped_note"):
                raise ValueError(
                    "the threshold model needs a balanced panel, and rows with missing values break it: "
                    + frame.attrs["dropped_note"]
                )
            counts = frame.groupby(level=0).size()
            short = counts[counts < counts.max()].index[:5].tolist()
            raise ValueError(
                f"the threshold model needs a balanced panel; entities with missing periods: {short} "
                "(drop them or fill the gaps)"
            )
        self.n, self.t = shape
        self.N = self.n * self.t
        self.time_effects = time_effects
        self.df = (self.n - 1) * (self.t - 1) if time_effects and sigma2 == "dof" else self.n * (self.t - 1)

        def block(col: str) -> np.ndarray:
            return frame[col].to_numpy(dtype=float).reshape(self.n, self.t)

        self.y = self.W(block(y)).ravel()
        self.x = np.stack([block(c) for c in xs])  # (kx, n, T)
        self.q = block(q)
        base = [self.W(a).ravel() for a in self.x] + [self.W(block(c)).ravel() for c in controls]
        self.X0 = np.column_stack(base)
        self.grid = self._grid(trim, grid)
        if len(self.grid) * len(xs) * self.N > GRID_CELLS_MAX:
            raise ValueError(
                f"{len(self.grid)} candidate thresholds x {self.N} observations is more than the search holds in "
                f"memory ({GRID_CELLS_MAX:,} cells); thin the candidates with grid=N (--grid N)"
            )
        # W(x * 1(q <= g)) for every grid point: (G, kx, N)
        ind = self.q[None, :, :] <= self.grid[:, None, None]
        v = self.W(self.x[None, :, :, :] * ind[:, None, :, :])
        self.V = v.reshape(len(self.grid), len(xs), self.N)
        self.below = ind.reshape(len(self.grid), self.N).sum(axis=1)

    def _grid(self, trim: float, points: int | None) -> np.ndarray:
        if not 0 < trim < 0.5:
            raise ValueError(f"trim must be in (0, 0.5), got {trim}")
        qs = np.sort(self.q.ravel())
        lo = max(math.ceil(trim * self.N) - 1, 0)
        hi = min(math.floor((1 - trim) * self.N) - 1, self.N - 1)
        cand = np.unique(qs[lo : hi + 1])
        if points is not None and len(cand) > points:
            cand = cand[np.unique(np.linspace(0, len(cand) - 1, points).round().astype(int))]
        if len(cand) < 2:
            raise ValueError(f"the threshold variable has too few distinct values inside the {trim:g} trim")
        return cand

    def W(self, a: np.ndarray) -> np.ndarray:
        return _demean_blocks(a, self.time_effects)

    def profile(self, base: np.ndarray) -> _Profile:
        """The grid regressors with the columns of `base` projected out (Frisch-Waugh-Lovell)."""
        qb = _basis(base)
        u = self.V - (self.V @ qb) @ qb.T  # (G, kx, N)
        a = np.einsum("gkn,gln->gkl", u, u)  # (G, kx, kx)
        scale = np.einsum("gkk->g", a)
        with np.errstate(all="ignore"):
            ok = (scale > 1e-12 * max(1.0, float(scale.max()))) & (np.linalg.cond(a) < 1e10)
        a_safe = np.where(ok[:, None, None], a, np.eye(a.shape[1])[None])
        return _Profile(qb, u, a_safe, ok)


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of x (collinear columns dropped)."""
    q, r = np.linalg.qr(x)
    diag = np.abs(np.diag(r))
    return q[:, diag > 1e-10 * max(1.0, float(diag.max(initial=0.0)))]


@dataclass
class _Profile:
    qb: np.ndarray  # basis of the regressors without threshold (N, k)
    u: np.ndarray  # grid regressors, base projected out (G, kx, N)
    a: np.ndarray  # their Gram matrices (G, kx, kx)
    ok: np.ndarray  # grid points whose regressor is not degenerate (G,)

    def ssr(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SSR of each target column (N x B) without (B,) and with each grid regressor (G, B); +inf if degenerate."""
        r = targets - self.qb @ (self.qb.T @ targets)
        s0 = (r * r).sum(axis=0)
        c = np.einsum("gkn,nb->gkb", self.u, r)
        explained = (c * np.linalg.solve(self.a, c)).sum(axis=1)
        s = s0[None, :] - explained
        s[~self.ok] = np.inf
        return s0, s


def _regime_frame(frame: pd.DataFrame, xs: list[str], q: str, cuts: list[float]) -> tuple[pd.DataFrame, list[str]]:
    """x split into regimes at the sorted thresholds `cuts`, as new columns."""
    out = frame.copy()
    names = []
    edges = [-math.inf, *sorted(cuts), math.inf]
    for xname in xs:
        for lo, hi in itertools.pairwise(edges):
            if lo == -math.inf:
                label = f"{xname} ({q}<={hi:.4g})"
            elif hi == math.inf:
                label = f"{xname} ({q}>{lo:.4g})"
            else:
                label = f"{xname} ({lo:.4g}<{q}<={hi:.4g})"
            mask = (frame[q] > lo) & (frame[q] <= hi)
            out[label] = frame[xname] * mask
            names.append(label)
    return out, names


LEVELS = ("10%", "5%", "1%")


def _ci(grid: np.ndarray, lr: np.ndarray, crit: float) -> tuple[float, float]:
    inside = grid[np.isfinite(lr) & (lr <= crit)]
    return float(inside.min()), float(inside.max())


def _test(name: str, f: float, draws: np.ndarray, ssr: float, sigma2: float) -> ThresholdTest:
    if len(draws) == 0:
        return ThresholdTest(name, f, math.nan, dict.fromkeys(LEVELS, math.nan), 0, ssr, sigma2)
    q = np.quantile(draws, [0.90, 0.95, 0.99])
    crit = {k: float(v) for k, v in zip(LEVELS, q, strict=True)}
    return ThresholdTest(name, f, float(np.mean(draws >= f)), crit, len(draws), ssr, sigma2)


def panel_threshold(
    data: pd.DataFrame,
    y: str,
    x: str | Sequence[str],
    q: str,
    controls: Sequence[str] = (),
    *,
    trim: float = 0.15,
    grid: int | None = None,
    reps: int = 300,
    seed: int | None = 0,
    double: bool = False,
    min_between: float = 0.05,
    time_effects: bool = True,
    sigma2: Sigma2 = "hansen",
    se: SE = SE_DEFAULT,
    alpha: float = 0.05,
) -> ThresholdResult:
    """Hansen's (1999) fixed-effects panel threshold model of `y` on `x` with threshold variable `q`.

    `x` has regime-dependent slopes; `controls` do not. `trim` is the share of observations each
    regime must keep (0.15 each side by default), `grid` the number of candidate thresholds when
    they are to be thinned (default: every distinct value of `q` inside the trim, so that the
    least-squares threshold is found), `reps` the bootstrap replications. County and year effects by
    default (`time_effects=False` for Hansen's county effects only). `sigma2` is the convention of
    s^2 in F and LR: "hansen" S1/(n(T-1)) as Hansen's code and xthreg, "dof" S1/((n-1)(T-1)) with
    year effects. `double` also tests a second threshold (the middle regime
    keeping at least `min_between` of the observations). Balanced panels only.
    """
    xs = [x] if isinstance(x, str) else list(x)
    ctrl = [c for c in controls if c not in xs and c != y]
    cols = list(dict.fromkeys([y, *xs, q, *ctrl]))
    frame = _columns(as_panel(data), cols)
    if sigma2 not in SIGMA2_CONVENTIONS:
        raise ValueError(f"sigma2 {sigma2!r}: use one of {', '.join(SIGMA2_CONVENTIONS)}")
    d = _ThresholdData(frame, y, xs, q, ctrl, trim, grid, time_effects, sigma2)
    rng = np.random.default_rng(seed)
    crit_lr = c_alpha(alpha)
    g = d.grid
    min_n = math.ceil(trim * d.N)
    valid1 = (d.below >= min_n) & (d.N - d.below >= min_n)

    # single threshold
    p0 = d.profile(d.X0)
    s0_arr, s1_arr = p0.ssr(d.y[:, None])
    s0, s1 = float(s0_arr[0]), s1_arr[:, 0]
    s1[~valid1] = np.inf
    i1 = int(np.argmin(s1))
    ssr1 = float(s1[i1])
    sigma2_1 = ssr1 / d.df
    f1 = (s0 - ssr1) / sigma2_1
    lr1 = (s1 - ssr1) / sigma2_1
    resid0 = _residual(d.X0, d.y).reshape(d.n, d.t)
    f1_draws = _bootstrap_single(d, p0, resid0, valid1, reps, rng)
    tests = [_test("Single", f1, f1_draws, ssr1, sigma2_1)]
    lo1, hi1 = _ci(g, lr1, crit_lr)
    estimates = [ThresholdEstimate("g1 (single)", float(g[i1]), lo1, hi1, g, lr1)]
    cuts = [float(g[i1])]

    if double:
        base1 = np.column_stack([d.X0, d.V[i1].T])
        s2 = d.profile(base1).ssr(d.y[:, None])[1][:, 0]
        s2[~_valid2(d, i1, valid1, min_between)] = np.inf
        i2 = int(np.argmin(s2))
        ssr2 = float(s2[i2])
        sigma2_2 = ssr2 / d.df
        f2 = (ssr1 - ssr2) / sigma2_2
        lr2 = (s2 - ssr2) / sigma2_2
        # refine the first threshold given the second (Hansen 1999, section 4)
        s1r = d.profile(np.column_stack([d.X0, d.V[i2].T])).ssr(d.y[:, None])[1][:, 0]
        s1r[~_valid2(d, i2, valid1, min_between)] = np.inf
        i1r = int(np.argmin(s1r))
        lr1r = (s1r - float(s1r[i1r])) / sigma2_2
        resid1 = _residual(base1, d.y)
        f2_draws = _bootstrap_double(d, p0, resid1.reshape(d.n, d.t), d.y - resid1, valid1, min_between, reps, rng)
        tests.append(_test("Double", f2, f2_draws, ssr2, sigma2_2))
        lo1r, hi1r = _ci(g, lr1r, crit_lr)
        lo2, hi2 = _ci(g, lr2, crit_lr)
        estimates += [
            ThresholdEstimate("g1 (double, refined)", float(g[i1r]), lo1r, hi1r, g, lr1r),
            ThresholdEstimate("g2 (double)", float(g[i2]), lo2, hi2, g, lr2),
        ]
        if tests[-1].p_value < alpha:
            cuts = sorted([float(g[i1r]), float(g[i2])])

    reg_frame, reg_names = _regime_frame(frame, xs, q, cuts)
    regression = fixed_effects(reg_frame, y, reg_names, ctrl, time_effects=time_effects, se=se, alpha=alpha)
    settings = {
        "trim": trim,
        "grid_points": len(g),
        "grid_max": grid,
        "reps": reps,
        "seed": seed,
        "double": double,
        "min_between": min_between,
        "time_effects": time_effects,
        "specification": "county and year effects" if time_effects else "county effects",
        "sigma2": sigma2,
        "sigma2_formula": SIGMA2_CONVENTIONS[sigma2] if time_effects else "S1/(n(T-1))",
        "se": se,
        "alpha": alpha,
        "c_alpha": crit_lr,
        "entities": d.n,
        "periods": d.t,
        "df_sigma2": d.df,
        "regimes_at": cuts,
    }
    return ThresholdResult(y, xs, q, ctrl, tests, estimates, regression, settings)


def _residual(base: np.ndarray, target: np.ndarray) -> np.ndarray:
    qb = _basis(base)
    return target - qb @ (qb.T @ target)


def _valid2(d: _ThresholdData, fixed: int, valid1: np.ndarray, min_between: float) -> np.ndarray:
    """Grid points allowed as a second threshold given the first at index `fixed`."""
    between = np.abs(d.below - d.below[fixed])
    ok = valid1 & (between >= max(1, math.ceil(min_between * d.N)))
    ok[fixed] = False
    return ok


def _draw_errors(d: _ThresholdData, resid: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """`b` bootstrap error vectors (N, b): whole entities' residual vectors drawn with replacement."""
    idx = rng.integers(0, d.n, size=(b, d.n))
    e = d.W(resid[idx])  # (b, n, T); a no-op for entity effects alone, needed with time effects
    return e.reshape(b, d.N).T


def _chunk(d: _ThresholdData, reps: int) -> int:
    per_rep = max(d.N, d.V.shape[0] * d.V.shape[1])
    return max(1, min(reps, 4_000_000 // per_rep))


def _bootstrap_single(
    d: _ThresholdData, p0: _Profile, resid: np.ndarray, valid1: np.ndarray, reps: int, rng: np.random.Generator
) -> np.ndarray:
    """F1 on samples y* = X b + e* of the model without threshold (X b is projected out, so only e* counts)."""
    out = np.empty(reps)
    step = _chunk(d, reps)
    for start in range(0, reps, step):
        b = min(step, reps - start)
        s0, s1 = p0.ssr(_draw_errors(d, resid, b, rng))
        s1[~valid1] = np.inf
        smin = s1.min(axis=0)
        out[start : start + b] = (s0 - smin) / (smin / d.df)
    return out


def _bootstrap_double(
    d: _ThresholdData,
    p0: _Profile,
    resid: np.ndarray,
    fitted: np.ndarray,
    valid1: np.ndarray,
    min_between: float,
    reps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """F2 on samples generated by the single-threshold model: y* = fitted + e*."""
    out = np.empty(reps)
    step = _chunk(d, reps)
    for start in range(0, reps, step):
        b = min(step, reps - start)
        ystar = fitted[:, None] + _draw_errors(d, resid, b, rng)
        _, s1 = p0.ssr(ystar)
        s1[~valid1] = np.inf
        first = s1.argmin(axis=0)
        s1min = s1[first, np.arange(b)]
        for i1 in np.unique(first):
            cols = np.flatnonzero(first == i1)
            _, s2 = d.profile(np.column_stack([d.X0, d.V[i1].T])).ssr(ystar[:, cols])
            s2[~_valid2(d, int(i1), valid1, min_between)] = np.inf
            s2min = s2.min(axis=0)
            out[start + cols] = (s1min[cols] - s2min) / (s2min / d.df)
    return out


# ---------------------------------------------------------------- Hausman


@dataclass
class HausmanResult(Result):
    """Hausman's test of fixed against random effects (entity effects, conventional covariances)."""

    statistic: float
    df: int
    p_value: float
    fe: pd.Series
    re: pd.Series
    sigmamore: bool = True

    def tables(self) -> list[Table]:
        rows = [[v, self.fe[v], self.re[v], self.fe[v] - self.re[v]] for v in self.fe.index]
        verdict = "fixed effects" if self.p_value < 0.05 else "random effects (not rejected)"
        return [
            Table(
                ["Variable", "FE", "RE", "Difference"],
                rows,
                title="Hausman test",
                notes=[f"chi2({self.df}) = {self.statistic:.4f}, p = {self.p_value:.4f}: {verdict}"]
                + (["covariances with the random-effects disturbance variance (sigmamore)"] if self.sigmamore else []),
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "model": "hausman",
                "statistic": self.statistic,
                "df": self.df,
                "p_value": self.p_value,
                "fe": self.fe,
                "re": self.re,
                "sigmamore": self.sigmamore,
            }
        )


def hausman(
    data: pd.DataFrame,
    y: str,
    x: str | Sequence[str],
    controls: Sequence[str] = (),
    *,
    sigmamore: bool = True,
) -> HausmanResult:
    """Fixed against random entity effects: H = d' (V_FE - V_RE)^-1 d, chi2 with k degrees of freedom.

    With `sigmamore` (the default, Stata's `hausman ..., sigmamore`) both covariances use the random
    effects estimate of the disturbance variance, so that V_FE - V_RE is positive semi-definite and
    H is not negative, as it can be in finite samples when each uses its own.
    """
    from linearmodels.panel import RandomEffects

    regs = ([x] if isinstance(x, str) else list(x)) + list(controls)
    frame = _columns(as_panel(data), [y, *regs])
    fe = PanelOLS(frame[y], frame[regs], entity_effects=True).fit()
    re = RandomEffects(frame[y], frame[regs].assign(const=1.0)).fit()
    diff = fe.params[regs] - re.params[regs]
    v_fe = fe.cov.loc[regs, regs] * (float(re.s2) / float(fe.s2) if sigmamore else 1.0)
    vdiff = v_fe - re.cov.loc[regs, regs]
    stat = float(diff.to_numpy() @ np.linalg.pinv(vdiff.to_numpy()) @ diff.to_numpy())
    return HausmanResult(
        statistic=stat,
        df=len(regs),
        p_value=float(stats.chi2.sf(stat, len(regs))),
        fe=fe.params[regs],
        re=re.params[regs],
        sigmamore=sigmamore,
    )
