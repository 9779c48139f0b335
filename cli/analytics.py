"""`village stats ...` (county statistics) and `village models ...` (indices and panel models).

Models read the statistics stored in the database (`village stats import` / `village stats demo`)
or, with `--csv FILE`, a statistics CSV directly. Variables are catalogue indicator ids, composite
index ids (dvi, rri, dei: pooled entropy scores over the panel), `lq_agri` (location quotient of
primary-industry employment) and `ln_` before any of them. `--json` prints the result as JSON, the
same object the API returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table as RichTable

from analytics.catalogue import get_catalogue
from analytics.specs import (
    DEFAULT_CONTROLS,
    FeSpec,
    HausmanSpec,
    MediationSpec,
    ModelSpec,
    ThresholdSpec,
    default,
    help_of,
)
from cli.registry import AS_USER, err_console, fail, registry_engine, scope_of_user

if TYPE_CHECKING:  # pandas and the models load only when a command runs, so `village --help` stays fast
    import pandas as pd

    from analytics.results import Result, Table

stats_app = typer.Typer(no_args_is_help=True, help="County statistics per year: import from CSV, demo panel, overview.")
models_app = typer.Typer(
    no_args_is_help=True,
    help="Indicator catalogue, entropy indices, location quotient and panel models (FE, mediation, threshold).",
)

CsvOption = typer.Option(None, "--csv", help="Read this statistics CSV instead of the database.")
JsonOption = typer.Option(False, "--json", help="Print the result as JSON (what the API returns).")
YearsOption = typer.Option(None, "--years", help="Only these years, e.g. 2015-2024 or 2020,2022.")
CountiesOption = typer.Option(None, "--counties", help="Only these county codes, comma-separated.")


# ---------------------------------------------------------------- output


def print_result(result: Result, as_json: bool = False) -> None:
    """A result as rich tables (one per `tables()` entry), or as its JSON."""
    if as_json:
        typer.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    console = wide_console()
    for table in result.tables():
        console.print(rich_table(table))
        for note in table.notes:  # below the table, not as a caption squeezed to its width
            console.print(note, highlight=False, soft_wrap=True, markup=False)  # notes are text: [x] is no markup
        console.print()


def wide_console() -> Console:
    """Regression tables need width: at least 140 columns when the output is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 140))


def rich_table(table: Table) -> RichTable:
    from analytics.results import fmt

    out = RichTable(title=table.title, show_header=any(table.headers))
    for i, h in enumerate(table.headers):
        out.add_column(h, justify="left" if i == 0 else "right")
    for row in table.rows:
        out.add_row(*(fmt(c, table.digits) for c in row))
    return out


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _years(text: str | None) -> list[int] | None:
    if not text:
        return None
    years: list[int] = []
    try:
        for part in _split(text):
            if "-" in part:
                lo, hi = part.split("-", 1)
                years += list(range(int(lo), int(hi) + 1))
            else:
                years.append(int(part))
    except ValueError:
        fail(f"--years {text!r}: expected years like 2015-2024 or 2020,2022", 2)
    return years


def load_wide(csv: Path | None, years: str | None = None, counties: str | None = None) -> pd.DataFrame:
    """County-year statistics (one column per indicator) from the database or a CSV file."""
    from sqlmodel import Session

    from analytics import statistics_io

    try:
        if csv is not None:
            if not csv.is_file():
                fail(f"{csv}: no such file", 2)
            long = statistics_io.read_statistics_frame(csv)
        else:
            with Session(registry_engine()) as session:
                long = statistics_io.load_statistics(session)
    except statistics_io.StatisticsImportError as e:
        for error in e.errors[:20]:
            err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        fail(f"{csv}: {len(e.errors)} error(s)")
    if long.empty:
        fail("no county statistics yet: run `village stats demo` or `village stats import FILE` (or pass --csv)")
    wide = statistics_io.to_wide(long)
    if years is not None:
        wide = wide[wide.index.get_level_values("year").isin(_years(years) or [])]
    if counties:
        wide = wide[wide.index.get_level_values("county_code").isin(_split(counties))]
    if wide.empty:
        fail("no county-year rows left after the --years/--counties filters")
    return wide


def _run(compute: Any) -> Any:
    """Run a model, turning bad variable names and unusable data into one-line errors."""
    try:
        return compute()
    except KeyError as e:
        fail(str(e.args[0]) if e.args else str(e), 2)
    except ValueError as e:
        fail(str(e))


