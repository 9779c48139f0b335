"""The three-stage DEA checked against published answers and independent computations.

Stage 1 (analytics/dea.py):
- DEAP's first example (Coelli 1996, "A Guide to DEAP Version 2.1", CEPA Working Paper 96/08, eg1:
  five firms, one output, two inputs, CRS, input orientation): the published scores, input slacks and
  peer weights of eg1-out.txt;
- Cooper, Seiford and Tone (2007), "Data Envelopment Analysis", 2nd ed., chapter 2, Example 2.2 (two
  inputs and one output: stores A-F), CCR scores 0.8571 and 0.6316, the lambdas, and store F, radially
  efficient but with a slack of 2 in input 1 (CCR-inefficient); each also derived by hand in the test;
- the one-input one-output VRS example of Coelli, Rao, O'Donnell and Battese (2005, ch. 8; DEAP's eg2
  data): CRS, VRS, scale efficiency and irs/drs, derived by hand below;
- the multiplier form solved as its own LP (the dual) giving the same scores, and the phase-1 HiGHS
  marginals being a feasible, optimal multiplier solution;
- returns to scale the same in every optimal CRS solution (min and max of the lambda sum over the
  optimal face), the property the DEAP rule needs when lambdas are not unique;
- a constructed tie in the max-slack phase, reported with its range.
Stage 2 (analytics/sfa.py): the likelihood and the JLMS mean against numerical integration of the
convolution of a normal and a half-normal; a planted frontier recovered; OLS residuals with the wrong
skewness giving gamma = 0 without failing. Stage 3: a planted panel whose environmental effects stage
2 recovers and whose stage-3 scores rank the planted inefficiency better than stage 1 does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.optimize import linprog

from analytics import dea
from analytics.dea import (
    county_dea,
    envelopment,
    multiplier_scores,
    returns_to_scale,
    run_dea,
    three_stage_dea,
)
from analytics.sfa import cost_frontier, jlms_cost, loglike_obs, lr_pvalue
from analytics.statistics_io import DEMO_FILE, read_statistics_frame, to_wide

# ---------------------------------------------------------------- stage 1: published examples


def test_deap_eg1_scores_slacks_and_peers() -> None:
    """Coelli (1996), eg1: y = (1, 2, 3, 1, 2), x1 = (2, 2, 6, 3, 6), x2 = (5, 4, 6, 2, 2), CRS."""
    y = np.array([[1], [2], [3], [1], [2]], dtype=float)
    x = np.array([[2, 5], [2, 4], [6, 6], [3, 2], [6, 2]], dtype=float)
    e = envelopment(x, y, "crs")
    assert np.round(e.theta, 3).tolist() == [0.5, 1.0, 0.833, 0.714, 1.0]  # as printed
    assert e.theta[2] == pytest.approx(5 / 6, abs=1e-9) and e.theta[3] == pytest.approx(5 / 7, abs=1e-9)
    assert np.round(e.input_slacks, 3).tolist() == [[0, 0.5], [0, 0], [0, 0], [0, 0], [0, 0]]
    assert np.all(e.output_slacks == 0)
    # peers and weights: firm 1 -> 2 (0.5); firm 3 -> 5 (0.5), 2 (1.0); firm 4 -> 5 (0.286), 2 (0.214)
    assert e.lambdas[0] == pytest.approx([0, 0.5, 0, 0, 0], abs=1e-9)
    assert e.lambdas[2] == pytest.approx([0, 1.0, 0, 0, 0.5], abs=1e-9)
    assert np.round(e.lambdas[3], 3).tolist() == [0, 0.214, 0, 0, 0.286]
    # input targets: firm 4 (2.143, 1.429)
    target = e.theta[3] * x[3] - e.input_slacks[3]
    assert np.round(target, 3).tolist() == [2.143, 1.429]


def test_cooper_seiford_tone_two_inputs_one_output() -> None:
    """CST (2007) Example 2.2. By hand: A (4, 3) projects onto the segment D (4, 2) - E (2, 4),
    x1 + x2 = 6, at theta (4 + 3) = 6, theta = 6/7 with lambda_D = 5/7, lambda_E = 2/7; B (7, 3) onto
    C (8, 1) - D (4, 2), x1 + 4 x2 = 12, theta (7 + 12) = 12, theta = 12/19; F (10, 1) is radially
    efficient (no other store uses less than 1 of input 2) but C does the same with 2 less of input 1."""
    x = np.array([[4, 3], [7, 3], [8, 1], [4, 2], [2, 4], [10, 1]], dtype=float)
    y = np.ones((6, 1))
    e = envelopment(x, y, "crs")
    assert e.theta == pytest.approx([6 / 7, 12 / 19, 1, 1, 1, 1], abs=1e-9)
    assert e.lambdas[0] == pytest.approx([0, 0, 0, 5 / 7, 2 / 7, 0], abs=1e-9)
    assert e.lambdas[1] == pytest.approx([0, 0, 2 / 19, 17 / 19, 0, 0], abs=1e-9)
    assert e.input_slacks[5] == pytest.approx([2, 0], abs=1e-9) and e.lambdas[5] == pytest.approx([0, 0, 1, 0, 0, 0])
    assert np.all(e.input_slacks[:5] == 0)
    assert np.round(e.theta, 4).tolist() == [0.8571, 0.6316, 1, 1, 1, 1]  # as CST print them


def test_vrs_scale_efficiency_and_returns_to_scale() -> None:
    """Coelli et al. (2005) / DEAP eg2: (x, y) = (2, 1), (4, 2), (3, 3), (5, 4), (6, 5). By hand: the CRS
    frontier is y = x (firm 3); the VRS frontier joins (2, 1), (3, 3), (6, 5): firm 2 needs x = 2.5 for
    y = 2 (0.625), firm 4 needs 4.5 for y = 4 (0.9). Firms 1, 2 are below the most productive scale (irs),
    4, 5 above (drs)."""
    inputs = pd.DataFrame({"x": [2.0, 4, 3, 5, 6]}, index=list("12345"))
    outputs = pd.DataFrame({"y": [1.0, 2, 3, 4, 5]}, index=list("12345"))
    stage = run_dea(inputs, outputs)
    frame = stage.frame()
    assert frame["crs"].tolist() == pytest.approx([0.5, 0.5, 1, 0.8, 5 / 6], abs=1e-9)
    assert frame["vrs"].tolist() == pytest.approx([1, 0.625, 1, 0.9, 1], abs=1e-9)
    assert frame["scale"].tolist() == pytest.approx([0.5, 0.8, 1, 8 / 9, 5 / 6], abs=1e-9)
    assert frame["rts"].tolist() == ["irs", "irs", "crs", "drs", "drs"]
    # the total VRS slack is the radial saving: 4 - 2.5 and 5 - 4.5
    assert frame["slack_x"].tolist() == pytest.approx([0, 1.5, 0, 0.5, 0], abs=1e-9)
    rows = stage.rows()
    assert rows[1]["slacks"] == {"x": pytest.approx(1.5)} and rows[1]["slacks_radial"]["x"] == pytest.approx(1.5)


def test_returns_to_scale_rule() -> None:
    assert returns_to_scale(1 - 5e-7, 0.5) == "crs"
    assert returns_to_scale(0.9, 0.7) == "irs" and returns_to_scale(0.9, 1.3) == "drs"


# ---------------------------------------------------------------- stage 1: independent checks


def _random_units(seed: int, n: int = 30, m: int = 3, s: int = 2, integers: bool = False) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    if integers:  # small integers: many ties, degenerate LPs, alternative optimal lambdas
        return rng.integers(1, 5, (n, m)).astype(float), rng.integers(1, 5, (n, s)).astype(float)
    return rng.uniform(1, 10, (n, m)), rng.uniform(1, 10, (n, s))


@pytest.mark.parametrize("rts", ["crs", "vrs"])
@pytest.mark.parametrize("integers", [False, True])
def test_multiplier_form_gives_the_same_scores(rts: str, integers: bool) -> None:
    x, y = _random_units(3, integers=integers)
    e = envelopment(x, y, rts)  # type: ignore[arg-type]
    assert e.theta == pytest.approx(multiplier_scores(x, y, rts), abs=1e-8)  # type: ignore[arg-type]
    # the phase-1 marginals are an optimal multiplier solution: v'x_o = 1, u'y_o - u0 = theta, feasible
    assert np.all(e.v >= -1e-12) and np.all(e.u >= -1e-12)
    assert (e.v * x).sum(axis=1) == pytest.approx(np.ones(len(x)), abs=1e-8)
    assert (e.u * y).sum(axis=1) - e.u0 == pytest.approx(e.theta, abs=1e-8)
    assert np.all(e.u @ y.T - e.v @ x.T - e.u0[:, None] <= 1e-8)
    # and the phase-2 solution is a feasible point at the radial optimum
    assert e.lambdas @ x + e.input_slacks == pytest.approx(e.theta[:, None] * x, abs=1e-7)
    assert e.lambdas @ y - e.output_slacks == pytest.approx(y, abs=1e-7)
    if rts == "vrs":
        assert e.lambda_sum == pytest.approx(np.ones(len(x)), abs=1e-8)


def test_returns_to_scale_is_the_same_in_every_optimal_solution() -> None:
    """For each unit whose CRS and VRS scores differ, the CRS lambda sum is below 1 in all optimal
    solutions or above 1 in all (Seiford and Zhu 1999): its min and max over the optimal face agree."""
    for seed, integers in ((5, True), (6, True), (7, False)):
        x, y = _random_units(seed, n=25, m=2, s=2, integers=integers)
        stage = run_dea(pd.DataFrame(x), pd.DataFrame(y))
        n = len(x)
        for o, (scale, rts) in enumerate(zip(stage.scale, stage.rts, strict=True)):
            if rts == "crs":
                continue
            # lambda sums over {lambda >= 0 : X lambda <= theta* x_o, Y lambda >= y_o}
            a_ub = np.vstack([x.T, -y.T])
            b_ub = np.concatenate([stage.crs.theta[o] * x[o] * (1 + 1e-9), -y[o]])
            lo = linprog(np.ones(n), A_ub=a_ub, b_ub=b_ub, method="highs").fun
            hi = -linprog(-np.ones(n), A_ub=a_ub, b_ub=b_ub, method="highs").fun
            assert scale < 1
            assert (hi < 1) if rts == "irs" else (lo > 1), (seed, o, lo, hi, rts)


def test_tied_max_slack_solutions_are_reported_with_their_range() -> None:
    """Unit o (inputs 3, 1; outputs 1, 1) is radially efficient (every unit uses 1 of input 2); C (1, 1;
    1, 1) gives it input slack 2, D (2, 1; 2, 1) input slack 1 plus output slack 1: the slack sum is 2
    either way, so input 1's slack lies anywhere in [1, 2]."""
    inputs = pd.DataFrame({"a": [3.0, 1, 2], "b": [1.0, 1, 1]}, index=["o", "C", "D"])
    outputs = pd.DataFrame({"p": [1.0, 1, 2], "q": [1.0, 1, 1]}, index=["o", "C", "D"])
    stage = run_dea(inputs, outputs)
    assert stage.vrs.theta[0] == 1
    assert stage.vrs.slack_ranges[0] == pytest.approx(np.array([[1, 2], [0, 0]]), abs=1e-9)
    row = stage.rows()[0]
    assert row["slack_ranges"] == {"a": [pytest.approx(1), pytest.approx(2)], "b": [0, 0]}
    assert 1 - 1e-9 <= row["slacks"]["a"] <= 2 + 1e-9
    assert set(stage.vrs.slack_ranges) == {0}  # C and D have no slack to split


