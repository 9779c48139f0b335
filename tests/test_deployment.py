"""The production deployment stays true to the code.

docker-compose.yml must validate, every village service must run a `village` command and
options that exist, every variable it sets must be a setting of core/settings.py (all of them
documented in .env.example, with their defaults), and the production mosquitto.conf must keep
the broker settings the ingest relies on (core/services.py MOSQUITTO_CONF). Fast: no engine needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import typer
import yaml
from typer.testing import CliRunner

from cli.main import app
from core.broker_auth import broker_max_packet_size
from core.services import MOSQUITTO_CONF
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
MOSQUITTO_CONF_FILE = REPO / "deploy" / "mosquitto" / "mosquitto.conf"
SECRETS = REPO / "deploy" / "secrets"
# Compose-level variables (interpolated by compose itself), and the one read outside Settings.
NOT_SETTINGS = {"SECRETS_DIR"}
ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}
# Broker settings the code relies on: same values in production as in the tested local broker.
ESSENTIAL = [
    "allow_anonymous",
    "persistence",
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "use_username_as_clientid",
]


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose (or run `make deps`)")
    return path


def run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    # The example secret files stand in for the real ones (never committed).
    env = {**os.environ, "VILLAGE_SECRET_SUFFIX": ".example"}
    for name in (
        "VILLAGE_IMAGE",
        "INGEST_REPLICAS",
        "INFLUX_ORG",
        "MQTT_PUBLISH_PORT",
        "API_PUBLISH_PORT",
        "API_TRUSTED_PROXIES",
        "COMPOSE_FILE",
    ):
        env.pop(name, None)
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), "--project-directory", str(REPO), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    """The compose file as compose resolves it (anchors merged, variables interpolated)."""
    result = run_compose("config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def village_services(config: dict) -> dict[str, dict]:
    services = {name: s for name, s in config["services"].items() if "build" in s}
    assert {"migrate", "broker-init", "broker-sync", "ingest"} <= services.keys()
    images = {s["image"] for s in services.values()}
    assert len(images) == 1, f"village services use several images: {images}"
    return services


def parse_conf(text: str) -> dict[str, list[str]]:
    """mosquitto.conf as {key: [values]} (a key may repeat)."""
    conf: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, []).append(value.strip())
    return conf


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, container path) of a service's volumes, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            source, target = v.split(":")[:2]
            out.append((source, target))
    return out


def on_volume(service: dict, path: str) -> tuple[str, PurePosixPath]:
    """The volume holding `path` in this service's container, and the path inside that volume."""
    p = PurePosixPath(path)
    for source, target in mounts(service):
        if p == PurePosixPath(target) or PurePosixPath(target) in p.parents:
            return source, p.relative_to(target)
    pytest.fail(f"{path} is on no volume of the service")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def secret_targets(service: dict) -> list[str]:
    return [s.get("target", s["source"]) if isinstance(s, dict) else s for s in service.get("secrets", [])]


