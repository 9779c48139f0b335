"""Composite indices and panel models over the county statistics, as JSON a researcher's tools read:
the same functions and results as `village models ...` (analytics/entropy.py, panel.py), each result
with its tables (`tables`) and a text rendering like the statistics packages print (`summary`, the
text of a statsmodels Summary). The panel models' query parameters are their declarations in
analytics/specs.py, which the CLI reads too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, cast

import pandas as pd
from fastapi import APIRouter, Query, Request
from sqlmodel import Session

from analytics.specs import FeSpec, HausmanSpec, MediationSpec, ModelSpec, ThresholdSpec
from api.deps import ActorDep, SessionDep
from api.problems import Problem, problem_responses

router = APIRouter(prefix="/api/v1/models", tags=["models"])
READ = problem_responses(401, 403, 422)

Var = Annotated[str, Query(min_length=1, max_length=60, pattern=r"^[a-z][a-z0-9_]*$")]
Vars = Annotated[str, Query(max_length=400, pattern=r"^([a-z][a-z0-9_]*(,[a-z][a-z0-9_]*)*)?$")]
Year = Annotated[int | None, Query(ge=1990, le=2100)]


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _wide(session: Session) -> pd.DataFrame:
    from analytics import statistics_io

    long = statistics_io.load_statistics(session)
    if long.empty:
        raise Problem(422, "no-statistics", "no county statistics yet: import them (village stats import)")
    return statistics_io.to_wide(long)


def _answer(compute: Callable[[], Any]) -> dict[str, Any]:
    """The result's JSON; a bad variable name or unusable data is a 422 with the reason."""
    try:
        result = compute()
    except (KeyError, ValueError) as e:
        raise Problem(422, "model-input", str(e.args[0]) if e.args else str(e)) from None
    out = result.to_dict()
    out["summary"] = str(result.summary())
    return out


def _variables(wide: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    from analytics.dataset import build_variables

    try:
        return build_variables(wide, names)
    except (KeyError, ValueError) as e:
        raise Problem(422, "model-input", str(e.args[0]) if e.args else str(e)) from None


@router.get("/entropy", summary="Entropy weights and scores of a composite index", responses=READ)
def entropy(
    session: SessionDep,
    _actor: ActorDep,
    index: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]*$", max_length=20)] = "dvi",
    year: Year = None,
    method: Annotated[str, Query(pattern=r"^(flat|hierarchical)$")] = "flat",
) -> dict[str, Any]:
    from analytics.entropy import composite_index

    wide = _wide(session)
    if year is not None:
        if year not in wide.index.get_level_values("year"):
            raise Problem(422, "model-input", f"no statistics for {year}")
        wide = wide.xs(year, level="year")
    return _answer(lambda: composite_index(wide, index, method=method))  # type: ignore[arg-type]


@router.get("/lq", summary="Location quotient of agricultural employment", responses=READ)
def lq(session: SessionDep, _actor: ActorDep, year: Year = None) -> dict[str, Any]:
    from analytics.agglomeration import location_quotient

    wide = _wide(session)
    if year is not None:
        wide = wide[wide.index.get_level_values("year") == year]
    return _answer(lambda: location_quotient(wide))


def _fit(session: Session, spec: ModelSpec) -> dict[str, Any]:
    """The model declared in analytics/specs.py, with the query's parameters, on the stored statistics."""
    data = _variables(_wide(session), spec.variables())
    return _answer(lambda: spec.run(data))


@router.get("/fe", summary=FeSpec.title, responses=READ)
def fe(session: SessionDep, _actor: ActorDep, spec: Annotated[FeSpec, Query()]) -> dict[str, Any]:
    """Controls added one at a time; `se` names the clustered-error convention, the tables say which within R²."""
    return _fit(session, spec)


@router.get("/mediation", summary=MediationSpec.title, responses=READ)
def mediation(session: SessionDep, _actor: ActorDep, spec: Annotated[MediationSpec, Query()]) -> dict[str, Any]:
    """Percentile and bias-corrected cluster-bootstrap intervals of a*b (`bootstrap.ci_percentile`,
    `bootstrap.ci_bias_corrected`)."""
    return _fit(session, spec)


