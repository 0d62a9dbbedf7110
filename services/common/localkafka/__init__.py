"""A single-node Apache Kafka broker (KRaft) for the local stack and the tests, or a small cluster.

The jars come from Maven Central once (``mvn dependency:copy-dependencies`` on the
bundled ``pom.xml``) into a cache directory; the broker then runs with ``java`` and a
small heap. ``LocalKafka`` formats storage, starts the broker on a chosen port, waits
until it accepts connections, and stops it. ``LocalKafkaCluster`` runs several such nodes on
loopback (replication factor 3, ``min.insync.replicas`` 2) for broker-failure tests. With ``BrokerSecurity``
a broker also listens with SASL_SSL and mutual TLS, and can check ACLs.
"""

from services.common.localkafka.broker import (
    BrokerSecurity,
    KafkaBrokerError,
    LocalKafka,
    default_cache_dir,
    fetch_jars,
)
from services.common.localkafka.cluster import LocalKafkaCluster

__all__ = ["BrokerSecurity", "KafkaBrokerError", "LocalKafka", "LocalKafkaCluster", "default_cache_dir", "fetch_jars"]
