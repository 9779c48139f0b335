"""`village registry`: schema migration, import from YAML/CSV, the demo county, an overview."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session, select

from core import boundaries, registry_io
from core.db import get_engine, migrate
from core.db_roles import apply_grants
from core.importing import ImportErrors
from core.scope import Scope
from core.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Registry of divisions, farms, plots, herds, animals and devices.")
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit (1: the request failed, 2: bad usage or configuration)."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def registry_engine() -> Engine:
    """The registry database, migrated to the newest schema first (so a fresh machine just works)."""
    url = get_settings().resolved_database_url()
    try:
        migrate(url)
    except Exception as e:
        fail(f"cannot open the registry database: {type(e).__name__}: {e}", 2)
    return get_engine(url)


AS_USER = typer.Option(
    None,
    "--as",
    metavar="USER",
    help="Import as this API user: every reference must lie in the user's area (core/scope.py). "
    "Without it the import runs as the operator of the server, unrestricted.",
)


def scope_of_user(session: Session, username: str | None) -> Scope | None:
    """The scope of an API user (`village users add`), or None (unrestricted) without a name."""
    if username is None:
        return None
    from api.models import User  # the accounts live with the API

    user = session.exec(select(User).where(User.username == username)).first()
    if user is None or not user.active:
        fail(f"no active user {username!r} (see `village users list`)", 2)
    return Scope.of(session, user.role, user.scope)


def run_import(action: str, do: Callable[[Session, Scope | None], Any], username: str | None = None) -> None:
    """Run an import in one transaction (as `username` when given), print every error or the summary."""
    with Session(registry_engine()) as session:
        try:
            result = do(session, scope_of_user(session, username))
        except ImportErrors as e:
            for error in e.errors:
                err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            fail(f"{action}: {len(e.errors)} error(s); nothing was imported")
        session.commit()
    for warning in getattr(result, "warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    typer.echo(f"{action}: {result.summary()}")


@app.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade the registry database schema; on PostgreSQL, grant each service role
    (village_api, village_ingest, ...) exactly its privileges (core/db_roles.py)."""
    engine = registry_engine()
    typer.echo("registry schema is up to date")
    try:
        roles = apply_grants(engine)
    except Exception as e:
        fail(f"cannot grant the service roles their privileges: {type(e).__name__}: {e}", 2)
    if roles:
        typer.echo(f"privileges granted to {', '.join(roles)}")


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="A registry YAML file, or a CSV file with --csv."),
    csv_entity: str | None = typer.Option(
        None,
        "--csv",
        metavar="ENTITY",
        help=f"Import FILE as CSV rows of one entity ({', '.join(registry_io.ENTITIES)}).",
    ),
    as_user: str | None = AS_USER,
) -> None:
    """Import (upsert) registry data; nothing is imported when any row is wrong."""
    if not file.is_file():
        fail(f"{file}: no such file", 2)
    if csv_entity is not None:
        try:
            entity = registry_io.entity_name(csv_entity)
        except ValueError as e:
            fail(str(e), 2)
        run_import(f"import {file}", lambda s, scope: registry_io.import_csv(s, entity, file, scope), as_user)
    else:
        run_import(f"import {file}", lambda s, scope: registry_io.import_yaml(s, file, scope), as_user)


@app.command("demo")
def demo_cmd() -> None:
    """Load the demo county (Panshan County, Panjin, Liaoning); safe to repeat."""
    run_import("demo county", lambda s, _scope: registry_io.load_demo(s))
    with Session(registry_engine()) as session:
        result = boundaries.load_demo(session)
        session.commit()
    typer.echo(f"demo boundaries: {result.summary()}")


@app.command("import-boundaries")
def import_boundaries_cmd(
    files: list[Path] = typer.Argument(..., help="GeoJSON FeatureCollections of Polygon/MultiPolygon features."),
    within: str | None = typer.Option(
        None, "--within", metavar="PREFIX", help="Resolve features without a code by name within this division."
    ),
    illustrative: bool = typer.Option(False, "--illustrative", help="Mark the shapes as drawn, not surveyed."),
) -> None:
    """Import administrative boundaries for the dashboard's map (core/boundaries.py): checked (polygons,
    closed rings, coordinates in range, division codes the registry or the national list knows); nothing
    is imported when any feature is wrong; a name the national list spells otherwise is a warning."""
    for file in files:
        if not file.is_file():
            fail(f"{file}: no such file", 2)
    if within is not None and not (within.isdigit() and len(within) in (2, 4, 6, 9)):
        fail("--within: a division code prefix of 2, 4, 6 or 9 digits", 2)
    with Session(registry_engine()) as session:
        try:
            result = boundaries.import_files(session, files, within=within, illustrative=illustrative)
        except boundaries.BoundaryErrors as e:
            for error in e.errors:
                err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            fail(f"import-boundaries: {len(e.errors)} error(s); nothing was imported")
        session.commit()
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    typer.echo(f"import-boundaries: {result.summary()}")


@app.command("show")
def show_cmd() -> None:
    """Counts per entity and per village."""
    with Session(registry_engine()) as session:
        counts = registry_io.counts(session)
        villages = registry_io.village_summary(session)
    console = Console()
    totals = Table(title="Registry")
    for entity in registry_io.ENTITIES:
        totals.add_column(entity, justify="right")
    totals.add_row(*(str(counts[e]) for e in registry_io.ENTITIES))
    console.print(totals)
    table = Table(title="Villages")
    for name, justify in [
        ("code", "left"),
        ("village", "left"),
        ("farms", "right"),
        ("plots", "right"),
        ("area (mu)", "right"),
        ("herds", "right"),
        ("animals", "right"),
        ("devices", "right"),
        ("active", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=name == "code")  # type: ignore[arg-type]
    for v in villages:
        name = f"{v['name_zh']} {v['name_en']}".strip()
        table.add_row(
            v["code"],
            name,
            *(str(v[k]) for k in ("farms", "plots")),
            f"{v['area_mu']:g}",
            *(str(v[k]) for k in ("herds", "animals", "devices", "active")),
        )
    console.print(table)


@app.command("rules")
def rules_cmd(
    markdown: bool = typer.Option(False, "--markdown", help="As the Markdown table of the README."),
) -> None:
    """Who may reference what: every reference of every entity and the rule it must satisfy (core/scope.py)."""
    import ledger.scope  # noqa: F401  (declares the trace entities)
    from core.scope import describe

    rows = list(describe())
    if markdown:
        typer.echo("| entity | field | names a | rule | and also |")
        typer.echo("|---|---|---|---|---|")
        for entity, fld, target, rule, integrity in rows:
            typer.echo(f"| {entity} | `{fld}` | {target} | {rule} | {integrity} |")
        return
    table = Table("entity", "field", "names a", "rule", "and also")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
