"""Stochastic cost frontier (normal / half-normal) by maximum likelihood, and the JLMS decomposition.

The second stage of the three-stage DEA (analytics/dea.py) regresses each input's total slack on
the environmental variables as a *cost-type* frontier (slack is excess input, so inefficiency adds):

    s_i = const + z_i'beta + v_i + u_i,   v_i ~ N(0, sigma_v^2),   u_i ~ |N(0, sigma_u^2)|,

with sigma^2 = sigma_u^2 + sigma_v^2 and gamma = sigma_u^2 / sigma^2 (Battese and Corra's
parametrisation, as Frontier 4.1 and the applied papers print it). With eps = v + u and
lambda = sigma_u / sigma_v the log-likelihood of one observation is

    ln 2 - ln sigma + ln phi(eps / sigma) + ln Phi(lambda eps / sigma)

(the production frontier has Phi(-lambda eps / sigma)). Inefficiency is estimated by the conditional
mean of Jondrow, Lovell, Materov and Schmidt (1982), cost form:

    E[u | eps] = sigma* [phi(a) / Phi(a) + a],  a = lambda eps / sigma,  sigma* = sigma_u sigma_v / sigma,

and the statistical noise by v_hat = eps - E[u | eps]. The one-sided likelihood-ratio test of gamma = 0
(no inefficiency: the frontier is OLS) is LR = 2 (lnL - lnL_OLS), p = P(chi2_1 > LR) / 2, the mixed
chi-square of a parameter on the boundary (Kodde and Palm 1986: 2.706 at 5 %).

Estimation: the likelihood is maximised over (beta, ln sigma^2, logit gamma) with BFGS on standardised
data from several starting points: the method-of-moments estimates (corrected OLS: sigma_u from the
third moment of the OLS residuals, the intercept shifted down by E[u] = sigma_u sqrt(2/pi)) and a
grid of gamma values. The best optimum is kept; how many starts converged and how many reached it
are reported. Standard errors come from the numerical Hessian in the unconstrained parameters, mapped
back by the delta method. When the OLS residuals have the wrong skewness (m3 <= 0 for a cost
frontier), OLS is a stationary point of the likelihood with gamma = 0 (Waldman 1982): if no start
improves on it, the result *is* OLS, gamma = 0, E[u | eps] = 0, LR = 0, and `wrong_skewness` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from statsmodels.base.model import GenericLikelihoodModel, GenericLikelihoodModelResults, LikelihoodModelResults
from statsmodels.regression.linear_model import OLS
from statsmodels.tools.numdiff import approx_hess

CONST = "const"
LN2 = math.log(2.0)
HALF_LN_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GAMMA_STARTS = (0.05, 0.25, 0.5, 0.75, 0.95)
LOGIT_BOUND = 20.0  # |logit gamma| <= 20: gamma within 2e-9 of 0 or 1 is on the boundary
BOUNDARY = 1e-6  # gamma closer than this to 0 or 1 is reported as on the boundary (no standard errors)


# ---------------------------------------------------------------- likelihood and JLMS


def loglike_obs(params: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-observation log-likelihood of the half-normal cost frontier; params = (beta, sigma2, gamma)."""
    k = x.shape[1]
    beta, sigma2, gamma = params[:k], params[k], params[k + 1]
    if not (sigma2 > 0 and 0 <= gamma < 1):
        return np.full(len(y), -np.inf)
    sigma = math.sqrt(sigma2)
    lam = math.sqrt(gamma / (1.0 - gamma))
    eps = y - x @ beta
    return LN2 - math.log(sigma) - HALF_LN_2PI - 0.5 * (eps / sigma) ** 2 + special.log_ndtr(lam * eps / sigma)


def jlms_cost(eps: np.ndarray, sigma2: float, gamma: float) -> np.ndarray:
    """E[u | eps] for the cost frontier eps = v + u (Jondrow et al. 1982)."""
    eps = np.asarray(eps, dtype=float)
    if gamma <= 0:
        return np.zeros_like(eps)
    if gamma >= 1:  # no noise: all of eps is inefficiency (u >= 0)
        return np.maximum(eps, 0.0)
    su2, sv2 = gamma * sigma2, (1.0 - gamma) * sigma2
    sigma = math.sqrt(sigma2)
    lam = math.sqrt(su2 / sv2)
    sigma_star = math.sqrt(su2 * sv2) / sigma
    a = lam * eps / sigma
    return sigma_star * (mills_ratio(a) + a)


