"""Local service processes: mosquitto and InfluxDB on free ports with their own folders.

Used by `village up`/`village demo`, by the benchmarks and by the test fixtures, so
that every one of them runs against the real servers, not mocks. A missing binary is
an error that says how to install it (`make deps` installs all of them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.broker_auth import broker_max_packet_size
from core.settings import Settings

INSTALL_HINT = {
    "mosquitto": "Debian package 'mosquitto' (run `make deps`, or `apt-get install mosquitto mosquitto-clients`)",
    "influxd": "Debian package 'influxdb' (run `make deps`, or `apt-get install influxdb influxdb-client`)",
    "anvil": "npm package '@foundry-rs/anvil' pinned in package.json (run `make deps`, or `npm ci` in the repository)",
}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux prctl)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServiceError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    path = shutil.which(name, path=SEARCH_PATH)
    if not path:
        raise ServiceError(f"'{name}' is not installed: install the {INSTALL_HINT.get(name, name)}")
    return path


# VILLAGE_PORTS="lo-hi": free ports are drawn from that range, in turn, instead of by the kernel. Parallel
# test workers (tests/conftest.py) each get a range of their own below the kernel's ephemeral ports, so no
# worker can pick a port another one has chosen but not yet bound, nor one a client connection holds.
PORTS_ENV = "VILLAGE_PORTS"
_port_cursor: dict[str, int] = {}


def _port_range() -> tuple[int, int] | None:
    spec = os.environ.get(PORTS_ENV, "").strip()
    if not spec:
        return None
    lo, _, hi = spec.partition("-")
    low, high = int(lo), int(hi)
    if not 1024 <= low < high <= 65535:
        raise ServiceError(f"{PORTS_ENV}={spec!r}: expected 'low-high' within 1024-65535")
    return low, high


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    span = _port_range()
    if span is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    low, high = span
    size = high - low + 1
    # a random start per process (a child process draws from the same range), then in turn: a port
    # handed out is not handed out again by this process before the whole range has been gone through
    cursor = _port_cursor.get(f"{low}-{high}", random.randrange(size))
    for step in range(size):
        port = low + (cursor + step) % size
        if _bindable(host, port):
            _port_cursor[f"{low}-{high}"] = (cursor + step + 1) % size
            return port
    raise ServiceError(f"no free port in {PORTS_ENV}={low}-{high}")


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (replica i of a service listens on base + i)."""
    span = _port_range()
    for _ in range(100):
        base = free_port(host)
        if span is not None and base + count - 1 > span[1]:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind((host, base + i))
        except OSError:
            continue
        if span is not None:  # the next free_port starts after the last of these
            low, high = span
            _port_cursor[f"{low}-{high}"] = (base + count - low) % (high - low + 1)
        return base
    raise ServiceError(f"no {count} consecutive free ports on {host}")


def wait_for_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class Service:
    """A server process we started; `restart()` brings it back on the same port and folder."""

    name: str
    argv: list[str]
    workdir: Path
    host: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
            self._ready(timeout)
        except ServiceError as e:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(f"{self.name} did not start: {e}\n--- {self.log_path} ---\n{tail}") from e
        return self

    def _ready(self, timeout: float) -> None:
        """Extra readiness check beyond an open port (overridden per service)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self, timeout: float = 20.0) -> Service:
        self.stop()
        return self.start(timeout)


MOSQUITTO_CONF = """\
# generated by core.services: local broker for development, tests and benchmarks
listener {port} {host}
# The client id is the username (a device's id, an ingest replica's account `ingest-<i>`):
# nobody can take over another client's session or knock it off with its client id.
use_username_as_clientid true
# stay the user who started it (as root, mosquitto would otherwise switch to 'mosquitto')
user {user}
allow_anonymous false
password_file {passwd}
acl_file {acl}
persistence true
persistence_location {data}/
autosave_interval 5
# QoS 1 end to end: never drop queued messages of a persistent ingest session.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
# The payload limit plus the PUBLISH header (core.broker_auth.broker_max_packet_size): a larger
# packet is refused by disconnecting its sender, and never reaches ingest.
max_packet_size {max_packet}
pid_file {pid}
log_dest file {log}
log_type error
log_type warning
log_type notice
connection_messages false
"""


# A second listener with TLS (as the deployment's on 8883), for the tests of TLS clients.
MOSQUITTO_TLS_LISTENER = """\
listener {port} {host}
use_username_as_clientid true
certfile {certfile}
keyfile {keyfile}
"""


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: its port, and the PEM server certificate (chain) and key."""

    port: int
    certfile: Path
    keyfile: Path


