"""The analytics models checked against independent results.

- entropy weights and scores against the hand-worked example in analytics/data/entropy_example.yaml
  and a step-by-step numpy computation written out here;
- two-way fixed effects against statsmodels OLS with entity and year dummies (LSDV): coefficients
  to 1e-8, cluster-robust standard errors exactly (same small-sample correction) and with
  linearmodels' other correction up to the documented factor;
- mediation identities (c = c' + ab), Sobel formula, the vectorised cluster bootstrap against
  linearmodels run on the same resampled panels;
- Hansen's threshold model recovering thresholds planted in simulated panels, and finding none
  when none is planted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml
from linearmodels.panel import PanelOLS

from analytics.agglomeration import location_quotient
from analytics.catalogue import PACKAGED_CATALOGUE, Catalogue, get_catalogue
from analytics.dataset import build_variables
from analytics.entropy import composite_index, entropy_weights, normalize, scores_by_year
from analytics.panel import (
    _bootstrap_ab,
    c_alpha,
    demean,
    fixed_effects,
    fixed_effects_table,
    hausman,
    mediation,
    panel_threshold,
)
from analytics.results import describe
from analytics.statistics_io import DEMO_FILE, read_statistics_frame, to_wide

EXAMPLE = Path(__file__).parents[1] / "analytics" / "data" / "entropy_example.yaml"
CONTROLS = ["fiscal_agri_support", "ln_gdp_per_capita", "fixed_asset_investment"]


def dumps(result: object) -> str:
    """to_dict must be strict JSON: no NaN, no numpy types."""
    return json.dumps(result.to_dict(), allow_nan=False)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- catalogue


def test_catalogue_indices_and_published_weights() -> None:
    cat = get_catalogue()
    ids = {i.id for i in cat.indicators}
    for index in cat.indices:
        assert {m.indicator for m in index.members} <= ids
    rri = cat.index("rri")
    assert [d.id for d in rri.dimensions] == [
        "industrial_prosperity",
        "ecological_livability",
        "cultural_flourishing",
        "effective_governance",
        "affluent_living",
    ]
    assert len(rri.members) == 18
    assert rri.published_weight_sum() == pytest.approx(1.049, abs=5e-4)  # as printed, not 1
    assert cat.index("dei").published_weight_sum() == pytest.approx(1.0, abs=1e-6)
    assert cat.indicator("illiteracy_rate").direction == "lower_is_better"
    assert cat.indicator("rural_5g_coverage").references[0].value == 79
    for source in ("statistics", "influx", "ledger", "registry"):
        assert cat.of_source(source), source  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown index"):
        cat.index("nope")


def test_catalogue_rejects_inconsistent_data(tmp_path: Path) -> None:
    doc = yaml.safe_load(PACKAGED_CATALOGUE.read_text("utf-8"))
    doc["indices"][0]["dimensions"][0]["members"].append({"indicator": "no_such_indicator"})
    doc["indicators"].append(dict(doc["indicators"][0]))  # duplicate id
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        Catalogue.load(path)
    assert "duplicate indicator id(s): rural_5g_coverage" in str(exc.value)
    assert "unknown member indicator 'no_such_indicator'" in str(exc.value)


# ---------------------------------------------------------------- entropy


def example() -> tuple[pd.DataFrame, dict[str, str], dict]:
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data = pd.DataFrame({k: v["values"] for k, v in doc["indicators"].items()}, index=doc["objects"], dtype=float)
    return data, {k: v["direction"] for k, v in doc["indicators"].items()}, doc


def test_entropy_matches_the_hand_worked_example() -> None:
    data, directions, doc = example()
    steps = doc["steps"]
    r = entropy_weights(data, directions, shift=doc["shift"], scale=doc["scale"])
    for col in data.columns:
        np.testing.assert_allclose(r.normalized[col], steps["normalized"][col], atol=1e-6)
        np.testing.assert_allclose(r.proportions[col], steps["proportions"][col], atol=1e-6)
        assert r.entropy[col] == pytest.approx(steps["entropy"][col], abs=1e-6)
        assert r.divergence[col] == pytest.approx(steps["divergence"][col], abs=1e-6)
        assert r.weights[col] == pytest.approx(steps["weights"][col], abs=1e-6)
    np.testing.assert_allclose(r.scores.to_numpy(), steps["scores"], atol=1e-6)
    assert r.weights.sum() == pytest.approx(1.0, abs=1e-15)


def test_entropy_matches_a_step_by_step_numpy_computation() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(1, 50, size=(12, 5))
    signs = np.array([1, 1, -1, 1, -1])
    shift = 0.0001
    # written out independently of the implementation
    lo, hi = x.min(axis=0), x.max(axis=0)
    xn = np.where(signs > 0, (x - lo) / (hi - lo), (hi - x) / (hi - lo)) + shift
    p = xn / xn.sum(axis=0)
    e = -(p * np.log(p)).sum(axis=0) / np.log(x.shape[0])
    w = (1 - e) / (1 - e).sum()
    scores = 100 * xn @ w
    cols = [f"i{j}" for j in range(5)]
    data = pd.DataFrame(x, columns=cols)
    dirs = {c: ("+" if s > 0 else "-") for c, s in zip(cols, signs, strict=True)}
    r = entropy_weights(data, dirs, shift=shift)
    np.testing.assert_allclose(r.weights.to_numpy(), w, rtol=1e-12)
    np.testing.assert_allclose(r.entropy.to_numpy(), e, rtol=1e-12)
    np.testing.assert_allclose(r.scores.to_numpy(), scores, rtol=1e-12)
    # flipping a column and its direction changes nothing
    flipped = data.assign(i0=-data["i0"])
    r2 = entropy_weights(flipped, {**dirs, "i0": "lower_is_better"}, shift=shift)
    np.testing.assert_allclose(r2.weights.to_numpy(), w, rtol=1e-12)
    assert dumps(r)


def test_entropy_constant_column_missing_values_and_no_variation() -> None:
    data = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [5.0, 5, 5, 5]}, index=list("WXYZ"))
    r = entropy_weights(data)
    assert r.constant == ["b"]
    assert r.weights["b"] == 0 and r.entropy["b"] == pytest.approx(1.0)
    assert r.weights["a"] == pytest.approx(1.0)
    z, constant = normalize(data)
    assert constant == ["b"] and (z["b"] == 0.0001).all()
    with pytest.raises(ValueError, match="no indicator varies"):
        entropy_weights(data[["b"]])
    with pytest.raises(ValueError, match=r"missing or non-finite values: X: a"):
        entropy_weights(data.assign(a=[1.0, np.nan, 3, 4]))
    with pytest.raises(ValueError, match="at least 2 objects"):
        entropy_weights(data.iloc[:1])
    with pytest.raises(KeyError, match="no direction for indicator"):
        entropy_weights(data, {"a": "+"})
    # shift 0: the worst object's proportion is 0, and 0 ln 0 counts as 0
    r0 = entropy_weights(data[["a"]].assign(c=[4.0, 1, 2, 3]), shift=0.0)
    assert (r0.proportions == 0).any().all() and np.isfinite(r0.entropy).all()


@pytest.fixture(scope="module")
def demo_wide() -> pd.DataFrame:
    return to_wide(read_statistics_frame(DEMO_FILE))


def test_composite_index_flat_and_hierarchical(demo_wide: pd.DataFrame) -> None:
    flat = composite_index(demo_wide, "rri")
    assert flat.m == 140  # pooled: county-years
    assert flat.weights["weight"].sum() == pytest.approx(1.0, abs=1e-12)
    assert flat.published_weight_sum == pytest.approx(1.049145)
    dim_w = flat.weights.groupby("dimension")["weight"].sum()
    for dim, w in flat.dimension_weights.items():
        assert dim_w[dim] == pytest.approx(w)
    overall = (flat.dimension_scores * flat.dimension_weights).sum(axis=1)
    np.testing.assert_allclose(overall.to_numpy(), flat.scores.to_numpy(), rtol=1e-12)
    # equals the plain entropy of the transformed members
    x = demo_wide[[m.indicator for m in get_catalogue().index("rri").members]].copy()
    for m in get_catalogue().index("rri").members:
        if m.transform == "ln":
            x[m.indicator] = np.log(x[m.indicator])
    dirs = {c: get_catalogue().indicator(c).direction for c in x.columns}
    np.testing.assert_allclose(flat.scores.to_numpy(), entropy_weights(x, dirs).scores.to_numpy(), rtol=1e-12)

    hier = composite_index(demo_wide, "rri", method="hierarchical")
    assert hier.weights["weight"].sum() == pytest.approx(1.0, abs=1e-12)
    assert hier.dimension_weights.sum() == pytest.approx(1.0, abs=1e-12)
    for _dim, group in hier.weights.groupby("dimension"):
        assert group["weight_in_dimension"].sum() == pytest.approx(1.0, abs=1e-12)
    overall = (hier.dimension_scores * hier.dimension_weights).sum(axis=1)
    np.testing.assert_allclose(overall.to_numpy(), hier.scores.to_numpy(), rtol=1e-12)
    assert hier.scores.min() > 0 and hier.scores.max() <= 100 * (1 + 1e-4)
    by_year = scores_by_year(demo_wide, "dvi")
    assert sorted(by_year) == list(range(2015, 2025)) and by_year[2024].m == 14
    assert dumps(flat) and dumps(hier)
    assert "Published w" in str(flat.summary()) and "1.04914" in str(flat.summary())


def test_composite_index_refuses_bad_data(demo_wide: pd.DataFrame) -> None:
    with pytest.raises(KeyError, match="no data for indicator"):
        composite_index(demo_wide.drop(columns=["grain_output"]), "rri")
    holed = demo_wide.copy()
    holed.loc[("211122", 2020), "tv_coverage"] = np.nan
    with pytest.raises(ValueError, match="211122/2020: tv_coverage"):
        composite_index(holed, "rri")
    zero = demo_wide.copy()
    zero.loc[("211122", 2020), "public_toilets"] = 0
    with pytest.raises(ValueError, match="ln of public_toilets needs values > 0"):
        composite_index(zero, "rri")


# ---------------------------------------------------------------- location quotient


def test_location_quotient_by_hand() -> None:
    idx = pd.MultiIndex.from_tuples([("A", 2020), ("B", 2020), ("A", 2021), ("B", 2021)], names=["county_code", "year"])
    data = pd.DataFrame({"employment_primary": [30.0, 10, 20, 20], "employment_total": [50.0, 50, 40, 60]}, index=idx)
    lq = location_quotient(data).lq
    # 2020: region share 40/100; A 0.6/0.4, B 0.2/0.4.  2021: region 40/100; A 0.5/0.4, B (1/3)/0.4
    np.testing.assert_allclose(lq.to_numpy(), [1.5, 0.5, 1.25, (1 / 3) / 0.4])
    region = pd.DataFrame({"employment_primary": [25.0, 30], "employment_total": [100.0, 100]}, index=[2020, 2021])
    lq2 = location_quotient(data, region=region).lq
    np.testing.assert_allclose(lq2.to_numpy(), [0.6 / 0.25, 0.2 / 0.25, 0.5 / 0.3, (1 / 3) / 0.3])
    with pytest.raises(ValueError, match="must be between 0 and employment_total"):
        location_quotient(data.assign(employment_primary=[60.0, 10, 20, 20]))
    assert dumps(location_quotient(data))


# ---------------------------------------------------------------- fixed effects


def simulated_panel(n: int = 20, t: int = 8, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ent = np.repeat(np.arange(n), t)
    year = np.tile(np.arange(2015, 2015 + t), n)
    alpha = rng.normal(0, 1, n)[ent]
    x = rng.normal(0, 1, n * t) + 0.5 * alpha
    m = 0.6 * x + rng.normal(0, 1, n * t) + alpha
    c = rng.normal(0, 1, n * t)
    y = 0.4 * x + 0.5 * m - 0.2 * c + alpha + 0.1 * (year - 2015) + rng.normal(0, 1 + 0.5 * (ent % 3), n * t)
    return pd.DataFrame(
        {"county_code": [f"{210000 + i:06d}" for i in ent], "year": year, "y": y, "x": x, "m": m, "c": c}
    )


def test_fixed_effects_equal_lsdv_and_linearmodels() -> None:
    df = simulated_panel()
    res = fixed_effects(df, "y", "x", ["c"])
    groups = pd.factorize(df["county_code"])[0]
    lsdv = smf.ols("y ~ x + c + C(county_code) + C(year)", df).fit(cov_type="cluster", cov_kwds={"groups": groups})
    np.testing.assert_allclose(res.params.to_numpy(), lsdv.params[["x", "c"]].to_numpy(), rtol=0, atol=1e-8)
    # same small-sample correction G/(G-1)(N-1)/(N-K), K counting all dummies: identical errors
    np.testing.assert_allclose(res.std_errors.to_numpy(), lsdv.bse[["x", "c"]].to_numpy(), rtol=1e-10)
    # linearmodels run directly
    panel = df.set_index(["county_code", "year"])
    direct = PanelOLS(panel["y"], panel[["x", "c"]], entity_effects=True, time_effects=True).fit(
        cov_type="clustered", cluster_entity=True, group_debias=True
    )
    np.testing.assert_allclose(res.std_errors.to_numpy(), direct.std_errors.to_numpy(), rtol=1e-12)
    # without the group correction linearmodels scales by N/(N-K): the variance ratio is G/(G-1)*(N-1)/N
    plain = fixed_effects(df, "y", "x", ["c"], se="linearmodels")
    g, n = 20, len(df)
    ratio = (lsdv.bse[["x", "c"]].to_numpy() / plain.std_errors.to_numpy()) ** 2
    np.testing.assert_allclose(ratio, g / (g - 1) * (n - 1) / n, rtol=1e-10)
    # within R² counting the year effects = R² of entity-demeaned y on demeaned x, c and year dummies
    d = df.copy()
    for v in ("y", "x", "c"):
        d[v] = d[v] - d.groupby("county_code")[v].transform("mean")
    assert res.r2_within == pytest.approx(smf.ols("y ~ x + c + C(year)", d).fit().rsquared, abs=1e-10)
    assert res.nobs == 160 and res.entities == 20 and res.periods == 8
    assert "Parameter Estimates" in str(res.summary()) and dumps(res)


def test_fixed_effects_table_adds_controls_one_at_a_time() -> None:
    df = simulated_panel().assign(d=lambda f: f["c"] ** 2)
    table = fixed_effects_table(df, "y", "x", ["c", "d"])
    assert [list(m.coefficients.index) for m in table.models] == [["x"], ["x", "c"], ["x", "c", "d"]]
    text = str(table.summary())
    coef = table.models[0].coefficients.loc["x"]
    assert f"{coef['coef']:.4f}" in text and f"({coef['t']:.2f})" in text
    assert "R² within (xtreg)" in text and "* p<0.05, ** p<0.01, *** p<0.001" in text
    assert json.loads(dumps(table))["columns"] == ["(1)", "(2)", "(3)"]


def test_demean_handles_unbalanced_two_way_panels() -> None:
    df = simulated_panel().sample(frac=0.8, random_state=1).sort_values(["county_code", "year"])
    ent = pd.factorize(df["county_code"])[0]
    tim = pd.factorize(df["year"], sort=True)[0]
    within = demean(df[["y", "x"]].to_numpy(), ent, tim)
    for codes in (ent, tim):
        sums = np.array([np.bincount(codes, weights=within[:, j]) for j in range(2)])
        assert np.abs(sums).max() < 1e-8
    beta = np.linalg.lstsq(within[:, 1:], within[:, 0], rcond=None)[0][0]
    lsdv = smf.ols("y ~ x + C(county_code) + C(year)", df).fit()
    assert beta == pytest.approx(lsdv.params["x"], abs=1e-8)


# ---------------------------------------------------------------- mediation


def test_mediation_identities_sobel_and_bootstrap() -> None:
    df = simulated_panel(n=30, t=8)
    res = mediation(df, "y", "x", "m", ["c"], reps=400, seed=1)
    # the three equations are the fixed-effects regressions themselves
    assert res.c == pytest.approx(fixed_effects(df, "y", "x", ["c"]).params["x"])
    assert res.a == pytest.approx(fixed_effects(df, "m", "x", ["c"]).params["x"])
    step3 = fixed_effects(df, "y", ["x", "m"], ["c"])
    assert (res.c_prime, res.b) == pytest.approx((step3.params["x"], step3.params["m"]))
    # OLS on one sample: total = direct + indirect, exactly
    assert res.c == pytest.approx(res.c_prime + res.a * res.b, abs=1e-10)
    sa, sb = res.steps[1].std_errors["x"], res.steps[2].std_errors["m"]
    assert res.sobel_se == pytest.approx(math.sqrt(res.b**2 * sa**2 + res.a**2 * sb**2))
    assert res.sobel_p < 0.01  # planted a = 0.6, b = 0.5
    lo, hi = res.boot_ci
    assert lo < res.indirect < hi and lo > 0
    assert res.conclusion().startswith("partial mediation")
    doc = json.loads(dumps(res))
    assert len(doc["steps"]) == 3 and doc["bootstrap"]["reps"] == 400
    assert "(1) y" in str(res.summary()) and "(2) m" in str(res.summary())


def test_vectorised_bootstrap_equals_linearmodels_on_the_same_resamples() -> None:
    df = simulated_panel(n=12, t=6).set_index(["county_code", "year"])
    draws = _bootstrap_ab(df, "x", "m", "y", ["c"], 5, np.random.default_rng(9), True, True)
    picks = np.random.default_rng(9).integers(0, 12, size=(5, 12))
    entities = df.index.get_level_values(0).unique()
    for b, pick in enumerate(picks):
        parts = [df.loc[entities[i]].assign(entity=j) for j, i in enumerate(pick)]
        sample = pd.concat(parts).reset_index().set_index(["entity", "year"])
        a = PanelOLS(sample["m"], sample[["x", "c"]], entity_effects=True, time_effects=True).fit().params["x"]
        bb = PanelOLS(sample["y"], sample[["x", "m", "c"]], entity_effects=True, time_effects=True).fit().params["m"]
        assert draws[b] == pytest.approx(a * bb, rel=1e-9)


# ---------------------------------------------------------------- threshold


def threshold_panel(
    n: int = 150, t: int = 10, gammas: tuple[float, ...] = (0.5,), slopes: tuple[float, ...] = (1.0, 2.0), seed: int = 1
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ent = np.repeat(np.arange(n), t)
    mu = rng.normal(0, 1, n)[ent]
    x = rng.normal(1, 1, n * t)
    q = rng.uniform(0, 1, n * t)
    z = rng.normal(0, 1, n * t)
    regime = np.searchsorted(np.array(gammas), q, side="left")  # q <= g1 -> 0, g1 < q <= g2 -> 1, ...
    y = mu + np.array(slopes)[regime] * x + 0.5 * z + rng.normal(0, 1, n * t)
    return pd.DataFrame(
        {"county_code": ent, "year": np.tile(np.arange(2015, 2015 + t), n), "y": y, "x": x, "q": q, "z": z}
    )


def test_threshold_recovers_a_planted_threshold() -> None:
    df = threshold_panel()
    res = panel_threshold(df, "y", "x", "q", ["z"], reps=200, seed=0, time_effects=False)
    est = res.thresholds[0]
    assert est.ci_lower <= 0.5 <= est.ci_upper
    assert abs(res.threshold - 0.5) < 0.02
    assert res.p_value < 0.05 and res.tests[0].f_stat > res.tests[0].crit["1%"]
    coefs = res.regression.params
    assert coefs.iloc[0] == pytest.approx(1.0, abs=0.1) and coefs.iloc[1] == pytest.approx(2.0, abs=0.1)
    # the grid search's SSR at the estimate is the SSR of the fixed-effects regression with split regressors
    panel = df.set_index(["county_code", "year"])
    le = panel["x"] * (panel["q"] <= res.threshold)
    direct = PanelOLS(panel["y"], pd.DataFrame({"le": le, "gt": panel["x"] - le, "z": panel["z"]}), entity_effects=True)
    assert res.tests[0].ssr == pytest.approx(direct.fit().resid_ss, rel=1e-9)
    assert res.tests[0].sigma2 == pytest.approx(res.tests[0].ssr / (150 * 9))
    assert c_alpha(0.05) == pytest.approx(7.3523, abs=1e-4)
    doc = json.loads(dumps(res))
    assert len(doc["thresholds"][0]["lr_curve"]["gamma"]) == res.settings["grid_points"]


def test_threshold_finds_none_when_none_is_planted() -> None:
    res = panel_threshold(threshold_panel(slopes=(1.0, 1.0), seed=2), "y", "x", "q", ["z"], reps=200, seed=0)
    assert res.p_value > 0.2


def test_double_threshold_and_time_effects() -> None:
    df = threshold_panel(n=200, gammas=(0.3, 0.7), slopes=(0.5, 1.5, 2.5), seed=5)
    res = panel_threshold(df, "y", "x", "q", ["z"], reps=100, seed=0, double=True, trim=0.1)
    single, double = res.tests
    assert single.p_value < 0.05 and double.p_value < 0.05
    found = sorted([res.thresholds[1].estimate, res.thresholds[2].estimate])
    assert found == pytest.approx([0.3, 0.7], abs=0.03)
    assert res.settings["regimes_at"] == found
    assert len(res.regression.params) == 4  # three regimes of x, and z
    with_years = panel_threshold(threshold_panel(), "y", "x", "q", ["z"], reps=50, time_effects=True)
    assert abs(with_years.threshold - 0.5) < 0.02 and with_years.settings["df_sigma2"] == 150 * 9  # Hansen's
    dof = panel_threshold(threshold_panel(), "y", "x", "q", ["z"], reps=0, sigma2="dof")
    assert dof.settings["df_sigma2"] == 149 * 9 and dof.settings["sigma2_formula"] == "S1/((n-1)(T-1))"
    # F and LR scale by the ratio of the two conventions; the threshold itself does not move
    assert dof.tests[0].f_stat == pytest.approx(with_years.tests[0].f_stat * 149 / 150, rel=1e-10)
    assert dof.threshold == with_years.threshold


def test_threshold_needs_a_balanced_panel() -> None:
    df = threshold_panel(n=30).iloc[1:]
    with pytest.raises(ValueError, match="balanced panel"):
        panel_threshold(df, "y", "x", "q", reps=10)


# ---------------------------------------------------------------- the demo panel end to end


def test_demo_panel_models(demo_wide: pd.DataFrame) -> None:
    v = build_variables(demo_wide, ["rri", "dvi", "lq_agri", "ln_rri", *CONTROLS])
    assert v.shape == (140, 7) and not v.isna().any().any()
    fe = fixed_effects(v, "rri", "dvi", CONTROLS)
    assert fe.params["dvi"] > 0 and fe.pvalues["dvi"] < 0.01
    th = panel_threshold(v, "rri", "dvi", "lq_agri", CONTROLS, reps=50)
    assert th.p_value < 0.05 and abs(th.threshold - 1.0) < 0.05  # planted at 1.0 by analytics/demo_data.py
    h = hausman(v, "rri", "dvi", CONTROLS)
    assert h.statistic >= 0 and 0 <= h.p_value <= 1 and dumps(h)
    d = describe(v, ["rri", "dvi"])
    assert d.table.loc["rri", "n"] == 140 and dumps(d)
    with pytest.raises(KeyError, match="unknown variable 'nope'"):
        build_variables(demo_wide, ["nope"])
