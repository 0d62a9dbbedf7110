"""Registry configuration: the ``registry:`` section plus the shared kafka/metrics/grpc sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config import GrpcConfig, KafkaConfig, MetricsConfig, Section, ServiceConfig
from services.common.tls import TlsConfig

# Room left in a RegisterDelta request beside its payload (offsets, names, digest).
DELTA_REQUEST_OVERHEAD_BYTES = 64 * 1024


class S3Config(Section):
    """S3-compatible object storage for artifacts (used when ``registry.artifact_store`` is ``s3``)."""

    bucket: str = "streamrec-artifacts"
    prefix: str = "artifacts/"
    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000 for MinIO; None for AWS")
    region: str | None = None
    # Credentials come from the environment / instance role (boto3's chain), never from values.
    access_key_id: str | None = None
    secret_access_key: str | None = None
    create_bucket: bool = False


class GateConfig(Section):
    """Automatic promotion to ``production`` on paired evidence (see ``services/registry/gate.py``)."""

    # The paired metric the trainer reports as gate.candidate_<metric> / gate.production_<metric>.
    metric: str = "hr@10"
    # Reject only when the upper confidence bound of candidate - production is below -tolerance.
    tolerance: float = Field(0.01, ge=0)
    # Fewer paired holdout events than this is no evidence (the version is held).
    min_events: int = Field(200, ge=1)
    # Without usable evidence, promote anyway once production is this old (a few export intervals).
    stale_after_s: float = Field(120.0, gt=0)
    # How often held versions are looked at again and the staleness gauge refreshed.
    sweep_interval_s: float = Field(5.0, gt=0)
    # Promote the very first version of a model (no production to compare with).
    promote_first: bool = True


class AuthorizationConfig(Section):
    """Who may change what, by the Common Name of the caller's client certificate.

    Reads (GetVersion, ListVersions, GetAlias, GetDelta) are open to any authenticated caller;
    ``"*"`` in a list means the same for that group.
    """

    can_register: list[str] = Field(["trainer"], description="RegisterVersion, RegisterDelta")
    can_manage: list[str] = Field(["operator"], description="SetAlias, Rollback, ArchiveVersion")
    # Artifacts hold recent user histories: only the servers that need them may fetch them. The trainer
    # scores production's artifact beside each candidate for the promotion gate (and built every
    # history in it anyway).
    can_download: list[str] = Field(["inference", "trainer"], description="DownloadArtifact, DownloadDelta")


class RegistrySection(Section):
    database_url: str = Field(
        "sqlite:///data/registry/registry.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user:pass@host/db",
    )
    artifact_store: Literal["filesystem", "s3"] = "filesystem"
    artifact_root: str = "data/registry/artifacts"
    # Uploads are staged here before they are verified; on the artifact root's filesystem by default.
    staging_dir: str | None = None
    s3: S3Config = S3Config()
    gate: GateConfig = GateConfig()
    # Retention: keep the newest N active versions of each model plus every alias target.
    keep_last: int = Field(20, ge=1)
    max_artifact_bytes: int = Field(4 * 1024**3, ge=1024)
    chunk_bytes: int = Field(1024 * 1024, ge=1024)
    # Seconds between outbox publish attempts while Kafka is unreachable.
    publish_retry_s: float = Field(1.0, gt=0)
    publish_timeout_s: float = Field(10.0, gt=0)
    # An announcement larger than this is parked (kept, counted, shown by `streamrec models`), never
    # sent: below Kafka's default 1 MiB message limit, so one oversized record cannot block the rest.
    max_announcement_bytes: int = Field(512 * 1024, ge=1024)
    # Longest free-text reason accepted with SetAlias / Rollback.
    max_reason_chars: int = Field(1024, ge=16)
    # A weight delta travels in one gRPC message: its payload must leave room in grpc.max_message_bytes
    # for the rest of the request (checked by RegistryConfig).
    max_delta_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    # The newest N deltas of each model are kept (older ones are deleted as new ones arrive).
    keep_deltas: int = Field(8, ge=1)
    authorization: AuthorizationConfig = AuthorizationConfig()


class RegistryConfig(ServiceConfig):
    kafka: KafkaConfig = KafkaConfig()
    metrics: MetricsConfig = MetricsConfig(port=9101)
    # Uploads of large artifacts take a while; callers normally set their own deadline.
    grpc: GrpcConfig = GrpcConfig(port=50051, default_deadline_s=600.0)
    tls: TlsConfig = TlsConfig()
    registry: RegistrySection = RegistrySection()

    @model_validator(mode="after")
    def _a_delta_fits_in_a_message(self) -> "RegistryConfig":
        # A RegisterDelta request carries the payload plus its offsets and names; gRPC refuses a request
        # over grpc.max_message_bytes before the registry could say why.
        if self.registry.max_delta_bytes + DELTA_REQUEST_OVERHEAD_BYTES > self.grpc.max_message_bytes:
            raise ValueError(
                f"registry.max_delta_bytes ({self.registry.max_delta_bytes}) plus "
                f"{DELTA_REQUEST_OVERHEAD_BYTES // 1024} KiB for the rest of a RegisterDelta request must be at most "
                f"grpc.max_message_bytes ({self.grpc.max_message_bytes}): lower the first or raise the second")
        return self
