"""The ingester's configuration (section ``ingester:``; env ``STREAMREC_INGESTER_<KEY>``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from recmodel.data.types import (
    DEFAULT_EVENT_WEIGHTS,  # the event types the model knows, and their weights
)
from services.common.config import KafkaConfig, MetricsConfig, Section, ServiceConfig

# 1990-01-01: anything older is almost surely seconds mistaken for milliseconds, or garbage.
MIN_TIMESTAMP_MS = 631_152_000_000


class IngesterSection(Section):
    group_id: str = "streamrec-ingester"
    # Static group membership (e.g. the pod name): a restarted replica takes its partitions back
    # at once instead of waiting for the session timeout and a rebalance.
    group_instance_id: str | None = None
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # Timestamp bounds: how far ahead of this process's clock, and how far behind it (None: no
    # age limit, so historical datasets can be replayed), an event may be.
    max_future_s: float = Field(300.0, ge=0)
    max_age_s: float | None = Field(None, gt=0)
    min_timestamp_ms: int = Field(MIN_TIMESTAMP_MS, ge=0)
    # A record without a timestamp takes the Kafka record's timestamp instead of being rejected.
    timestamp_from_record: bool = True
    max_record_bytes: int = Field(64 * 1024, ge=64)
    max_id_length: int = Field(256, ge=1)
    max_context_entries: int = Field(64, ge=0)
    max_text_length: int = Field(16 * 1024, ge=1)
    # Dedup by event_id over the last `dedup_window` ids; rebuilt at start-up and on every partition
    # assignment from the tail of the `events` topic, so a replay after a crash is not double-counted.
    dedup_window: int = Field(200_000, ge=0)
    rebuild_dedup_window: bool = True
    batch_max_records: int = Field(2000, ge=1)
    poll_timeout_ms: int = Field(200, ge=1)
    lag_interval_s: float = Field(5.0, gt=0)

    @field_validator("event_weights")
    @classmethod
    def _types_are_lower_case(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one event type is needed")
        return {k.strip().lower(): float(v) for k, v in value.items()}


class IngesterMetricsConfig(MetricsConfig):
    port: int = Field(9103, ge=0, le=65535)


class IngesterConfig(ServiceConfig):
    kafka: KafkaConfig = KafkaConfig(client_id="streamrec-ingester")
    metrics: IngesterMetricsConfig = IngesterMetricsConfig()
    ingester: IngesterSection = IngesterSection()
