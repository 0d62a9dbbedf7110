"""Trainer configuration: one pydantic model, sections ``kafka``, ``metrics``, ``trainer``.

Defaults run the local stack (CPU, leader election off, checkpoints under ./data/trainer). Env
overrides work as ``STREAMREC_TRAINER_<KEY>`` (e.g. ``STREAMREC_TRAINER_EXPORT_INTERVAL_S=10``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config import KafkaConfig, MetricsConfig, Section, ServiceConfig
from recmodel.recipe import RECIPE
from services.common.tls import TlsConfig


class ModelSection(Section):
    """Hyperparameters handed to ``recmodel.train.IncrementalTrainer`` under the same names; the
    defaults are recmodel's recipe (``recmodel.recipe.RECIPE``)."""

    dim: int = Field(RECIPE["dim"], ge=4)
    max_len: int = Field(RECIPE["max_len"], ge=2)
    capacity: int = Field(50_000, ge=16, description="item vocabulary size (least recently seen items are evicted)")
    seed: int = 0
    lr: float = Field(RECIPE["lr"], gt=0)
    batch_size: int = Field(RECIPE["batch_size"], ge=1, description="events per optimisation step")
    replay_batch: int = Field(RECIPE["replay_batch"], ge=0)
    n_random_negatives: int = Field(RECIPE["n_random_negatives"], ge=1)
    full_softmax_items: int = Field(RECIPE["full_softmax_items"], ge=0,
                                    description="full softmax while the catalog has at most this many items")
    replay_size: int = Field(20_000, ge=0)
    replay_history: int = Field(RECIPE["replay_history"], ge=1, le=100_000,
                                description="interactions kept per replayed user (replay windows are cut from them)")
    n_heads: int = Field(RECIPE["n_heads"], ge=1)
    n_layers: int = Field(RECIPE["n_layers"], ge=1)
    dropout: float = Field(RECIPE["dropout"], ge=0, lt=1)
    temperature: float = Field(RECIPE["temperature"], gt=0)
    id_gate_prior: float = Field(RECIPE["id_gate_prior"], ge=0)
    id_dropout: float = Field(RECIPE["id_dropout"], ge=0, lt=1,
                              description="share of item lookups trained on the text tower alone")
    transition_weight: float = Field(RECIPE["transition_weight"], ge=0,
                                     description="weight of the item-to-item transition bonus in the score (0: off)")
    transition_window: int = Field(RECIPE["transition_window"], ge=1)
    transition_decay: float = Field(RECIPE["transition_decay"], gt=0, le=1)
    transition_max_next: int = Field(RECIPE["transition_max_next"], ge=1)
    transition_span: int = Field(RECIPE["transition_span"], ge=1, le=64,
                                 description="earlier items of a user each training target is counted from")
    transition_span_decay: float = Field(RECIPE["transition_span_decay"], gt=0, le=1)
    transition_backward: float = Field(RECIPE["transition_backward"], ge=0, le=1,
                                       description="weight of the count back from a target to the items before it")
    transition_top: int = Field(RECIPE["transition_top"], ge=0, le=10_000,
                                description="items per user the table boosts, its best (0: every item it suggests)")
    use_text: bool = True
    # "minilm": the offline-packaged all-MiniLM-L6-v2 (production); "hashing": instant, for tests.
    text_encoder: Literal["minilm", "hashing"] = "minilm"
    hashing_dim: int = Field(64, ge=4, description="dimension of the hashing text encoder")
    event_weights: dict[str, float] | None = None
    # The standing holdout: this fraction of (user, item) pairs is input only, never a training target, so
    # every model version can be judged on the recent interactions (recmodel/holdout.py,
    # services/trainer/holdout.py).
    holdout_fraction: float = Field(0.05, ge=0, lt=1)

    def trainer_kwargs(self) -> dict:
        out = self.model_dump(exclude={"text_encoder", "hashing_dim"})
        if out["event_weights"] is None:
            out.pop("event_weights")
        return out


