"""The local broker's settings, alone and as a 3-node cluster (no JVM started here)."""

from __future__ import annotations

from services.common.localkafka import LocalKafka, LocalKafkaCluster


def _props(node: LocalKafka) -> dict[str, str]:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    return dict(line.split("=", 1) for line in node._config().read_text().splitlines())


def test_a_single_broker_is_its_own_quorum_with_replication_factor_1(tmp_path):
    props = _props(LocalKafka(data_dir=tmp_path, port=19092, controller_port=19093))
    assert props["node.id"] == "1" and props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props
    assert props["offsets.topic.replication.factor"] == "1" and props["min.insync.replicas"] == "1"


def test_a_cluster_has_three_voters_replication_factor_3_and_min_isr_2(tmp_path):
    cluster = LocalKafkaCluster(3, data_dir=tmp_path, ports=[19092])
    nodes = list(cluster.nodes.values())
    assert [n.node_id for n in nodes] == [1, 2, 3] and nodes[0].port == 19092
    assert len({n.port for n in nodes} | {n.controller_port for n in nodes}) == 6, "every listener on its own port"
    assert cluster.bootstrap_servers == ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    props = [_props(n) for n in nodes]
    voters = {p["controller.quorum.voters"] for p in props}
    assert voters == {",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)}, "one quorum for all"
    assert len({n.cluster_id for n in nodes}) == 1 and len({n.data_dir for n in nodes}) == 3
    for p in props:
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3" and p["transaction.state.log.min.isr"] == "2"
