"""The Kafka rights each service needs, and granting them on brokers that authorize by ACL.

One table, read by the local stack (which runs its brokers with ACLs and grants exactly these) and
described in README.md ("Kafka ACLs"). Topic keys are :class:`~services.common.config.TopicsConfig` field
names; the rights on each service's consumer group are in GROUP_RIGHTS.
"""

from __future__ import annotations

from services.common.config import KafkaConfig, TopicsConfig
from services.common.rdkafka import reader_group

__all__ = ["GROUP_RIGHTS", "TOPIC_RIGHTS", "grant", "reader_group"]

# principal -> topic key -> operations. "app" stands for whatever publishes interactions and catalog
# records (an application, `streamrec publish`, the stack's demo stream).
TOPIC_RIGHTS: dict[str, dict[str, tuple[str, ...]]] = {
    "ingester": {"events_raw": ("READ",), "items_raw": ("READ",), "events": ("READ", "WRITE"),
                 "items": ("WRITE",), "dlq": ("WRITE",)},
    "trainer": {"events": ("READ",), "items": ("READ",)},
    "inference": {"events": ("READ",), "model_versions": ("READ",)},
    "registry": {"model_versions": ("WRITE",)},
    "app": {"events_raw": ("WRITE",), "items_raw": ("WRITE",)},
}

# principal -> the operation it needs on its consumer group (the group's name comes from its configuration:
# ingester.group_id, trainer.consumer_group, and for inference ``reader_group(kafka.client_id)``). Inference
# commits nothing, but librdkafka gives every consumer a group and looks up its coordinator: without Describe
# the brokers answer GROUP_AUTHORIZATION_FAILED, which inference logs as a consumer error.
GROUP_RIGHTS: dict[str, str] = {"ingester": "READ", "trainer": "READ", "inference": "DESCRIBE"}


def grant(admin: KafkaConfig, principal: str, service: str, topics: TopicsConfig, group: str | None = None) -> int:
    """Allow ``principal`` (e.g. ``User:CN=trainer``) what ``service`` needs on ``topics`` and on its consumer
    ``group``, through an ``admin`` connection with the right to alter ACLs; -> ACLs created."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    if service not in TOPIC_RIGHTS:
        raise ValueError(f"kafka ACLs: unknown service {service!r} (one of {', '.join(TOPIC_RIGHTS)})")
    if group is None and service in GROUP_RIGHTS:
        raise ValueError(f"kafka ACLs: {service} needs its consumer group ({GROUP_RIGHTS[service]} on it)")
    if group is not None and service not in GROUP_RIGHTS:
        raise ValueError(f"kafka ACLs: {service} uses no consumer group")
    acls = [ACL(principal, "*", getattr(ACLOperation, op), ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType.TOPIC, topics.name(key), ACLResourcePatternType.LITERAL))
            for key, ops in TOPIC_RIGHTS[service].items() for op in ops]
    if group is not None:
        acls.append(ACL(principal, "*", getattr(ACLOperation, GROUP_RIGHTS[service]), ACLPermissionType.ALLOW,
                        ResourcePattern(ResourceType.GROUP, group, ACLResourcePatternType.LITERAL)))
    client = KafkaAdminClient(**admin.client_options())
    try:
        result = client.create_acls(acls)
    finally:
        client.close()
    failed = result.get("failed") or []
    if failed:
        raise RuntimeError(f"kafka ACLs for {principal}: the brokers refused {len(failed)} of {len(acls)}: {failed[0]}")
    return len(acls)