def test_dea_refuses_unusable_data() -> None:
    with pytest.raises(ValueError, match="negative"):
        envelopment(np.array([[1.0], [-1]]), np.array([[1.0], [1]]))
    with pytest.raises(ValueError, match="positive output"):
        envelopment(np.array([[1.0], [2]]), np.array([[0.0], [1]]))
    data = pd.DataFrame({"u": ["a", "b", "c"], "x": [1.0, 2, None], "y": [1.0, 2, 3]})
    with pytest.raises(ValueError, match="c: x"):
        three_stage_dea(data, ["x"], ["y"], unit="u")
    with pytest.raises(ValueError, match="units without a positive output: b"):
        three_stage_dea(data.assign(y=[1.0, 0, 3], x=[1.0, 2, 3]), ["x"], ["y"], unit="u")
    with pytest.raises(ValueError, match="negative inputs \\(units a\\)"):
        three_stage_dea(data.assign(x=[-1.0, 2, 3]), ["x"], ["y"], unit="u")
    with pytest.raises(KeyError, match="nope"):
        three_stage_dea(data, ["x"], ["nope"], unit="u")
    with pytest.raises(ValueError, match="only input orientation"):
        three_stage_dea(data, ["x"], ["y"], unit="u", orientation="output")


# ---------------------------------------------------------------- stage 2


