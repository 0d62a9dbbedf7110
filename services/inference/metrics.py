"""Every metric the inference service exports (names are a contract with the chart's dashboards)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_duration = Histogram(
            "streamrec_inference_request_duration_seconds", "gRPC request latency by method and status code",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=registry)
        self.announcement_mismatches = Counter(
            "streamrec_inference_announcement_mismatches_total",
            "model-versions records whose aliases the registry did not confirm (ignored)", registry=registry)
        self.batch_size = Histogram(
            "streamrec_inference_batch_size", "requests encoded together in one user-encoder run",
            buckets=BATCH_BUCKETS, registry=registry)
        self.model_version = Gauge(
            "streamrec_inference_model_version", "model version served per alias (0 when none)",
            ["model", "alias"], registry=registry)
        self.model_ready = Gauge(
            "streamrec_inference_model_ready", "1 when a production model is loaded and warmed up", registry=registry)
        self.model_load_duration = Histogram(
            "streamrec_inference_model_load_duration_seconds", "download + load + index + warm-up of one version",
            buckets=LOAD_BUCKETS, registry=registry)
        self.model_load_failures = Counter(
            "streamrec_inference_model_load_failures_total", "versions that failed to download, verify or load",
            registry=registry)
        self.model_delta = Gauge(
            "streamrec_inference_model_delta", "weight delta of the served version per alias (0: as registered)",
            ["model", "alias"], registry=registry)
        self.deltas_applied = Counter(
            "streamrec_inference_model_deltas_applied_total", "weight deltas applied to the production version",
            registry=registry)
        self.delta_failures = Counter(
            "streamrec_inference_model_delta_failures_total", "weight deltas refused (malformed, or for another "
            "item table)", registry=registry)
        self.delta_apply_duration = Histogram(
            "streamrec_inference_model_delta_apply_duration_seconds", "download + apply + warm-up of one weight delta",
            buckets=LOAD_BUCKETS, registry=registry)
        self.history_lag = Gauge(
            "streamrec_inference_history_lag_records", "events not yet applied to user histories",
            ["partition"], registry=registry)
        self.history_freshness = Gauge(
            "streamrec_inference_history_freshness_seconds", "age of the newest event reflected in user histories",
            registry=registry)
        self.index_items = Gauge(
            "streamrec_inference_index_items", "items in the retrieval index of the production model",
            registry=registry)
        # Additions beyond the contract list.
        self.history_users = Gauge(
            "streamrec_inference_history_users", "users with an in-memory history", registry=registry)
        self.history_events = Counter(
            "streamrec_inference_history_events_total", "events applied to user histories", registry=registry)
        self.cold_start = Counter(
            "streamrec_inference_cold_start_total", "Recommend answers served from popularity", registry=registry)
        self.cache_lookups = Counter(
            "streamrec_inference_cache_lookups_total", "Recommend cache lookups (results, user_vectors) by outcome",
            ["cache", "outcome"], registry=registry)
        self.loop_restarts = Counter(
            "streamrec_inference_loop_restarts_total", "background loops (model watcher, history follower) restarted "
            "after dying", ["loop"], registry=registry)
        self.loop_healthy = Gauge(
            "streamrec_inference_loop_healthy", "0 while a background loop keeps failing (health is NOT_SERVING)",
            ["loop"], registry=registry)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.request_duration.labels(method, code).observe(seconds)
