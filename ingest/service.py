"""The ingest service: an MQTT consumer on the shared subscription, acking only stored readings.

One thread drives paho's client through its external-loop API (`loop_read`,
`loop_write`, `loop_misc`): it reads messages until a batch is full or old enough, hands
the batch to the `Pipeline`, and acknowledges its messages, in the order received, once
the pipeline has stored them. No second thread means no locking per message, which is
what makes one replica fast. The session is persistent (clean session off), so messages
that arrive while a replica is down, or that it received but had not acknowledged when it
died, are delivered again when it returns.

The MQTT client (ingest/mqttclient.py) is paho with a fast read path, or stock paho when the
installed paho's internals fail its start-up self-check; both acknowledge only what is stored,
and a QoS 0 message (no packet id) is stored without an acknowledgement.

The consumer speaks MQTT 3.1.1, not 5: paho builds a `Properties` object for every MQTT 5
PUBLISH, which was a fifth of the CPU per message, and the consumer needs no MQTT 5 feature
(mosquitto serves `$share/` subscriptions to 3.1.1 clients too; devices may use either).
The broker's `max_inflight_messages 0` lets a batch's worth of messages be in flight.
"""

from __future__ import annotations

import select
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from prometheus_client import start_http_server

from core.broker_auth import TELEMETRY_FILTER, ingest_account
from core.catalogue import get_catalogue
from core.db import get_engine
from core.influx import InfluxError, InfluxV1
from core.log import get_logger
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.metrics import IngestMetrics
from ingest.mqttclient import IngestClient, make_client
from ingest.payload import Validator
from ingest.pipeline import Message, Pipeline
from ingest.spool import Spool

log = get_logger("ingest")


