"""``LocalStack``: Kafka + registry + ingester + trainer + inference on one machine.

The same class backs ``streamrec up``, the end-to-end tests and ``streamrec bench freshness``, so
what the tests prove is what a user runs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.common.config import KafkaConfig, TopicsConfig
from services.common.kafka import ensure_topics
from services.common.kafka_acls import grant, reader_group
from services.common.localkafka import BrokerSecurity, LocalKafka, LocalKafkaCluster
from services.common.process import available_cpus, die_with_parent
from services.common.tls import TlsConfig
from services.stack.credentials import ensure_credentials
from services.stack.processes import ServiceProcess

logger = logging.getLogger(__name__)

START_ORDER = ("registry", "ingester", "trainer", "inference")
# What a service's kafka section takes from kafka_config_for (its listener and certificate).
_KAFKA_TLS_KEYS = ("bootstrap_servers", "security_protocol", "ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _client_id(service: str) -> str:
    return f"streamrec-{service}"


@dataclass(frozen=True)
class StackPorts:
    kafka: int = 9092
    kafka_tls: int = 9093  # the brokers' mutual-TLS listener (the first node's, with several)
    registry_grpc: int = 50051
    inference_grpc: int = 50052
    registry_metrics: int = 9101
    inference_metrics: int = 9102
    ingester_metrics: int = 9103
    trainer_metrics: int = 9104
    prometheus: int = 9090

    @classmethod
    def free(cls) -> "StackPorts":
        """Every port a free one on loopback, so a stack can run beside another (tests, benchmarks)."""
        from dataclasses import fields

        from services.common.net import free_port

        return cls(**{f.name: free_port() for f in fields(cls)})


@dataclass(frozen=True)
class StackOptions:
    work_dir: Path = Path(".streamrec")
    ports: StackPorts = StackPorts()
    model_name: str = "recommender"
    export_interval_s: float = 20.0
    # Seconds between the trainer's weight deltas (trainer.delta_interval_s); None: the trainer's default, 0: none.
    delta_interval_s: float | None = None
    # A small model keeps the demo responsive on a laptop-sized CPU.
    model_dim: int = 64
    max_len: int = 30
    text_encoder: str = "minilm"
    topic_prefix: str = "streamrec."
    partitions: int = 3
    fresh: bool = False
    # More than one serves Recommend from a live replica while another restarts; replica i listens on
    # the inference ports + 100 * (i - 1).
    inference_replicas: int = 1
    # Off only when asked for: every gRPC call in the stack then goes in plaintext, unauthenticated, and the
    # services use Kafka's PLAINTEXT listener. Otherwise each service reaches Kafka over mutual TLS with its own
    # certificate and may do only what its ACLs (services/common/kafka_acls.py) allow.
    plaintext: bool = False
    # Kafka nodes on loopback: 1 is the single broker; 3 is a cluster with replication factor 3 and
    # min.insync.replicas 2 (broker-failure tests). The first listens on ports.kafka.
    kafka_brokers: int = 1


class LocalStack:
    def __init__(self, options: StackOptions = StackOptions()) -> None:
        self.options = options
        self.work_dir = options.work_dir.resolve()
        self.tls_dir = self.work_dir / "tls"
        ports = options.ports
        # The brokers' certificate comes from the stack's CA; the services' certificates name them to its ACLs.
        security = None if options.plaintext else BrokerSecurity(
            ca_file=self.tls_dir / "ca.crt", cert_file=self.tls_dir / "kafka.crt", key_file=self.tls_dir / "kafka.key",
            authorize=True)
        if options.kafka_brokers > 1:
            self.kafka = LocalKafkaCluster(options.kafka_brokers, data_dir=self.work_dir / "kafka", heap="384m",
                                           log_dir=self.work_dir / "logs", ports=[ports.kafka], security=security,
                                           ssl_ports=[ports.kafka_tls])
            self.replication_factor = self.kafka.replication_factor
        else:
            self.kafka = LocalKafka(data_dir=self.work_dir / "kafka", port=ports.kafka, heap="512m",
                                    log_file=self.work_dir / "logs" / "kafka.log", security=security,
                                    ssl_port=ports.kafka_tls)
            self.replication_factor = 1
        # The administrator's connection (PLAINTEXT on loopback, a super user): creates the topics and grants the
        # ACLs; the tests and benchmarks read and write through it too.
        self.kafka_config = KafkaConfig(
            bootstrap_servers=self.kafka.bootstrap_servers,
            topics=TopicsConfig(prefix=options.topic_prefix, partitions=options.partitions,
                                replication_factor=self.replication_factor),
        )
        self.services: dict[str, ServiceProcess] = {
            name: ServiceProcess(
                name=name,
                config=self._config_for(name),
                work_dir=self.work_dir,
                metrics_port=getattr(ports, f"{name}_metrics"),
                grpc_port=getattr(ports, f"{name}_grpc", None),
                grpc_service={"registry": "streamrec.v1.ModelRegistry",
                              "inference": "streamrec.v1.Recommender"}.get(name, ""),
                probe_tls=self.tls_for("operator"),
            )
            for name in START_ORDER
        }
        for i in range(2, options.inference_replicas + 1):
            name = f"inference-{i}"
            grpc_port, metrics_port = ports.inference_grpc + 100 * (i - 1), ports.inference_metrics + 100 * (i - 1)
            config = self._config_for("inference")
            config["grpc"]["port"], config["metrics"]["port"] = grpc_port, metrics_port
            self.services[name] = ServiceProcess(
                name=name, module="inference", config=config, work_dir=self.work_dir, metrics_port=metrics_port,
                grpc_port=grpc_port, grpc_service="streamrec.v1.Recommender", probe_tls=self.tls_for("operator"))
        self.prometheus: subprocess.Popen | None = None

    # -- configuration -------------------------------------------------------------------------
    def tls_for(self, identity: str) -> TlsConfig:
        """The credentials of ``identity`` (a service, ``operator`` or ``app``) in this stack."""
        if self.options.plaintext:
            return TlsConfig(plaintext=True)
        return TlsConfig(ca_file=str(self.tls_dir / "ca.crt"), cert_file=str(self.tls_dir / f"{identity}.crt"),
                         key_file=str(self.tls_dir / f"{identity}.key"))

    @property
    def kafka_secured(self) -> bool:
        """Whether the services reach Kafka over mutual TLS with ACLs (not --plaintext)."""
        return self.kafka.security is not None

    def kafka_config_for(self, identity: str) -> KafkaConfig:
        """How ``identity`` (a service, or ``app`` for a publisher) reaches Kafka in this stack: over mutual TLS
        with its certificate when the brokers check ACLs, else as the administrator does."""
        if not self.kafka_secured:
            return self.kafka_config
        tls = self.tls_for(identity)
        return self.kafka_config.model_copy(update={
            "bootstrap_servers": self.kafka.ssl_bootstrap_servers, "security_protocol": "SSL",
            "ssl_cafile": tls.ca_file, "ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file,
            # The stack creates every topic before the services start; they have no right to create any.
            "topics": self.kafka_config.topics.model_copy(update={"create": False})})

    def _grant_kafka_acls(self) -> None:
        """Each identity's rights (services/common/kafka_acls.py), its principal the certificate's subject."""
        from services.ingester.config import IngesterSection
        from services.trainer.config import TrainerSection

        groups = {"ingester": IngesterSection().group_id, "trainer": TrainerSection().consumer_group,
                  "inference": reader_group(_client_id("inference"))}
        for identity in ("ingester", "trainer", "inference", "registry", "app"):
            grant(self.kafka_config, f"User:CN={identity}", identity, self.kafka_config.topics, groups.get(identity))

    def _config_for(self, name: str) -> dict:
        opts, ports = self.options, self.options.ports
        data = self.work_dir / "data" / name
        kafka = {
            "bootstrap_servers": self.kafka.bootstrap_servers,
            "client_id": _client_id(name),
            "topics": {"prefix": opts.topic_prefix, "partitions": opts.partitions,
                       "replication_factor": self.replication_factor},
        }
        if self.kafka_secured:
            kafka.update(self.kafka_config_for(name).model_dump(include=set(_KAFKA_TLS_KEYS)))
            kafka["topics"]["create"] = False
        config: dict = {
            "logging": {"level": "INFO", "format": "text"},
            "metrics": {"host": "127.0.0.1", "port": getattr(ports, f"{name}_metrics")},
        }
        registry_target = f"127.0.0.1:{ports.registry_grpc}"
        if name in ("registry", "trainer", "inference"):
            config["tls"] = self.tls_for(name).model_dump(exclude_defaults=True)
        if name == "registry":
            config["kafka"] = kafka
            config["grpc"] = {"host": "127.0.0.1", "port": ports.registry_grpc}
            config["registry"] = {
                "database_url": f"sqlite:///{data / 'registry.db'}",
                "artifact_root": str(data / "artifacts"),
            }
        elif name == "ingester":
            config["kafka"] = kafka
        elif name == "trainer":
            config["kafka"] = kafka
            config["trainer"] = {
                "model_name": opts.model_name,
                "registry_target": registry_target,
                "checkpoint_dir": str(data / "checkpoints"),
                "export_interval_s": opts.export_interval_s,
                "model": {"dim": opts.model_dim, "max_len": opts.max_len, "text_encoder": opts.text_encoder},
                # The stack's other services need cores too, and torch's threads wait on each other at every
                # op when one of them is descheduled: on 2 cores at 1,000 events/s (bench pipeline), 2 threads
                # trained 745 events/s and fell behind, 1 thread 883 and kept up.
                "torch_threads": max(1, available_cpus() // 2),
            }
            if opts.delta_interval_s is not None:
                config["trainer"]["delta_interval_s"] = opts.delta_interval_s
        elif name == "inference":
            config["kafka"] = kafka
            config["grpc"] = {"host": "127.0.0.1", "port": ports.inference_grpc}
            config["inference"] = {
                "model_name": opts.model_name,
                "registry_target": registry_target,
                "cache_dir": str(data / "models"),
                # One server process: on one machine the stack's cores are shared with Kafka and the trainer.
                "processes": 1,
            }
        return config

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, with_prometheus: bool = False, timeout_s: float = 180.0) -> "LocalStack":
        if self.options.fresh and self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not self.options.plaintext:
            ensure_credentials(self.tls_dir)
        self.kafka.start()
        ensure_topics(self.kafka_config)
        if self.kafka_secured:
            self._grant_kafka_acls()
        try:
            for svc in self.services.values():
                svc.start()
            # Inference reports SERVING only once a model is loaded, so here wait only until it listens.
            for name in ("registry", "ingester", "trainer"):
                self.services[name].wait_ready(timeout_s)
            if with_prometheus:
                self.start_prometheus()
        except BaseException:
            self.stop()
            raise
        return self

    def start_prometheus(self) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("prometheus is not installed (Debian package `prometheus`); run `make install`")
        prom_dir = self.work_dir / "prometheus"
        prom_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "scrape_configs": [
                {"job_name": f"streamrec-{name}",
                 "static_configs": [{"targets": [f"127.0.0.1:{svc.metrics_port}"],
                                     "labels": {"component": name}}]}
                for name, svc in self.services.items()
            ],
        }
        (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        log = open(self.work_dir / "logs" / "prometheus.log", "ab")
        self.prometheus = subprocess.Popen(
            [exe, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.options.ports.prometheus}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent)
        log.close()

    def stop(self) -> None:
        if self.prometheus is not None and self.prometheus.poll() is None:
            self.prometheus.terminate()
            try:
                self.prometheus.wait(10)
            except subprocess.TimeoutExpired:
                self.prometheus.kill()
        # Producers of data stop before their consumers: ingester, trainer, then the servers.
        for name in ("ingester", "trainer", *self.inference_names, "registry"):
            self.services[name].stop()
        self.kafka.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def restart_dead(self) -> list[str]:
        """Restart services that exited, as Kubernetes would restart a crashed pod."""
        restarted = []
        for name, svc in self.services.items():
            if svc.process is not None and not svc.alive():
                logger.warning("service exited; restarting it", extra={"service": name,
                                                                        "code": svc.process.returncode})
                svc.restart()
                restarted.append(name)
        return restarted

    @property
    def inference_names(self) -> list[str]:
        return [name for name, svc in self.services.items() if (svc.module or name) == "inference"]

    @property
    def inference_target(self) -> str:
        """A gRPC target over every inference replica; use with the round_robin policy to fail over."""
        addrs = ",".join(self.services[n].grpc_target for n in self.inference_names)
        return f"ipv4:{addrs}"

    def inference_channel(self):
        """A channel over every inference replica that sends calls only to SERVING ones.

        Client-side health checking plays the part of the readiness probe in Kubernetes: a replica
        that is restarting (listening, but with no model yet) gets no traffic; calls cut off by a
        dying replica are retried on another.
        """
        import json

        from services.common.grpc import open_channel

        service_config = {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": "streamrec.v1.Recommender"},
            # A call in flight on a replica that dies fails with UNAVAILABLE; Recommender calls are
            # read-only, so retrying them on another replica is safe.
            "methodConfig": [{
                "name": [{"service": "streamrec.v1.Recommender"}],
                "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
            }],
        }
        tls = self.tls_for("app")
        if not tls.plaintext:
            # An ipv4: list of replicas has no single host name to verify; every replica's certificate
            # names localhost.
            tls = tls.model_copy(update={"server_name": "localhost"})
        return open_channel(self.inference_target, tls,
                            options=[("grpc.service_config", json.dumps(service_config))])

    def wait_serving(self, timeout_s: float = 300.0) -> None:
        """Until every inference replica has loaded a model (gRPC health SERVING)."""
        for name in self.inference_names:
            self.services[name].wait_ready(timeout_s)
