"""Every trainer metric, created on one CollectorRegistry (names are a contract with the chart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

EXPORT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events_trained = Counter(
            "streamrec_trainer_events_trained", "Events the model has trained on (restored from the checkpoint at start)",
            registry=registry)
        self.users_shed = Counter(
            "streamrec_trainer_users_shed",
            "Users of a micro-batch whose new targets were left to idle replay while the stream outpaced the "
            "trainer (trainer.catch_up_max_users)",
            registry=registry)
        self.replay_steps = Counter(
            "streamrec_trainer_replay_steps", "Idle-time replay steps over the replay buffer", registry=registry)
        self.loss = Gauge("streamrec_trainer_loss", "Sampled-softmax loss of the last micro-batch", registry=registry)
        self.loop_restarts = Counter(
            "streamrec_trainer_loop_restarts", "Background loops (the lease elector) restarted after dying",
            ["loop"], registry=registry)
        self.prequential_hit_rate = Gauge(
            "streamrec_trainer_prequential_hit_rate", "Prequential (test-then-train) HR@k on the recent window",
            ["k"], registry=registry)
        self.export_duration = Histogram(
            "streamrec_trainer_export_duration_seconds", "Evaluate + export + register one version",
            buckets=EXPORT_BUCKETS, registry=registry)
        self.export_stage_duration = Histogram(
            "streamrec_trainer_export_stage_duration_seconds",
            "One stage of publishing a version: evaluate, write (the artifact), judge (the gate's evidence), register",
            ["stage"], buckets=EXPORT_BUCKETS, registry=registry)
        self.versions_registered = Counter(
            "streamrec_trainer_versions_registered", "Model versions registered", registry=registry)
        self.registered_version = Gauge(
            "streamrec_trainer_registered_version", "Last version this trainer registered", registry=registry)
        self.consumer_lag = Gauge(
            "streamrec_trainer_consumer_lag_records", "Records between the trained offset and the partition end",
            ["topic", "partition"], registry=registry)
        self.catching_up = Gauge(
            "streamrec_trainer_catching_up",
            "1 while the trainer is behind by more than trainer.catch_up_lag and trains larger micro-batches "
            "(of a bounded number of users while the stream outpaces it: streamrec_trainer_catch_up_users)",
            registry=registry)
        self.catch_up_users = Gauge(
            "streamrec_trainer_catch_up_users",
            "Users whose new events a step trains while the stream outpaces the trainer (fewer the further "
            "behind); 0: no bound",
            registry=registry)
        self.freshness = Gauge(
            "streamrec_trainer_freshness_seconds", "Age of the newest event the model has trained on", registry=registry)
        self.gpu_memory = Gauge(
            "streamrec_trainer_gpu_memory_bytes", "CUDA memory allocated by the trainer (0 on CPU)", registry=registry)
        self.is_leader = Gauge(
            "streamrec_trainer_is_leader", "1 while this replica holds the lease and trains", registry=registry)
        self.registration_failures = Counter(
            "streamrec_trainer_registration_failures", "Exports the registry did not accept", registry=registry)
        self.holdout_hit_rate = Gauge(
            "streamrec_trainer_holdout_hit_rate",
            "HR@k on the recent standing-holdout events, of the candidate just exported and of production",
            ["role"], registry=registry)
        self.holdout_events = Gauge(
            "streamrec_trainer_holdout_events", "Holdout events the last gate comparison was scored on",
            registry=registry)
        # Beyond the contract:
        self.checkpoints = Counter(
            "streamrec_trainer_checkpoints", "Checkpoints written", registry=registry)
        self.deltas_shipped = Counter(
            "streamrec_trainer_deltas_shipped", "Weight deltas registered between full versions", registry=registry)
        self.delta_failures = Counter(
            "streamrec_trainer_delta_failures", "Weight deltas not shipped, by reason (too_large, refused, build)",
            ["reason"], registry=registry)
        self.delta_duration = Histogram(
            "streamrec_trainer_delta_duration_seconds",
            "Time the training thread spends on one weight delta (capturing it; the shipper's thread encodes and registers it)",
            buckets=EXPORT_BUCKETS, registry=registry)
        self.checkpoint_duration = Histogram(
            "streamrec_trainer_checkpoint_duration_seconds", "Time to write one checkpoint",
            buckets=EXPORT_BUCKETS, registry=registry)
        self.events_skipped = Counter(
            "streamrec_trainer_events_skipped", "Records on `events` that could not be decoded", registry=registry)
        self.items_upserted = Counter(
            "streamrec_trainer_items_upserted", "Catalog upserts read from `items`", registry=registry)
        self.batch_duration = Histogram(
            "streamrec_trainer_batch_duration_seconds", "Training time of one micro-batch",
            buckets=EXPORT_BUCKETS, registry=registry)