def _variables(wide: pd.DataFrame, names: list[str], method: str = "flat") -> pd.DataFrame:
    from analytics.dataset import build_variables

    return _run(lambda: build_variables(wide, names, method=method))


# ---------------------------------------------------------------- village stats


@stats_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="A statistics CSV (long: county_code,year,indicator_id,value; or wide)."),
    layout: str = typer.Option("auto", help="auto (from the header), long or wide."),
    source: str | None = typer.Option(None, help="Source note kept with every value (e.g. the yearbook)."),
    as_user: str | None = AS_USER,
) -> None:
    """Import county statistics; nothing is imported when any cell is wrong (or, with --as, of a county
    outside the user's area); safe to repeat."""
    from sqlmodel import Session

    from analytics import statistics_io

    if layout not in ("auto", "long", "wide"):
        fail(f"--layout {layout!r}: use auto, long or wide", 2)
    if not file.is_file():
        fail(f"{file}: no such file", 2)
    with Session(registry_engine()) as session:
        try:
            result = statistics_io.import_statistics(
                session,
                file,
                layout=layout,  # type: ignore[arg-type]
                source_note=source,
                scope=scope_of_user(session, as_user),
            )
        except statistics_io.StatisticsImportError as e:
            for error in e.errors:
                err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            fail(f"import {file}: {len(e.errors)} error(s); nothing was imported")
        session.commit()
    typer.echo(f"import {file}: {result.summary()}")


@stats_app.command("demo")
def demo_cmd() -> None:
    """Load the illustrative Liaoning panel (14 counties, 2015-2024; synthesised values, see its source column)."""
    from sqlmodel import Session

    from analytics import statistics_io

    with Session(registry_engine()) as session:
        result = statistics_io.load_demo(session)
        session.commit()
    typer.echo(f"demo statistics: {result.summary()}")


@stats_app.command("show")
def show_cmd(csv: Path | None = CsvOption) -> None:
    """Which indicators are stored: counties, years and values per indicator."""
    wide = load_wide(csv)
    catalogue = get_catalogue()
    table = RichTable(title=f"County statistics ({wide.index.get_level_values(0).nunique()} counties)")
    for name in ("indicator", "name", "unit", "counties", "years", "values"):
        table.add_column(name, justify="right" if name in ("counties", "values") else "left")
    for ind in catalogue.of_source("statistics"):
        if ind.id not in wide.columns:
            continue
        col = wide[ind.id].dropna()
        years = col.index.get_level_values("year")
        table.add_row(
            ind.id,
            ind.name_en,
            ind.unit,
            str(col.index.get_level_values("county_code").nunique()),
            f"{years.min()}-{years.max()}",
            str(len(col)),
        )
    wide_console().print(table)


# ---------------------------------------------------------------- village models


@models_app.command("catalogue")
def catalogue_cmd(
    source: str | None = typer.Option(None, help="Only this source: statistics, influx, ledger or registry."),
    index: str | None = typer.Option(None, help="Show the members of this composite index (dvi, rri, dei)."),
    as_json: bool = JsonOption,
) -> None:
    """The indicator catalogue (analytics/indicators.yaml)."""
    catalogue = get_catalogue()
    console = wide_console()
    if index:
        idx = _run(lambda: catalogue.index(index))
        if as_json:
            typer.echo(orjson.dumps(idx.model_dump(), option=orjson.OPT_INDENT_2).decode())
            return
        table = RichTable(title=f"{idx.name_en} ({idx.name_zh})", caption=idx.formula, caption_justify="left")
        for name in ("dimension", "indicator", "transform", "attr", "unit", "published weight"):
            table.add_column(name)
        for dim in idx.dimensions:
            for m in dim.members:
                ind = catalogue.indicator(m.indicator)
                table.add_row(
                    dim.id,
                    f"{ind.id} {ind.name_zh}",
                    m.transform,
                    "+" if ind.direction == "higher_is_better" else "-",
                    ind.unit,
                    "" if m.published_weight is None else f"{m.published_weight:g}",
                )
        console.print(table)
        total = idx.published_weight_sum()
        if total is not None and idx.published is not None:
            console.print(f"published weights sum to {total:g} as printed ({idx.published.source})")
        return
    indicators = [i for i in catalogue.indicators if source is None or i.source == source]
    if as_json:
        typer.echo(orjson.dumps([i.model_dump() for i in indicators], option=orjson.OPT_INDENT_2).decode())
        return
    table = RichTable(title=f"Indicators ({len(indicators)})")
    for name in ("id", "name", "dimension", "unit", "attr", "source", "reference"):
        table.add_column(name, overflow="fold")
    for i in indicators:
        table.add_row(
            i.id,
            f"{i.name_zh} {i.name_en}",
            i.dimension,
            i.unit,
            "+" if i.direction == "higher_is_better" else "-",
            i.source,
            "; ".join(r.label() for r in i.references),
        )
    console.print(table)
    console.print("composite indices: " + ", ".join(f"{x.id} ({x.name_en})" for x in catalogue.indices))


