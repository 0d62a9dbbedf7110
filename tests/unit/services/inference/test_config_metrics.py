"""Inference config defaults/overrides and the metric names the chart relies on."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.common.config import load_config
from services.common.errors import ConfigError
from services.inference.config import InferenceConfig
from services.inference.metrics import InferenceMetrics


def test_defaults_and_env_overrides():
    cfg = load_config(InferenceConfig, environ={"STREAMREC_INFERENCE_CANARY_SHARE": "0.1",
                                                "STREAMREC_INFERENCE_INDEX_ANN_THRESHOLD": "5000"})
    assert cfg.grpc.port == 50052 and cfg.metrics.port == 9102 and cfg.inference.model_name == "recommender"
    assert cfg.inference.canary_share == 0.1 and cfg.inference.index.ann_threshold == 5000


def test_invalid_value_names_the_key():
    with pytest.raises(ConfigError, match="inference.canary_share"):
        load_config(InferenceConfig, environ={"STREAMREC_INFERENCE_CANARY_SHARE": "2"})


def test_contract_metric_names_exist():
    reg = CollectorRegistry()
    m = InferenceMetrics(reg)
    m.observe_request("Recommend", "OK", 0.001)
    m.model_version.labels("recommender", "production").set(3)
    m.history_lag.labels("0").set(0)
    text = generate_latest(reg).decode()
    for name in ("streamrec_inference_request_duration_seconds_bucket", "streamrec_inference_batch_size_bucket",
                 "streamrec_inference_model_version", "streamrec_inference_model_ready",
                 "streamrec_inference_model_load_duration_seconds_bucket", "streamrec_inference_model_load_failures_total",
                 "streamrec_inference_history_lag_records", "streamrec_inference_history_freshness_seconds",
                 "streamrec_inference_index_items"):
        assert name in text, name
