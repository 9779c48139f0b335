"""`village alerts run`: the alert worker. One thread checks the latest readings every
ALERT_EVAL_INTERVAL_S (alerts opened, resolved, reopened; api/services/alerts.py), another delivers
the queued webhook notifications with retries (api/services/webhooks.py), so neither ingest nor an
API request ever waits for a receiver."""

from __future__ import annotations

import logging
import signal
import threading

import typer
from rich.console import Console

from api.services import alerts, webhooks
from cli.registry import fail, registry_engine
from core.catalogue import get_catalogue
from core.influx import InfluxV1
from core.log import setup_logging
from core.settings import get_settings

app = typer.Typer(help="Alerts: the worker that opens, resolves and notifies them.", no_args_is_help=True)
console = Console()
log = logging.getLogger("village.alerts")


@app.command("run")
def run(
    once: bool = typer.Option(False, "--once", help="One check of the readings and one delivery pass, then exit."),
) -> None:
    """Check the readings for alerts and deliver their webhook notifications, until stopped."""
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format)
    engine = registry_engine()
    try:
        hooks = webhooks.Webhooks.from_settings(settings)
    except webhooks.WebhookConfigError as e:
        fail(str(e), 2)
    catalogue = get_catalogue(settings.catalogue_file)
    influx = InfluxV1.from_settings(settings)
    deliverer = webhooks.Deliverer(engine, settings, hooks)
    names = ", ".join(f"{n} ({e.config.format})" for n, e in hooks.endpoints.items()) or "none"
    console.print(f"alerts: checking readings every {settings.alert_eval_interval_s:g} s; webhooks: {names}")
    if once:
        report = alerts.evaluate(engine, influx, catalogue, settings)
        sent = deliverer.run_once()
        counts = {"checked": report.checked, "opened": report.opened, "resolved": report.resolved}
        console.print_json(data=counts | {"reopened": report.reopened, "deliveries_attempted": sent})
        deliverer.close()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sender = threading.Thread(target=deliverer.run_forever, args=(stop,), name="webhooks", daemon=True)
    sender.start()
    try:
        while not stop.is_set():
            try:
                alerts.evaluate(engine, influx, catalogue, settings)
            except Exception:  # InfluxDB or the database away: log, try again next interval
                log.exception("alert evaluation failed")
            stop.wait(settings.alert_eval_interval_s)
    except KeyboardInterrupt:
        stop.set()
    sender.join(timeout=settings.alert_webhook_timeout_s + 5)
    deliverer.close()
