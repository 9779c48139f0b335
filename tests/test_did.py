"""Staggered difference-in-differences (analytics/did.py) against hand-computed comparisons of means.

- every ATT(g,t) equals the 2x2 DID of cohort g against its controls between t and the base period,
  written out with pandas means (never-treated and not-yet-treated controls), and its analytic
  standard error the two-sample formula;
- aggregations recomputed from the cells with cohort-share weights;
- a planted staggered panel with effects that differ by cohort and grow with exposure: Callaway and
  Sant'Anna recover every planted effect, TWFE equals the de Chaisemartin-D'Haultfoeuille weighted
  sum of the planted effects, lies below the true average (the predicted direction) and the negative
  weights are reported;
- the doubly robust estimator against an independent statsmodels computation of Sant'Anna and
  Zhao's formula, and recovering a planted effect that the unconditional estimator misses;
- the bootstrap: same seed same errors, seed stored, close to the analytic errors, bands wider than
  pointwise intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from analytics.did import DidInputError, PanelTooShort, callaway_santanna, prepare_panel

YEARS = list(range(2015, 2021))


def small_panel(seed: int = 3) -> pd.DataFrame:
    """9 units, 2015-2020: cohorts 2017 (2 units), 2019 (3), never treated (3), treated after the panel (1)."""
    rng = np.random.default_rng(seed)
    first = {"a": 2017, "b": 2017, "c": 2019, "d": 2019, "e": 2019, "f": 0, "g": 0, "h": None, "i": 2030}
    rows = [(u, t, g, float(rng.normal(10, 3))) for u, g in first.items() for t in YEARS]
    return pd.DataFrame(rows, columns=["village", "year", "g", "y"])


def hand_att(df: pd.DataFrame, g: int, t: int, control: str) -> tuple[float, int, float, float]:
    """ATT(g,t) by hand: base t-1 before g, g-1 after; returns (att, base, se of the two-sample formula)."""
    base = t - 1 if t < g else g - 1
    gs = df.groupby("village")["g"].first().fillna(0)
    wide = df.pivot(index="village", columns="year", values="y")
    change = wide[t] - wide[base]
    treated = gs.index[gs == g]
    later = (gs > max(t, base)) & (gs != g)
    controls = gs.index[gs == 0] if control == "never" else gs.index[(gs == 0) | later]
    d1, d0 = change[treated], change[controls]
    att = d1.mean() - d0.mean()
    se = math.sqrt(d1.var(ddof=0) / len(d1) + d0.var(ddof=0) / len(d0))
    return float(att), base, se, float(len(controls))


@pytest.mark.parametrize("control", ["never", "notyet"])
def test_every_att_gt_is_the_hand_computed_2x2(control: str) -> None:
    df = small_panel()
    r = callaway_santanna(
        df, unit="village", time="year", first_treated="g", outcome="y", control_group=control, reps=99
    )
    cells = {(c.labels["g"], c.labels["t"]): c for c in r.att_gt}
    assert set(cells) == {(g, t) for g in (2017, 2019) for t in YEARS[1:]}
    for (g, t), c in cells.items():
        att, base, se, n_ctrl = hand_att(df, g, t, control)
        assert c.labels["base"] == base and c.labels["e"] == t - g
        assert c.att == pytest.approx(att, abs=1e-12), (g, t)
        assert c.labels["n_control"] == n_ctrl
        # the influence function rescaled to all n units keeps the two-sample standard error
        assert c.se_analytic == pytest.approx(se, rel=1e-10)
    # not-yet-treated: cohort 2019 and the unit treated in 2030 are controls of 2017 before 2019, never of themselves
    if control == "notyet":
        assert cells[(2017, 2018)].labels["n_control"] == 3 + 3 + 1
        assert cells[(2017, 2019)].labels["n_control"] == 3 + 1
        assert cells[(2019, 2017)].labels["n_control"] == 3 + 1
    else:
        assert all(c.labels["n_control"] == 3 for c in cells.values())
    assert r.panel.later == 1 and any("after the last period" in note for note in r.panel.notes)


def test_aggregations_recomputed_from_the_cells() -> None:
    df = small_panel(5)
    r = callaway_santanna(df, unit="village", time="year", first_treated="g", outcome="y", reps=0)
    att = {(c.labels["g"], c.labels["t"]): c.att for c in r.att_gt}
    share = {2017: 2 / 9, 2019: 3 / 9}
    post = [(g, t) for (g, t) in att if t >= g]
    simple = sum(att[k] * share[k[0]] for k in post) / sum(share[k[0]] for k in post)
    assert r.overall.att == pytest.approx(simple, abs=1e-12)
    for e in r.dynamic:
        ks = [k for k in att if k[1] - k[0] == e.labels["e"]]
        want = sum(att[k] * share[k[0]] for k in ks) / sum(share[k[0]] for k in ks)
        assert e.att == pytest.approx(want, abs=1e-12)
    assert {e.labels["e"] for e in r.dynamic} == set(range(-3, 4))  # negative and positive event times
    groups = {g: np.mean([att[k] for k in post if k[0] == g]) for g in (2017, 2019)}
    for e in r.group:
        assert e.att == pytest.approx(groups[e.labels["g"]], abs=1e-12)
    assert r.group_overall.att == pytest.approx((2 * groups[2017] + 3 * groups[2019]) / 5, abs=1e-12)
    cal = {
        t: sum(att[k] * share[k[0]] for k in post if k[1] == t) / sum(share[k[0]] for k in post if k[1] == t)
        for t in range(2017, 2021)
    }
    assert [e.att for e in r.calendar] == pytest.approx([cal[t] for t in sorted(cal)], abs=1e-12)
    assert r.calendar_overall.att == pytest.approx(np.mean(list(cal.values())), abs=1e-12)
    dyn_post = [e.att for e in r.dynamic if e.labels["e"] >= 0]
    assert r.dynamic_overall.att == pytest.approx(np.mean(dyn_post), abs=1e-12)


def planted(noise: float = 0.0, seed: int = 7, per_cohort: int = 30) -> tuple[pd.DataFrame, dict]:
    """Units in cohorts 2017, 2019, 2021 and never treated, 2014-2023; effects differ by cohort and grow
    with exposure: tau(g, t) = (3 if g = 2017, 2 if 2019, 1 if 2021) * (1 + 0.5 (t - g))."""
    rng = np.random.default_rng(seed)
    years = range(2014, 2024)
    scale = {2017: 3.0, 2019: 2.0, 2021: 1.0, 0: 0.0}
    lam = {t: 0.3 * (t - 2014) + rng.normal(0, 0.2) for t in years}
    rows, tau = [], {}
    unit = 0
    for g in (2017, 2019, 2021, 0):
        for _ in range(per_cohort):
            a = rng.normal(0, 2)
            for t in years:
                eff = scale[g] * (1 + 0.5 * (t - g)) if g and t >= g else 0.0
                if g and t >= g:
                    tau[(g, t)] = eff
                rows.append((f"u{unit:03d}", t, g, a + lam[t] + eff + rng.normal(0, noise)))
            unit += 1
    return pd.DataFrame(rows, columns=["unit", "year", "first_treated", "y"]), tau


def test_planted_heterogeneous_effects_cs_recovers_twfe_biased_with_negative_weights() -> None:
    df, tau = planted()
    r = callaway_santanna(df, reps=199, seed=1)
    for c in r.att_gt:
        g, t = c.labels["g"], c.labels["t"]
        assert c.att == pytest.approx(tau.get((g, t), 0.0), abs=1e-9), (g, t)
    share = {g: 30 / 120 for g in (2017, 2019, 2021)}
    true_simple = sum(v * share[g] for (g, _), v in tau.items()) / sum(share[g] for g, _ in tau)
    assert r.overall.att == pytest.approx(true_simple, abs=1e-9)
    # TWFE is the dCDH-weighted sum of the planted effects, exactly in noiseless data
    w = r.weights.cells
    twfe_from_weights = sum(row.weight * tau[(row.g, row.t)] for row in w.itertuples())
    assert r.twfe_coef == pytest.approx(twfe_from_weights, abs=1e-8)
    assert w["weight"].sum() == pytest.approx(1.0, abs=1e-12)
    # the predicted direction: effects growing with exposure get negative weight late in early cohorts
    assert r.weights.negative_cells > 0 and r.weights.negative_sum < 0
    neg = w[w["weight"] < 0]
    assert set(neg["g"]) <= {2017, 2019} and neg["t"].min() >= 2021  # early cohorts, late periods
    assert r.twfe_coef < 0.8 * true_simple
    assert "negative weight" in r.warning() and r.heterogeneity["p"] < 0.001
    body = r.to_dict()
    assert body["twfe"]["weights"]["negative_cells"] == r.weights.negative_cells
    assert body["twfe"]["coef"] == pytest.approx(r.twfe_coef)


def test_planted_with_noise_inside_the_bands_and_twfe_event_study() -> None:
    df, _ = planted(noise=0.5, seed=11, per_cohort=60)
    r = callaway_santanna(df, reps=499, seed=3)
    dyn = {e.labels["e"]: e for e in r.dynamic}
    z = 1.959963984540054
    assert r.band_critical > z  # the uniform band is wider than the pointwise interval
    for k, e in dyn.items():
        assert e.band_lower <= e.ci_lower and e.band_upper >= e.ci_upper  # type: ignore[operator]
        if k < 0:
            assert e.band_lower <= 0 <= e.band_upper, k  # no pre-trend planted
    twfe = r.twfe_dynamic()
    assert twfe[-1][0] == 0.0 and r.twfe_event_ref == [-1]
    assert set(dyn) <= set(twfe)  # TWFE also has the first period's event time, which has no base for CS


def test_not_yet_treated_without_never_treated_units() -> None:
    df, tau = planted()
    df = df[df["first_treated"] != 0]
    with pytest.raises(PanelTooShort, match="not-yet-treated"):
        callaway_santanna(df, reps=0)
    r = callaway_santanna(df, control_group="notyet", reps=0)
    cells = {(c.labels["g"], c.labels["t"]): c for c in r.att_gt}
    assert max(t for _, t in cells) == 2020  # from 2021 on every unit is treated: no control left
    for (g, t), c in cells.items():
        assert c.att == pytest.approx(tau.get((g, t), 0.0), abs=1e-9)
    assert any("not estimable" in s for s in r.skipped)
    assert r.twfe_event_ref == [-1, -7]  # the earliest event time left out too
    # cohorts two years apart make even and odd event times collinear with the period effects: said, not faked
    assert r.twfe_event is None and any("not identified" in s for s in r.skipped)


def dr_panel(n: int = 3000, seed: int = 5) -> pd.DataFrame:
    """Two periods of selection on a covariate that also drives the trend; effect 2 in 2021 for cohort 2021."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    treated = rng.random(n) < 1 / (1 + np.exp(-(0.2 + 1.2 * x)))
    a = rng.normal(0, 1, n)
    rows = []
    for t in (2019, 2020, 2021):
        trend = (t - 2019) * (0.5 + 1.5 * x)
        y = a + trend + 2.0 * (treated & (t == 2021)) + rng.normal(0, 0.3, n)
        rows += list(zip(range(n), [t] * n, np.where(treated, 2021, 0), y, x, strict=True))
    return pd.DataFrame(rows, columns=["unit", "year", "first_treated", "y", "x"])


