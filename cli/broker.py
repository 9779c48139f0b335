"""`village broker`: keep mosquitto's password and ACL files in step with the registry."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from sqlalchemy import Engine
from sqlmodel import Session

from cli.registry import err_console, fail, registry_engine
from core import provisioning
from core.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="MQTT broker credentials generated from the registry.")


@app.callback()
def main() -> None:
    """MQTT broker credentials (password and ACL files) generated from the registry."""


def broker_files(settings: Settings) -> tuple[Path, Path, Path | None] | None:
    """(passwd, acl, pid) files from the settings, or None when they are not configured."""
    if settings.mosquitto_passwd_file is None or settings.mosquitto_acl_file is None:
        return None
    return settings.mosquitto_passwd_file, settings.mosquitto_acl_file, settings.mosquitto_pid_file


def sync_once(engine: Engine, settings: Settings) -> bool:
    """Ensure the ingest replicas' accounts (when their password is set) and sync the broker files."""
    files = broker_files(settings)
    if files is None:
        fail("set MOSQUITTO_PASSWD_FILE and MOSQUITTO_ACL_FILE to the broker's password and ACL files", 2)
    password = settings.mqtt_ingest_password.get_secret_value()
    with Session(engine) as session:
        if password:
            provisioning.ensure_ingest_accounts(session, password, settings.ingest_max_replicas)
        else:
            err_console.print("warning: MQTT_INGEST_PASSWORD is not set; the ingest accounts are left as they are")
        changed = provisioning.sync_broker(session, *files)
        session.commit()
    return changed


@app.command("sync")
def sync_cmd(
    watch: bool = typer.Option(False, "--watch", help="Keep syncing until stopped (SIGTERM or Ctrl-C)."),
    interval: float = typer.Option(3.0, "--interval", min=0.2, help="Seconds between syncs with --watch."),
) -> None:
    """Write the broker's password and ACL files from the registry; SIGHUP the broker when they changed."""
    settings = get_settings()
    engine = registry_engine()
    try:
        changed = sync_once(engine, settings)
    except OSError as e:
        fail(f"cannot write the broker files: {e}")
    files = broker_files(settings)
    assert files is not None
    typer.echo(f"broker files {'updated' if changed else 'unchanged'}: {files[0]}, {files[1]}")
    if not watch:
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"watching the registry every {interval:g} s (Ctrl-C to stop)")
    provisioning.watch(engine, *files, interval_s=interval, stop=stop)
