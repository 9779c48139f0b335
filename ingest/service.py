"""The ingest service: an MQTT consumer on the shared subscription, acking only stored readings.

paho's network thread only queues incoming messages; one worker thread takes them in
batches, hands each batch to the `Pipeline` and acknowledges the batch's messages (in
the order received) once it is stored. The session is persistent (MQTT 5, clean start
off, a long session expiry), so messages that arrive while a replica is down, or that
were received but not acknowledged when it died, are delivered again when it returns.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server

from core.broker_auth import TELEMETRY_FILTER
from core.catalogue import get_catalogue
from core.db import get_engine
from core.influx import InfluxV1
from core.log import get_logger
from core.settings import Settings
from ingest.enrich import DeviceDirectory
from ingest.metrics import IngestMetrics
from ingest.payload import Validator
from ingest.pipeline import Message, Pipeline
from ingest.spool import Spool

log = get_logger("ingest")

SESSION_EXPIRY_S = 7 * 86_400


class IngestService:
    def __init__(self, settings: Settings, replica: int = 0, metrics: IngestMetrics | None = None) -> None:
        self.settings = settings
        self.replica = replica
        self.client_id = f"{settings.mqtt_client_id}-{replica}"
        self.stop_event = threading.Event()
        self.metrics = metrics or IngestMetrics()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._queue: deque[Message] = deque()
        self._cond = threading.Condition()
        self._generation = 0
        catalogue = get_catalogue(settings.catalogue_file)
        self.influx = InfluxV1.from_settings(settings)
        self.spool = Spool(settings.resolved_spool_dir() / f"{self.client_id}.sqlite", settings.spool_max_bytes)
        engine = get_engine(settings.resolved_database_url())
        self.pipeline = Pipeline(
            catalogue=catalogue,
            validator=Validator(
                catalogue,
                settings.ingest_max_payload_bytes,
                settings.ingest_max_future_s,
                settings.ingest_retention_days,
            ),
            directory=DeviceDirectory(engine, ttl=settings.ingest_registry_ttl_s),
            influx=self.influx,
            spool=self.spool,
            engine=engine,
            metrics=self.metrics,
            stop=self.stop_event,
        )
        self.metrics.spool_batches.set(len(self.spool))
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.username_pw_set(
            self.settings.mqtt_ingest_username, self.settings.mqtt_ingest_password.get_secret_value()
        )
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- MQTT callbacks (paho's network thread) -----------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the connection", reason=str(rc), client_id=self.client_id)
            return
        with self._cond:
            self._generation += 1
            # Messages of the old connection can no longer be acked; the broker sends them again.
            self._queue.clear()
        self.connected.set()
        log.info("connected", client_id=self.client_id, session_present=flags.session_present)
        topic = f"$share/{self.settings.mqtt_share_group}/{TELEMETRY_FILTER}"
        client.subscribe(topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, codes: list, _p: object) -> None:
        if any(c.is_failure for c in codes):
            log.error("subscription refused", reasons=[str(c) for c in codes])
        else:
            self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker; reconnecting", reason=str(rc))

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        m = Message(msg.topic, msg.payload, int(time.time() * 1000), bool(msg.dup), msg.mid, self._generation)
        with self._cond:
            self._queue.append(m)
            if len(self._queue) == 1:
                self._cond.notify()

    # -- worker ---------------------------------------------------------------------------------
    def _take_batch(self) -> list[Message]:
        size, wait_s = self.settings.ingest_batch_size, self.settings.ingest_batch_ms / 1000
        with self._cond:
            if not self._queue:
                self._cond.wait(0.5)
            if not self._queue:
                return []
            deadline = time.monotonic() + wait_s
            # Wait a little for more messages unless the batch is already full.
            while len(self._queue) < size and not self.stop_event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.01))
            batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _work(self) -> None:
        while not self.stop_event.is_set():
            batch = self._take_batch()
            if not batch:
                if len(self.spool):  # replay the spool while idle
                    self.pipeline.drain_spool()
                continue
            try:
                self.pipeline.handle(batch)
            except InterruptedError:
                return
            generation = self._generation
            for m in batch:
                if m.generation == generation:
                    self.client.ack(m.mid, 1)

    def start(self) -> None:
        self.influx.ensure_database()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.settings.mqtt_receive_maximum
        self.client.connect_async(
            self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._worker = threading.Thread(target=self._work, name=f"ingest-worker-{self.replica}", daemon=True)
        self._worker.start()
        log.info(
            "ingest started",
            client_id=self.client_id,
            broker=f"{self.settings.mqtt_host}:{self.settings.mqtt_port}",
            influx=self.settings.influx_url,
            spool=str(self.spool.path),
        )

    def stop(self) -> None:
        self.stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if hasattr(self, "_worker"):
            self._worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        self.spool.close()
        self.influx.close()

    def run_forever(self, metrics_port: int | None = None) -> None:
        if metrics_port:
            start_http_server(metrics_port, addr="0.0.0.0", registry=self.metrics.registry)
        self.start()
        try:
            while not self.stop_event.wait(1):
                pass
        finally:
            self.stop()
