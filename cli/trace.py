"""`village lots`: trace lots, their origins, events and inspections; import, demo season, QR labels."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, col, select

from cli.registry import AS_USER, err_console, fail, registry_engine, run_import, scope_of_user
from core.models import Farm, Herd, Plot
from ledger import codes, trace_io
from ledger.models import Facility, Inspection, InspectionItem, Lot, LotParent, LotSource, TraceEvent
from ledger.records import EVENT, INSPECTION, event_lots, records_of_lot, rfc3339
from ledger.vocab import get_vocab

app = typer.Typer(no_args_is_help=True, help="Trace lots: origins, events, inspections, QR labels.")
DEFAULT_BASE = "http://127.0.0.1:8000"
BASE_OPTION = typer.Option(
    DEFAULT_BASE, "--base", envvar="TRACE_BASE_URL", help="Base URL of the public trace resolver (label URIs)."
)


def _find(session: Session, text: str) -> Lot:
    try:
        return trace_io.find_lot(session, text)
    except trace_io.LotNotFound as e:
        fail(str(e))
    except ValueError as e:
        fail(str(e), 2)


def _qty(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    decimals = get_vocab().units[unit].decimals if unit in get_vocab().units else 3
    text = f"{value:,.{decimals}f}"
    return f"{text.rstrip('0').rstrip('.') if decimals else text} {unit}"


def _lot_label(lot: Lot) -> str:
    assert lot.product is not None
    return f"{lot.product.code}:{lot.lot_no}"


@app.command("list")
def list_cmd(year: int | None = typer.Option(None, "--year", help="Only lots of this harvest year.")) -> None:
    """List lots with their origin, event count and inspection result."""
    with Session(registry_engine()) as session:
        query = select(Lot).order_by(Lot.id)
        if year is not None:
            query = query.where(Lot.harvest_year == year)
        lots = session.exec(query).all()
        events = trace_io.event_counts(session)
        results: dict[int, list[bool]] = {}
        for lot_id, passed in session.exec(select(Inspection.lot_id, Inspection.passed)):
            results.setdefault(lot_id, []).append(passed)
        farms = dict(session.exec(select(Farm.id, Farm.code)).all())
        facilities = dict(session.exec(select(Facility.id, Facility.code)).all())
        table = Table(title=f"Lots ({len(lots)})")
        for column in ("code", "lot", "product", "quantity", "year", "at", "events", "inspections"):
            table.add_column(
                column, no_wrap=column in ("code", "lot"), justify="right" if column == "quantity" else "left"
            )
        for lot in lots:
            assert lot.product is not None and lot.id is not None
            at = farms.get(lot.farm_id) if lot.farm_id else facilities.get(lot.facility_id) if lot.facility_id else None
            passed = results.get(lot.id, [])
            verdict = "-" if not passed else "[green]pass[/green]" if all(passed) else "[red]FAIL[/red]"
            table.add_row(
                codes.format_code(lot.code),
                _lot_label(lot),
                lot.product.name_zh,
                _qty(lot.quantity, lot.unit),
                str(lot.harvest_year or "-"),
                at or "-",
                str(events.get(lot.id, 0)),
                verdict,
            )
    Console().print(table)


@app.command("show")
def show_cmd(
    lot_ref: str = typer.Argument(..., metavar="CODE", help="Trace code, trace URI or product:lot_no."),
    base: str = BASE_OPTION,
) -> None:
    """Show a lot: what it is, where it came from, and every event and inspection of its trace
    (including those of the lots it was made from)."""
    vocab = get_vocab()
    console = Console()
    with Session(registry_engine()) as session:
        lot = _find(session, lot_ref)
        assert lot.product is not None and lot.id is not None
        head = Table(title=f"Lot {codes.format_code(lot.code)}", show_header=False)
        head.add_column("field", style="bold")
        head.add_column("value")
        farm = session.get(Farm, lot.farm_id) if lot.farm_id else None
        facility = session.get(Facility, lot.facility_id) if lot.facility_id else None
        for name, value in (
            ("URI", codes.lot_uri(base, lot)),
            ("product", f"{lot.product.name_zh} {lot.product.name_en}".strip()),
            ("GTIN", lot.product.gtin or "-"),
            ("lot number", lot.lot_no),
            ("quantity", _qty(lot.quantity, lot.unit)),
            ("harvest year", str(lot.harvest_year or "-")),
            ("farm", f"{farm.code} {farm.name}" if farm else "-"),  # never the contact fields
            ("facility", f"{facility.code} {facility.name}" if facility else "-"),
        ):
            head.add_row(name, value)
        console.print(head)

        sources = session.exec(select(LotSource).where(LotSource.lot_id == lot.id)).all()
        if sources:
            table = Table(title="Sources")
            for column in ("plot / herd", "village", "area (mu)"):
                table.add_column(column)
            for s in sources:
                origin = session.get(Plot, s.plot_id) if s.plot_id else session.get(Herd, s.herd_id)
                assert origin is not None
                name = origin.plot_no if isinstance(origin, Plot) else f"herd {origin.herd_no}"
                table.add_row(name, origin.village_code, f"{s.area_mu:g}" if s.area_mu else "-")
            console.print(table)

        parents = session.exec(select(LotParent).where(LotParent.child_lot_id == lot.id)).all()
        if parents:
            table = Table(title="Made from")
            for column in ("code", "lot", "relation", "quantity used"):
                table.add_column(column)
            for p in parents:
                parent = session.get(Lot, p.parent_lot_id)
                assert parent is not None
                table.add_row(
                    codes.format_code(parent.code), _lot_label(parent), p.relation, _qty(p.quantity, parent.unit)
                )
            console.print(table)

        refs = records_of_lot(session, lot.id)
        event_ids = [r.id for r in refs if r.kind == EVENT]
        if event_ids:
            table = Table(title=f"Events ({len(event_ids)}, with those of the lots it was made from)")
            for column in ("time", "step", "lot(s)", "where", "disposition", "attributes"):
                table.add_column(column, no_wrap=column in ("time", "step"))
            events = sorted(
                session.exec(select(TraceEvent).where(col(TraceEvent.id).in_(event_ids))).all(),
                key=lambda e: (e.event_time, e.id),
            )
            for ev in events:
                assert ev.id is not None
                if ev.lot_id is not None:
                    subject = session.get(Lot, ev.lot_id)
                    assert subject is not None
                    lots = subject.lot_no
                else:
                    inputs, outputs = event_lots(session, ev.id)
                    names = [session.get(Lot, i).lot_no for i in inputs]  # type: ignore[union-attr]
                    made = [session.get(Lot, o).lot_no for o in outputs]  # type: ignore[union-attr]
                    lots = f"{', '.join(names)} -> {', '.join(made)}"
                where = (
                    session.get(Plot, ev.read_point_plot_id).plot_no  # type: ignore[union-attr]
                    if ev.read_point_plot_id
                    else session.get(Facility, ev.read_point_facility_id).code  # type: ignore[union-attr]
                )
                attrs = ", ".join(f"{k}={v}" for k, v in ev.attributes.items())
                disposition = vocab.short_name(ev.disposition) if ev.disposition else "-"
                table.add_row(
                    rfc3339(ev.event_time, ev.event_time_zone_offset)[:16].replace("T", " "),
                    vocab.short_name(ev.biz_step),
                    lots,
                    where,
                    disposition,
                    attrs,
                )
            console.print(table)

        inspection_ids = [r.id for r in refs if r.kind == INSPECTION]
        if inspection_ids:
            table = Table(title="Inspections")
            for column in ("lot", "lab / report", "sampled", "result", "items"):
                table.add_column(column)
            for insp in session.exec(select(Inspection).where(col(Inspection.id).in_(inspection_ids))):
                items = session.exec(select(InspectionItem).where(InspectionItem.inspection_id == insp.id)).all()
                lines = [
                    f"{'[green]✓[/green]' if i.passed else '[red]✗[/red]'} {i.item} {i.value:g} {i.unit}"
                    f" ({'≤' if i.limit_kind == 'max' else '≥'} {i.limit_value:g}, {i.method})"
                    for i in sorted(items, key=lambda i: i.item)
                ]
                subject = session.get(Lot, insp.lot_id)
                assert subject is not None
                table.add_row(
                    subject.lot_no,
                    f"{insp.lab}\n{insp.report_no}",
                    insp.sampled_on.isoformat(),
                    "[green]pass[/green]" if insp.passed else "[red]FAIL[/red]",
                    "\n".join(lines),
                )
            console.print(table)


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="A trace YAML file (README: trace file format)."),
    as_user: str | None = AS_USER,
) -> None:
    """Import products, facilities, lots, events, corrections and inspections; nothing is imported when any
    row is wrong or, with --as, outside the user's area."""
    if not file.is_file():
        fail(f"{file}: no such file", 2)
    run_import(f"import {file}", lambda s, scope: trace_io.import_trace(s, file, scope), as_user)


