"""The ingester's Prometheus metrics (names are a contract with the chart's dashboards and alerts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS


class IngesterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_in = Counter(
            "streamrec_ingester_records_in_total", "Records consumed", ["topic"], registry=registry)
        self.records_out = Counter(
            "streamrec_ingester_records_out_total", "Records produced and acknowledged", ["topic"], registry=registry)
        self.rejected = Counter(
            "streamrec_ingester_rejected_total", "Records sent to the DLQ, by error code", ["code"], registry=registry)
        self.dedup_hits = Counter(
            "streamrec_ingester_dedup_hits_total", "Events dropped as duplicates of an event_id in the window",
            registry=registry)
        self.batch_duration = Histogram(
            "streamrec_ingester_batch_duration_seconds", "Time to validate, produce, await acks and commit one batch",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.consumer_lag = Gauge(
            "streamrec_ingester_consumer_lag_records", "Records between the committed position and the partition end",
            ["topic", "partition"], registry=registry)
        self.last_event_timestamp = Gauge(
            "streamrec_ingester_last_event_timestamp_seconds", "Event timestamp of the newest event forwarded",
            registry=registry)
        # Extra (not in the chart contract): size of the dedup window, batch sizes.
        self.dedup_window_ids = Gauge(
            "streamrec_ingester_dedup_window_ids", "Event ids held in the dedup window", registry=registry)
        self.batch_records = Histogram(
            "streamrec_ingester_batch_records", "Records per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=registry)