def _density(eps: float, su: float, sv: float) -> float:
    """f(eps) of eps = v + u by numerical convolution."""
    f = lambda u: stats.norm.pdf(eps - u, scale=sv) * 2 * stats.norm.pdf(u, scale=su)  # noqa: E731
    return integrate.quad(f, 0, np.inf, epsabs=1e-13, epsrel=1e-11)[0]


def test_likelihood_and_jlms_equal_numerical_integration() -> None:
    su, sv = 1.3, 0.6
    sigma2, gamma = su**2 + sv**2, su**2 / (su**2 + sv**2)
    eps = np.array([-2.0, -0.4, 0.0, 0.7, 2.5])
    ll = loglike_obs(np.array([0.0, sigma2, gamma]), eps, np.ones((5, 1)))
    for e, value in zip(eps, ll, strict=True):
        assert math.exp(value) == pytest.approx(_density(e, su, sv), rel=1e-9)
    u = jlms_cost(eps, sigma2, gamma)
    for e, mean in zip(eps, u, strict=True):
        num = integrate.quad(
            lambda w, e=e: w * stats.norm.pdf(e - w, scale=sv) * 2 * stats.norm.pdf(w, scale=su), 0, np.inf
        )[0]
        assert mean == pytest.approx(num / _density(e, su, sv), rel=1e-8)
    assert np.all(np.diff(u) > 0)  # more residual, more inefficiency
    assert jlms_cost(np.array([-40.0]), sigma2, gamma)[0] > 0  # the far tail stays finite and positive
    assert lr_pvalue(2.705543) == pytest.approx(0.05, abs=1e-6) and lr_pvalue(0.0) == 0.5


