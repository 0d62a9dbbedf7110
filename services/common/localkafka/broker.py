"""Fetch, format, start and stop a local KRaft broker (``cluster`` runs several on loopback)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.common.net import free_port
from services.common.process import die_with_parent

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
POM = _HERE / "pom.xml"
LOG4J_CONFIG = _HERE / "log4j2.xml"


class KafkaBrokerError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class BrokerSecurity:
    """Two authenticated listeners beside the broker's own PLAINTEXT one (which the controller, the readiness
    check and fault tests keep using): ``SASL_SSL`` (the ``users`` with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512)
    and ``SSL`` that requires a client certificate signed by ``ca_file``. The broker presents ``cert_file`` /
    ``key_file`` (PEM; the key unencrypted) on both.

    With ``authorize``, Kafka's StandardAuthorizer checks every request on those listeners against ACLs:
    principals ``User:<name>`` (SASL) or ``User:CN=<common name>`` (certificates) get nothing that an ACL does
    not grant; the PLAINTEXT listener's principal (``User:ANONYMOUS``) is a super user, to grant them."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    users: dict[str, str] = field(default_factory=dict)
    authorize: bool = False


def _inline_pem(path: Path) -> str:
    """A PEM file as one ``.properties`` value (Kafka reads ``\\n`` there as a line break)."""
    return Path(path).read_text().strip().replace("\n", "\\n")


_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")


def _check_users(users: dict[str, str]) -> None:
    """Names and passwords go into the broker's JAAS line and the storage tool's SCRAM arguments unquoted."""
    for name, password in users.items():
        for what, value in (("user name", name), ("password", password)):
            if not _CREDENTIAL.fullmatch(value):
                raise KafkaBrokerError(f"local broker SASL {what} {name!r}: use 1-128 of A-Z a-z 0-9 _ . @ + -")


def default_cache_dir() -> Path:
    """Where the broker jars live: ``$STREAMREC_KAFKA_HOME`` or ``~/.cache/streamrec/kafka``."""
    env = os.environ.get("STREAMREC_KAFKA_HOME")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "streamrec" / "kafka"


