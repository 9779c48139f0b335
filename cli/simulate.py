"""`village simulate`: realistic devices over MQTT with their own credentials, or payloads to a file."""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

import orjson
import typer
from rich.console import Console
from rich.table import Table

from simulators.devices import MODELS, default_interval_ms
from simulators.faults import FAULTS, FaultRates, messages
from simulators.runner import TOPIC, DeviceCredential, SimulationReport, load_credentials, run

err = Console(stderr=True)


def _kinds(value: str | None) -> list[str] | None:
    if not value:
        return None
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    return kinds


def report_table(report: SimulationReport) -> Table:
    """A rich table of what a run sent and how the broker answered."""
    t = Table(title="Simulation", show_header=True)
    t.add_column("what")
    t.add_column("count", justify="right")
    rows = [
        ("devices", report.devices),
        ("connected", report.connected),
        ("connections refused (provisioned)", report.refused_connections),
        ("connection errors", report.connect_errors),
        ("unknown devices", report.unknown_devices),
        ("unknown devices refused", report.unknown_refused),
        ("unknown devices accepted (!)", report.unknown_accepted),
        ("messages published", report.published),
        ("acknowledged", report.acked),
        ("refused (not authorized)", report.refused),
        ("failed", report.failed),
        ("unanswered", report.pending),
        ("readings carried", report.readings),
        ("unexpected disconnects", report.disconnects),
    ]
    rows += [(f"fault: {f}", report.by_fault.get(f, 0)) for f in FAULTS]
    rows += [(f"kind: {k}", n) for k, n in sorted(report.by_kind.items())]
    for name, n in rows:
        t.add_row(name, str(n))
    rate = report.published / report.elapsed_s if report.elapsed_s else 0.0
    t.caption = f"{report.elapsed_s:.1f} s, {rate:,.0f} messages/s, simulated ×{report.speed:g}"
    return t


def _write_payloads(
    out: TextIO, count: int, kinds: list[str], readings: int, start: datetime | None, seed: int, rates: FaultRates
) -> tuple[int, int]:
    """Write JSON lines of synthetic devices' messages (no broker); return (messages, readings)."""
    n_msgs = n_readings = 0
    now_ms = int(time.time() * 1000)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        device_id = f"{kind}-{i // len(kinds) + 1:04d}"
        interval = default_interval_ms(kind)
        start_ms = int(start.timestamp() * 1000) if start else now_ms - readings * interval
        for m in messages(device_id, kind, start_ms, interval, readings, seed, rates):
            line = {
                "device_id": device_id,
                "kind": kind,
                "topic": TOPIC.format(device_id=device_id),
                "send_ms": m.send_ms,
                "faults": list(m.faults),
                "payload": m.payload.decode("utf-8", "replace"),
            }
            out.write(orjson.dumps(line).decode() + "\n")
            n_msgs += 1
            n_readings += m.readings
    return n_msgs, n_readings