class Mosquitto(Service):
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def reload(self) -> None:
        """Re-read the password and ACL files without dropping connections (SIGHUP)."""
        self.signal(signal.SIGHUP)


def mosquitto(
    workdir: Path,
    passwd_file: Path,
    acl_file: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    max_packet_bytes: int | None = None,
    tls: BrokerTls | None = None,
) -> Mosquitto:
    """A mosquitto configured from registry-generated password and ACL files (not started).

    `max_packet_bytes` defaults to what the default payload limit needs; `tls` adds a TLS listener.
    """
    binary = find_binary("mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    port = port or free_port(host)
    if max_packet_bytes is None:
        max_packet_bytes = broker_max_packet_size(Settings.model_fields["ingest_max_payload_bytes"].default)
    conf = workdir / "mosquitto.conf"
    tls_listener = ""
    if tls is not None:
        tls_listener = MOSQUITTO_TLS_LISTENER.format(
            port=tls.port, host=host, certfile=tls.certfile.resolve(), keyfile=tls.keyfile.resolve()
        )
    conf.write_text(
        MOSQUITTO_CONF.format(
            port=port,
            host=host,
            passwd=passwd_file.resolve(),
            acl=acl_file.resolve(),
            data=(workdir / "data").resolve(),
            log=(workdir / "mosquitto.log").resolve(),
            pid=(workdir / "mosquitto.pid").resolve(),
            max_packet=max_packet_bytes,
            user=pwd.getpwuid(os.getuid()).pw_name,
        )
        + tls_listener
    )
    service = Mosquitto("mosquitto", [binary, "-c", str(conf)], workdir, host, port, workdir / "mosquitto.stdout.log")
    service.tls_port = tls.port if tls is not None else None
    return service


INFLUXD_CONF = """\
# generated by core.services: local InfluxDB 1.x serving the v1 HTTP API
reporting-disabled = true
bind-address = "{host}:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
  cache-max-memory-size = "1g"
  wal-fsync-delay = "0s"
[coordinator]
  write-timeout = "30s"
[monitor]
  store-enabled = false
[http]
  bind-address = "{host}:{port}"
  log-enabled = false
  auth-enabled = {auth}
  max-body-size = {max_body}
[logging]
  level = "warn"
[continuous_queries]
  enabled = true
  run-interval = "1s"
"""


class InfluxD(Service):
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServiceError("InfluxDB /ping did not answer 204")


def influxd(
    workdir: Path, port: int | None = None, host: str = "127.0.0.1", auth: bool = False, max_body_bytes: int = 0
) -> InfluxD:
    """An InfluxDB 1.x server (Debian's `influxdb` package) with its data in `workdir` (not started).

    `auth` turns authentication on (create the first admin user before anything else); a
    `max_body_bytes` above 0 makes /write answer 413 to larger requests (both for fault tests)."""
    binary = find_binary("influxd")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        INFLUXD_CONF.format(
            host=host,
            port=port,
            rpc_port=free_port(host),
            dir=workdir.resolve(),
            auth="true" if auth else "false",
            max_body=max_body_bytes,
        )
    )
    return InfluxD("influxd", [binary, "run", "-config", str(conf)], workdir, host, port, workdir / "influxd.log")


REPO_ROOT = Path(__file__).resolve().parents[1]
ANVIL_PLATFORM = {("linux", "x86_64"): "linux-amd64", ("linux", "aarch64"): "linux-arm64"}


