"""`village devices`: list, provision (issue secrets) and revoke devices."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session, select

from cli.broker import broker_files, sync_once
from cli.registry import err_console, fail, registry_engine
from core import provisioning, registry_io
from core.catalogue import get_catalogue
from core.models import Animal, Device, DeviceStatus, Herd, Plot
from core.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Sensor devices and their broker credentials.")


@app.command("list")
def list_cmd(
    village: str | None = typer.Option(None, "--village", help="Only devices in this village (12-digit code)."),
    kind: str | None = typer.Option(None, "--kind", help="Only devices of this kind."),
    status: DeviceStatus | None = typer.Option(None, "--status", help="Only devices with this status."),
) -> None:
    """List devices with their status, village and what they are attached to."""
    if kind is not None and kind not in get_catalogue().kinds:
        fail(f"unknown device kind {kind!r}; the catalogue has {', '.join(sorted(get_catalogue().kinds))}", 2)
    with Session(registry_engine()) as session:
        villages = registry_io.device_villages(session)
        plots = dict(session.exec(select(Plot.id, Plot.plot_no)).all())
        herds = dict(session.exec(select(Herd.id, Herd.herd_no)).all())
        animals = dict(session.exec(select(Animal.id, Animal.ear_tag)).all())
        query = select(Device).order_by(Device.id)
        if kind:
            query = query.where(Device.kind == kind)
        if status:
            query = query.where(Device.status == status)
        devices = [d for d in session.exec(query) if village is None or villages.get(d.id) == village]
    table = Table(title=f"Devices ({len(devices)})")
    for column in ("id", "kind", "status", "village", "attached to", "provisioned"):
        table.add_column(column, no_wrap=column in ("id", "village", "attached to"))
    for d in devices:
        if d.plot_id is not None:
            target = f"plot {plots.get(d.plot_id)}"
        elif d.herd_id is not None:
            target = f"herd {herds.get(d.herd_id)}"
        elif d.animal_id is not None:
            target = f"animal {animals.get(d.animal_id)}"
        else:
            target = "-"
        provisioned = d.provisioned_at.strftime("%Y-%m-%d %H:%M") if d.provisioned_at else "-"
        table.add_row(d.id, d.kind, d.status.value, villages.get(d.id) or "-", target, provisioned)
    Console().print(table)


def _sync_if_configured(engine: Engine) -> None:
    settings = get_settings()
    if broker_files(settings) is None:
        err_console.print("note: MOSQUITTO_PASSWD_FILE/MOSQUITTO_ACL_FILE not set; run `village broker sync` later")
        return
    try:
        changed = sync_once(engine, settings)
    except OSError as e:
        fail(f"the registry changed but the broker files could not be written: {e}")
    typer.echo(f"broker files {'updated' if changed else 'unchanged'}")


def _default_out() -> Path:
    return get_settings().data_dir / "secrets" / "devices.json"


@app.command("provision")
def provision_cmd(
    ids: list[str] = typer.Argument(None, help="Device ids to provision (or rotate)."),
    all_inactive: bool = typer.Option(False, "--all-inactive", help="Provision every device not yet provisioned."),
    out: Path = typer.Option(
        None, "--out", help="Credentials file, mode 0600 [default: DATA_DIR/secrets/devices.json]."
    ),
    show: bool = typer.Option(False, "--show", help="Also print the secrets once to stdout."),
) -> None:
    """Issue new device secrets; they are written to the credentials file, the registry keeps only hashes."""
    ids = list(ids or [])
    if not ids and not all_inactive:
        fail("name device ids or give --all-inactive", 2)
    out = out or _default_out()
    engine = registry_engine()
    with Session(engine) as session:
        if all_inactive:
            query = select(Device.id).where(Device.status == DeviceStatus.inactive).order_by(Device.id)
            ids += [i for i in session.exec(query) if i not in ids]
        missing = [i for i in ids if session.get(Device, i) is None]
        if missing:
            fail(f"no such device(s): {', '.join(missing)}")
        if not ids:
            typer.echo("no inactive devices to provision")
            return
        issued = []
        for device_id in ids:
            secret = provisioning.provision(session, device_id)
            issued.append((device_id, session.get(Device, device_id).kind, secret))  # type: ignore[union-attr]
        try:
            provisioning.write_credentials(out, issued)
        except (OSError, ValueError) as e:
            session.rollback()
            fail(f"cannot write the credentials file {out}: {e}; nothing was provisioned")
        session.commit()
    typer.echo(f"provisioned {len(issued)} device(s); secrets written to {out} (mode 0600)")
    if show:
        for device_id, _kind, secret in issued:
            typer.echo(f"{device_id} {secret}")
    _sync_if_configured(engine)


@app.command("revoke")
def revoke_cmd(ids: list[str] = typer.Argument(..., help="Device ids to revoke.")) -> None:
    """Revoke devices: their secrets stop working at the next broker sync (done here when configured)."""
    engine = registry_engine()
    with Session(engine) as session:
        missing = [i for i in ids if session.get(Device, i) is None]
        if missing:
            fail(f"no such device(s): {', '.join(missing)}")
        for device_id in ids:
            provisioning.revoke(session, device_id)
        session.commit()
    typer.echo(f"revoked {len(ids)} device(s)")
    _sync_if_configured(engine)