def simulate(
    credentials: Path | None = typer.Option(
        None, "--credentials", help="Devices' credentials JSON (default: DATA_DIR/secrets/devices.json)."
    ),
    host: str | None = typer.Option(None, "--host", help="MQTT broker host (default: MQTT_HOST)."),
    port: int | None = typer.Option(None, "--port", help="MQTT broker port (default: MQTT_PORT)."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds to run; 0 runs until Ctrl-C."),
    seed: int = typer.Option(42, "--seed", help="Same seed, same payloads per device."),
    speed: float = typer.Option(60.0, "--speed", help="Simulated seconds per real second."),
    interval: float | None = typer.Option(
        None, "--interval", help="Real seconds between a device's readings (overrides --speed)."
    ),
    duplicate_rate: float = typer.Option(0.0, "--duplicate-rate", help="Readings sent twice (same ts and seq)."),
    out_of_order_rate: float = typer.Option(0.0, "--out-of-order-rate", help="Readings sent after the next one."),
    offline_rate: float = typer.Option(0.0, "--offline-rate", help="Per reading: an outage starts (array backfill)."),
    offline_max: int = typer.Option(60, "--offline-max", help="Longest outage, in readings."),
    malformed_rate: float = typer.Option(0.0, "--malformed-rate", help="Payloads replaced by broken ones."),
    out_of_range_rate: float = typer.Option(0.0, "--out-of-range-rate", help="Readings with a value out of range."),
    unknown_devices: int = typer.Option(0, "--unknown-devices", help="Unprovisioned devices trying to connect."),
    processes: int = typer.Option(1, "--processes", help="Worker processes (for thousands of devices)."),
    kinds: str | None = typer.Option(None, "--kinds", help="Only these kinds, comma-separated (e.g. soil,paddy)."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many devices from the credentials."),
    devices: int | None = typer.Option(
        None, "--devices", help="No broker: write payloads of N synthetic devices as JSON lines to --output."
    ),
    readings: int = typer.Option(144, "--readings", help="With --devices: readings per device."),
    start: datetime | None = typer.Option(
        None, "--start", help="With --devices: first reading time (default: so that the last is now)."
    ),
    output: Path = typer.Option(Path("-"), "--output", help="With --devices: output file, '-' for stdout."),
    json_report: bool = typer.Option(False, "--json", help="Print the report as one JSON line too."),
) -> None:
    """Run realistic devices over MQTT with their own credentials, with optional fault injection."""
    try:
        rates = FaultRates(
            duplicate=duplicate_rate,
            out_of_order=out_of_order_rate,
            offline=offline_rate,
            malformed=malformed_rate,
            out_of_range=out_of_range_rate,
            offline_readings=(min(5, max(1, offline_max)), max(1, offline_max)),
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    only = _kinds(kinds)

    if devices is not None:
        if devices <= 0:
            raise typer.BadParameter("--devices must be positive")
        t0 = time.perf_counter()
        if str(output) == "-":
            n_msgs, n_readings = _write_payloads(
                sys.stdout, devices, only or list(MODELS), readings, start, seed, rates
            )
        else:
            with open(output, "w", encoding="utf-8") as f:
                n_msgs, n_readings = _write_payloads(f, devices, only or list(MODELS), readings, start, seed, rates)
        el = time.perf_counter() - t0
        err.print(f"{n_msgs} messages ({n_readings} readings) of {devices} devices in {el:.2f} s")
        return

    from core.settings import get_settings

    settings = get_settings()
    path = credentials or settings.data_dir / "secrets" / "devices.json"
    try:
        creds: list[DeviceCredential] = load_credentials(path)
    except (OSError, ValueError) as e:
        err.print(f"[red]cannot read device credentials {path}: {e}[/red] (see `village devices provision`)")
        raise typer.Exit(2) from e
    if only:
        creds = [c for c in creds if c.kind in only]
    skipped = [c for c in creds if c.kind not in MODELS]
    if skipped:
        err.print(f"[yellow]{len(skipped)} device(s) of kinds without a simulator skipped[/yellow]")
        creds = [c for c in creds if c.kind in MODELS]
    if limit is not None:
        creds = creds[:limit]
    if not creds and not unknown_devices:
        err.print("[red]no devices to simulate[/red]")
        raise typer.Exit(2)
    if not duration and (speed > 1 or interval):
        err.print("[yellow]no --duration: simulated time starts now and runs ahead of the clock[/yellow]")

    stop = threading.Event()
    result: list[SimulationReport] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(
                run(
                    creds,
                    host or settings.mqtt_host,
                    port or settings.mqtt_port,
                    duration=duration or None,
                    seed=seed,
                    speed=speed,
                    interval_s=interval,
                    rates=rates,
                    unknown_devices=unknown_devices,
                    stop=stop,
                    processes=processes,
                )
            )
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, name="village-simulator")
    thread.start()
    err.print(
        f"simulating {len(creds)} device(s)"
        + (f" and {unknown_devices} unknown" if unknown_devices else "")
        + f" against {host or settings.mqtt_host}:{port or settings.mqtt_port}"
        + (f" for {duration:g} s" if duration else " until Ctrl-C")
    )
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        thread.join()
    if errors:
        err.print(f"[red]simulation failed: {errors[0]}[/red]")
        raise typer.Exit(1)
    report = result[0]
    Console().print(report_table(report))
    if json_report:
        print(orjson.dumps(report.as_dict()).decode())
    if report.connected == 0 and report.devices:
        raise typer.Exit(1)
