"""The ACL table in code (what the local stack and the tests grant) is the one README.md gives operators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.common.config import KafkaConfig, TopicsConfig
from services.common.kafka_acls import GROUP_RIGHTS, TOPIC_RIGHTS, grant

README = Path(__file__).resolve().parents[4] / "README.md"
PRINCIPALS = {"ingester": "ingester", "trainer": "trainer", "inference": "inference", "registry": "registry",
              "apps, `streamrec publish`": "app"}


def _readme_table() -> dict[str, tuple[dict[str, set[str]], str | None]]:
    """principal -> (topic key -> operations, the operation on its consumer group)."""
    lines = README.read_text().splitlines()
    start = lines.index("| principal | Read | Write | consumer group |")
    keys = {getattr(TopicsConfig(), key): key for key in TopicsConfig.model_fields
            if isinstance(getattr(TopicsConfig(), key), str) and key != "prefix"}
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        principal, read, write, group = (cell.strip() for cell in line.strip("|").split("|"))
        topics: dict[str, set[str]] = {}
        for op, cell in (("READ", read), ("WRITE", write)):
            for name in re.findall(r"`([^`]+)`", cell):
                topics.setdefault(keys[name], set()).add(op)
        group_op = re.match(r"(\w+) on", group)
        table[PRINCIPALS[principal]] = (topics, group_op.group(1).upper() if group_op else None)
    return table


def test_the_readme_lists_exactly_the_rights_the_code_grants():
    table = _readme_table()
    assert set(table) == set(TOPIC_RIGHTS)
    for principal, (topics, group_op) in table.items():
        assert topics == {key: set(ops) for key, ops in TOPIC_RIGHTS[principal].items()}, principal
        assert group_op == GROUP_RIGHTS.get(principal), principal


@pytest.mark.parametrize("service, group, error", [
    ("scheduler", None, "unknown service 'scheduler'"),
    ("trainer", None, "trainer needs its consumer group"),
    ("registry", "streamrec-registry", "registry uses no consumer group"),
])
def test_grant_refuses_rights_the_table_does_not_hold_before_connecting(service, group, error):
    with pytest.raises(ValueError, match=error):
        grant(KafkaConfig(bootstrap_servers="127.0.0.1:1"), "User:CN=x", service, TopicsConfig(), group)
