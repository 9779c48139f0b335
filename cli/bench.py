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


@app.command("anchor")
def anchor(
    leaves: int = typer.Option(1_000_000, min=1, help="Leaves of the large tree (built, proven, anchored)."),
    verify_samples: int = typer.Option(2000, min=1, help="Proofs checked to time one check."),
) -> None:
    """Merkle tree and proofs for many leaves, one proof check, gas per anchor on a local anvil."""
    from bench.anchor import run

    console = Console(stderr=True)
    with console.status(f"building a tree of {leaves:,} leaves and anchoring windows on anvil..."):
        r = run(leaves=leaves, verify_samples=verify_samples)
    table = Table(title="village bench anchor")
    for col in ("figure", "value", "target"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    rows = [
        (f"tree of {r['leaves']:,} leaves", f"{r['tree_s']} s", ""),
        ("all proofs (index matrix)", f"{r['proofs_s']} s", ""),
        ("tree + all proofs", f"{r['tree_and_proofs_s']} s", "< 10 s for 1,000,000"),
        ("one proof as bytes", f"{r['proof_bytes_us']} µs", ""),
        ("verify one proof, median / p99", f"{r['verify_us_median']} / {r['verify_us_p99']} µs", "< 1000 µs"),
        ("verify on chain (eth_call), median", f"{r['onchain_verify_ms_median']} ms", ""),
        ("gas, first window", f"{r['first_window_gas']:,}", ""),
    ]
    sizes = [int(k[4:]) for k in r if k.startswith("gas_")]
    rows += [(f"gas, window of {n:,} leaves", f"{r[f'gas_{n}']:,}", "same for any size") for n in sizes]
    rows.append(("cores (single-threaded build)", str(r["cores"]), ""))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(json.dumps({"bench": "anchor", **r}, ensure_ascii=False))


@app.command("api")
def api(
    duration: int = typer.Option(10, min=1, help="Seconds of load per endpoint."),
    connections: int = typer.Option(32, min=1, help="Concurrent connections (wrk -c)."),
    threads: int = typer.Option(1, min=1, help="wrk threads (it shares the machine with the API)."),
    workers: int = typer.Option(0, min=0, help="API worker processes (0: one per core)."),
) -> None:
    """Trace lookups (JSON and page) under concurrent load from wrk, against `village serve` with demo data."""
    from bench.api import run

    console = Console(stderr=True)
    with console.status("starting InfluxDB and anvil, loading and anchoring the demo season, starting the API..."):
        r = run(duration_s=duration, connections=connections, threads=threads, workers=workers or None)
    table = Table(
        title=f"village bench api ({r['workers']} workers, {r['connections']} connections, {r['cores']} cores)"
    )
    for col in ("lookup", "requests/s", "p50 ms", "p99 ms", "requests", "errors", "target"):
        table.add_column(col, justify="right" if col != "lookup" else "left")
    for name, label in (("json", "JSON /api/v1/trace/{code}"), ("page", "page /t/{code}")):
        x = r[name]
        table.add_row(
            label,
            f"{x['requests_per_s']:,.0f}",
            str(x["latency_ms_p50"]),
            str(x["latency_ms_p99"]),
            f"{x['requests']:,}",
            str(x["errors"] + x["non_2xx"]),
            ">= 1,000/s, p99 < 50 ms",
        )
    console.print(table)
    console.print(f"verification badge of the demo bag: {r['verification']}")
    print(json.dumps({"bench": "api", **r}, ensure_ascii=False))


@app.command("indicators")
def indicators(
    devices: int = typer.Option(1000, min=1, help="Devices of the synthetic county (mixed kinds)."),
    days: int = typer.Option(30, min=1, help="Days of readings per device."),
    interval_s: int = typer.Option(60, "--interval-s", min=1, help="Seconds between a device's readings."),
    steps: str = typer.Option("250,500", help="Smaller device counts timed on the way (comma-separated; '' for none)."),
    period_days: str = typer.Option("7,15", help="Shorter periods timed as well (comma-separated days)."),
    writers: int = typer.Option(2, min=1, help="Parallel writer processes loading the readings."),
    repeats: int = typer.Option(3, min=1, help="Computations timed per case (the median is reported)."),
) -> None:
    """Load a county's readings into its own InfluxDB, build the rollups, time computing all indicators."""
    from bench.indicators import run

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: room for the whole table
        console = Console(stderr=True, width=120)
    with console.status("starting InfluxDB and the registry...") as status:
        r = run(
            devices=devices,
            days=days,
            interval_s=interval_s,
            steps=ints(steps),
            period_days=ints(period_days),
            writers=writers,
            repeats=repeats,
            say=lambda message: status.update(message),
        )
    table = Table(title=f"village bench indicators ({r['cores']} cores)")
    for col in ("devices", "points loaded", "load s", "rollups s", "days", "compute s", "first s", "queries"):
        table.add_column(col, justify="right")
    for step in r["steps"]:
        for i, c in enumerate(step["computes"]):
            first = i == 0
            table.add_row(
                f"{step['devices']:,}" if first else "",
                f"{step['points_loaded']:,}" if first else "",
                str(step["load_s"]) if first else "",
                str(step["rollup_s"]) if first else "",
                str(c["days"]),
                str(c["compute_s"]),
                str(c["first_s"]),
                str(c["influx_queries"]),
            )
    console.print(table)
    console.print(
        f"{r['points']:,} points ({r['line_protocol_mb']:,} MB of line protocol) loaded in {r['load_s']} s "
        f"({r['load_points_per_s']:,} points/s with {r['writers']} writers); rollups {r['rollup_s']} s for all "
        f"{r['devices']:,} devices; all indicators for {r['devices']:,} devices and {r['days']} days: "
        f"{r['compute_s']} s (target < {r['target_s']:g} s); InfluxDB on disk {r['influx_disk_mb']:,} MB",
        highlight=False,
    )
    print(json.dumps(r, ensure_ascii=False))


@app.command("province")
def province(
    counties: int = typer.Option(100, min=1, max=1400, help="Counties of the province (codes under 21)."),
    devices_per_county: int = typer.Option(1000, min=1, max=10_000, help="Devices in each county."),
    days: int = typer.Option(30, min=1, max=366, help="Days of rollups, ending at the last local midnight."),
    hourly_days: int = typer.Option(-1, min=-1, help="Days with hourly rollups too (-1: all of them)."),
    writers: int = typer.Option(2, min=1, help="Processes writing the rollups."),
    repeats: int = typer.Option(2, min=0, help="Warm runs of the comparison after the cold one."),
    raw_sample_devices: int = typer.Option(
        0,
        min=0,
        help="Also load raw readings of this many devices (a separate database) to measure bytes per raw point.",
    ),
) -> None:
    """The rollups a province holds (hourly and daily, no raw points), then the county comparison from a cold start."""
    from bench.province import run

    console = Console(stderr=True)
    with console.status("building the province's registry...") as status:
        r = run(
            counties=counties,
            devices_per_county=devices_per_county,
            days=days,
            hourly_days=None if hourly_days < 0 else hourly_days,
            writers=writers,
            repeats=repeats,
            raw_sample_devices=raw_sample_devices,
            say=lambda message: status.update(message),
        )
    table = Table(title=f"village bench province ({r['cores']} cores)")
    for col in ("figure", "value", "target"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    t = r["cold_timings"]
    rows = [
        ("counties x devices", f"{r['counties']:,} x {r['devices_per_county']:,} = {r['devices']:,}", ""),
        ("rollup points (hourly + daily)", f"{r['hourly_points']:,} + {r['daily_points']:,}", ""),
        ("rollups written", f"{r['rollup_write_s']} s ({r['rollup_points_per_s']:,} points/s)", ""),
        (
            "county rollups built (every day and kind)",
            f"{r['county_rollup_s']} s, {r['county_rollup_points']:,} points",
            "",
        ),
        ("rollups on disk", f"{r['rollup_disk_mb']:,} MB ({r['bytes_per_rollup_point']} bytes/point)", ""),
        ("comparison, cold start", f"{r['comparison_cold_s']} s", f"< {r['target_s']:g} s"),
        (
            "  registry / then waiting on InfluxDB / composite",
            f"{t['registry_s']} / {t['influx_wait_s']} / {t['composite_s']} s",
            "",
        ),
        ("comparison, warm", f"{r['comparison_warm_s']} s", ""),
        ("cost per county (cold)", f"{r['cost_per_county_ms']} ms", ""),
    ]
    if r["raw_sample_points"]:
        rows.append(("raw points on disk (sample)", f"{r['bytes_per_raw_point']} bytes/point", ""))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(json.dumps(r, ensure_ascii=False))