def test_cost_frontier_recovers_a_planted_frontier() -> None:
    rng = np.random.default_rng(12)
    n = 1500
    z = pd.DataFrame({"z1": rng.normal(0, 1, n), "z2": rng.uniform(0, 5, n)})
    su, sv = 2.0, 0.8
    y = pd.Series(3 + 1.5 * z["z1"] - 0.8 * z["z2"] + rng.normal(0, sv, n) + np.abs(rng.normal(0, su, n)), name="s")
    f = cost_frontier(y, z)
    assert f.converged and f.boundary is None and f.starts_at_best >= 2
    truth = {"const": 3, "z1": 1.5, "z2": -0.8, "sigma2": su**2 + sv**2, "gamma": su**2 / (su**2 + sv**2)}
    for name, value in truth.items():
        assert abs(f.params[name] - value) < 3.5 * f.bse[name], (name, f.params[name], f.bse[name])
    assert f.lr > 20 and f.lr_pvalue < 1e-5
    # the maximum: no start and no nudge does better, and the JLMS split adds up
    for name in ("z1", "sigma2", "gamma"):
        for step in (-1e-4, 1e-4):
            p = f.params.copy()
            p[name] += step
            assert f.fit.model.loglike(p.to_numpy()) < f.loglik
    assert f.fit.model.loglike(f.params.to_numpy()) == pytest.approx(f.loglik, abs=1e-9)
    assert (f.u_hat + f.v_hat).to_numpy() == pytest.approx(f.epsilon.to_numpy())
    assert np.all(f.u_hat > 0)
    summary = f.summary()
    assert "gamma" in summary.as_text() and "sigma2" in summary.as_html()


