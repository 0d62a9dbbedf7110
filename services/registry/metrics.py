"""The registry's Prometheus metrics (names are a contract with the chart's dashboards and alerts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.versions_registered = Counter(
            "streamrec_registry_versions_registered_total", "Model versions registered", ["model"], registry=registry)
        self.promotions = Counter(
            "streamrec_registry_promotions_total", "Alias moves (gate, manual or rollback)", ["model", "alias"],
            registry=registry)
        self.gate_rejections = Counter(
            "streamrec_registry_gate_rejections_total", "Versions the promotion gate kept as candidate", ["model"],
            registry=registry)
        self.gate_holds = Counter(
            "streamrec_registry_gate_holds_total",
            "Versions the promotion gate held as candidate for want of usable paired evidence", ["model"],
            registry=registry)
        self.production_staleness = Gauge(
            "streamrec_registry_production_staleness_seconds",
            "Age of the production version while a newer version exists (0 when production is the newest)",
            ["model"], registry=registry)
        self.artifact_bytes = Gauge(
            "streamrec_registry_artifact_bytes", "Bytes of artifacts in the artifact store", registry=registry)
        self.request_duration = Histogram(
            "streamrec_registry_request_duration_seconds", "gRPC request latency", ["method", "code"],
            buckets=LATENCY_BUCKETS, registry=registry)
        self.outbox_backlog = Gauge(
            "streamrec_registry_outbox_backlog_records", "Changes stored but not yet acknowledged by Kafka",
            registry=registry)
        self.outbox_parked = Gauge(
            "streamrec_registry_outbox_parked_records",
            "Announcements that can never be sent (too large for Kafka), parked so later ones go out",
            registry=registry)
        self.upload_failures = Counter(
            "streamrec_registry_upload_failures_total", "Uploads refused or interrupted", ["reason"],
            registry=registry)
        self.deltas_registered = Counter(
            "streamrec_registry_deltas_registered_total", "Weight deltas registered", ["model"], registry=registry)
        self.delta_failures = Counter(
            "streamrec_registry_delta_failures_total", "Weight deltas refused (reason: the gRPC status)",
            ["reason"], registry=registry)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.request_duration.labels(method, code).observe(seconds)