def _kafka_version() -> str:
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def fetch_jars(cache_dir: Path | None = None) -> Path:
    """Resolve the broker's jars from Maven Central into ``cache_dir/<version>/libs`` once."""
    cache_dir = cache_dir or default_cache_dir()
    libs = cache_dir / _kafka_version() / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError("Maven (mvn) is not installed; it is needed once to fetch the Kafka jars")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=cache_dir))
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
    ]
    logger.info("fetching Kafka %s jars from Maven Central", _kafka_version())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KafkaBrokerError(f"mvn failed to fetch Kafka jars:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    (tmp / ".complete").touch()
    if libs.exists():
        shutil.rmtree(libs)
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(libs)
    return libs


def _wait_for_port(host: str, port: int, deadline: float, proc: subprocess.Popen) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KafkaBrokerError(f"broker exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise KafkaBrokerError(f"broker did not accept connections on {host}:{port} in time")


class KafkaProcesses:
    """What a broker and a cluster share: ``cleanup`` (stop, then remove a data dir made for the run) and ``with``."""

    data_dir: Path
    _own_dir: bool

    def start(self): ...

    def stop(self) -> None: ...

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


class LocalKafka(KafkaProcesses):
    """One KRaft broker+controller process with its data in ``data_dir``.

    Alone by default (its own single-voter quorum, replication factor 1). ``LocalKafkaCluster`` runs
    several, each given its ``node_id``, the static ``quorum_voters`` and the cluster's
    ``replication_factor`` (internal topics and the default for new ones; ``min.insync.replicas``
    is one less, at least 1).

    >>> with LocalKafka(port=9092) as kafka:
    ...     kafka.bootstrap_servers
    '127.0.0.1:9092'
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        cache_dir: Path | None = None,
        num_partitions: int = 3,
        log_file: Path | str | None = None,
        node_id: int = 1,
        quorum_voters: str | None = None,
        cluster_id: str | None = None,
        replication_factor: int = 1,
        security: BrokerSecurity | None = None,
        ssl_port: int | None = None,
    ) -> None:
        if security:
            _check_users(security.users)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="streamrec-kafka-"))
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.cache_dir = cache_dir
        self.num_partitions = num_partitions
        self.log_file = Path(log_file) if log_file else self.data_dir / "broker.log"
        self.node_id = node_id
        self.quorum_voters = quorum_voters
        self.cluster_id = cluster_id
        self.replication_factor = replication_factor
        self.security = security
        self.sasl_ssl_port = free_port() if security else None
        self.ssl_port = (ssl_port or free_port()) if security else None  # the mutual-TLS listener
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The SASL_SSL listener (``security`` only)."""
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The SSL listener that requires a client certificate (``security`` only)."""
        return f"127.0.0.1:{self.ssl_port}"

    def _listeners(self) -> dict[str, str]:
        listeners = {"PLAINTEXT": self.port}
        if self.security:
            listeners.update(SASL_SSL=self.sasl_ssl_port, SSL=self.ssl_port)
        names = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        return {
            "listeners": f"{names},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": names,
            "listener.security.protocol.map": ",".join(["CONTROLLER:PLAINTEXT", *(f"{n}:{n}" for n in listeners)]),
        }

    def _security_config(self) -> dict[str, str]:
        sec = self.security
        if sec is None:
            return {}
        props = {
            # One certificate for both listeners, given inline: Kafka reads a PEM key file only when it is encrypted.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": _inline_pem(sec.cert_file),
            "ssl.keystore.key": _inline_pem(sec.key_file),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": _inline_pem(sec.ca_file),
            "listener.name.ssl.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                + " ".join(f'user_{name}="{pw}"' for name, pw in sec.users.items()) + ";",
        }
        for mech in SASL_MECHANISMS[1:]:  # SCRAM credentials are written into the metadata log at format
            props[f"listener.name.sasl_ssl.{mech.lower()}.sasl.jaas.config"] = \
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        if sec.authorize:
            props["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            props["super.users"] = "User:ANONYMOUS"
        return props

    def _format_args(self) -> list[str]:
        """SCRAM credentials of ``security.users``, for the storage format (KRaft keeps them in its metadata)."""
        if not self.security:
            return []
        args = []
        for name, pw in self.security.users.items():
            for mech in SASL_MECHANISMS[1:]:
                args += ["--add-scram", f"{mech}=[name={name},password={pw}]"]
        return args

    def _config(self) -> Path:
        logs = self.data_dir / "logs"
        rf = str(self.replication_factor)
        min_isr = str(max(1, self.replication_factor - 1))
        quorum = ({"controller.quorum.voters": self.quorum_voters} if self.quorum_voters
                  else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"})
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            **self._listeners(),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.num_partitions),
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            # A single local node: rebalance at once instead of waiting for more members.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "2",
            **self._security_config(),
        }
        if self.quorum_voters:
            # In a cluster, notice a dead node within seconds (not the default 9 s) so leadership moves on.
            props["broker.heartbeat.interval.ms"] = "1000"
            props["broker.session.timeout.ms"] = "6000"
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        if self.security:
            os.chmod(path, 0o600)  # the broker's private key and the users' passwords
        return path

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            f"-Xmx{self.heap}", "-Xms64m",
            # The full JIT (C2), not C1 alone: C1 saved well under a second of start-up, and its code cost
            # the broker enough CPU that two ingester processes sharing two cores with it scaled 1.5x, not 1.8-2x.
            "-XX:+UseSerialGC", "-Xshare:auto",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-Djava.awt.headless=true",
            "-cp", f"{libs}/*",
            main, *args,
        ]

    def start(self, timeout: float = 90.0) -> "LocalKafka":
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> None:
        """Format the storage on first use and start the process (without waiting for it)."""
        if shutil.which("java") is None:
            raise KafkaBrokerError("java is not installed; the local Kafka broker needs Java 17+")
        libs = fetch_jars(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            # Alone: a quorum of itself (--standalone). In a cluster: the static voters, one cluster id.
            quorum = [] if self.quorum_voters else ["--standalone"]
            fmt = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", *quorum,
                           "--cluster-id", self.cluster_id or str(uuid.uuid4().hex[:22]),
                           "--config", str(config), "--ignore-formatted", *self._format_args()),
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise KafkaBrokerError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the broker answers metadata requests; stops it and raises if it does not in time."""
        try:
            _wait_for_port("127.0.0.1", self.port, time.monotonic() + timeout, self.process)
            self._wait_ready(time.monotonic() + timeout)
        except Exception:
            self.stop()
            raise
        logger.info("kafka broker started", extra={"bootstrap_servers": self.bootstrap_servers,
                                                   "node_id": self.node_id})

    def _wait_ready(self, deadline: float) -> None:
        """The port opens before the broker has joined its own quorum; wait for metadata."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError):
                time.sleep(0.2)
        raise KafkaBrokerError("broker did not answer metadata requests in time")

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the broker, for fault tests; ``start`` brings it back on the same data."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

