"""Device provisioning and revocation, and keeping mosquitto's password and ACL files in step.

A device's secret is generated here, handed out once (to the caller, who writes it to the
device's credentials file) and stored only as a hash. The broker files are rendered from
the registry and rewritten only when their content changes; the broker is then told to
re-read them with SIGHUP, so provisioning and revocation never need a broker restart.
Functions take a session and leave committing to the caller.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from core.broker_auth import (
    hash_secret,
    ingest_account,
    new_secret,
    reload_broker,
    render_acl,
    render_passwd,
    reserved_name_problem,
    verify_secret,
)
from core.models import Device, DeviceStatus, ServiceAccount, utcnow

log = logging.getLogger(__name__)


class ProvisioningError(LookupError):
    """A device that does not exist, or a request that cannot be done."""


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise ProvisioningError(f"no device {device_id!r} in the registry")
    return device


def provision(session: Session, device_id: str) -> str:
    """Issue a new secret for the device and return it (the only time it is visible).

    Only its hash is stored; the device becomes active. Provisioning again rotates the
    secret (the old one stops working at the next broker sync), and reinstates a revoked device.
    """
    device = _device(session, device_id)
    problem = reserved_name_problem(device_id)
    if problem:  # a row registered before the names were reserved: it must be renamed
        raise ProvisioningError(problem)
    secret = new_secret()
    device.secret_hash = hash_secret(secret)
    device.status = DeviceStatus.active
    device.provisioned_at = utcnow()
    device.revoked_at = None
    session.add(device)
    session.flush()
    log.info("device %s provisioned", device_id)
    return secret


def revoke(session: Session, device_id: str) -> None:
    """Revoke the device: status revoked, its secret hash forgotten."""
    device = _device(session, device_id)
    device.status = DeviceStatus.revoked
    device.revoked_at = utcnow()
    device.secret_hash = None
    session.add(device)
    session.flush()
    log.info("device %s revoked", device_id)


def ensure_ingest_account(session: Session, username: str, password: str, role: str = "ingest") -> bool:
    """Create or update the broker account of a service; True when anything changed.

    The hash is kept when it already matches `password`, so the password file stays as it is.
    """
    if not password:
        raise ValueError(f"no password given for the broker account {username!r} (set MQTT_INGEST_PASSWORD)")
    account = session.get(ServiceAccount, username)
    if account is not None and account.role == role and verify_secret(password, account.secret_hash):
        return False
    if account is None:
        account = ServiceAccount(username=username, role=role, secret_hash=hash_secret(password))
    else:
        account.role = role
        account.secret_hash = hash_secret(password)
    session.add(account)
    session.flush()
    log.info("broker account %s (%s) set", username, role)
    return True


def ensure_ingest_accounts(session: Session, password: str, replicas: int) -> bool:
    """Give each ingest replica 0..replicas-1 its own account `ingest-<i>` (all with `password`)
    and remove every other ingest account (the former shared `ingest`, replicas above the count);
    True when anything changed. The broker uses the account name as the replica's client id."""
    wanted = {ingest_account(i) for i in range(replicas)}
    changed = False
    for username in sorted(wanted):
        changed |= ensure_ingest_account(session, username, password)
    for account in session.exec(select(ServiceAccount).where(ServiceAccount.role == "ingest")):
        if account.username not in wanted:
            session.delete(account)
            changed = True
            log.info("broker account %s removed", account.username)
    session.flush()
    return changed


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def sync_broker(session: Session, passwd_file: Path, acl_file: Path, pid_file: Path | None = None) -> bool:
    """Render the broker files from the registry; write them and SIGHUP the broker only if they changed.

    Rendering uses the stored hashes, so unchanged registry data renders byte for byte the
    same. Returns True when a file was rewritten.
    """
    acl, passwd = render_acl(session), render_passwd(session)
    changed = False
    # ACL first: a new device's password only works once its ACL is in place.
    for path, text in ((Path(acl_file), acl), (Path(passwd_file), passwd)):
        if _read(path) != text:
            _write_private(path, text)
            changed = True
    if changed:
        signalled = reload_broker(Path(pid_file) if pid_file else None)
        log.info("broker files updated%s", ", broker reloaded" if signalled else "")
    return changed


def watch(
    engine: Engine,
    passwd_file: Path,
    acl_file: Path,
    pid_file: Path | None = None,
    *,
    interval_s: float = 3.0,
    stop: threading.Event | None = None,
) -> None:
    """Sync the broker files every `interval_s` seconds until `stop` is set.

    Errors (a locked or unreachable database) are logged and retried at the next tick.
    """
    stop = stop or threading.Event()
    while True:
        try:
            with Session(engine) as session:
                sync_broker(session, passwd_file, acl_file, pid_file)
        except Exception as e:  # keep watching: the next tick may succeed
            log.warning("broker sync failed: %s", e)
        if stop.wait(interval_s):
            return


def write_credentials(path: Path | str, entries: Iterable[tuple[str, str, str]]) -> Path:
    """Write device credentials as JSON `[{"id", "kind", "secret"}]`, mode 0600.

    Entries already in the file are kept unless a new entry has the same id (their
    secrets could not be recovered otherwise). This file belongs to the devices (the
    simulators read it); the server keeps only hashes.
    """
    path = Path(path)
    merged: dict[str, dict[str, str]] = {c["id"]: c for c in read_credentials(path)} if path.exists() else {}
    for device_id, kind, secret in entries:
        merged[device_id] = {"id": device_id, "kind": kind, "secret": secret}
    _write_private(path, json.dumps(sorted(merged.values(), key=lambda c: c["id"]), indent=1) + "\n")
    return path


def read_credentials(path: Path | str) -> list[dict[str, Any]]:
    """The entries of a credentials file written by `write_credentials`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(
        isinstance(c, dict) and {"id", "kind", "secret"} <= c.keys() for c in data
    ):
        raise ValueError(f"{path}: expected a JSON list of {{id, kind, secret}} objects")
    return data