class IngestService:
    def __init__(self, settings: Settings, replica: int = 0, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.replica = replica
        # The broker makes the username the client id (use_username_as_clientid): the replica's
        # own account, which no device can hold, so no device can take over its session.
        self.client_id = ingest_account(replica)
        self.stop_event = threading.Event()
        self.metrics = metrics or IngestMetrics()
        self.connected = threading.Event()
        self._pending: list[Message] = []
        self._received = 0
        self._generation = 0
        self._qos2_seen = False
        catalogue = get_catalogue(settings.catalogue_file)
        self.influx = InfluxV1.from_settings(settings)
        self.spool = Spool(settings.resolved_spool_dir() / f"{self.client_id}.sqlite", settings.spool_max_bytes)
        engine = get_engine(settings.resolved_database_url())
        self.pipeline = Pipeline(
            catalogue=catalogue,
            validator=Validator.from_settings(catalogue, settings),
            directory=DeviceDirectory(engine, ttl=settings.ingest_registry_ttl_s),
            influx=self.influx,
            spool=self.spool,
            engine=engine,
            metrics=self.metrics,
            stop=self.stop_event,
            deadletter_rows=settings.ingest_deadletter_rows_per_message,
            retry_max_s=settings.ingest_retry_max_s,
        )
        self.metrics.spool_batches.set(len(self.spool))
        self.client = self._make_client()

    def _make_client(self) -> IngestClient:
        client = make_client(
            self.settings.ingest_mqtt_client, client_id=self.client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        client.username_pw_set(self.client_id, self.settings.mqtt_ingest_password.get_secret_value())
        if self.settings.mqtt_tls:
            ca = self.settings.mqtt_ca_file
            client.tls_set(ca_certs=str(ca) if ca else None)  # verifies the chain and the host name
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_delivery = self._on_delivery
        return client

    # -- MQTT callbacks ---------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection", reason=str(rc), client_id=self.client_id)
            return
        self._generation += 1
        self.connected.set()
        log.info("connected", client_id=self.client_id, session_present=flags.session_present)
        client.subscribe(f"$share/{self.settings.mqtt_share_group}/{TELEMETRY_FILTER}", qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, codes: list, _p: object) -> None:
        if any(c.is_failure for c in codes):
            log.error("subscription refused", client_id=self.client_id, reasons=[str(c) for c in codes])
            return
        granted = [c.value for c in codes]  # MQTT 3.1.1: the code is the QoS granted
        if min(granted) < 1:
            log.error("subscription granted QoS 0: the broker will not redeliver unstored readings", granted=granted)
        self.metrics.subscribed.set(1)
        # operators and scripts wait for this line: from now on the replica receives readings
        log.info(
            "subscription granted",
            client_id=self.client_id,
            topic=f"$share/{self.settings.mqtt_share_group}/{TELEMETRY_FILTER}",
            qos=granted,
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connected.clear()
        self.metrics.subscribed.set(0)
        # Messages of the lost connection can no longer be acked; the broker sends them again.
        self._pending.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker; reconnecting", reason=str(rc))

    def _on_delivery(self, topic: str, payload: bytes, qos: int, dup: bool, mid: int) -> None:
        """A message in: mid is its packet id, 0 at QoS 0 (stored the same, never acknowledged)."""
        self._received += 1
        self._pending.append(Message(topic, payload, int(time.time() * 1000), dup, mid, self._generation))
        if qos == 2 and not self._qos2_seen:
            self._qos2_seen = True
            log.warning("the broker delivered QoS 2 on a QoS 1 subscription; completing it after store")

    # -- the loop -------------------------------------------------------------------------------
    def _connect(self) -> None:
        self.client.connect(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30)

    def _read_some(self, limit: int) -> None:
        """Read up to `limit` packets that are already waiting (loop_read takes one per call)."""
        for _ in range(limit):
            before = self._received
            if self.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._received == before:
                return

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.metrics.queue_depth.set(len(batch))
        self.pipeline.handle(batch)
        if self.connected.is_set():
            self.client.ack_stored([m.mid for m in batch if m.generation == self._generation])

    def _loop(self) -> None:
        size, max_age = self.settings.ingest_batch_size, self.settings.ingest_batch_ms / 1000
        backoff = 0.2
        while not self.stop_event.is_set():
            if self.client.socket() is None:
                try:
                    self._connect()
                    backoff = 0.2
                except OSError as e:
                    log.warning("broker unreachable", error=str(e), retry_s=backoff)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            sock = self.client.socket()
            first = self._pending[0].received_ms / 1000 if self._pending else None
            timeout = 0.5 if first is None else max(0.0, first + max_age - time.time())
            if self.client.buffered():
                timeout = 0.0
            try:
                readable, writable, _ = select.select([sock], [sock] if self.client.want_write() else [], [], timeout)
            except (OSError, ValueError):
                readable, writable = [], []
            if readable or self.client.buffered():
                self._read_some(size - len(self._pending))
            if writable or self.client.want_write():
                self.client.loop_write()
            self.client.loop_misc()
            if self._pending and (
                len(self._pending) >= size or time.time() - self._pending[0].received_ms / 1000 >= max_age
            ):
                self._flush()
            elif not self._pending and len(self.spool):
                self.pipeline.drain_spool()  # replay while idle

    def start(self) -> None:
        try:
            self.influx.ensure_database()
        except InfluxError as e:  # InfluxDB away at start: readings wait in the spool until it returns
            log.warning(self.influx.what_to_fix(e), error=str(e)[:300])
        self._thread = threading.Thread(target=self._run, name=f"ingest-{self.replica}", daemon=True)
        self._thread.start()
        scheme = "mqtts" if self.settings.mqtt_tls else "mqtt"
        log.info(
            "ingest started",
            client_id=self.client_id,
            broker=f"{scheme}://{self.settings.mqtt_host}:{self.settings.mqtt_port}",
            influx=self.settings.influx_url,
            spool=str(self.spool.path),
        )

    def _run(self) -> None:
        try:
            self._loop()
        except InterruptedError:
            pass
        except Exception:
            log.exception("ingest loop failed")
            self.stop_event.set()
            raise

    def stop(self) -> None:
        self.stop_event.set()
        if hasattr(self, "_thread"):
            self._thread.join(15)
        self.client.disconnect()
        self.spool.close()
        self.influx.close()

    def run_forever(self, metrics_port: int | None = None) -> None:
        if metrics_port:
            start_http_server(metrics_port, addr=self.settings.ingest_metrics_host, registry=self.metrics.registry)
        self.start()
        try:
            while not self.stop_event.wait(1):
                pass
        finally:
            self.stop()