def test_wrong_skewness_gives_ols_with_gamma_zero() -> None:
    rng = np.random.default_rng(4)
    n = 300
    z = pd.DataFrame({"z1": rng.normal(0, 1, n)})
    y = pd.Series(1 + 2 * z["z1"] + rng.normal(0, 0.5, n) - np.abs(rng.normal(0, 1.5, n)), name="s")  # u subtracted
    f = cost_frontier(y, z)
    assert f.wrong_skewness and f.ols_skewness < 0
    assert f.boundary == "gamma=0" and f.gamma == 0 and f.lr == 0 and f.lr_pvalue == 0.5
    ols = np.linalg.lstsq(np.column_stack([np.ones(n), z["z1"]]), y, rcond=None)[0]
    assert f.params[["const", "z1"]].to_numpy() == pytest.approx(ols, abs=1e-10)
    assert np.all(f.u_hat == 0) and f.v_hat.to_numpy() == pytest.approx(f.epsilon.to_numpy())
    assert f.loglik == pytest.approx(f.loglik_ols) and "wrong way" in f.notes[0]
    assert json.dumps(f.to_dict(), allow_nan=False)


# ---------------------------------------------------------------- three stages


def _planted(n: int = 120, seed: int = 11) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One input, one output: x = 5 + y + 1.5 z1 - 1.0 z2 + v + u, v ~ N(0, 0.3^2), u ~ |N(0, 1)|."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(10, 20, n)
    z = rng.uniform(0, 2, (n, 2))
    zbeta = z @ np.array([1.5, -1.0])
    u = np.abs(rng.normal(0, 1.0, n))
    x = 5 + y + zbeta + rng.normal(0, 0.3, n) + u
    frame = pd.DataFrame({"x": x, "y": y, "z1": z[:, 0], "z2": z[:, 1]}, index=[f"u{i:03d}" for i in range(n)])
    return frame, u, zbeta


def test_three_stage_recovers_planted_environment_and_inefficiency() -> None:
    data, u, zbeta = _planted()
    r = three_stage_dea(data, ["x"], ["y"], ["z1", "z2"])
    f = r.frontiers["x"]
    assert f.converged and f.boundary is None
    assert f.params["z1"] == pytest.approx(1.5, abs=0.35) and f.params["z2"] == pytest.approx(-1.0, abs=0.35)
    one, three = r.stage1.frame(), r.stage3.frame()
    rho1 = stats.spearmanr(one["vrs"], -u)[0]
    rho3 = stats.spearmanr(three["vrs"], -u)[0]
    assert rho3 > rho1 + 0.2 and rho3 > 0.7  # stage 3 ranks the planted inefficiency far better
    # a favourable environment (low z'beta) raises a unit's adjusted input: its score falls, and vice versa
    assert stats.spearmanr(three["vrs"] - one["vrs"], zbeta)[0] > 0.7
    adjusted = r.adjusted["x"] - data["x"]
    assert np.all(adjusted >= -1e-12)
    assert adjusted.to_numpy() == pytest.approx(
        (f.zbeta.max() - f.zbeta + f.v_hat.max() - f.v_hat).to_numpy(), abs=1e-12
    )


def test_three_stage_json_follows_the_conventions() -> None:
    data, _, _ = _planted(n=40, seed=3)
    data.index.name = "village"
    r = three_stage_dea(data.reset_index(), ["x"], ["y"], ["z1", "z2"], unit="village")
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert set(doc) >= {"stage1", "stage2", "stage3", "conventions", "orientation", "rts"}
    row = doc["stage1"][0]
    assert set(row) >= {"unit", "crs", "vrs", "scale", "rts", "slacks"} and set(row["slacks"]) == {"x"}
    assert row["scale"] == pytest.approx(row["crs"] / row["vrs"], rel=1e-12)
    s2 = doc["stage2"]["x"]
    assert set(s2) >= {"beta", "sigma2", "gamma", "loglik", "lr", "lr_pvalue", "converged"}
    assert set(s2["beta"]) == {"const", "z1", "z2"}
    assert s2["sigma2"] == r.frontiers["x"].sigma2  # full precision
    assert s2["lr"] == pytest.approx(2 * (s2["loglik"] - s2["loglik_ols"]))
    assert len(doc["stage3"]) == 40 and "inputs_adjusted" in doc["stage3"][0]
    text = r.summary().as_text()
    assert "Stage 1 and stage 3 side by side" in text and "DEAP" in text
    assert "Stage 2" in r.summary().as_latex()
    # without an environment: stage 1 only, said so
    only = three_stage_dea(data, ["x"], ["y"])
    assert only.stage3 is None and only.to_dict()["stage3"] == [] and "stages 2 and 3" in only.notes[-1]