def test_doubly_robust_against_statsmodels_and_recovering_the_effect() -> None:
    df = dr_panel()
    r = callaway_santanna(df, controls=["x"], reps=0)
    naive = callaway_santanna(df, reps=0)
    cell = {c.labels["t"]: c for c in r.att_gt}[2021]
    # Sant'Anna and Zhao's panel DR estimator written out with statsmodels (covariates of the base period 2020)
    wide = df.pivot(index="unit", columns="year", values="y")
    first = df.groupby("unit")[["first_treated", "x"]].first()
    dy = (wide[2021] - wide[2020]).to_numpy()
    d = (first["first_treated"] == 2021).to_numpy().astype(float)
    X = sm.add_constant(first["x"].to_numpy())
    ps = sm.Logit(d, X).fit(disp=0).predict(X)
    m = sm.OLS(dy[d == 0], X[d == 0]).fit().predict(X)
    w0 = ps * (1 - d) / (1 - ps)
    want = (d * (dy - m)).sum() / d.sum() - (w0 * (dy - m)).sum() / w0.sum()
    assert cell.att == pytest.approx(want, abs=1e-8)
    assert cell.att == pytest.approx(2.0, abs=0.1)
    assert abs({c.labels["t"]: c for c in naive.att_gt}[2021].att - 2.0) > 0.5  # selection on x biases it
    assert r.estimator == "dr" and "Sant'Anna and Zhao" in r.to_dict()["conventions"]["estimator"]["dr"]


