"""`village indicators` (the county digitalisation indicators) and `village rollups` (build or update them).

`village indicators --county 211122 --period 2026-Q3` prints every indicator computed from the
registry, the InfluxDB rollups and the ledger, with the imported statistics, for the county (or
`--village CODE`), with its inputs and the change from the previous period; `--csv`, `--excel` and
`--charts DIR` write files. `village rollups` brings the hourly and daily rollups up to date
(`--since/--until` backfill a range of local days), with a progress bar.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cli.registry import err_console, fail, registry_engine

console = Console()


def _period(text: str, tz: str) -> Any:
    from analytics.periods import PeriodError, parse_period

    try:
        return parse_period(text, tz)
    except PeriodError as e:
        fail(str(e), 2)


def _day(text: str | None, option: str) -> date | None:
    from analytics.periods import PeriodError, parse_day

    if text is None:
        return None
    try:
        return parse_day(text)
    except PeriodError as e:
        fail(f"{option}: {e}", 2)


def _default_county(session: Any) -> str:
    from sqlmodel import select

    from core.models import County

    codes = list(session.exec(select(County.code)))
    if len(codes) != 1:
        fail(f"give --county (the registry has {len(codes)} counties: {', '.join(codes) or 'none'})", 2)
    return codes[0]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.4g}" if value != int(value) else f"{value:,.0f}"
    return text


def _inputs(inputs: dict[str, Any]) -> str:
    parts = []
    for k, v in inputs.items():
        if isinstance(v, dict | list):
            v = json.dumps(v, ensure_ascii=False)
        elif isinstance(v, float):
            v = f"{v:,.4g}"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _change(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return "-"
    change = row["change"]
    if change == 0:
        return "= 0"
    better = (change > 0) == (row["direction"] == "higher_is_better")
    arrow = "▲" if change > 0 else "▼" if change < 0 else "="
    colour = "green" if better and change else "red" if change else "white"
    return f"[{colour}]{arrow} {change:+,.4g}[/{colour}]"


def indicators(
    county: str | None = typer.Option(None, "--county", help="County code (default: the registry's only county)."),
    period: str = typer.Option(..., "--period", help="2026-Q3, 2026-07, 2026, 2026-W27 or 2026-07-01..2026-07-31."),
    village: str | None = typer.Option(None, "--village", help="Only this village (12-digit code)."),
    trend: int = typer.Option(1, "--trend", min=0, max=24, help="Previous periods to compute for the trend."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write the county and village rows to this CSV."),
    excel: Path | None = typer.Option(None, "--excel", help="Write an Excel workbook (county, villages, trend)."),
    charts: Path | None = typer.Option(None, "--charts", help="Write PNG and SVG charts into this folder."),
    chart_indicators: str | None = typer.Option(
        None, "--chart-indicators", help="Chart only these indicators (comma-separated ids; default: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (what the API returns)."),
    inputs: bool = typer.Option(True, "--inputs/--no-inputs", help="Show the inputs behind each value."),
) -> None:
    """The county digitalisation indicators for a period, with inputs and the change from the previous period."""
    from sqlmodel import Session

    from analytics import compute
    from analytics.rollups import from_settings
    from core.influx import InfluxError
    from core.settings import get_settings

    settings = get_settings()
    p = _period(period, settings.county_timezone)
    rollups = from_settings(settings, timeout=max(settings.influx_timeout_s, 60.0))
    with Session(registry_engine()) as session:
        code = county or _default_county(session)
        try:
            report = compute.compute_indicators(session, rollups.influx, code, p, village=village, trend=trend,
                                                rollups=rollups)  # fmt: skip
        except KeyError as e:
            fail(str(e.args[0]) if e.args else str(e), 2)
        except InfluxError as e:
            fail(f"InfluxDB at {settings.influx_url}: {e}")
    scope = village or code
    if as_json:
        typer.echo(json.dumps(report.to_dict(scope), ensure_ascii=False, indent=2, default=str))
    else:
        _print(report, scope, inputs)
    if csv_path:
        from analytics.export import write_csv

        err_console.print(f"CSV written: {write_csv(report, csv_path)}", highlight=False)
    if excel:
        from analytics.export import write_excel

        err_console.print(f"Excel written: {write_excel(report, excel)}", highlight=False)
    if charts:
        from analytics.charts import cjk_font, write_charts

        only = [i.strip() for i in chart_indicators.split(",") if i.strip()] if chart_indicators else None
        unknown = [i for i in only or [] if i not in report.catalogue.by_id]
        if unknown:
            fail(f"--chart-indicators: unknown indicator(s) {', '.join(unknown)}", 2)
        files = write_charts(report, charts, only)
        note = "" if cjk_font() else " (no CJK font installed: English titles; install fonts-noto-cjk)"
        err_console.print(f"{len(files)} chart files written to {charts}{note}", highlight=False)


def _print(report: Any, scope: str, show_inputs: bool) -> None:
    sv = report.scope(scope)
    prev = report.periods[-2].label if len(report.periods) > 1 else None
    table = Table(title=f"{sv.name} {sv.code} · {report.period.label} ({report.period.tz})", show_lines=False)
    for col, justify in (("indicator", "left"), ("指标", "left"), ("value", "right"), ("unit", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    if prev:
        table.add_column(f"vs {prev}", justify="right")
    if show_inputs:
        table.add_column("inputs", overflow="fold")
    dimension = None
    for row in report.rows(scope):
        if row["dimension"] != dimension:
            dimension = row["dimension"]
            table.add_section()
        cells = [row["indicator"], row["name_zh"], _fmt(row["value"]), row["unit"]]
        if prev:
            cells.append(_change(row))
        if show_inputs:
            cells.append(_inputs(row["inputs"]) + (f" ({row['note']})" if row["note"] else ""))
        table.add_row(*cells)
    out = Console(width=max(console.width, 160)) if not console.is_terminal else console
    out.print(table)
    comp = report.composite
    if sv.scope == "county" and comp:
        if comp.get("score") is not None:
            weights = ", ".join(f"{w['indicator']} {w['weight']:.3f}" for w in comp["weights"])
            out.print(
                f"{comp['name_zh']} {comp['name_en']} {comp['year']}: {comp['score']:.2f} "
                f"(rank {comp['rank']} of {comp['counties']} counties; previous year {_fmt(comp.get('previous'))}); "
                f"entropy weights over {comp['objects']} county-years: {weights}",
                highlight=False,
            )
        else:
            out.print(f"{comp['name_en']}: {comp.get('reason')}", highlight=False)
    out.print(f"computed in {report.seconds:.2f} s", style="dim", highlight=False)


def rollups(
    since: str | None = typer.Option(None, "--since", help="Backfill from this local day (YYYY-MM-DD)."),
    until: str | None = typer.Option(None, "--until", help="Backfill up to this local day, inclusive."),
    lookback_hours: float = typer.Option(24, "--lookback-hours", min=0, help="Hours recomputed before the watermark."),
    kinds: str | None = typer.Option(None, "--kinds", help="Only these device kinds, comma-separated."),
    status: bool = typer.Option(False, "--status", help="Only show each kind's watermark."),
) -> None:
    """Build or update the hourly and daily rollups inside InfluxDB (incremental from each kind's watermark)."""
    from analytics.rollups import from_settings
    from core.influx import InfluxError
    from core.settings import get_settings

    settings = get_settings()
    try:
        r = from_settings(
            settings,
            timeout=max(settings.influx_timeout_s, 600.0),
            lookback_s=int(lookback_hours * 3600),
            kinds=[k.strip() for k in kinds.split(",") if k.strip()] if kinds else None,
        )
    except KeyError as e:
        fail(str(e.args[0]), 2)
    a, b = _day(since, "--since"), _day(until, "--until")
    try:
        if status:
            _status(r)
            return
        ranges = r.backfill_ranges(a, b) if (a or b) else r.update_ranges()
        total = sum(len(r.chunks(k, x, y)) for k, (x, y) in ranges.items())
        if not total:
            console.print("nothing to roll up (no readings, or already up to date)")
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[points]:,} points"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console) as bar:
            task = bar.add_task("rolling up", total=total, points=0)
            written = [0]

            def advance(chunk: Any, points: int) -> None:
                written[0] += points
                bar.update(
                    task, advance=1, points=written[0], description=f"{chunk.kind} {r.local_day(chunk.start_ms)}"
                )

            report = r.run(ranges, progress=advance)
    except InfluxError as e:
        fail(f"InfluxDB at {settings.influx_url}: {e}")
    table = Table(title=f"rollups ({report.mode}, {report.seconds:.1f} s, tz {r.tz})")
    for col in ("kind", "chunks", "hourly points", "daily points", "from", "to", "watermark"):
        table.add_column(col, justify="right" if "points" in col or col == "chunks" else "left")
    for kind, k in report.to_dict()["kinds"].items():
        table.add_row(kind, str(k["chunks"]), f"{k['hourly_points']:,}", f"{k['daily_points']:,}", k["from"] or "-",
                      k["to"] or "-", k["watermark"] or "-")  # fmt: skip
    console.print(table)


def _status(r: Any) -> None:
    from datetime import UTC, datetime

    from analytics.periods import zone

    table = Table(title=f"rollup watermarks (retention policy {r.rp}, tz {r.tz})")
    table.add_column("kind")
    table.add_column("watermark (closed hours rolled up to)")
    for kind, wm in r.watermarks().items():
        when = datetime.fromtimestamp(wm / 1000, UTC).astimezone(zone(r.tz)).isoformat() if wm else "never"
        table.add_row(kind, when)
    console.print(table)