class LeaderElectionSection(Section):
    """coordination.k8s.io/v1 Lease election; off for the local stack (one trainer)."""

    enabled: bool = False
    lease_name: str = "streamrec-trainer"
    # Empty: the pod's namespace from the service-account mount, else "default".
    namespace: str = ""
    # Empty: $POD_NAME, else the host name plus the process id.
    identity: str = ""
    lease_duration_s: float = Field(15.0, gt=0)
    renew_deadline_s: float = Field(10.0, gt=0)
    retry_period_s: float = Field(2.0, gt=0)
    # Empty: in-cluster config, falling back to ~/.kube/config.
    kubeconfig: str = ""

    @model_validator(mode="after")
    def _timings(self) -> "LeaderElectionSection":
        # A leader must give up before anybody else may take over (client-go's rule).
        if not self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("renew_deadline_s must be shorter than lease_duration_s")
        if not self.retry_period_s < self.renew_deadline_s:
            raise ValueError("retry_period_s must be shorter than renew_deadline_s")
        return self


class DistributedSection(Section):
    """Data-parallel training over the GPUs of one pod (torch.distributed, NCCL); rank 0 consumes and exports."""

    enabled: bool = False
    # 0: every visible CUDA device.
    world_size: int = Field(0, ge=0)
    backend: Literal["nccl", "gloo"] = "nccl"
    master_port: int = Field(29512, ge=1, le=65535)


class GateEvidenceSection(Section):
    """Champion/challenger: candidate and production scored on the same recent holdout events at each export."""

    # The most recent holdout interactions kept for scoring (0: send no evidence; the gate then holds).
    holdout_events: int = Field(2000, ge=0)
    k: int = Field(10, ge=1, description="hit@k of the paired comparison (gate.candidate_hr@k)")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the bound on candidate - production")
    cache_versions: int = Field(3, ge=1, description="exported versions kept loaded as possible production models")