@models_app.command("entropy")
def entropy_cmd(
    index: str = typer.Option("dvi", help="Composite index id (dvi, rri, dei)."),
    year: int | None = typer.Option(None, help="Compare the counties of this year (default: pool all county-years)."),
    method: str = typer.Option("flat", help="flat (one entropy step over all members) or hierarchical."),
    shift: float = typer.Option(0.0001, help="Added to the normalised values so that no log of zero is taken."),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Entropy weights and scores of a composite index (with the published weights beside ours)."""
    from analytics.entropy import composite_index

    if method not in ("flat", "hierarchical"):
        fail(f"--method {method!r}: use flat or hierarchical", 2)
    wide = load_wide(csv, years, counties)
    if year is not None:
        if year not in wide.index.get_level_values("year"):
            fail(f"no statistics for {year}")
        wide = wide.xs(year, level="year")
    result = _run(lambda: composite_index(wide, index, method=method, shift=shift))  # type: ignore[arg-type]
    print_result(result, as_json)


@models_app.command("lq")
def lq_cmd(
    year: int | None = typer.Option(None, help="Only this year (the region's share is per year)."),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Location quotient of primary-industry employment (region = the counties in the data)."""
    from analytics.agglomeration import location_quotient

    wide = load_wide(csv, years if year is None else str(year), counties)
    print_result(_run(lambda: location_quotient(wide)), as_json)


@models_app.command("describe")
def describe_cmd(
    variables: str = typer.Option(f"rri,dvi,lq_agri,{DEFAULT_CONTROLS}", "--vars", help="Comma-separated variables."),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Descriptive statistics (N, mean, sd, min, max) of model variables."""
    from analytics.results import describe

    names = _split(variables)
    data = _variables(load_wide(csv, years, counties), names)
    print_result(_run(lambda: describe(data, names)), as_json)


def _opt(spec: type[ModelSpec], name: str, *flags: str, **kwargs: Any) -> Any:
    """A typer option whose default and help are the model's own declaration (analytics/specs.py)."""
    return typer.Option(default(spec, name), *flags, help=help_of(spec, name), **kwargs)


def _fit(spec_cls: type[ModelSpec], csv: Path | None, years: str | None, counties: str | None, **values: Any) -> Any:
    """Validate the options against the model's declaration, build its variables and run it."""
    from pydantic import ValidationError

    try:
        spec = spec_cls(**values)
    except ValidationError as e:
        fail("; ".join(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors()), 2)
    data = _variables(load_wide(csv, years, counties), spec.variables())
    return _run(lambda: spec.run(data))


@models_app.command("fe")
def fe_cmd(
    y: str = _opt(FeSpec, "y", "--y"),
    x: str = _opt(FeSpec, "x", "--x"),
    controls: str = _opt(FeSpec, "controls"),
    stepwise: bool = _opt(FeSpec, "stepwise"),
    time_effects: bool = _opt(FeSpec, "time_effects"),
    se: str = _opt(FeSpec, "se", "--se"),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Two-way fixed-effects regression (PanelOLS, SEs clustered by county), controls added one at a time."""
    values = {"y": y, "x": x, "controls": controls, "stepwise": stepwise, "time_effects": time_effects, "se": se}
    print_result(_fit(FeSpec, csv, years, counties, **values), as_json)


@models_app.command("mediation")
def mediation_cmd(
    y: str = _opt(MediationSpec, "y", "--y"),
    x: str = _opt(MediationSpec, "x", "--x"),
    m: str = _opt(MediationSpec, "m", "--m"),
    controls: str = _opt(MediationSpec, "controls"),
    reps: int = _opt(MediationSpec, "reps"),
    seed: int = _opt(MediationSpec, "seed"),
    time_effects: bool = _opt(MediationSpec, "time_effects"),
    se: str = _opt(MediationSpec, "se", "--se"),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Three-step mediation (two-way FE in each step), Sobel test, percentile and bias-corrected CIs of a*b."""
    values = {"y": y, "x": x, "m": m, "controls": controls, "reps": reps, "seed": seed}
    result = _fit(MediationSpec, csv, years, counties, **values, time_effects=time_effects, se=se)
    print_result(result, as_json)


@models_app.command("threshold")
def threshold_cmd(
    y: str = _opt(ThresholdSpec, "y", "--y"),
    x: str = _opt(ThresholdSpec, "x", "--x"),
    q: str = _opt(ThresholdSpec, "q", "--q"),
    controls: str = _opt(ThresholdSpec, "controls"),
    reps: int = _opt(ThresholdSpec, "reps"),
    grid: int | None = _opt(ThresholdSpec, "grid"),
    trim: float = _opt(ThresholdSpec, "trim"),
    double: bool = _opt(ThresholdSpec, "double"),
    time_effects: bool = _opt(ThresholdSpec, "time_effects"),
    sigma2: str = _opt(ThresholdSpec, "sigma2", "--sigma2"),
    se: str = _opt(ThresholdSpec, "se", "--se"),
    seed: int = _opt(ThresholdSpec, "seed"),
    chart: Path | None = typer.Option(None, "--chart", help="Write the LR(gamma) plot as FILE.png and FILE.svg."),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Hansen (1999) panel threshold model: search over every candidate, LR confidence interval, bootstrap F tests."""
    values = {"y": y, "x": x, "q": q, "controls": controls, "reps": reps, "grid": grid, "trim": trim}
    values |= {"double": double, "time_effects": time_effects, "sigma2": sigma2, "se": se, "seed": seed}
    result = _fit(ThresholdSpec, csv, years, counties, **values)
    print_result(result, as_json)
    if chart is not None:
        from analytics.threshold_chart import lr_chart

        for path in lr_chart(result, chart):
            err_console.print(f"wrote {path}", highlight=False)


@models_app.command("hausman")
def hausman_cmd(
    y: str = _opt(HausmanSpec, "y", "--y"),
    x: str = _opt(HausmanSpec, "x", "--x"),
    controls: str = _opt(HausmanSpec, "controls"),
    years: str | None = YearsOption,
    counties: str | None = CountiesOption,
    csv: Path | None = CsvOption,
    as_json: bool = JsonOption,
) -> None:
    """Hausman test of county fixed against random effects."""
    print_result(_fit(HausmanSpec, csv, years, counties, y=y, x=x, controls=controls), as_json)


@models_app.command(
    "did",
    help="Staggered difference-in-differences (Callaway and Sant'Anna 2021) with the two-way FE estimate beside it. "
    "Without --csv: counties first treated in the first full year with monitoring devices in any of their villages "
    "(registry), outcome from the county statistics; it says so when the registry cannot give a panel long enough. "
    "--demo villages: a synthesised village panel with planted effects.",
)
def did_cmd(
    csv: Path | None = typer.Option(
        None, "--csv", help="A long panel CSV (one row per unit and period); without it: the registry and statistics."
    ),
    unit: str = typer.Option("unit", "--unit", help="CSV: the unit column."),
    time: str = typer.Option("year", "--time", help="CSV: the period column (whole numbers)."),
    first_treated: str = typer.Option(
        "first_treated", "--first-treated", help="CSV: first treated period; 0 or blank for never treated."
    ),
    outcome: str | None = typer.Option(
        None, "--outcome", help="CSV: the outcome column; registry: a model variable (default rri); demo: a column."
    ),
    controls: str = typer.Option("", "--controls", help="Covariates, comma-separated (doubly robust estimator)."),
    control_group: str = typer.Option("never", "--control-group", help="never or notyet (not-yet-treated)."),
    reps: int = typer.Option(999, min=0, help="Multiplier-bootstrap draws (0: analytic standard errors)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap draws (stored in the output)."),
    alpha: float = typer.Option(0.05, help="Level of the intervals and the uniform band."),
    county: str | None = typer.Option(None, "--county", help="Registry: only this county's villages."),
    demo: str | None = typer.Option(
        None, "--demo", help="An illustrative demo panel: villages (planted effects) or counties (demo statistics)."
    ),
    chart: Path | None = typer.Option(None, "--chart", help="Write the event-study chart as FILE.png and FILE.svg."),
    as_json: bool = JsonOption,
) -> None:
    """Staggered difference-in-differences (Callaway and Sant'Anna 2021) with the two-way FE estimate beside it."""
    import pandas as pd

    from analytics import did_data
    from analytics.did import DidInputError, PanelTooShort, callaway_santanna

    if control_group not in ("never", "notyet"):
        fail(f"--control-group {control_group!r}: use never or notyet", 2)
    ctrl = _split(controls)
    group: Any = control_group
    try:
        if csv is not None:
            if not csv.is_file():
                fail(f"{csv}: no such file", 2)
            if not outcome:
                fail("--outcome COL is needed with --csv", 2)
            data = pd.read_csv(csv, dtype={unit: str}, skipinitialspace=True)
            result = callaway_santanna(
                data,
                unit=unit,
                time=time,
                first_treated=first_treated,
                outcome=outcome,
                controls=ctrl,
                control_group=group,
                reps=reps,
                seed=seed,
                alpha=alpha,
            )
            result.source = {"source": "csv", "file": str(csv)}
        elif demo:
            result = did_data.did_demo(
                panel=demo,
                outcome=outcome,
                controls=ctrl,
                control_group=group,
                reps=reps,
                seed=seed,
                alpha=alpha,
            )
        else:
            from sqlmodel import Session

            from core.settings import get_settings

            with Session(registry_engine()) as session:
                result = did_data.did_from_registry(
                    session,
                    outcome=outcome or did_data.DEFAULT_OUTCOME,
                    controls=ctrl,
                    control_group=group,
                    county=county,
                    reps=reps,
                    seed=seed,
                    alpha=alpha,
                    tz=get_settings().county_timezone,
                )
    except PanelTooShort as e:
        fail(str(e))
    except KeyError as e:
        fail(str(e.args[0]) if e.args else str(e), 2)
    except (DidInputError, ValueError) as e:
        fail(str(e))
    print_result(result, as_json)
    if chart is not None:
        from analytics.did_chart import event_study_chart

        for path in event_study_chart(result, chart):
            err_console.print(f"wrote {path}", highlight=False)


@models_app.command("dea")
def dea_cmd(
    inputs: str | None = typer.Option(
        None, "--inputs", help="Inputs, comma-separated (county default: labour, optical cable)."
    ),
    outputs: str | None = typer.Option(
        None, "--outputs", help="Outputs, comma-separated (county default: output value, online sales)."
    ),
    env: str | None = typer.Option(None, "--env", help="Environmental variables for stage 2 ('' for stage 1 only)."),
    unit: str | None = typer.Option(None, "--unit", help="With --csv: the column naming the units (one row each)."),
    orientation: str = typer.Option("input", help="Only input orientation (stage 3 adjusts inputs)."),
    rts: str = typer.Option(
        "vrs", help="The model whose slacks go to stage 2: vrs (BCC) or crs; both scores are shown."
    ),
    year: int | None = typer.Option(None, help="County data: this year (default: the latest complete one)."),
    counties: str | None = CountiesOption,
    csv: Path | None = typer.Option(
        None, "--csv", help="With --unit: any CSV, one row per unit; without: a statistics CSV."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Three-stage DEA (Fried et al. 2002): DEA, stochastic frontiers of the slacks, DEA on adjusted inputs."""
    from analytics import dea

    if rts not in ("crs", "vrs"):
        fail(f"--rts {rts!r}: use vrs or crs", 2)
    if orientation != "input":
        fail(f"--orientation {orientation!r}: only input orientation is implemented (stage 3 adjusts inputs)", 2)
    if unit is not None:
        import pandas as pd

        if csv is None or not csv.is_file():
            fail("--unit needs --csv FILE with one row per unit", 2)
        if not inputs or not outputs:
            fail("--unit needs --inputs and --outputs (columns of the CSV)", 2)
        data = _run(lambda: pd.read_csv(csv, dtype={unit: str}, encoding="utf-8-sig"))
        result = _run(
            lambda: dea.three_stage_dea(
                data,
                _split(inputs),
                _split(outputs),
                _split(env),
                unit=unit,
                rts=rts,  # type: ignore[arg-type]
                specification={"units": f"rows of {csv.name}", "source": str(csv)},
            )
        )
    else:
        from analytics.statistics_io import county_names

        wide = load_wide(csv, None, counties)
        result = _run(
            lambda: dea.county_dea(
                wide,
                year=year,
                inputs=_split(inputs) if inputs is not None else dea.DEFAULT_INPUTS,
                outputs=_split(outputs) if outputs is not None else dea.DEFAULT_OUTPUTS,
                environment=_split(env) if env is not None else dea.DEFAULT_ENV,
                rts=rts,  # type: ignore[arg-type]
                names=county_names(),
            )
        )
    print_result(result, as_json)