def test_dr_with_only_a_constant_is_the_difference_of_means() -> None:
    df = small_panel()
    df["one"] = 1.0
    plain = callaway_santanna(df, unit="village", first_treated="g", reps=0)
    dr = callaway_santanna(df, unit="village", first_treated="g", controls=["one"], reps=0)
    assert [c.att for c in dr.att_gt] == pytest.approx([c.att for c in plain.att_gt], abs=1e-9)
    assert [c.se for c in dr.att_gt] == pytest.approx([c.se for c in plain.att_gt], rel=1e-7)
    assert any("absorbed" in s for s in dr.skipped)  # the TWFE side says it cannot use the constant


def test_two_periods_two_groups_cs_equals_twfe_equals_the_textbook_did() -> None:
    rng = np.random.default_rng(9)
    rows = [(u, t, 2021 if u < 5 else 0, float(rng.normal(5, 1))) for u in range(12) for t in (2020, 2021)]
    df = pd.DataFrame(rows, columns=["unit", "year", "first_treated", "y"])
    m = df.groupby([df["first_treated"] > 0, "year"])["y"].mean()
    textbook = (m[(True, 2021)] - m[(True, 2020)]) - (m[(False, 2021)] - m[(False, 2020)])
    r = callaway_santanna(df, reps=0)
    assert [c.att for c in r.att_gt] == pytest.approx([textbook], abs=1e-12)
    assert r.overall.att == pytest.approx(textbook, abs=1e-12) and r.twfe_coef == pytest.approx(textbook, abs=1e-10)
    assert r.weights.negative_obs == 0 and "no treated cell has a negative" in r.warning()