def mills_ratio(a: np.ndarray) -> np.ndarray:
    """phi(a) / Phi(a), computed in logs; below a = -30 the asymptotic series -a - 1/a + 2/a^3."""
    a = np.asarray(a, dtype=float)
    out = np.empty_like(a)
    far = a < -30.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out[~far] = np.exp(-0.5 * a[~far] ** 2 - HALF_LN_2PI - special.log_ndtr(a[~far]))
        af = a[far]
        out[far] = -af - 1.0 / af + 2.0 / af**3
    return out


def ols_loglik(ssr: float, n: int) -> float:
    """Maximised normal log-likelihood of OLS (variance SSR/n)."""
    return -0.5 * n * (math.log(2.0 * math.pi) + math.log(ssr / n) + 1.0)


def lr_pvalue(lr: float) -> float:
    """One-sided p-value of LR for gamma = 0: P(chi2_1 > LR) / 2 (mixed chi-square)."""
    return 0.5 * float(stats.chi2.sf(max(lr, 0.0), 1))


# ---------------------------------------------------------------- statsmodels model


class HalfNormalCostFrontier(GenericLikelihoodModel):
    """statsmodels model of the cost frontier; parameters (beta..., sigma2, gamma) in that order.

    `fit` is `cost_frontier`'s multi-start search; the model is kept on the result for its
    `summary()` (a statsmodels Summary) and `loglike`."""

    def __init__(self, endog: Any, exog: Any, **kwargs: Any) -> None:
        super().__init__(endog, exog, extra_params_names=["sigma2", "gamma"], **kwargs)

    def loglikeobs(self, params: np.ndarray) -> np.ndarray:
        return loglike_obs(np.asarray(params, dtype=float), self.endog, self.exog)

    def loglike(self, params: np.ndarray) -> float:
        return float(np.sum(self.loglikeobs(params)))


# ---------------------------------------------------------------- result


@dataclass
class StartOutcome:
    """One starting point of the likelihood search."""

    label: str
    loglik: float
    converged: bool
    iterations: int


@dataclass
class FrontierResult:
    """One estimated cost frontier: parameters, tests, convergence and the JLMS decomposition.

    `fit` is the statsmodels results object (GenericLikelihoodModelResults, or the OLS results when
    the estimate is on the gamma = 0 boundary); `summary()` is its statsmodels Summary."""

    dependent: str
    params: pd.Series  # const, environment..., sigma2, gamma
    bse: pd.Series
    loglik: float
    loglik_ols: float
    nobs: int
    converged: bool
    starts: list[StartOutcome]
    starts_at_best: int
    ols_skewness: float
    wrong_skewness: bool
    boundary: str | None  # None, "gamma=0" or "gamma=1"
    epsilon: pd.Series
    zbeta: pd.Series  # z'beta without the intercept
    u_hat: pd.Series  # E[u | eps]
    v_hat: pd.Series  # eps - E[u | eps]
    fit: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def beta(self) -> pd.Series:
        return self.params.drop(["sigma2", "gamma"])

    @property
    def sigma2(self) -> float:
        return float(self.params["sigma2"])

    @property
    def gamma(self) -> float:
        return float(self.params["gamma"])

    @property
    def lr(self) -> float:
        return max(2.0 * (self.loglik - self.loglik_ols), 0.0)

    @property
    def lr_pvalue(self) -> float:
        return lr_pvalue(self.lr)

    @property
    def tvalues(self) -> pd.Series:
        return self.params / self.bse

    def summary(self) -> Any:
        return self.fit.summary(yname=self.dependent) if self.fit is not None else None

    def to_dict(self) -> dict[str, Any]:
        t = self.tvalues
        return {
            "beta": {k: float(v) for k, v in self.beta.items()},
            "sigma2": self.sigma2,
            "gamma": self.gamma,
            "loglik": self.loglik,
            "lr": self.lr,
            "lr_pvalue": self.lr_pvalue,
            "se": {k: _finite(v) for k, v in self.bse.items()},
            "t": {k: _finite(v) for k, v in t.items()},
            "sigma_u2": self.gamma * self.sigma2,
            "sigma_v2": (1.0 - self.gamma) * self.sigma2,
            "loglik_ols": self.loglik_ols,
            "nobs": self.nobs,
            "converged": self.converged,
            "starts": len(self.starts),
            "starts_converged": sum(s.converged for s in self.starts),
            "starts_at_best": self.starts_at_best,
            "ols_residual_skewness": self.ols_skewness,
            "wrong_skewness": self.wrong_skewness,
            "boundary": self.boundary,
            "notes": list(self.notes),
        }


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


