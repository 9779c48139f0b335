"""`village bench ...`: benchmarks. Each prints one JSON line of figures as its last output."""

from __future__ import annotations

import json
from pathlib import Path

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
    pace: float = typer.Option(
        0.8, min=0, help="Paced latency run at this share of the single-reading peak just measured (0: skip it)."
    ),
    rate: float = typer.Option(0, min=0, help="Pace the latency run at this many messages/s instead of --pace."),
    sentinel_devices: int = typer.Option(
        4, min=1, help="Devices of the paced run whose every reading is a sentinel (4 of 200: 2 % of the messages)."
    ),
    poll_ms: int = typer.Option(50, min=5, help="Milliseconds between the sentinel poller's InfluxDB queries."),
) -> None:
    """Publish readings through mosquitto as fast as it takes them, then paced; count what InfluxDB stored."""
    from bench.ingest import run

    console = Console(stderr=True)
    runs = []

    def one(per_message: int, paced: float | None) -> dict:
        label = f"{readings:,} readings, {per_message} per message"
        label += f", paced at {paced:,.0f} msg/s" if paced else ""
        with console.status(f"publishing {label}..."):
            r = run(
                readings=readings,
                devices=devices,
                per_message=per_message,
                replicas=replicas,
                rate=paced,
                sentinel_devices=sentinel_devices,
                poll_interval=poll_ms / 1000,
            )
        runs.append(r)
        return r

    peak = one(1, None)["stored_per_s"]
    if array_size > 1:
        one(array_size, None)
    if rate or pace:
        one(1, rate or pace * peak)
    table = Table(title=f"village bench ingest ({runs[0]['cores']} cores shared by everything)")
    columns = ("payload", "paced msg/s", "published", "acked <128", "stored", "rejected", "lost", "failed pubs")
    for col in (*columns, "publish msg/s", "stored/s", "p50 ms", "p99 ms", "cores used"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            r["payload"],
            f"{r['paced_messages_per_s']:,}" if r["paced_messages_per_s"] else "max",
            f"{r['published']:,}",
            f"{r['acked']:,}",
            f"{r['stored']:,}",
            str(r["rejected"]),
            str(r["lost"]),
            str(r["publishers_failed"]),
            f"{r['published_per_s']:,}",
            f"{r['stored_per_s']:,}",
            str(r.get("latency_ms_p50", "")),
            str(r.get("latency_ms_p99", "")),
            str(r["cores_used"]),
        )
    console.print(table)
    paced = [r for r in runs if r["paced_messages_per_s"]]
    targets = {
        "zero_lost": all(r["lost"] == 0 and r["publishers_failed"] == 0 for r in runs),
        "single_stored_per_s_at_least_10000": runs[0]["stored_per_s"] >= 10_000,
        "paced_p99_under_2000_ms": (
            all(r["latency_ms_p99"] is not None and r["latency_ms_p99"] < 2000 for r in paced) if paced else None
        ),
    }
    for p in paced:
        console.print(
            f"paced run at {p['paced_messages_per_s']:,} msg/s ({pace:g} x peak {peak:,}/s"
            f"{', given by --rate' if rate else ''}): {p['sentinels']:,} sentinels, p50 {p['latency_ms_p50']} ms,"
            f" p99 {p['latency_ms_p99']} ms (polls every {p['poll_ms']} ms; the poller cost {p['poller_cores']} core)",
            highlight=False,
        )
    console.print(f"targets: {targets}", highlight=False)
    figures = {"bench": "ingest", "cores": runs[0]["cores"], "targets": targets, "runs": runs}
    print(json.dumps(figures, ensure_ascii=False))


