"""The `village` command: one entry point with a subcommand for every job."""

from __future__ import annotations

import typer

from cli import alerts as alerts_cli
from cli import analytics as analytics_cli
from cli import bench, broker, deadletters, devices, ingest, registry, simulate, stack, trace
from cli import indicators as indicators_cli
from cli import ledger as ledger_cli
from cli import serve as serve_cli

app = typer.Typer(
    name="village",
    help="County digital-village backend: telemetry ingest, registry, simulators, benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("up")(stack.up)
app.command("demo")(stack.demo)
app.command("ingest")(ingest.ingest)
app.command("simulate")(simulate.simulate)
app.command("anchor")(ledger_cli.anchor)
app.command("verify")(ledger_cli.verify_cmd)
app.command("proof")(ledger_cli.proof)
app.command("evidence")(ledger_cli.evidence)
app.command("verify-bundle")(ledger_cli.verify_bundle_cmd)
app.command("devnet")(ledger_cli.devnet)
app.add_typer(registry.app, name="registry")
app.add_typer(devices.app, name="devices")
app.add_typer(broker.app, name="broker")
app.add_typer(deadletters.app, name="deadletters")
app.add_typer(bench.app, name="bench")
app.add_typer(alerts_cli.app, name="alerts")
app.add_typer(trace.app, name="lots")
app.add_typer(analytics_cli.stats_app, name="stats")
app.add_typer(analytics_cli.models_app, name="models")
app.command("indicators")(indicators_cli.indicators)
app.command("rollups")(indicators_cli.rollups)
app.command("serve")(serve_cli.serve)
app.add_typer(serve_cli.users_app, name="users")

if __name__ == "__main__":
    app()
