"""The Kafka rights each service needs, and granting them on brokers that authorize by ACL.

One table, read by the local stack (which runs its brokers with ACLs and grants exactly these) and
described in README.md ("Kafka ACLs"). Topic keys are :class:`~services.common.config.TopicsConfig` field
names; the rights on each service's consumer group are in GROUP_RIGHTS.
"""

from __future__ import annotations

import time

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


# How long grant() waits for the brokers to apply the ACLs it created.
APPLIED_WAIT_S = 60.0


def grant(admin: KafkaConfig, principal: str, service: str, topics: TopicsConfig, group: str | None = None,
          wait_s: float = APPLIED_WAIT_S) -> int:
    """Allow ``principal`` (e.g. ``User:CN=trainer``) what ``service`` needs on ``topics`` and on its consumer
    ``group``, through an ``admin`` connection with the right to alter ACLs; -> ACLs created.

    Returns once the brokers answer with every one of them (up to ``wait_s``; TimeoutError after that). The
    controller accepts ACLs before the brokers' authorizers have them: a service started at once could
    otherwise be refused, and an idempotent producer refused its producer id stays failed for good."""
    from kafka import KafkaAdminClient
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             ResourcePattern, ResourcePatternFilter, ResourceType)

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
        failed = result.get("failed") or []
        if failed:
            raise RuntimeError(
                f"kafka ACLs for {principal}: the brokers refused {len(failed)} of {len(acls)}: {failed[0]}")
        wanted = {_key(acl) for acl in acls}
        every = ACLFilter(principal, None, ACLOperation.ANY, ACLPermissionType.ANY,
                          ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY))
        deadline = time.monotonic() + wait_s
        while True:
            found, _error = client.describe_acls(every)
            missing = wanted - {_key(acl) for acl in found or ()}
            if not missing:
                return len(acls)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"kafka ACLs for {principal}: {len(missing)} of {len(acls)} created but not in "
                                   f"force on the brokers after {wait_s:.0f} s")
            time.sleep(0.1)
    finally:
        client.close()


def _key(acl) -> tuple:
    pattern = acl.resource_pattern
    return (acl.principal, acl.host, int(acl.operation), int(acl.permission_type), int(pattern.resource_type),
            pattern.resource_name, int(pattern.pattern_type))