# -- (1) the compose file validates ---------------------------------------------------------------
def test_compose_config_is_valid() -> None:
    result = run_compose("config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_secrets_have_examples_and_none_is_committed(config: dict) -> None:
    for name, secret in config["secrets"].items():
        path = Path(secret["file"])
        assert path.name == f"{name}.example" and path.is_file(), f"secret {name}: no {path}"
        assert path.read_text().strip(), f"{path} is empty"
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/secrets"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    committed = [f for f in tracked if not f.endswith((".example", "README.md"))]
    assert not committed, f"real secret files are committed: {committed}"


# -- (2) village services run commands and options that exist -----------------------------------
def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(subcommand path, option names) of a `village` command line."""
    path: list[str] = []
    for token in argv:
        if token.startswith("-"):
            break
        path.append(token)
    return path, [t.split("=", 1)[0] for t in argv if t.startswith("--")]


def test_village_services_run_existing_commands(village_services: dict[str, dict]) -> None:
    runner = CliRunner()
    root = typer.main.get_command(app)
    for name, service in village_services.items():
        argv = [str(a) for a in service["command"]]
        path, options = split_command(argv)
        assert path, f"{name}: no subcommand in {argv}"
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        assert result.exit_code == 0, f"{name}: `village {' '.join(path)} --help` failed:\n{result.output}"
        for option in options:
            assert option in result.output, f"{name}: {option} is not in `village {' '.join(path)} --help`"
        # The whole command line parses (option names, types and ranges), without running it.
        cmd = root
        ctx = root.make_context("village", list(path), resilient_parsing=True)
        for part in path:
            assert hasattr(cmd, "get_command"), f"{name}: {part} is not a subcommand"
            cmd = cmd.get_command(ctx, part)
            assert cmd is not None, f"{name}: no subcommand {part}"
        cmd.make_context(" ".join(["village", *path]), argv[len(path) :])  # raises on a bad option or value


def test_image_runs_village_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["village"\]$', dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    # broker-sync writes files (0600) that mosquitto reads and signals it: the same uid as the
    # eclipse-mosquitto image's 'mosquitto' user (1883).
    assert re.search(r"^ARG VILLAGE_UID=1883$", dockerfile, re.M)
    assert 'village = "cli.main:app"' in (REPO / "pyproject.toml").read_text()


# -- (3) variables are settings, and settings are documented -------------------------------------
def test_compose_variables_are_settings(village_services: dict[str, dict]) -> None:
    for name, service in village_services.items():
        env = environment(service)
        unknown = set(env) - ALIASES - NOT_SETTINGS
        assert not unknown, f"{name}: not settings of core/settings.py: {sorted(unknown)}"
        targets = secret_targets(service)
        # A secret is a setting's value (named like it), or a file a *_FILE setting points at.
        files = {PurePosixPath(v).name for k, v in env.items() if k.endswith("_FILE") and v.startswith("/run/secrets/")}
        unknown = set(targets) - ALIASES - files
        assert not unknown, f"{name}: secrets neither named like a setting nor a *_FILE setting: {sorted(unknown)}"
        if targets:
            assert env.get("SECRETS_DIR") == "/run/secrets", f"{name}: secrets need SECRETS_DIR=/run/secrets"
        # The values parse as settings (ports are numbers, formats exist...).
        settings = Settings(_env_file=None, **{k: v for k, v in env.items() if k in ALIASES})  # type: ignore[arg-type]
        assert settings.log_format in ("console", "json")


def test_every_setting_is_in_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    missing = [a for a in sorted(ALIASES | NOT_SETTINGS) if not re.search(rf"^(# )?{a}=", text, re.M)]
    assert not missing, f".env.example lacks {missing}"


def test_env_example_values_are_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for alias in ALIASES:
        monkeypatch.delenv(alias, raising=False)
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    monkeypatch.chdir(tmp_path)
    from_example = Settings(_env_file=".env").model_dump()  # type: ignore[call-arg]
    defaults = Settings(_env_file=None).model_dump()  # type: ignore[call-arg]
    differ = {k: (from_example[k], defaults[k]) for k in defaults if from_example[k] != defaults[k]}
    assert not differ, f".env.example differs from the defaults of core/settings.py: {differ}"


# -- (4) the production broker keeps the settings the code relies on -------------------------------
def test_mosquitto_conf_has_the_essential_settings() -> None:
    prod = parse_conf(MOSQUITTO_CONF_FILE.read_text())
    local = parse_conf(MOSQUITTO_CONF)
    for key in ESSENTIAL:
        assert prod.get(key) == local[key], f"mosquitto.conf: {key} is {prod.get(key)}, the code needs {local[key]}"
    assert prod["allow_anonymous"] == ["false"] and prod["persistence"] == ["true"]
    assert prod["max_queued_messages"] == ["0"]
    for key in ("password_file", "acl_file", "pid_file", "persistence_location", "certfile", "keyfile"):
        assert len(prod.get(key, [])) == 1, f"mosquitto.conf needs one {key}"
    # One listener, with TLS; every client's id is its username (no session takeover by client id).
    assert prod["listener"] == ["8883 0.0.0.0"] and prod["use_username_as_clientid"] == ["true"]
    # The largest packet is the payload limit plus the PUBLISH header, as the tested broker's.
    limit = broker_max_packet_size(Settings(_env_file=None).ingest_max_payload_bytes)  # type: ignore[call-arg]
    assert prod["max_packet_size"] == [str(limit)]


def test_broker_speaks_tls_and_ingest_checks_it(config: dict) -> None:
    services = config["services"]
    mosquitto_service, ingest = services["mosquitto"], services["ingest"]
    conf = parse_conf(MOSQUITTO_CONF_FILE.read_text())
    secrets = {f"/run/secrets/{s}" for s in secret_targets(mosquitto_service)}
    assert {conf["certfile"][0], conf["keyfile"][0]} <= secrets, "certificate and key must be compose secrets"
    assert [(str(p["published"]), str(p["target"])) for p in mosquitto_service["ports"]] == [("8883", "8883")]
    env = environment(ingest)
    assert env["MQTT_TLS"] == "true" and env["MQTT_PORT"] == "8883" and env["MQTT_HOST"] == "mosquitto"
    assert PurePosixPath(env["MQTT_CA_FILE"]).name in secret_targets(ingest)
    # one broker account per replica: the sync writes as many as ingest runs
    replicas = ingest["command"][ingest["command"].index("--replicas") + 1]
    for name in ("broker-init", "broker-sync", "ingest"):
        assert environment(services[name])["INGEST_MAX_REPLICAS"] == str(replicas), name
    # nothing in the compose network scrapes the metrics: they stay on the container's loopback
    assert environment(ingest).get("INGEST_METRICS_HOST", "127.0.0.1") == "127.0.0.1"


def test_broker_files_are_shared_with_mosquitto(config: dict) -> None:
    """broker-sync writes the files mosquitto reads and signals the process that wrote the pid file."""
    services = config["services"]
    mosquitto = services["mosquitto"]
    conf_mount = [s for s, t in mounts(mosquitto) if t == "/mosquitto/config/mosquitto.conf"]
    assert conf_mount and Path(conf_mount[0]).resolve() == MOSQUITTO_CONF_FILE
    conf = parse_conf(MOSQUITTO_CONF_FILE.read_text())
    broker_side = {key: on_volume(mosquitto, conf[key][0]) for key in ("password_file", "acl_file", "pid_file")}
    assert on_volume(mosquitto, conf["persistence_location"][0])[0] not in {v for v, _ in broker_side.values()}
    for name, keys in (("broker-init", ("password_file", "acl_file")), ("broker-sync", tuple(broker_side))):
        env = environment(services[name])
        for key in keys:
            var = {"password_file": "MOSQUITTO_PASSWD_FILE", "acl_file": "MOSQUITTO_ACL_FILE"}.get(
                key, "MOSQUITTO_PID_FILE"
            )
            assert var in env, f"{name}: {var} is not set"
            assert on_volume(services[name], env[var]) == broker_side[key], f"{name}: {var} is not mosquitto's {key}"
    # A stale pid would name the wrong process in broker-init's own PID namespace.
    assert "MOSQUITTO_PID_FILE" not in environment(services["broker-init"])
    assert services["broker-sync"]["pid"] == "service:mosquitto"
    assert services["broker-sync"]["command"] == ["broker", "sync", "--watch"]
    assert mosquitto["depends_on"]["broker-init"]["condition"] == "service_completed_successfully"


def test_start_order_and_ingest_state(config: dict, village_services: dict[str, dict]) -> None:
    services = config["services"]
    for name, service in village_services.items():
        if name not in ("migrate", "anvil"):  # the devnet does not use the registry
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    ingest = services["ingest"]
    assert ingest["depends_on"]["influxdb"]["condition"] == "service_healthy"
    path, options = split_command([str(a) for a in ingest["command"]])
    assert path == ["ingest"] and "--replicas" in options and "--replica" not in options
    env = environment(ingest)
    assert env["LOG_FORMAT"] == "json"
    assert on_volume(ingest, env["SPOOL_DIR"])[0] == "ingest-spool"
    assert env["INFLUX_URL"] == "http://influxdb:8086" and env["INFLUX_DB"] == "village"
    assert services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"] == env["INFLUX_DB"]
    assert {"MQTT_INGEST_PASSWORD", "INFLUX_PASSWORD", "DATABASE_PASSWORD"} <= set(secret_targets(ingest))
    assert env["DATABASE_URL"] if "DATABASE_URL" in env else "DATABASE_URL" in secret_targets(ingest)


def test_anchor_worker_reaches_the_chain_and_keeps_the_deployment(config: dict) -> None:
    services = config["services"]
    anchor, anvil = services["anchor"], services["anvil"]
    assert [str(a) for a in anchor["command"]] == ["anchor"]
    assert anvil["command"][0] == "devnet" and "--state" in anvil["command"]
    env = environment(anchor)
    assert env["CHAIN_RPC_URL"] == "http://anvil:8545"
    assert "CHAIN_PRIVATE_KEY" in secret_targets(anchor) and "CHAIN_PRIVATE_KEY" not in env
    # the worker records the TraceAnchor address under VILLAGE_DATA_DIR/chain: on a volume
    assert on_volume(anchor, env["VILLAGE_DATA_DIR"] + "/chain/trace_anchor.json")[0] == "chain-state"
    assert anchor["depends_on"]["anvil"]["condition"] == "service_started"


# -- (5) least privilege: each service gets its own credentials and only the secrets it uses -----------
# service -> (PostgreSQL role, InfluxDB v1 user or None); core/db_roles.py and the init scripts agree.
CREDENTIALS = {
    "migrate": ("village_migrate", None),
    "broker-init": ("village_broker", None),
    "broker-sync": ("village_broker", None),
    "ingest": ("village_ingest", "village_ingest"),
    "anchor": ("village_anchor", "village_anchor"),
    "api": ("village_api", "village_api"),
    "alerts": ("village_alerts", "village_alerts"),
    "ops": ("village_migrate", "village_ops"),
}
INIT_ROLES = REPO / "deploy" / "postgres" / "init-roles.sh"
INIT_AUTH = REPO / "deploy" / "influxdb" / "init-auth.sh"


def secret_sources(service: dict) -> dict[str, str]:
    """target -> source of a service's secrets (short syntax: the target is the source's name)."""
    out = {}
    for s in service.get("secrets", []):
        source = s["source"] if isinstance(s, dict) else s
        out[s.get("target", source) if isinstance(s, dict) else s] = source
    return out


def test_each_service_has_its_own_database_role_and_influx_user(village_services: dict[str, dict]) -> None:
    from sqlalchemy.engine import make_url

    from core.db_roles import GRANTS, role_of

    uses_db = {name for name in village_services if name != "anvil"}
    assert uses_db == set(CREDENTIALS), f"a village service without declared credentials: {uses_db ^ set(CREDENTIALS)}"
    for name, (role, influx_user) in CREDENTIALS.items():
        service, env = village_services[name], environment(village_services[name])
        url = make_url(env["DATABASE_URL"])
        assert url.username == role and url.password is None, f"{name}: DATABASE_URL must name {role}, no password"
        secrets = secret_sources(service)
        assert secrets.get("DATABASE_PASSWORD") == f"pg_password_{role.removeprefix('village_')}", name
        assert "DATABASE_URL" not in secrets and "INFLUX_TOKEN" not in secrets, f"{name}: a shared credential"
        assert env.get("INFLUX_USERNAME") == influx_user, f"{name}: InfluxDB user"
        if influx_user:
            assert secrets["INFLUX_PASSWORD"] == f"influx_password_{influx_user.removeprefix('village_')}", name
        else:
            assert "INFLUX_PASSWORD" not in secrets, f"{name} does not use InfluxDB"
    # every service role the grants declare is one the init script creates
    roles = set(re.search(r"^for service in ([a-z ]+); do$", INIT_ROLES.read_text(), re.M).group(1).split())  # type: ignore[union-attr]
    assert {role_of(s) for s in roles} == {role_of(s) for s in GRANTS} | {"village_migrate"}


def test_only_the_anchor_worker_holds_the_chain_key_and_only_the_api_the_jwt_secret(config: dict) -> None:
    holders: dict[str, set[str]] = {}
    for name, service in config["services"].items():
        for source in secret_sources(service).values():
            holders.setdefault(source, set()).add(name)
    assert holders["chain_private_key"] == {"anchor"}
    assert holders["api_jwt_secret"] == {"api"}
    assert holders["influx_admin_token"] == {"influxdb"} and holders["influx_admin_password"] == {"influxdb"}
    assert holders["postgres_password"] == {"postgres"}
    assert holders["mqtt_ingest_password"] == {"broker-init", "broker-sync", "ingest"}
    for name, service in config["services"].items():  # never as a plain variable either
        env = environment(service)
        assert not {"CHAIN_PRIVATE_KEY", "API_JWT_SECRET", "INFLUX_TOKEN", "DATABASE_PASSWORD"} & set(env), name


def test_database_and_influx_init_scripts_are_mounted_with_their_secrets(config: dict) -> None:
    services = config["services"]
    for name, script, target in (
        ("postgres", INIT_ROLES, "/docker-entrypoint-initdb.d/10-village-roles.sh"),
        ("influxdb", INIT_AUTH, "/docker-entrypoint-initdb.d/10-village-auth.sh"),
    ):
        assert any(Path(s).resolve() == script and t == target for s, t in mounts(services[name])), name
        assert os.access(script, os.X_OK), f"{script} must be executable (the images run *.sh from their init dir)"
    pg_secrets = {s for s in secret_sources(services["postgres"]).values() if s.startswith("pg_password_")}
    used = {secret_sources(s).get("DATABASE_PASSWORD") for s in services.values()} - {None}
    assert pg_secrets == used
    influx_secrets = {s for s in secret_sources(services["influxdb"]).values() if s.startswith("influx_password_")}
    used = {secret_sources(s).get("INFLUX_PASSWORD") for s in services.values()} - {None}
    assert influx_secrets == used
    # read-only for the API and the anchoring worker, write for ingest (and the operators' rollups)
    grants = dict(re.findall(r"^v1_auth (\w+) (.+)$", INIT_AUTH.read_text(), re.M))
    assert "--write-bucket" not in grants["api"] and "--write-bucket" not in grants["anchor"]
    assert grants["ingest"].split() == ["--write-bucket", '"$raw"', "--write-bucket", '"$late"']
    assert {f"influx_password_{u}" for u in grants} == influx_secrets


def test_api_trusts_only_named_proxies(config: dict) -> None:
    """No `*` for forwarded headers (a client would pick its own address): the proxies are a setting."""
    api = config["services"]["api"]
    argv = [str(a) for a in api["command"]]
    assert "*" not in argv and "--forwarded-allow-ips" not in argv
    assert environment(api).get("API_TRUSTED_PROXIES", "") != "*"