@app.command("anchor")
def anchor(
    records: int = typer.Option(1_000_000, min=17, help="Trace records anchored in one window (manifests included)."),
    database: str = typer.Option("sqlite", help="sqlite (a file) or postgres (a cluster of its own)."),
    verify_samples: int = typer.Option(2000, min=1, help="Proofs read back and checked to time one check."),
    seed: int = typer.Option(7, help="Seed of the generated records."),
    keep: Path | None = typer.Option(None, help="Keep the database (and anvil's files) in this folder."),
    rpc_url: str | None = typer.Option(None, help="Anchor on this running anvil instead of starting one."),
) -> None:
    """Trace records from the database to the chain through the anchoring worker: leaves, tree, every
    proof stored, one window anchored on anvil, one record verified; proof checks; gas per window."""
    from bench.anchor import run

    console = Console(stderr=True)
    with console.status(f"anchoring {records:,} trace records through the worker ({database}, anvil)..."):
        r = run(
            records=records, database=database, verify_samples=verify_samples, seed=seed, keep=keep, rpc_url=rpc_url
        )
    table = Table(title=f"village bench anchor: {records:,} records, {database}")
    for col in ("figure", "value", "target"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    big = f"gas_{records}"
    rows = [
        ("records built from their rows", f"{r['records_s']} s", ""),
        ("RFC 8785 canonical JSON", f"{r['canonical_s']} s", ""),
        ("double-keccak leaves", f"{r['leaves_s']} s", ""),
        ("lot manifests", f"{r['manifests_s']} s", ""),
        ("Merkle tree", f"{r['tree_s']} s", ""),
        ("every proof (tree pages, leaf places)", f"{r['proofs_s']} s", ""),
        ("stored and committed", f"{r['store_s']} s", ""),
        ("anchored on anvil", f"{r['anchor_s']} s", ""),
        ("one record verified through the chain", f"{r['verify_record_ms']} ms", ""),
        ("end to end", f"{r['end_to_end_s']} s", "< 60 s for 1,000,000"),
        ("end to end, CPU time of the worker's process", f"{r['end_to_end_cpu_s']} s", ""),
        ("peak memory", f"{r['peak_rss_mb']} MB", "< 2048 MB"),
        ("one proof check, median / p99", f"{r['verify_us_median']} / {r['verify_us_p99']} µs", "< 100 µs"),
        ("reading a proof from the database, median", f"{r['proof_read_us_median']} µs", ""),
        ("the contract's check over RPC, median", f"{r['onchain_verify_ms_median']} ms", ""),
        ("gas, first window", f"{r['first_window_gas']:,}", ""),
        ("gas, window of 1 / 1,000 leaves", f"{r['gas_1']:,} / {r['gas_1000']:,}", "same for any size"),
        (f"gas, window of {records:,} leaves", f"{r[big]:,}", "same for any size"),
        ("cores (worker) / machine", f"{r['cores']} / {r['machine_cores']}", ""),
        ("load average before / after", f"{r['load_before']} / {r['load_after']}", ""),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(json.dumps(r, ensure_ascii=False))


@app.command("api")
def api(
    lots: int = typer.Option(10_000, min=1, help="Retail lots in the generated county (bench/world.py)."),
    seed: int = typer.Option(12, help="Seed of the world and of the scan mix."),
    duration: int = typer.Option(10, min=1, help="Seconds of load per phase (cold, warm, dashboard)."),
    connections: int = typer.Option(32, min=1, help="Concurrent connections (wrk -c)."),
    threads: int = typer.Option(1, min=1, help="wrk threads (it shares the machine with the API)."),
    workers: int = typer.Option(2, min=1, help="API worker processes."),
    warmup: int = typer.Option(
        20, min=0, help="Seconds of the warm mix sent before the warm phase is measured (not in its figures)."
    ),
) -> None:
    """Scans of a county-sized world (cold first scans, a warm Zipf mix, the signed-in dashboard) under
    wrk, against `village serve` as in production; fails unless every lot verifies."""
    from bench.api import run

    console = Console(stderr=True)
    with console.status(f"growing a world of {lots:,} lots, anchoring it, serving it, scanning it..."):
        r = run(
            lots=lots,
            seed=seed,
            cold_s=duration,
            warm_s=duration,
            dashboard_s=duration,
            connections=connections,
            threads=threads,
            workers=workers,
            warmup_s=warmup,
        )
    table = Table(
        title=f"village bench api ({r['lots']:,} lots, {r['workers']} workers, {r['connections']} connections, "
        f"{r['cores']} cores)"
    )
    for col in ("phase", "requests/s", "p50 ms", "p99 ms", "requests", "errors", "target"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    targets = {"cold": "p99 < 1,000 ms", "warm": ">= 1,000/s, p99 < 50 ms", "dashboard": "p99 < 500 ms"}
    for name, target in targets.items():
        x = r[name]
        table.add_row(
            name,
            f"{x['requests_per_s']:,.0f}",
            str(x["latency_ms_p50"]),
            str(x["latency_ms_p99"]),
            f"{x['requests']:,}",
            str(x["errors"]),
            target,
        )
    console.print(table)
    console.print(f"verification of every lot: {r['verification']}; setup: {r['setup_s']}")
    print(json.dumps(r, ensure_ascii=False))
    if r["verification"]["verified"] != r["lots"]:
        raise typer.Exit(1)


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
    hourly_days: int = typer.Option(
        1,
        min=-1,
        help="The last days that get hourly rollups too (-1: all of them; 24 points per device-day, the write's"
        " cost: 72 million for the default province, which the comparison never reads).",
    ),
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
        ("written", r["written"], ""),
        ("rollups written", f"{r['rollup_write_s']} s ({r['rollup_points_per_s']:,} points/s)", ""),
        ("  InfluxDB's CPU per point", f"{r['influxd_cpu_us_per_point']} µs", ""),
        (
            "county rollups built (every day and kind)",
            f"{r['county_rollup_s']} s, {r['county_rollup_points']:,} points",
            "",
        ),
        ("rollups on disk", f"{r['rollup_disk_mb']:,} MB ({r['bytes_per_rollup_point']} bytes/point)", ""),
        (
            "comparison, cold start",
            f"{r['comparison_cold_s']} s (CPU {r['comparison_cold_cpu_s']} s, load {r['comparison_cold_load']})",
            f"< {r['target_s']:g} s",
        ),
        (
            "  registry / then waiting on InfluxDB / composite",
            f"{t['registry_s']} / {t['influx_wait_s']} / {t['composite_s']} s",
            "",
        ),
        ("comparison, warm", f"{r['comparison_warm_s']} s", ""),
        ("cost per county (cold)", f"{r['cost_per_county_ms']} ms (CPU {r['cost_per_county_cpu_ms']} ms)", ""),
    ]
    if r["raw_sample_points"]:
        rows.append(("raw points on disk (sample)", f"{r['bytes_per_raw_point']} bytes/point", ""))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(json.dumps(r, ensure_ascii=False))
