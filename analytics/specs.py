"""The panel models' parameters, declared once: names, types, bounds, defaults and help.

`village models fe|mediation|threshold|hausman` (cli/analytics.py) take their options' defaults and
help from these classes, and `/api/v1/models/...` (api/routers/models.py) takes them as its query
parameters, so the two cannot drift apart. `spec.run(data)` fits the model on a frame with the
variables `spec.variables()`; the default specification of every model is county and year effects
with the "lsdv" clustered standard errors (analytics.results.SE_CONVENTIONS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

if TYPE_CHECKING:
    import pandas as pd

    from analytics.results import Result

DEFAULT_CONTROLS = "fiscal_agri_support,ln_gdp_per_capita,fixed_asset_investment"
VarName = Annotated[str, StringConstraints(min_length=1, max_length=60, pattern=r"^[a-z][a-z0-9_]*$")]
VarList = Annotated[str, StringConstraints(max_length=400, pattern=r"^([a-z][a-z0-9_]*(,[a-z][a-z0-9_]*)*)?$")]
SeName = Literal["lsdv", "stata", "linearmodels"]


def split(text: str) -> list[str]:
    """Comma-separated names, blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


class ModelSpec(BaseModel):
    """What every panel model takes: a dependent variable and controls."""

    model_config = ConfigDict(extra="ignore")  # as FastAPI treats unknown query parameters
    name: ClassVar[str]
    title: ClassVar[str]

    y: VarName = Field("rri", description="Dependent variable.")
    controls: VarList = Field(DEFAULT_CONTROLS, description="Control variables, comma-separated ('' for none).")

    def xs(self) -> list[str]:
        return split(getattr(self, "x", ""))

    def ctrl(self) -> list[str]:
        return split(self.controls)

    def variables(self) -> list[str]:
        """Every variable the model reads, in order, once."""
        extra = [getattr(self, k) for k in ("m", "q") if hasattr(self, k)]
        return list(dict.fromkeys([self.y, *self.xs(), *extra, *self.ctrl()]))

    def run(self, data: pd.DataFrame) -> Result:  # pragma: no cover - overridden
        raise NotImplementedError


class PanelSpec(ModelSpec):
    """The fixed-effects models: county effects always, year effects by default, the clustered SE convention."""

    time_effects: bool = Field(True, description="Year fixed effects besides the county effects (the default: both).")
    se: SeName = Field(
        "lsdv",
        description="Clustered standard errors: lsdv (linearmodels debiased + group_debias, as an OLS with dummies), "
        "stata (xtreg, fe vce(cluster), t with G-1 df) or linearmodels (its default debiased correction).",
    )

    def specification(self) -> str:
        return "county and year effects" if self.time_effects else "county effects"


class FeSpec(PanelSpec):
    name: ClassVar[str] = "fe"
    title: ClassVar[str] = "Two-way fixed-effects regression (PanelOLS, SEs clustered by county)"

    x: VarList = Field("dvi", min_length=1, description="Explanatory variable(s), comma-separated.")
    stepwise: bool = Field(True, description="One column per added control (as papers print it).")

    def run(self, data: pd.DataFrame) -> Result:
        from analytics.panel import fixed_effects_table

        return fixed_effects_table(
            data, self.y, self.xs(), self.ctrl(), stepwise=self.stepwise, time_effects=self.time_effects, se=self.se
        )


class MediationSpec(PanelSpec):
    name: ClassVar[str] = "mediation"
    title: ClassVar[str] = "Three-step mediation with Sobel test and bootstrap CIs of a*b"

    x: VarName = Field("dvi", description="Explanatory variable.")
    m: VarName = Field("lq_agri", description="Mediator.")
    reps: int = Field(500, ge=0, le=5000, description="Cluster-bootstrap replications for the CIs of a*b.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed of the bootstrap.")

    def run(self, data: pd.DataFrame) -> Result:
        from analytics.panel import mediation

        return mediation(
            data,
            self.y,
            self.x,
            self.m,
            self.ctrl(),
            reps=self.reps,
            seed=self.seed,
            time_effects=self.time_effects,
            se=self.se,
        )


class ThresholdSpec(PanelSpec):
    name: ClassVar[str] = "threshold"
    title: ClassVar[str] = "Hansen (1999) panel threshold model"

    x: VarList = Field("dvi", min_length=1, description="Regressor(s) whose slope changes at the threshold.")
    q: VarName = Field("lq_agri", description="Threshold variable.")
    reps: int = Field(300, ge=0, le=2000, description="Bootstrap replications of the F tests.")
    grid: int | None = Field(
        None, ge=10, le=100_000, description="Thin the candidate thresholds to this many (default: every distinct one)."
    )
    trim: float = Field(0.15, gt=0, lt=0.5, description="Share of observations each regime keeps at least.")
    double: bool = Field(True, description="Also test a second threshold.")
    sigma2: Literal["hansen", "dof"] = Field(
        "hansen", description="s² in F and LR: hansen S1/(n(T-1)) (Hansen's code, xthreg) or dof S1/((n-1)(T-1))."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Random seed of the bootstrap.")

    def run(self, data: pd.DataFrame) -> Result:
        from analytics.panel import panel_threshold

        return panel_threshold(
            data,
            self.y,
            self.xs(),
            self.q,
            self.ctrl(),
            reps=self.reps,
            grid=self.grid,
            trim=self.trim,
            double=self.double,
            time_effects=self.time_effects,
            sigma2=self.sigma2,
            se=self.se,
            seed=self.seed,
        )


class HausmanSpec(ModelSpec):
    """County effects only (random effects have no year effects here); conventional covariances."""

    name: ClassVar[str] = "hausman"
    title: ClassVar[str] = "Hausman test of county fixed against random effects"

    x: VarList = Field("dvi", min_length=1, description="Explanatory variable(s), comma-separated.")

    def run(self, data: pd.DataFrame) -> Result:
        from analytics.panel import hausman

        return hausman(data, self.y, self.xs(), self.ctrl())


MODELS: dict[str, type[ModelSpec]] = {s.name: s for s in (FeSpec, MediationSpec, ThresholdSpec, HausmanSpec)}


def default(spec: type[ModelSpec], field: str) -> Any:
    return spec.model_fields[field].default


def help_of(spec: type[ModelSpec], field: str) -> str:
    return spec.model_fields[field].description or ""
