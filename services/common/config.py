"""Typed service configuration.

Every service has one pydantic model (``extra="forbid"``) made of sections. Values come from,
in rising priority: the model's defaults (which run the local stack), a YAML file
(``--config FILE`` or ``STREAMREC_CONFIG``), and environment variables named
``STREAMREC_<SECTION>_<KEY>`` (e.g. ``STREAMREC_KAFKA_BOOTSTRAP_SERVERS``). An invalid value
stops the process with a message naming the key.
"""

from __future__ import annotations

import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import ConfigError

ENV_PREFIX = "STREAMREC_"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicsConfig(Section):
    """Topic names; the prefix is prepended to each."""

    prefix: str = "streamrec."
    events_raw: str = "events.raw"
    items_raw: str = "items.raw"
    events: str = "events"
    items: str = "items"
    dlq: str = "dlq"
    model_versions: str = "model-versions"
    partitions: int = Field(3, ge=1, description="partitions for topics the services create")
    replication_factor: int = Field(1, ge=1)
    create: bool = Field(True, description="create missing topics at start-up")

    def name(self, key: str) -> str:
        return self.prefix + getattr(self, key)


class KafkaConfig(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    # Secrets come from the environment (a mounted Secret), never from the chart's values.
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "streamrec"
    request_timeout_ms: int = Field(30000, ge=1000)
    topics: TopicsConfig = TopicsConfig()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments common to every kafka-python client."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            # kafka-python backs off exponentially up to 30 s between reconnects: after a broker outage every
            # service would then stay away for up to that long. Retry a broker at least every 2 s instead.
            "reconnect_backoff_max_ms": 2000,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key):
                opts[key] = getattr(self, key)
        return opts


class MetricsConfig(Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9100, ge=0, le=65535)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class GrpcConfig(Section):
    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    max_workers: int = Field(16, ge=1)
    # The largest request a caller may send; bigger ones are refused with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Calls in progress plus queued; beyond it new calls get RESOURCE_EXHAUSTED at once (0: 4 x max_workers).
    max_concurrent_rpcs: int = Field(0, ge=0)
    # Applied to calls that arrive without a deadline, so none can hold a worker forever.
    default_deadline_s: float = Field(30.0, gt=0)
    # Seconds in-flight calls get to finish after SIGTERM.
    shutdown_grace_s: float = Field(10.0, ge=0)


class LifecycleConfig(Section):
    # Seconds a service gets to stop after SIGTERM. Past it the process logs what each thread was still
    # doing and exits with code 1: a stop that waits on an unreachable Kafka ends all the same, also
    # where nothing will send SIGKILL (a stack killed without cleaning up). The chart sets it just under
    # the pod's terminationGracePeriodSeconds.
    stop_timeout_s: float = Field(30.0, gt=0)


class ServiceConfig(BaseModel):
    """Root of a service's config; subclasses add their own sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    logging: LoggingConfig = LoggingConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()


T = TypeVar("T", bound=ServiceConfig)


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        node = tree.get(key)
        if not isinstance(node, dict):
            node = tree[key] = {}
        tree = node
    tree[path[-1]] = value


def _section_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    out: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        out[name] = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return out


def _env_overrides(model: type[BaseModel], environ: Mapping[str, str]) -> dict:
    """Map ``STREAMREC_<SECTION>_<KEY>[_<SUBKEY>]`` onto the model's nested fields.

    Field names may contain underscores, so the variable is matched against the known fields
    greedily rather than split blindly.
    """
    overrides: dict = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        rest = var[len(ENV_PREFIX):].lower()
        path = _match_path(model, rest)
        if path is None:
            continue
        # Text fields (passwords, names) take the value as written: "null", "~" or "123" stay text.
        value = raw if _is_text_field(model, path) else _parse_env_value(raw)
        _set_path(overrides, path, value)
    return overrides


def _is_text_field(model: type[BaseModel], path: list[str]) -> bool:
    for key in path[:-1]:
        model = _section_fields(model)[key]
    annotation = model.model_fields[path[-1]].annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = tuple(a for a in args if a is not type(None))
        return bool(args) and all(_is_text(a) for a in args)
    return _is_text(annotation)


def _is_text(annotation) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return False


def _match_path(model: type[BaseModel], rest: str) -> list[str] | None:
    for name, sub in sorted(_section_fields(model).items(), key=lambda kv: -len(kv[0])):
        if rest == name and sub is None:
            return [name]
        if sub is not None and rest.startswith(name + "_"):
            tail = _match_path(sub, rest[len(name) + 1:])
            if tail is not None:
                return [name, *tail]
    return None


def _parse_env_value(raw: str) -> Any:
    """Non-text env values are YAML scalars or JSON lists/maps (``[a, b]``, ``{"view": 1}``, ``true``, ``3``)."""
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    model: type[T],
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``model`` from file + environment + explicit overrides; raise ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    data: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, _env_overrides(model, environ))
    if overrides:
        data = _deep_merge(data, dict(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


_SECRET_WORDS = ("password", "secret", "token")


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
        given = err.get("input")
        shown = json.dumps(given, default=str) if not isinstance(given, dict) else "{...}"
        if any(word in key.lower() for word in _SECRET_WORDS):
            shown = "<hidden>"  # never print a secret, even a malformed one
        lines.append(f"  {key} (env {env}): {err['msg']} (got {shown[:80]})")
    return "\n".join(lines)
