"""A cluster of local KRaft nodes on loopback, for broker-failure tests and ``streamrec up --kafka-brokers``."""

from __future__ import annotations

import signal
import tempfile
import time
import uuid
from pathlib import Path

from services.common.localkafka.broker import BrokerSecurity, KafkaBrokerError, KafkaProcesses, LocalKafka
from services.common.net import free_port

class LocalKafkaCluster(KafkaProcesses):
    """``size`` KRaft nodes (each broker and controller) on loopback, for broker-failure tests.

    Replication factor ``size`` (at most 3) and ``min.insync.replicas`` one less, so a topic stays
    writable with acks=all while one node is down. ``kill(node_id)`` / ``start_node(node_id)`` bounce
    one node on its data; ``leaders(topic)`` says which node leads each partition. With ``security`` every node
    also has the authenticated listeners of :class:`BrokerSecurity` (the same certificate and users on each);
    the services use the mutual-TLS ones (``ssl_bootstrap_servers``).
    """

    def __init__(self, size: int = 3, data_dir: Path | str | None = None, heap: str = "384m",
                 cache_dir: Path | None = None, num_partitions: int = 3, log_dir: Path | str | None = None,
                 ports: list[int] | None = None, security: BrokerSecurity | None = None,
                 ssl_ports: list[int] | None = None) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="streamrec-kafka-"))
        self.replication_factor = min(size, 3)
        self.security = security
        ports = list(ports or []) + [free_port() for _ in range(size - len(ports or []))]
        controller_ports = [free_port() for _ in range(size)]
        ssl_ports = list(ssl_ports or []) + [free_port() for _ in range(size - len(ssl_ports or []))]
        voters = ",".join(f"{i + 1}@127.0.0.1:{controller_ports[i]}" for i in range(size))
        cluster_id = uuid.uuid4().hex[:22]
        log_dir = Path(log_dir) if log_dir else self.data_dir
        self.nodes: dict[int, LocalKafka] = {
            i + 1: LocalKafka(data_dir=self.data_dir / f"node{i + 1}", port=ports[i], controller_port=controller_ports[i],
                              heap=heap, cache_dir=cache_dir, num_partitions=num_partitions,
                              log_file=log_dir / f"kafka-{i + 1}.log", node_id=i + 1, quorum_voters=voters,
                              cluster_id=cluster_id, replication_factor=self.replication_factor, security=security,
                              ssl_port=ssl_ports[i])
            for i in range(size)
        }

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    @property
    def ssl_bootstrap_servers(self) -> str:
        """Every node's listener that requires a client certificate (``security`` only)."""
        return ",".join(node.ssl_bootstrap_servers for node in self.nodes.values())

    def start(self, timeout: float = 120.0) -> "LocalKafkaCluster":
        # All at once: the controllers need a majority of the quorum before any node is ready.
        try:
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.wait_ready(timeout)
            self.wait_all_registered(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def wait_all_registered(self, timeout: float = 120.0) -> None:
        """Until every node that runs is a registered (unfenced) broker in the cluster metadata."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        want = {n for n, node in self.nodes.items() if node.process is not None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.running_bootstrap_servers(), request_timeout_ms=5000)
                try:
                    brokers = admin.describe_cluster()["brokers"]
                    if {b["broker_id"] for b in brokers if not b.get("is_fenced")} >= want:
                        return
                finally:
                    admin.close()
            except (KafkaError, OSError):
                pass
            time.sleep(0.3)
        raise KafkaBrokerError(f"brokers {sorted(want)} did not all register in time")

    def running_bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap_servers for n in self.nodes.values() if n.process is not None) or self.bootstrap_servers

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> node id of its leader (-1 while it has none)."""
        return {p["partition_index"]: p["leader_id"] for p in self._describe(topic)}

    def in_sync(self, topic: str) -> dict[int, set[int]]:
        """Partition -> node ids of its in-sync replicas."""
        return {p["partition_index"]: set(p["isr_nodes"]) for p in self._describe(topic)}

    def _describe(self, topic: str, timeout: float = 60.0) -> list[dict]:
        """The topic's partitions as a live node describes them; retried while a node just died is still
        listed in the metadata the client got."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.running_bootstrap_servers(), request_timeout_ms=5000)
                try:
                    (described,) = admin.describe_topics([topic])
                    return described["partitions"]
                finally:
                    admin.close()
            except (KafkaError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[node_id].kill()

    def start_node(self, node_id: int, timeout: float = 120.0) -> None:
        node = self.nodes[node_id]
        node.launch()
        node.wait_ready(timeout)
        self.wait_all_registered(timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            proc = node.process
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # all at once: a lone survivor would wait for its quorum
        for node in self.nodes.values():
            node.stop()