@router.get("/threshold", summary=ThresholdSpec.title, responses=READ)
def threshold(session: SessionDep, _actor: ActorDep, spec: Annotated[ThresholdSpec, Query()]) -> dict[str, Any]:
    """Every distinct candidate threshold unless `grid` thins them; s² convention in `settings.sigma2`."""
    return _fit(session, spec)


@router.get("/hausman", summary=HausmanSpec.title, responses=READ)
def hausman(session: SessionDep, _actor: ActorDep, spec: Annotated[HausmanSpec, Query()]) -> dict[str, Any]:
    return _fit(session, spec)


@router.get(
    "/did",
    summary="Staggered difference-in-differences (Callaway and Sant'Anna 2021) beside two-way fixed effects",
    responses=READ,
)
def did(
    request: Request,
    session: SessionDep,
    _actor: ActorDep,
    outcome: Annotated[str | None, Query(min_length=1, max_length=60, pattern=r"^[a-z][a-z0-9_]*$")] = None,
    controls: Vars = "",
    control_group: Annotated[str, Query(pattern=r"^(never|notyet)$")] = "never",
    source: Annotated[str, Query(pattern=r"^(registry|demo|demo-counties)$")] = "registry",
    county: Annotated[str | None, Query(pattern=r"^[0-9]{6}$")] = None,
    reps: Annotated[int, Query(ge=0, le=2000)] = 499,
    seed: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> dict[str, Any]:
    """ATT(g,t), simple/dynamic/group/calendar aggregations with multiplier-bootstrap errors (seed stored) and the
    event study's uniform band; the TWFE coefficient with its negative weights. `source=registry`: counties first
    treated in the first full year with monitoring devices in any village, outcome from the statistics (a 422
    `did-panel-too-short` says what the registry has when that is not enough; outcome default rri);
    `source=demo`: the illustrative village panel with planted effects (outcome rice_yield_kg_mu, covariate
    irrigated_share); `demo-counties`: the demo county statistics with their planted roll-out years."""
    from analytics import did_data
    from analytics.did import ControlGroup, PanelTooShort

    ctrl, group = _split(controls), cast(ControlGroup, control_group)
    tz = request.app.state.settings.county_timezone

    def run() -> Any:
        try:
            if source.startswith("demo"):
                panel = "counties" if source == "demo-counties" else "villages"
                return did_data.did_demo(
                    panel=panel, outcome=outcome, controls=ctrl, control_group=group, reps=reps, seed=seed
                )
            return did_data.did_from_registry(
                session,
                outcome=outcome or did_data.DEFAULT_OUTCOME,
                controls=ctrl,
                control_group=group,
                county=county,
                reps=reps,
                seed=seed,
                tz=tz,
            )
        except PanelTooShort as e:
            raise Problem(422, "did-panel-too-short", str(e)) from None

    out = _answer(run)
    out["source"].pop("villages", None)  # per-village device counts stay behind the registry's own scopes
    return out


@router.get(
    "/dea", summary="Three-stage DEA: DEA, stochastic frontiers of the slacks, DEA on adjusted inputs", responses=READ
)
def dea(
    session: SessionDep,
    _actor: ActorDep,
    inputs: Vars = "employment_primary,optical_cable_length",
    outputs: Vars = "gross_output_agri,farm_ecommerce_sales",
    env: Vars = "gdp_per_capita,fiscal_agri_support,rural_ageing_rate",
    year: Year = None,
    rts: Annotated[str, Query(pattern=r"^(vrs|crs)$")] = "vrs",
    orientation: Annotated[str, Query(pattern=r"^input$")] = "input",
) -> dict[str, Any]:
    """The counties of one year (default: the latest complete one); `summary` is the text of the
    statsmodels Summary the CLI prints."""
    from analytics.dea import county_dea
    from analytics.statistics_io import county_names

    wide = _wide(session)
    try:
        result = county_dea(
            wide,
            year=year,
            inputs=_split(inputs),
            outputs=_split(outputs),
            environment=_split(env),
            rts=rts,  # type: ignore[arg-type]
            orientation=orientation,
            names=county_names(session),
        )
    except (KeyError, ValueError) as e:
        raise Problem(422, "model-input", str(e.args[0]) if e.args else str(e)) from None
    return {**result.to_dict(), "summary": str(result.summary())}
