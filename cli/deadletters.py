"""`village deadletters`: list rejected readings with their reasons, and replay them after a fix."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from core.catalogue import get_catalogue
from core.db import get_engine, migrate
from core.influx import InfluxError, InfluxV1
from core.models import DeadLetterPayload
from core.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Rejected readings: list them, replay them after a fix.")


@app.command("list")
def list_(
    reason: str | None = typer.Option(None, help="Only this reason code (e.g. out_of_range)."),
    device: str | None = typer.Option(None, help="Only this device id."),
    all_: bool = typer.Option(False, "--all", help="Include dead letters already replayed."),
    limit: int = typer.Option(50, min=1, help="Newest N."),
) -> None:
    """Show dead letters, newest first, with the precise reason ("more": further rejections it counts)."""
    from ingest.deadletters import list_dead_letters

    settings = get_settings()
    migrate(settings.resolved_database_url())
    with Session(get_engine(settings.resolved_database_url())) as session:
        rows = list_dead_letters(session, reason, device, all_, limit)
    table = Table(title=f"dead letters ({len(rows)} shown)")
    for column in ("id", "received (UTC)", "device", "reason", "detail", "index", "more", "payload", "replay"):
        table.add_column(column, overflow="fold")
    for r, p in rows:
        table.add_row(
            str(r.id),
            r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.device_id or "-",
            r.reason,
            r.detail,
            "" if r.index is None else str(r.index),
            f"+{r.more}" if r.more else "",
            _payload(p),
            r.replay_result or "",
        )
    Console().print(table)


def _payload(p: DeadLetterPayload | None) -> str:
    """The start of the message, its size and (when only a prefix was kept) its SHA-256."""
    if p is None:
        return "-"
    text = p.payload[:60].decode("utf-8", "replace") + ("…" if p.size > 60 else "")
    if p.truncated:
        return f"{text} ({p.size} bytes, first {len(p.payload)} kept, sha256 {p.sha256})"
    return text if p.size <= 60 else f"{text} ({p.size} bytes)"


@app.command("replay")
def replay_(
    reason: str | None = typer.Option(None, help="Only dead letters with this reason."),
    id_: list[int] = typer.Option(None, "--id", help="Only these dead letters (repeatable)."),
) -> None:
    """Re-validate dead letters against the current catalogue and registry; store what now passes."""
    from ingest.deadletters import replay
    from ingest.payload import Validator

    settings = get_settings()
    migrate(settings.resolved_database_url())
    catalogue = get_catalogue(settings.catalogue_file)
    validator = Validator.from_settings(catalogue, settings)
    try:
        with InfluxV1.from_settings(settings) as influx:
            report = replay(
                get_engine(settings.resolved_database_url()),
                catalogue,
                validator,
                influx,
                reason=reason,
                ids=id_ or None,
            )
    except InfluxError as e:
        typer.echo(f"error: {e}; nothing was marked as replayed", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"examined {report.examined}, stored {report.stored}, still rejected {report.still_rejected}")