@app.command("demo")
def demo_cmd() -> None:
    """Load the demo county and its 2026 rice season (paddy to 5 kg bags, one failed inspection); safe to repeat."""
    run_import("demo trace", lambda s, _scope: trace_io.load_demo_trace(s))


@app.command("qr")
def qr_cmd(
    lot_ref: str = typer.Argument(..., metavar="CODE", help="Trace code, trace URI or product:lot_no."),
    svg: Path | None = typer.Option(None, "--svg", help="Write the QR code as SVG to this file."),
    png: Path | None = typer.Option(None, "--png", help="Write the QR code as PNG to this file."),
    scale: int = typer.Option(8, "--scale", min=1, max=64, help="PNG pixels per module."),
    base: str = BASE_OPTION,
) -> None:
    """The QR code of a lot's label URI: printed in the terminal, or written as SVG / PNG."""
    with Session(registry_engine()) as session:
        lot = _find(session, lot_ref)
        uri = codes.lot_uri(base, lot)
    if svg is None and png is None:
        typer.echo(codes.qr_terminal(uri), nl=False)
    if svg is not None:
        svg.write_bytes(codes.qr_svg(uri))
        typer.echo(f"wrote {svg}")
    if png is not None:
        png.write_bytes(codes.qr_png(uri, scale))
        typer.echo(f"wrote {png}")
    typer.echo(uri)