class TrainerSection(Section):
    registry_target: str = "127.0.0.1:50051"
    # Once caught up with the stream: passes over the replay buffer spent on idle time (reset by new
    # events), a few steps per loop turn so new events are picked up at once.
    idle_replay_epochs: float = Field(RECIPE["idle_replay_epochs"], ge=0)
    idle_replay_steps: int = Field(2, ge=1)
    registry_timeout_s: float = Field(120.0, gt=0)
    model_name: str = "recommender"
    auto_promote: bool = True
    trainer_id: str = ""  # empty: the leader-election identity
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch's intra-op threads. 0: one per core this process may use (services.common.process.available_cpus,
    # a Kubernetes CPU limit rather than the node's cores that torch's own default counts), unless
    # OMP_NUM_THREADS is set. Alone on 2 cores 2 threads train 2,042 events/s and 1 thread 1,506 (bench train);
    # sharing them with the rest of the stack, 1 thread trains faster (see services.stack.stack).
    torch_threads: int = Field(0, ge=0, le=256)
    # Large blocks from the allocator's heaps, kept for reuse when freed, instead of fresh page-faulted
    # mappings at every step (services.common.process.keep_freed_memory): ~25 % more events/s on
    # ml-latest-small for ~16 % more peak memory. glibc only; elsewhere a no-op.
    keep_freed_memory: bool = True
    consumer_group: str = "streamrec-trainer"  # offsets are committed only for lag visibility
    poll_max_records: int = Field(2000, ge=1, description="events per micro-batch at most")
    # Behind the end of `events` by more than catch_up_lag records (summed over partitions, refreshed
    # every 2 s): train catch_up_batch_size events per step instead of model.batch_size, so a step's
    # cost spreads over more events (one window per user carries all of that user's new targets)
    # until the trainer has caught up. Not behind, a step takes one micro-batch's events, from batch_size up to
    # catch_up_batch_size (services.trainer.service.step_events), so steps grow with a fast stream. 0 turns
    # both off.
    catch_up_lag: int = Field(1000, ge=1)
    catch_up_batch_size: int = Field(2048, ge=0)
    # While the stream arrives faster than the trainer consumes it training every user (as measured behind it,
    # within the last minute), a step trains the new windows of at most this many of its micro-batch's users
    # up to catch_up_lag records behind (caught up, too), and fewer in proportion as the lag grows (half as
    # many at twice the lag, at least 8), drawn at random: the lag settles where the trainer keeps up with the
    # stream, training as many users as that allows. Every event still enters the catalog, the histories, the
    # transition table (which the served model reads) and the replay buffer, and idle replay trains the windows
    # left out once the trainer has caught up. A backlog with no faster stream behind it (a restart, a
    # backfill) is trained in full. 0: no bound (a trainer slower than the stream then falls ever further behind).
    catch_up_max_users: int = Field(64, ge=0)
    # While catching up, the prequential metrics predict at most this many events of a micro-batch (spread
    # over it) instead of eval_per_batch: ranking the whole catalog for each costs about as much as training
    # a window. 0: eval_per_batch throughout.
    catch_up_eval_per_batch: int = Field(32, ge=0)
    # While the trainer is saturated (behind by more than catch_up_lag, or every poll since the last
    # export came back full, so it never reached the end of `events`), publishing a version takes at most
    # this share of the training thread: the pause after an export stretches to its publish time
    # * (1 - share) / share when that is longer than export_interval_s. A trainer that lags then spends its
    # time closing the gap rather than judging versions that are stale anyway; one that keeps up exports
    # every export_interval_s. 1 keeps export_interval_s always. At 5,000 events/s on 2 cores (`streamrec
    # bench pipeline`, every poll full), judging a version took ~4.4 s: with 0.25 publishing took 19-25 % of
    # the thread and the trainer trained 3,960 events/s; with 0.1, 4,910, and 5,000 events/s were sustained.
    catch_up_publish_share: float = Field(0.1, gt=0, le=1)
    poll_timeout_ms: int = Field(200, ge=0)
    export_interval_s: float = Field(30.0, gt=0)
    export_every_events: int = Field(0, ge=0, description="also export after this many new events (0: off)")
    # Between full versions, every delta_interval_s the trainer registers a weight delta of its last
    # registered version (recmodel.delta: the encoder, and the item and transition rows that changed) that
    # inference applies within its delta_poll_s. 0: full versions only.
    delta_interval_s: float = Field(1.0, ge=0)
    # No delta while more than this many records behind the end of `events` (a delta then carries stale
    # weights, and building one, ~0.1-0.2 s at the demo's size, takes time from catching up). At 1,000
    # events/s on 2 cores the trainer alternates between full and bounded steps, 300-3,000 records behind.
    delta_max_lag: int = Field(5000, ge=0)
    # A delta larger than this is not shipped (the next full version carries it); at most the registry's
    # registry.max_delta_bytes.
    delta_max_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    # Where each exported version is judged and registered. "background": on a thread of its own, so training
    # goes on meanwhile and a version comes every export_interval_s rather than every interval plus the
    # publish time; "inline": on the training thread. "auto": background when training on a GPU; inline on
    # the CPU, where the gate's scoring takes the cores training needs (2 cores, `streamrec bench train
    # --events 60000 --export-interval-s 2`, two runs each: 1,467 and 1,787 events/s inline against 1,260
    # and 1,245 in the background, and no shorter publish -> registered time, 4.6-5.3 s against 4.8-7.8 s).
    publish_mode: Literal["auto", "inline", "background"] = "auto"
    checkpoint_dir: str = "./data/trainer"
    checkpoint_interval_s: float = Field(10.0, gt=0)
    keep_exports: int = Field(2, ge=1, description="exported artifact directories kept on disk")
    eval_window: int = Field(2000, ge=0, description="recent events kept for the prequential metrics")
    eval_per_batch: int = Field(256, ge=1, description="events of a micro-batch predicted for the prequential metrics")
    eval_k: list[int] = [10, 50]
    # The prequential metrics rank at most this share of the training thread's time (recmodel.evaluate.prequential:
    # each prediction ranks the whole catalog, so at 5,000 events/s with eval_per_batch alone they took 15 % of
    # the thread); the rest of a micro-batch still extends their histories. 1: eval_per_batch alone decides.
    eval_time_share: float = Field(0.05, gt=0, le=1)
    items_sync_timeout_s: float = Field(5.0, ge=0, description="wait for `items` to catch up before training events on unknown items")
    model: ModelSection = ModelSection()
    gate: GateEvidenceSection = GateEvidenceSection()
    leader_election: LeaderElectionSection = LeaderElectionSection()
    distributed: DistributedSection = DistributedSection()


class TrainerConfig(ServiceConfig):
    kafka: KafkaConfig = KafkaConfig()
    metrics: MetricsConfig = MetricsConfig(port=9104)
    # The trainer's identity towards the registry (its certificate's Common Name must be allowed to register).
    tls: TlsConfig = TlsConfig()
    trainer: TrainerSection = TrainerSection()