def test_bootstrap_is_seeded_and_matches_the_analytic_errors() -> None:
    df, _ = planted(noise=1.0, seed=2, per_cohort=80)
    a = callaway_santanna(df, reps=499, seed=42)
    b = callaway_santanna(df, reps=499, seed=42)
    c = callaway_santanna(df, reps=499, seed=43)
    ses = lambda r: [e.se for e in r.att_gt] + [e.se for e in r.dynamic] + [r.overall.se]  # noqa: E731
    assert ses(a) == ses(b) and a.band_critical == b.band_critical
    assert ses(a) != ses(c)
    assert a.to_dict()["bootstrap"]["seed"] == 42 and a.to_dict()["bootstrap"]["weights"] == "mammen"
    fresh = callaway_santanna(df, reps=99, seed=None)
    assert isinstance(fresh.seed, int)
    again = callaway_santanna(df, reps=99, seed=fresh.seed)
    assert ses(fresh) == ses(again)
    big = callaway_santanna(df, reps=4999, seed=1)
    for e in [*big.att_gt, big.overall, *big.dynamic, *big.group, big.group_overall, *big.calendar]:
        assert e.se == pytest.approx(e.se_analytic, rel=0.12)


def test_input_checks() -> None:
    df = small_panel()
    with pytest.raises(KeyError, match="nope"):
        callaway_santanna(df, unit="village", first_treated="nope")
    bad = df.copy()
    bad.loc[3, "g"] = 2019  # unit a: first-treated differs between its rows
    with pytest.raises(DidInputError, match="differs"):
        callaway_santanna(bad, unit="village", first_treated="g")
    text = df.astype({"y": object})
    text.loc[5, "y"] = "n/a"
    with pytest.raises(DidInputError, match="not a number"):
        callaway_santanna(text, unit="village", first_treated="g")
    gap = df.copy()
    gap.loc[7, "y"] = np.nan
    gap = gap.drop(index=[20])
    p = prepare_panel(gap, unit="village", time="year", first_treated="g", outcome="y")
    assert (
        len(p.units) == 7 and any("missing values" in n for n in p.notes) and any("every period" in n for n in p.notes)
    )
    off = df.copy()
    off["g"] = off["g"].replace(2017, 2017.5)
    with pytest.raises(DidInputError, match="whole numbers"):
        callaway_santanna(off, unit="village", first_treated="g")


def test_json_has_the_documented_shape_and_is_strict() -> None:
    df, _ = planted(noise=0.3)
    body = callaway_santanna(df, reps=49, seed=0).to_dict()
    json.dumps(body, allow_nan=False)
    assert {"g", "t", "att", "se"} <= set(body["att_gt"][0])
    assert {"att", "se"} <= set(body["overall"]) and {"e", "att", "se"} <= set(body["dynamic"][0])
    assert {"coef", "se"} <= set(body["twfe"])
    assert body["conventions"]["base_period"].startswith("varying")
    assert body["bands"]["dynamic_critical_value"] > 1.96