def find_anvil() -> str:
    """anvil from node_modules (npm's @foundry-rs/anvil installs it as @foundry-rs/anvil-<platform>),
    else one on PATH (foundryup). The native binary, not the node wrapper in .bin, so that signals
    reach anvil itself (it writes its --state file on SIGTERM)."""
    platform = ANVIL_PLATFORM.get((os.uname().sysname.lower(), os.uname().machine), "")
    local = REPO_ROOT / "node_modules" / "@foundry-rs" / f"anvil-{platform}" / "bin" / "anvil"
    if platform and os.access(local, os.X_OK):
        return str(local)
    return find_binary("anvil")


class Anvil(Service):
    """A local Ethereum devnet (anvil). Its first default account is the dev anchoring key."""

    chain_id: int = 31337

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def rpc(self, method: str, *params: object, timeout: float = 5.0) -> object:
        """One JSON-RPC call (for readiness and devnet-only methods such as anvil_reorg)."""
        reply = httpx.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=timeout
        )
        body = reply.json()
        if "error" in body:
            raise ServiceError(f"{method}: {body['error']}")
        return body["result"]

    def _ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if int(str(self.rpc("eth_chainId", timeout=1)), 16) == self.chain_id:
                    return
            except (httpx.HTTPError, ValueError, ServiceError):
                pass
            time.sleep(0.05)
        raise ServiceError(f"anvil did not answer eth_chainId {self.chain_id}")


ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's account 0, public


def anvil(
    workdir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    chain_id: int = 31337,
    state_file: Path | None = None,
    state_interval_s: int | None = None,
    block_time_s: float | None = None,
    slots_in_an_epoch: int | None = None,
) -> Anvil:
    """An anvil devnet on a free port (not started); quiet, logs in `workdir`.

    `state_file` (anvil --state) loads the chain from that file if it exists and writes it back
    when anvil stops (SIGTERM), so `village up` keeps its anchors across restarts;
    `state_interval_s` also writes it periodically (survives a SIGKILL up to that interval).
    Without `block_time_s` every transaction is mined at once in its own block. The "finalized"
    block trails the head by two epochs (2 x 32 slots by default; `slots_in_an_epoch=1`: 2 blocks).
    """
    binary = find_anvil()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    argv = [binary, "--host", host, "--port", str(port), "--chain-id", str(chain_id), "--quiet"]
    if state_file is not None:
        argv += ["--state", str(state_file.resolve())]
    if state_interval_s is not None:
        argv += ["--state-interval", str(state_interval_s)]
    if block_time_s is not None:
        argv += ["--block-time", f"{block_time_s:g}"]
    if slots_in_an_epoch is not None:
        argv += ["--slots-in-an-epoch", str(slots_in_an_epoch)]
    service = Anvil("anvil", argv, workdir, host, port, workdir / "anvil.log")
    service.chain_id = chain_id
    return service


class Postgres(Service):
    """A PostgreSQL server (Debian's `postgresql` package) with trust auth on 127.0.0.1, for tests."""

    user: str = "village"

    def url(self, db: str = "village") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{db}"

    def _ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(f"host={self.host} port={self.port} user={self.user} dbname=postgres") as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise ServiceError(f"PostgreSQL not ready: {e}") from e
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host={self.host} port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise ServiceError(
            "PostgreSQL is not installed: install the Debian package 'postgresql' "
            "(run `make deps`, or `apt-get install postgresql`)"
        )
    return found[-1].parent


def postgres(workdir: Path, port: int | None = None, host: str = "127.0.0.1") -> Postgres:
    """A throw-away PostgreSQL cluster in `workdir` (not started). PostgreSQL refuses to run as
    root, so as root the cluster belongs to, and runs as, the 'postgres' system user."""
    bindir = _postgres_bin()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
        prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    if not data.exists():
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", Postgres.user, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
    port = port or free_port(host)
    argv = [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", host, "-k", str(workdir)]
    argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    return Postgres("postgres", argv, workdir, host, port, workdir / "postgres.log")
