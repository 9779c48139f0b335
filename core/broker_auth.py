"""Broker credentials: secret hashing and mosquitto's password and ACL files from the registry.

A device's secret is issued once at provisioning; only its hash is stored, in mosquitto's
own PBKDF2-SHA512 format (`$7$iterations$salt$hash`), so the broker checks passwords with
the registry's hashes directly. The secrets are 256-bit random tokens, so the iteration
count protects little and is kept at mosquitto's default to keep reconnect storms cheap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from pydantic import field_validator
from sqlmodel import Session, select

from core.models import Device, DeviceStatus, ServiceAccount

log = logging.getLogger(__name__)

ITERATIONS = 101
TELEMETRY_TOPIC = "v1/devices/{device_id}/telemetry"
TELEMETRY_FILTER = "v1/devices/+/telemetry"

# The broker replaces every client's id with its username (`use_username_as_clientid`), so a
# client id is only ever taken by a holder of that account's password. Ingest replica i is the
# service account `ingest-<i>`; these names, and the former shared account `ingest`, can never
# be device ids (`refuse_reserved_name`), so no device can take a replica's session.
INGEST_ACCOUNT_PREFIX = "ingest-"
RESERVED_NAMES = frozenset({"ingest"})
RESERVED_PREFIXES = (INGEST_ACCOUNT_PREFIX,)

# The largest PUBLISH the broker accepts (`max_packet_size`, the whole packet) is the payload
# limit plus this: fixed header (5), topic length (2) and the longest device topic (85: a device
# id has at most 64 characters), packet id (2), and up to 162 bytes of MQTT 5 properties.
PUBLISH_OVERHEAD_BYTES = 256


def ingest_account(replica: int) -> str:
    """The broker account, and so the MQTT client id, of ingest replica `replica`."""
    return f"{INGEST_ACCOUNT_PREFIX}{replica}"


def reserved_name_problem(name: str) -> str | None:
    """Why `name` cannot be a device id (it is, or may become, a service account), else None."""
    lowered = name.lower()
    if lowered in RESERVED_NAMES or lowered.startswith(RESERVED_PREFIXES):
        reserved = ", ".join([*sorted(RESERVED_NAMES), *(f"{p}*" for p in RESERVED_PREFIXES)])
        return f"device id {name!r} is reserved for the broker's service accounts ({reserved})"
    return None


def refuse_reserved_name(name: str) -> str:
    """Validator of device ids (registry files, API, provisioning): raise on a reserved name."""
    problem = reserved_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


#: `_id_not_reserved = device_id_not_reserved` in a pydantic model with a field `id` refuses reserved ids.
device_id_not_reserved = field_validator("id")(refuse_reserved_name)


def broker_max_packet_size(max_payload_bytes: int) -> int:
    """The broker's `max_packet_size` for a payload limit: a larger message never reaches ingest."""
    return max_payload_bytes + PUBLISH_OVERHEAD_BYTES


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(12)
    dk = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        _, scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "7":
        return False
    dk = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(dk, base64.b64decode(digest))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def render_passwd(session: Session) -> str:
    lines = [f"{a.username}:{a.secret_hash}" for a in session.exec(select(ServiceAccount))]
    devices = session.exec(select(Device).where(Device.status == DeviceStatus.active).order_by(Device.id))
    for d in devices:
        if not d.secret_hash:
            continue
        if reserved_name_problem(d.id):  # registered before names were reserved: never a broker account
            log.warning("device %s left out of the broker's password file: its id is reserved", d.id)
            continue
        lines.append(f"{d.id}:{d.secret_hash}")
    return "\n".join(lines) + "\n"


def render_acl(session: Session) -> str:
    out = [
        "# generated from the registry: every device may publish only to its own topic",
        f"pattern write {TELEMETRY_TOPIC.format(device_id='%u')}",
        "",
    ]
    for account in session.exec(select(ServiceAccount).order_by(ServiceAccount.username)):
        if account.role == "ingest":
            out += [f"user {account.username}", f"topic read {TELEMETRY_FILTER}", ""]
    return "\n".join(out)


def write_broker_files(session: Session, passwd_file: Path, acl_file: Path) -> None:
    """Write both files atomically; signal the broker (SIGHUP) afterwards to apply them."""
    _atomic_write(acl_file, render_acl(session))
    _atomic_write(passwd_file, render_passwd(session))


def reload_broker(pid_file: Path | None) -> bool:
    """Send SIGHUP to the broker named by its pid file; False when there is none to signal."""
    if pid_file is None or not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().strip()), 1)
    except (ValueError, OSError):
        return False
    return True
