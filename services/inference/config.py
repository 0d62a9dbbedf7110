"""Configuration of the inference service (``inference:`` section plus the shared ones)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.common.config import GrpcConfig, KafkaConfig, MetricsConfig, Section, ServiceConfig
from services.common.process import available_cpus
from services.common.tls import TlsConfig


class BatchingConfig(Section):
    """Concurrent requests for the same model are encoded in one run of the user encoder."""

    # 1 turns batching off (each request runs the encoder itself).
    max_batch: int = Field(32, ge=1, le=4096)
    # How long the first request of a batch waits for company.
    max_wait_ms: float = Field(1.0, ge=0.0, le=100.0)


class CacheConfig(Section):
    """Recommend caches keyed by the user's history version and the model version (services/inference/cache.py).

    A new event of the user or a model swap is never answered from them; entries also expire after
    ``ttl_s`` (the encoder reads the time since the last interaction). 0 entries turns a cache off.
    """

    # Whole answers, per (user, history, model, k, excluded items, categories); ~3 KB each at k = 10.
    max_results: int = Field(20_000, ge=0)
    # User vectors, per (user, history, model): a new k or filter reuses the encoder run; ~0.5 KB each.
    max_user_vectors: int = Field(100_000, ge=0)
    ttl_s: float = Field(30.0, gt=0.0, le=86_400.0)


class IndexConfig(Section):
    """Retrieval: exact dot product below ``ann_threshold`` items, a faiss IVF index above (float16 codes,
    candidates rescored exactly; ``services.inference.retrieval.build_ivf``).

    Chosen by ``streamrec bench index`` (2 cores): at 1M items exact search is 12-25 ms p50, while HNSW
    (usearch, M=16, ef=128) took 246 s to build and reached recall@10 0.34. The IVF shape was measured on
    a trained model's user vectors against its grown catalog (``--queries-from model``, 1M items, 5 % of
    the lists scanned): 4 lists per sqrt(items) builds in 29.7 s, p50 1.61 ms, recall@10 1.0; 1 per sqrt
    4.4 s, 1.28 ms, 0.999; **0.5 per sqrt 0.87 s, 0.86 ms, 0.9975** (0.9525 on the harder Gaussian
    mixture); 0.25 1.1 s, 1.13 ms, 0.992. Scanning 3 % at 0.5: 0.63 ms, 0.9835. A build under a second
    keeps a model swap at 1M items within seconds.
    """

    # Exact search costs ~5 ms at 200k items on 2 cores, and needs no build.
    ann_threshold: int = Field(200_000, ge=0)
    # Inverted lists: 0 = lists_per_sqrt * sqrt(items). Each query scans nprobe_fraction of them.
    nlist: int = Field(0, ge=0)
    lists_per_sqrt: float = Field(0.5, gt=0.0, le=64.0)
    nprobe_fraction: float = Field(0.05, gt=0.0, le=1.0)
    # ANN candidates fetched per wanted item, so filtering (seen/excluded/unavailable) still leaves k.
    oversample: float = Field(2.0, ge=1.0)
    # faiss OpenMP threads and numpy BLAS threads per server process (retrieval.set_search_threads). A
    # Recommend searches one query, which more threads split only to spin-wait for each other: bench serve,
    # concurrency 32, 2 cores and 2 processes, a thread per core against 1: 1M items (faiss IVF) 2.32 ms of
    # server CPU per Recommend against 1.85; 100,000 items (exact search, BLAS) 42 ms against 1.9-2.1.
    search_threads: int = Field(1, ge=1, le=256)


class InferenceSection(Section):
    model_name: str = "recommender"
    # Registry gRPC address; empty means "serve from artifact_source only" (local development).
    registry_target: str = "127.0.0.1:50051"
    registry_timeout_s: float = Field(60.0, gt=0)
    # Optional directory of artifacts laid out as <dir>/<model_name>/<version>/ (no registry needed).
    artifact_source: str | None = None
    # Where downloaded artifacts are unpacked.
    cache_dir: str = "/tmp/streamrec-inference"
    # Share of users (stable hash of user_id) served by the `canary` alias when one is set; 0 = off.
    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    max_k: int = Field(1000, ge=1)
    max_context_items: int = Field(200, ge=0)
    max_exclude_items: int = Field(10_000, ge=0)
    max_categories: int = Field(64, ge=0)
    max_id_length: int = Field(256, ge=1)
    # Bounded per-user history kept in memory (the encoder reads the last max_len of it anyway).
    history_length: int = Field(200, ge=1)
    max_users: int = Field(2_000_000, ge=1)
    # Consume `events` for real-time histories (off: serve the snapshot only).
    follow_events: bool = True
    # Half-life of the recency-weighted popularity used for cold start.
    popularity_half_life_s: float = Field(6 * 3600.0, gt=0)
    # Requests with less time than this left before their deadline are refused up front.
    min_time_remaining_ms: float = Field(1.0, ge=0)
    warmup_requests: int = Field(8, ge=0)
    # How often to ask the registry for a weight delta of the production version (the trainer's
    # trainer.delta_interval_s); 0: never, serve full versions only. Needs a registry (not artifact_source).
    delta_poll_s: float = Field(0.25, ge=0.0, le=3600.0)
    # ONNX Runtime intra-op threads of the user encoder (they sleep between runs). bench serve at 1M items,
    # concurrency 32, 2 cores: 1 thread 664 QPS, 2 threads 691 (ONNX Runtime's default, a spinning thread per
    # core, 518 QPS at 2.9 ms server CPU per request instead of 1.7).
    encoder_threads: int = Field(1, ge=1, le=64)
    # Server processes sharing the port (SO_REUSEPORT); each loads its own models, follows the events itself
    # and keeps its own caches. 0: one per core this process may use (services.common.process.available_cpus):
    # a Python process serves on one core at a time. bench serve at 1M items, concurrency 32, with its client
    # on the same 2 cores: 2 processes p50 27 ms and p99 85 ms, 1 process 48 and 92 ms.
    processes: int = Field(0, ge=0, le=256)
    batching: BatchingConfig = BatchingConfig()
    index: IndexConfig = IndexConfig()
    cache: CacheConfig = CacheConfig()

    def worker_processes(self) -> int:
        """``processes``, or one per available core when it is 0."""
        return self.processes or available_cpus()


class InferenceConfig(ServiceConfig):
    kafka: KafkaConfig = KafkaConfig(client_id="streamrec-inference")
    metrics: MetricsConfig = MetricsConfig(port=9102)
    # A Recommend request is ids and a few options: 1 MiB holds max_exclude_items of long ids, and
    # anything larger is refused before it is parsed. Calls without a deadline get 5 s.
    grpc: GrpcConfig = GrpcConfig(port=50052, max_message_bytes=1024 * 1024, default_deadline_s=5.0)
    # Serves Recommend with it (client_auth "require": apps present certificates; "none" plus
    # tokens_file: apps send a bearer token) and calls the registry as this identity.
    tls: TlsConfig = TlsConfig()
    inference: InferenceSection = InferenceSection()

    @model_validator(mode="after")
    def _needs_a_source(self) -> "InferenceConfig":
        if not self.inference.registry_target and not self.inference.artifact_source:
            raise ValueError("inference.registry_target or inference.artifact_source must be set")
        if self.inference.processes > 1 and self.grpc.port == 0:
            raise ValueError("inference.processes > 1 needs a fixed grpc.port")
        return self

    def worker_processes(self) -> int:
        """Server processes to run: ``inference.processes``, or one per available core when it is 0; one on an
        ephemeral port (grpc.port 0), which processes cannot share."""
        if self.inference.processes == 0 and self.grpc.port == 0:
            return 1
        return self.inference.worker_processes()
