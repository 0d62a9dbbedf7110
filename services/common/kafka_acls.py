"""The Kafka rights each service needs, and granting them on brokers that authorize by ACL.

One table, read by the local stack (which runs its brokers with ACLs and grants exactly these) and
described in README.md ("Kafka ACLs"). Topic keys are :class:`~services.common.config.TopicsConfig` field
names; a service that reads with a consumer group also needs Read on that group.
"""

from __future__ import annotations

from services.common.config import KafkaConfig, TopicsConfig

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


def grant(admin: KafkaConfig, principal: str, service: str, topics: TopicsConfig, groups: tuple[str, ...] = ()) -> int:
    """Allow ``principal`` (e.g. ``User:CN=trainer``) what ``service`` needs on ``topics``, and Read on the
    consumer ``groups``, through an ``admin`` connection with the right to alter ACLs; -> ACLs created."""
    from kafka import KafkaAdminClient
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    if service not in TOPIC_RIGHTS:
        raise ValueError(f"kafka ACLs: unknown service {service!r} (one of {', '.join(TOPIC_RIGHTS)})")
    acls = [ACL(principal, "*", getattr(ACLOperation, op), ACLPermissionType.ALLOW,
                ResourcePattern(ResourceType.TOPIC, topics.name(key), ACLResourcePatternType.LITERAL))
            for key, ops in TOPIC_RIGHTS[service].items() for op in ops]
    acls += [ACL(principal, "*", ACLOperation.READ, ACLPermissionType.ALLOW,
                 ResourcePattern(ResourceType.GROUP, group, ACLResourcePatternType.LITERAL)) for group in groups]
    client = KafkaAdminClient(**admin.client_options())
    try:
        result = client.create_acls(acls)
    finally:
        client.close()
    failed = result.get("failed") or []
    if failed:
        raise RuntimeError(f"kafka ACLs for {principal}: the brokers refused {len(failed)} of {len(acls)}: {failed[0]}")
    return len(acls)
