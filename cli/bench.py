"""`village bench ...`: benchmarks. Each prints one JSON line of figures as its last output."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Benchmarks; each prints one JSON line of figures last.")


@app.command("ingest")
def ingest(
    readings: int = typer.Option(200_000, min=1, help="Readings to publish per run."),
    devices: int = typer.Option(200, min=1, help="Simulated devices, each with its own MQTT connection."),
    replicas: int = typer.Option(2, min=1, help="Ingest replicas on the shared subscription."),
    array_size: int = typer.Option(10, min=0, help="Readings per payload in the array run (0: skip it)."),
    rate: float = typer.Option(3000, min=0, help="Messages/s of the paced latency run (0: skip it)."),
) -> None:
    """Publish readings through mosquitto as fast as it takes them; count what InfluxDB stored."""
    from bench.ingest import run

    console = Console(stderr=True)
    runs = []
    plans = [(1, None)] + ([(array_size, None)] if array_size > 1 else [])
    if rate:  # latency at a load the stack sustains: a third of the readings, paced
        plans.append((1, rate))
    for per_message, pace in plans:
        n = readings if pace is None else max(1, readings // 3)
        label = f"{n:,} readings, {per_message} per message" + (f", paced at {pace:g} msg/s" if pace else "")
        with console.status(f"publishing {label}..."):
            runs.append(run(readings=n, devices=devices, per_message=per_message, replicas=replicas, rate=pace))
    table = Table(title="village bench ingest")
    for col in ("payload", "paced msg/s", "stored/s", "published/s", "lost", "rejected", "p50 ms", "p99 ms", "cores"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            r["payload"],
            str(r["paced_messages_per_s"] or "max"),
            f"{r['stored_per_s']:,}",
            f"{r['published_per_s']:,}",
            str(r["lost"]),
            str(r["rejected"]),
            str(r["latency_ms_p50"]),
            str(r["latency_ms_p99"]),
            str(r["cores"]),
        )
    console.print(table)
    print(json.dumps({"bench": "ingest", "runs": runs}, ensure_ascii=False))