def test_event_study_chart(tmp_path: Path) -> None:
    from analytics.did_chart import event_study_chart

    df, _ = planted(noise=0.3)
    paths = event_study_chart(callaway_santanna(df, reps=99), tmp_path / "es")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_village_demo_panel_is_reproducible_and_dr_removes_the_selection_bias() -> None:
    from analytics.did_data import DEMO_VILLAGE_COHORTS, DEMO_VILLAGES_FILE, did_demo, simulate_villages

    shipped = pd.read_csv(DEMO_VILLAGES_FILE, dtype={"village_code": str})
    pd.testing.assert_frame_equal(shipped, simulate_villages(), check_dtype=False)
    dr = did_demo(controls=["irrigated_share"], reps=499)
    naive = did_demo(reps=0)
    tau = {(g, t): a + b * (t - g) for g, (a, b) in DEMO_VILLAGE_COHORTS.items() for t in range(g, 2026)}
    true_simple = np.mean(list(tau.values()))  # equal cohort sizes: every post cell weighs the same
    assert abs(dr.overall.att - true_simple) < 2 * dr.overall.se
    assert naive.overall.att - true_simple > 2 * naive.overall.se  # irrigated villages adopt early and trend up
    for e in dr.dynamic:
        k = e.labels["e"]
        true = np.mean([v for (g, t), v in tau.items() if t - g == k]) if k >= 0 else 0.0
        assert e.band_lower <= true <= e.band_upper, k  # type: ignore[operator]
    assert dr.twfe_coef < true_simple and dr.weights.negative_cells > 0


def test_cli_did_from_a_csv(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    df, _ = planted(noise=0.3)
    df.loc[df["first_treated"] == 0, "first_treated"] = None  # blank means never treated
    csv = tmp_path / "panel.csv"
    df.rename(columns={"unit": "village", "y": "yield"}).to_csv(csv, index=False)
    args = ["models", "did", "--csv", str(csv), "--unit", "village", "--time", "year", "--first-treated"]
    args += ["first_treated", "--outcome", "yield", "--reps", "99", "--seed", "5"]
    out = CliRunner().invoke(app, [*args, "--json", "--chart", str(tmp_path / "es")])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    direct = callaway_santanna(
        df.rename(columns={"unit": "village", "y": "yield"}), unit="village", outcome="yield", reps=99, seed=5
    )
    assert body["overall"]["att"] == pytest.approx(direct.overall.att) and body["bootstrap"]["seed"] == 5
    assert body["panel"]["never_treated"] == 30
    assert (tmp_path / "es.png").is_file() and (tmp_path / "es.svg").is_file()
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "Group-time average treatment effects" in text.stdout and "negative" in text.stdout
    bad = CliRunner().invoke(app, [*args[:-4], "--outcome", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


REFERENCE = Path(__file__).parent / "data" / "did_differences_reference.json"


@pytest.mark.parametrize("case", ["planted_never", "planted_notyet", "dr_never", "dr_notyet"])
def test_matches_the_differences_package(case: str) -> None:
    """ATT(g,t), analytic errors and the four aggregations equal those of the `differences` package (0.3.0,
    est_method "dr", base_period "varying"), computed once on the same panels and stored in tests/data (to 1e-7:
    the logit iterations stop at other tolerances): an
    independent implementation of the same conventions (it is not a dependency: see the README)."""
    ref = json.loads(REFERENCE.read_text())[case]
    df, _ = planted(noise=1.0, seed=4, per_cohort=40)
    controls: list[str] = []
    if case.startswith("dr"):
        x = dict(zip(df["unit"].unique(), np.random.default_rng(8).normal(size=df["unit"].nunique()), strict=True))
        df["x"] = df["unit"].map(x)
        df["y"] = df["y"] + 0.8 * df["x"] * (df["year"] - 2014)
        controls = ["x"]
    r = callaway_santanna(df, controls=controls, control_group=case.split("_")[1], reps=0)  # type: ignore[arg-type]
    ours = {(c.labels["g"], c.labels["t"]): (c.att, c.se_analytic) for c in r.att_gt}
    assert len(ours) == len(ref["att_gt"])
    for g, t, att, se in ref["att_gt"]:
        assert ours[(g, t)] == pytest.approx((att, se), rel=1e-7, abs=1e-12), (g, t)
    assert (r.overall.att, r.overall.se_analytic) == pytest.approx(tuple(ref["simple"]), rel=1e-7)
    for key, mine in (("event", r.dynamic), ("cohort", r.group), ("time", r.calendar)):
        label = {"event": "e", "cohort": "g", "time": "t"}[key]
        got = {e.labels[label]: (e.att, e.se_analytic) for e in mine}
        assert len(got) == len(ref[key])
        for k, att, se in ref[key]:
            assert got[k] == pytest.approx((att, se), rel=1e-7, abs=1e-12), (key, k)