@app.command("export-epcis")
def export_epcis_cmd(
    code: str = typer.Argument(..., help="Trace code, Digital Link URI or product:lot_no."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write here (default: stdout)."),
) -> None:
    """The events of a lot's trace (and of the lots it was made from) as an EPCIS 2.0 JSON-LD document."""
    import json

    from ledger.epcis_io import export_lot

    with Session(registry_engine()) as session:
        doc = export_lot(session, _find(session, code))
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {output}: {len(doc['epcisBody']['eventList'])} events", highlight=False)


@app.command("import-epcis")
def import_epcis_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="An EPCIS 2.0 JSON-LD document."),
    as_user: str | None = AS_USER,
) -> None:
    """Store the events of an EPCIS 2.0 document (its lots, places and actors must be known), checked like a
    trace file; all or nothing."""
    from ledger.epcis import EpcisError
    from ledger.epcis_io import import_document

    with Session(registry_engine()) as session:
        try:
            result = import_document(session, file.read_bytes(), scope_of_user(session, as_user))
        except EpcisError as e:
            for path, message in e.errors:
                err_console.print(f"[red]error:[/red] {path or '/'}: {message}", highlight=False, soft_wrap=True)
            fail(f"{file}: {len(e.errors)} error(s); nothing was imported")
        session.commit()
    typer.echo(f"{file}: {len(result.created)} events imported, {result.unchanged} already stored")