# ---------------------------------------------------------------- estimation


def _negll_and_grad(theta: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Negative log-likelihood and its gradient in (beta, omega = ln sigma2, tau = logit gamma).

    With lambda = sqrt(gamma / (1 - gamma)) = exp(tau / 2), a = lambda eps / sigma, m = phi(a)/Phi(a):
    dlnL/dbeta = sum x (eps / sigma2 - m lambda / sigma), dlnL/domega = sum(-1/2 + eps^2 / (2 sigma2) - m a / 2),
    dlnL/dtau = sum m a / 2."""
    k = x.shape[1]
    beta, omega, tau = theta[:k], theta[k], theta[k + 1]
    sigma2 = math.exp(omega)
    sigma = math.sqrt(sigma2)
    lam = math.exp(0.5 * tau)
    eps = y - x @ beta
    a = lam * eps / sigma
    ll = np.sum(LN2 - 0.5 * omega - HALF_LN_2PI - 0.5 * eps * eps / sigma2 + special.log_ndtr(a))
    mills = mills_ratio(a)
    grad = np.empty(k + 2)
    grad[:k] = x.T @ (eps / sigma2 - mills * lam / sigma)
    grad[k] = np.sum(-0.5 + 0.5 * eps * eps / sigma2 - 0.5 * mills * a)
    grad[k + 1] = np.sum(0.5 * mills * a)
    return -float(ll), -grad


def _unpack(theta: np.ndarray, k: int) -> np.ndarray:
    """(beta, ln sigma2, logit gamma) -> (beta, sigma2, gamma)."""
    return np.concatenate([theta[:k], [math.exp(theta[k]), special.expit(theta[k + 1])]])


def _pack(params: np.ndarray, k: int) -> np.ndarray:
    gamma = min(max(params[k + 1], 1e-9), 1 - 1e-9)
    return np.concatenate([params[:k], [math.log(params[k]), special.logit(gamma)]])


def _moment_start(beta_ols: np.ndarray, resid: np.ndarray) -> np.ndarray | None:
    """Method-of-moments (corrected OLS) start; None when the residuals have the wrong skewness."""
    m2 = float(np.mean(resid**2))
    m3 = float(np.mean(resid**3))
    if m3 <= 0:
        return None
    su = (m3 / (SQRT_2_OVER_PI * (4.0 / math.pi - 1.0))) ** (1.0 / 3.0)
    su2 = su * su
    sv2 = m2 - (1.0 - 2.0 / math.pi) * su2
    if sv2 <= 0.05 * m2:
        sv2 = 0.05 * m2  # the third moment claims more than the variance allows: keep some noise
    start = beta_ols.copy()
    start[0] -= su * SQRT_2_OVER_PI
    sigma2 = su2 + sv2
    return np.concatenate([start, [sigma2, su2 / sigma2]])


def _grid_start(beta_ols: np.ndarray, m2: float, gamma: float) -> np.ndarray:
    """A start with the given gamma whose composed-error variance equals the OLS one."""
    # var(eps) = sigma_v^2 + (1 - 2/pi) sigma_u^2 = sigma2 (1 - gamma) + (1 - 2/pi) gamma sigma2
    sigma2 = m2 / (1.0 - gamma + (1.0 - 2.0 / math.pi) * gamma)
    start = beta_ols.copy()
    start[0] -= math.sqrt(gamma * sigma2) * SQRT_2_OVER_PI
    return np.concatenate([start, [sigma2, gamma]])


def cost_frontier(
    y: pd.Series,
    z: pd.DataFrame,
    *,
    gamma_starts: Sequence[float] = GAMMA_STARTS,
    tol: float = 1e-8,
) -> FrontierResult:
    """Fit the half-normal cost frontier y = const + z'beta + v + u by maximum likelihood.

    `y` and `z` share their index (the units); `z` may have no columns (a constant-only frontier).
    """
    if not y.index.equals(z.index):
        raise ValueError("dependent variable and environmental variables must have the same units")
    names = [CONST, *map(str, z.columns)]
    k = len(names)
    n = len(y)
    if n <= k + 2:
        raise ValueError(f"stochastic frontier of {y.name}: {n} units for {k + 2} parameters")
    yv = y.to_numpy(dtype=float)
    xv = np.column_stack([np.ones(n), z.to_numpy(dtype=float)]) if z.shape[1] else np.ones((n, 1))
    if not np.all(np.isfinite(yv)) or not np.all(np.isfinite(xv)):
        raise ValueError(f"stochastic frontier of {y.name}: missing or infinite values")
    if np.linalg.matrix_rank(xv) < k:
        raise ValueError(f"stochastic frontier of {y.name}: the environmental variables are collinear or constant")

    sy = float(np.std(yv))
    if sy == 0:
        raise ValueError(f"stochastic frontier of {y.name}: the dependent variable does not vary")
    # standardise: y / sy, z -> (z - mean) / sd, so one tolerance fits any units
    zm = xv[:, 1:].mean(axis=0)
    zs = xv[:, 1:].std(axis=0)
    xs = np.column_stack([np.ones(n), (xv[:, 1:] - zm) / zs]) if k > 1 else xv
    ys = yv / sy

    ols = OLS(ys, xs).fit()
    resid = ols.resid
    m2 = float(np.mean(resid**2))
    skew = float(stats.skew(resid))
    wrong = float(np.mean(resid**3)) <= 0
    ll_ols_std = ols_loglik(float(np.sum(resid**2)), n)

    starts: list[tuple[str, np.ndarray]] = []
    moment = _moment_start(ols.params, resid)
    if moment is not None:
        starts.append(("moments", moment))
    starts += [(f"gamma={g:g}", _grid_start(ols.params, m2, g)) for g in gamma_starts]

    def negll(theta: np.ndarray) -> float:
        value = -float(np.sum(loglike_obs(_unpack(theta, k), ys, xs)))
        return value if np.isfinite(value) else 1e300

    def negll_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        return _negll_and_grad(theta, ys, xs)

    bounds = [(None, None)] * k + [(-30.0, 30.0), (-LOGIT_BOUND, LOGIT_BOUND)]
    outcomes: list[StartOutcome] = []
    best: optimize.OptimizeResult | None = None
    best_converged = False
    for label, start in starts:
        res = optimize.minimize(
            negll_grad,
            np.clip(_pack(start, k), -LOGIT_BOUND + 1, LOGIT_BOUND - 1),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 5000, "ftol": 1e-14, "gtol": 1e-9},
        )
        outcomes.append(StartOutcome(label, -float(res.fun), bool(res.success), int(res.nit)))
        if best is None or res.fun < best.fun:
            best, best_converged = res, outcomes[-1].converged
    assert best is not None
    best_ll_std = -float(best.fun)
    at_best = sum(abs(o.loglik - best_ll_std) <= 1e-6 * max(1.0, abs(best_ll_std)) for o in outcomes)
    notes: list[str] = []

    shift = -n * math.log(sy)  # log-likelihood in the data's own units
    index = y.index
    if best_ll_std <= ll_ols_std + tol:
        # gamma = 0: the frontier is OLS and there is no inefficiency to separate from noise
        params_std = np.concatenate([ols.params, [m2, 0.0]])
        cov_std = np.full((k + 2, k + 2), np.nan)
        cov_std[:k, :k] = ols.cov_params() * (n - k) / n  # ML variance, as the likelihood has it
        boundary: str | None = "gamma=0"
        loglik_std = ll_ols_std
        converged = True
        notes.append(
            "gamma = 0: no start improves on OLS"
            + (" (the OLS residuals are skewed the wrong way for a cost frontier)" if wrong else "")
            + "; E[u|eps] = 0 and v = eps"
        )
    else:
        theta = best.x
        params_std = _unpack(theta, k)
        loglik_std = best_ll_std
        converged = best_converged
        gamma = float(params_std[k + 1])
        boundary = "gamma=1" if gamma > 1 - BOUNDARY else ("gamma=0" if gamma < BOUNDARY else None)
        cov_std = _delta_cov(negll, theta, k) if boundary is None else np.full((k + 2, k + 2), np.nan)
        if boundary == "gamma=1":
            notes.append("gamma at 1: sigma_v -> 0, no standard errors")
        if wrong:
            notes.append("the OLS residuals are skewed the wrong way, yet a start found a higher likelihood")

    # back to the data's units
    a = np.eye(k + 2)
    a[:k, :k] *= sy
    if k > 1:
        a[1:k, 1:k] = np.diag(sy / zs)
        a[0, 1:k] = -sy * zm / zs
    a[k, k] = sy * sy
    params = a @ params_std
    missing = ~np.isfinite(cov_std)
    # a is block-diagonal (beta | sigma2 | gamma), so the NaN blocks stay apart
    cov = a @ np.where(missing, 0.0, cov_std) @ a.T
    cov[missing] = np.nan
    loglik = loglik_std + shift
    loglik_ols = ll_ols_std + shift

    eps = yv - xv @ params[:k]
    u = jlms_cost(eps, params[k], params[k + 1])
    zbeta = xv[:, 1:] @ params[1:k] if k > 1 else np.zeros(n)
    model = HalfNormalCostFrontier(
        pd.Series(yv, index=index, name=str(y.name)), pd.DataFrame(xv, index=index, columns=names)
    )
    fit = _results(model, params, cov, converged, outcomes)
    bse = pd.Series(np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan)), index=[*names, "sigma2", "gamma"])
    return FrontierResult(
        dependent=str(y.name),
        params=pd.Series(params, index=[*names, "sigma2", "gamma"]),
        bse=bse,
        loglik=float(loglik),
        loglik_ols=float(loglik_ols),
        nobs=n,
        converged=converged,
        starts=outcomes,
        starts_at_best=int(at_best),
        ols_skewness=skew,
        wrong_skewness=wrong,
        boundary=boundary,
        epsilon=pd.Series(eps, index=index),
        zbeta=pd.Series(zbeta, index=index),
        u_hat=pd.Series(u, index=index),
        v_hat=pd.Series(eps - u, index=index),
        fit=fit,
        notes=notes,
    )


def _delta_cov(negll: Any, theta: np.ndarray, k: int) -> np.ndarray:
    """Covariance of (beta, sigma2, gamma) from the Hessian in (beta, ln sigma2, logit gamma)."""
    hess = approx_hess(theta, negll)
    try:
        cov_theta = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return np.full((k + 2, k + 2), np.nan)
    if not np.all(np.isfinite(cov_theta)) or np.any(np.diag(cov_theta) <= 0):
        return np.full((k + 2, k + 2), np.nan)
    jac = np.eye(k + 2)
    jac[k, k] = math.exp(theta[k])
    g = special.expit(theta[k + 1])
    jac[k + 1, k + 1] = g * (1.0 - g)
    return jac @ cov_theta @ jac.T


def _results(
    model: HalfNormalCostFrontier, params: np.ndarray, cov: np.ndarray, converged: bool, outcomes: list[StartOutcome]
) -> GenericLikelihoodModelResults:
    """A statsmodels results object for the estimate found by the multi-start search."""
    mlefit = LikelihoodModelResults(model, params, normalized_cov_params=cov, scale=1.0)
    mlefit.mle_retvals = {"converged": converged, "starts": len(outcomes)}
    mlefit.mle_settings = {"optimizer": "bfgs, multi-start", "start_params": None}
    return GenericLikelihoodModelResults(model, mlefit)
