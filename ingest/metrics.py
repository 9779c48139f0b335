"""Prometheus metrics of the ingest service (served on INGEST_METRICS_PORT, one port per replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Publish-to-stored latency in seconds: fine buckets so that p50/p99 can be read off them.
LAG_BUCKETS = (
    0.002,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("village_ingest_messages", "MQTT messages received", registry=r)
        self.redelivered = Counter(
            "village_ingest_redelivered_messages", "messages received again after a reconnect (DUP flag)", registry=r
        )
        self.received = Counter("village_ingest_readings_received", "readings parsed from messages", registry=r)
        self.stored = Counter("village_ingest_readings_stored", "readings written to InfluxDB", registry=r)
        self.rejected = Counter(
            "village_ingest_readings_rejected", "readings dead-lettered, by reason", ["reason"], registry=r
        )
        self.spooled = Counter("village_ingest_readings_spooled", "readings written to the local spool", registry=r)
        self.late = Counter(
            "village_ingest_readings_late",
            "readings of sealed (digested) days, stored apart in the retention policy `late`",
            registry=r,
        )
        self.replayed = Counter("village_ingest_readings_replayed", "spooled readings replayed to InfluxDB", registry=r)
        self.duplicates = Counter(
            "village_ingest_duplicates", "readings whose (device, seq) was seen recently", registry=r
        )
        self.gaps = Counter("village_ingest_seq_gaps", "readings missing by sequence number (estimate)", registry=r)
        self.ts_missing = Counter("village_ingest_ts_missing", "readings without ts, stamped on receipt", registry=r)
        self.influx_errors = Counter(
            "village_ingest_influx_errors",
            "failed InfluxDB writes by status: the HTTP status, timeout, connection, or refused_lines "
            "(a 400/422 naming lines, which are dead-lettered)",
            ["status"],
            registry=r,
        )
        self.subscribed = Gauge("village_ingest_subscribed", "1 while subscribed to the device topics", registry=r)
        self.spool_batches = Gauge("village_ingest_spool_batches", "batches waiting in the spool", registry=r)
        self.queue_depth = Gauge("village_ingest_queue_depth", "messages received but not yet stored", registry=r)
        self.lag = Histogram(
            "village_ingest_store_lag_seconds",
            "reading timestamp to stored in InfluxDB (publish-to-stored for live readings)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