def test_three_stage_skips_what_cannot_be_estimated() -> None:
    # five units cannot carry a frontier with two environmental variables (five parameters)
    eg1 = pd.DataFrame(
        {"y": [1.0, 2, 3, 1, 2], "x1": [2.0, 2, 6, 3, 6], "x2": [5.0, 4, 6, 2, 2], "z1": [1.0, 2, 3, 4, 5]},
        index=list("12345"),
    )
    eg1["z2"] = eg1["z1"] ** 2
    r = three_stage_dea(eg1, ["x1", "x2"], ["y"], ["z1", "z2"])
    assert r.stage3 is None and not r.frontiers and "skipped" in r.notes[-1] and "z1, z2" in str(r)
    # an input nobody wastes has no slack to explain: it is not adjusted, the other one is
    data, _, _ = _planted(n=40, seed=3)
    data["w"] = 5 * data["y"]  # every unit uses exactly 5 per unit of output
    r = three_stage_dea(data, ["x", "w"], ["y"], ["z1", "z2"])
    assert set(r.frontiers) == {"x"} and (r.adjusted["w"] == data["w"]).all()
    assert any(n.startswith("w: every unit has the same total slack") for n in r.notes)
    assert set(r.to_dict()["stage2"]) == {"x"}


def test_county_dea_on_the_demo_panel() -> None:
    wide = to_wide(read_statistics_frame(DEMO_FILE))
    r = county_dea(wide)
    assert r.specification["year"] == 2024 and len(r.stage1.units) == 14
    assert r.inputs == list(dea.DEFAULT_INPUTS) and r.environment == list(dea.DEFAULT_ENV)
    frame = r.stage1.frame()
    assert (frame["crs"] <= frame["vrs"] + 1e-9).all() and (frame["vrs"] <= 1 + 1e-9).all()
    assert set(frame["rts"]) <= {"crs", "irs", "drs"} and (frame["crs"] == 1).any()
    assert "Default specification" in str(r)
    assert json.dumps(r.to_dict(), allow_nan=False)
    r2020 = county_dea(wide, year=2020, environment=())
    assert r2020.specification["year"] == 2020 and not r2020.frontiers
    with pytest.raises(ValueError, match="no statistics for 1990"):
        county_dea(wide, year=1990)


def test_cli_dea_from_a_csv_and_from_statistics(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    data, _, _ = _planted(n=30, seed=5)
    data.index.name = "village"
    path = tmp_path / "villages.csv"
    data.to_csv(path)
    runner = CliRunner()
    args = ["models", "dea", "--csv", str(path), "--unit", "village", "--inputs", "x", "--outputs", "y"]
    result = runner.invoke(app, [*args, "--env", "z1,z2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    direct = three_stage_dea(data.reset_index(), ["x"], ["y"], ["z1", "z2"], unit="village")
    assert doc["stage1"] == json.loads(json.dumps(direct.to_dict()))["stage1"]
    assert doc["stage2"]["x"]["gamma"] == direct.frontiers["x"].gamma
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "Stage 1: DEA on the observed inputs" in result.output
    result = runner.invoke(app, [*args, "--env", "nope"])
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(app, [*args, "--orientation", "output"])
    assert result.exit_code == 2 and "only input orientation" in result.output
    result = runner.invoke(app, ["models", "dea", "--csv", str(DEMO_FILE), "--year", "2023"])
    assert result.exit_code == 0, result.output
    assert "Stage 1 and stage 3 side by side" in result.output and "x_adj = x + [max(z beta)" in result.output
