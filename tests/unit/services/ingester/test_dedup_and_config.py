from __future__ import annotations

import pytest

from services.common.config import load_config
from services.common.errors import ConfigError
from services.ingester.config import IngesterConfig
from services.ingester.dedup import DedupWindow


def test_window_forgets_the_oldest_ids_beyond_its_capacity():
    window = DedupWindow(3)
    assert [window.add(x) for x in "abca"] == [True, True, True, False]
    assert window.add("d") and "a" not in window and len(window) == 3
    assert window.add("a"), "evicted ids count as new again"
    off = DedupWindow(0)
    assert off.add("a") and off.add("a"), "a zero window disables dedup"


def test_defaults_env_overrides_and_bad_values_name_the_key():
    config = load_config(IngesterConfig, environ={})
    assert config.metrics.port == 9103 and config.ingester.group_id == "streamrec-ingester"
    config = load_config(IngesterConfig, environ={"STREAMREC_INGESTER_DEDUP_WINDOW": "5000",
                                                  "STREAMREC_INGESTER_EVENT_WEIGHTS": '{"Play": 1, "skip": -1}'})
    assert config.ingester.dedup_window == 5000 and config.ingester.event_weights == {"play": 1.0, "skip": -1.0}
    with pytest.raises(ConfigError, match="ingester.max_future_s"):
        load_config(IngesterConfig, environ={"STREAMREC_INGESTER_MAX_FUTURE_S": "-1"})
