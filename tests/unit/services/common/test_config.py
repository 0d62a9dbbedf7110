from __future__ import annotations

import pytest

from services.common.config import (
    KafkaConfig,
    MetricsConfig,
    Section,
    ServiceConfig,
    load_config,
)
from services.common.errors import ConfigError


class DemoSection(Section):
    batch_size: int = 100
    event_weights: dict[str, float] = {"view": 1.0}


class DemoConfig(ServiceConfig):
    kafka: KafkaConfig = KafkaConfig()
    metrics: MetricsConfig = MetricsConfig()
    demo: DemoSection = DemoSection()


def test_defaults_run_the_local_stack():
    cfg = load_config(DemoConfig, environ={})
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.kafka.topics.name("events") == "streamrec.events"


def test_file_then_environment_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  bootstrap_servers: kafka:9092\n  topics:\n    prefix: prod.\ndemo:\n  batch_size: 5\n")
    cfg = load_config(DemoConfig, path, environ={
        "STREAMREC_DEMO_BATCH_SIZE": "7",
        "STREAMREC_KAFKA_TOPICS_PREFIX": "stage.",
        "STREAMREC_DEMO_EVENT_WEIGHTS": '{"click": 2.5}',
        "STREAMREC_UNRELATED": "x",
    })
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert cfg.demo.batch_size == 7
    assert cfg.kafka.topics.prefix == "stage."
    assert cfg.demo.event_weights == {"click": 2.5}


def test_config_file_from_env_var(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metrics:\n  port: 9999\n")
    assert load_config(DemoConfig, environ={"STREAMREC_CONFIG": str(path)}).metrics.port == 9999


def test_invalid_value_names_the_key_and_its_env_var():
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, environ={"STREAMREC_METRICS_PORT": "not-a-port"})
    assert "metrics.port" in str(err.value)
    assert "STREAMREC_METRICS_PORT" in str(err.value)


def test_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("demo:\n  batch_sise: 5\n")
    with pytest.raises(ConfigError, match="demo.batch_sise"):
        load_config(DemoConfig, path, environ={})


def test_unreadable_or_non_mapping_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(DemoConfig, tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(DemoConfig, bad, environ={})


def test_sasl_settings_reach_the_client_options():
    cfg = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                      sasl_password="p", ssl_cafile="/ca.pem", bootstrap_servers="a:1,b:2")
    opts = cfg.client_options()
    assert opts["bootstrap_servers"] == ["a:1", "b:2"]
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_password"] == "p"
    assert opts["ssl_cafile"] == "/ca.pem"


def test_environment_text_values_are_taken_as_written_not_yaml_parsed():
    for raw in ("123456", "null", "~", "yes", "0x1f"):
        cfg = load_config(DemoConfig, environ={"STREAMREC_KAFKA_SASL_PASSWORD": raw,
                                               "STREAMREC_KAFKA_SASL_MECHANISM": "PLAIN"})
        assert cfg.kafka.sasl_password == raw
    # Numbers, booleans and maps are still parsed for fields of those types.
    cfg = load_config(DemoConfig, environ={"STREAMREC_DEMO_BATCH_SIZE": "7", "STREAMREC_METRICS_ENABLED": "false"})
    assert cfg.demo.batch_size == 7 and cfg.metrics.enabled is False


def test_config_errors_never_print_secret_values():
    class Strict(Section):
        api_token: int = 0

    class WithSecret(ServiceConfig):
        strict: Strict = Strict()

    with pytest.raises(ConfigError) as err:
        load_config(WithSecret, environ={"STREAMREC_STRICT_API_TOKEN": "hunter2-secret"})
    assert "strict.api_token" in str(err.value)
    assert "hunter2" not in str(err.value)
