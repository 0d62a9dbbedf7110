"""Weight deltas over real gRPC and mutual TLS: register, select, retain, refuse, authorize, survive restarts."""

from __future__ import annotations

import hashlib
import sqlite3

import grpc
import pytest

from services.common.config import load_config
from services.common.errors import ConfigError, DataLoss
from services.common.grpc import GrpcServer, open_channel
from services.common.registry_client import RegistryClient
from services.registry.config import RegistryConfig
from services.registry.servicer import SERVICE_NAME
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc
from tests.pki import registry_client, tls_for
from tests.unit.services.registry.builders import make_artifact_dir, start_registry

MODEL = "recommender"
TOPIC = "t.events"
# make_artifact_dir(seed=s) trains to {0: 10 + s, 1: 20 + s}.
V1_OFFSETS = {TOPIC: {0: 11, 1: 21}}
V2_OFFSETS = {TOPIC: {0: 12, 1: 22}}
MAX_DELTA_BYTES = 4096
KEEP_DELTAS = 3


def start(tmp_path, **overrides):
    settings = {"max_delta_bytes": MAX_DELTA_BYTES, "keep_deltas": KEEP_DELTAS, **overrides}
    return start_registry(tmp_path / "registry", **settings)


@pytest.fixture
def registry(tmp_path):
    """A registry with versions 1 and 2 of MODEL (candidate: v2; no production)."""
    service = start(tmp_path)
    with RegistryClient(service.target, tls=tls_for("trainer")) as trainer:
        for seed in (1, 2):
            trainer.register(MODEL, make_artifact_dir(tmp_path / f"a{seed}", seed=seed), trainer_id="t",
                             auto_promote=False)
    yield service
    service.stop(0)


@pytest.fixture
def client(registry):
    with registry_client(registry.target) as c:
        yield c


def register(client, base=1, payload=b"delta", offsets=None, **kwargs):
    kwargs = {"created_at_ms": 1_000, "newest_event_ms": 900, "trainer_id": "trainer-0", **kwargs}
    return client.register_delta(MODEL, base, payload, offsets or (V1_OFFSETS if base == 1 else V2_OFFSETS),
                                 **kwargs)


def offsets_of(delta) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for tpo in delta.training_offsets:
        out.setdefault(tpo.topic, {})[tpo.partition] = tpo.offset
    return out


def raw_request(payload=b"delta", **fields) -> registry_pb2.RegisterDeltaRequest:
    """A RegisterDeltaRequest as a client that computes nothing for us would send it."""
    values = dict(model_name=MODEL, base_version=1, payload=payload, payload_sha256=hashlib.sha256(payload).hexdigest(),
                  training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=p, offset=o)
                                    for p, o in V1_OFFSETS[TOPIC].items()],
                  created_at_ms=1, newest_event_ms=1, trainer_id="t")
    values.update(fields)
    return registry_pb2.RegisterDeltaRequest(**values)


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_a_delta_comes_back_with_its_payload_and_offsets_and_sequences_count_up(registry, client):
    payload = bytes(range(256)) * 10
    offsets = {TOPIC: {0: 15, 1: 21, 2: 7}, "t.items": {0: 3}}
    first = register(client, payload=payload, offsets=offsets, created_at_ms=1_234, newest_event_ms=1_200)
    assert (first.model_name, first.base_version, first.sequence) == (MODEL, 1, 1)
    assert first.payload == b"" and first.payload_size_bytes == len(payload)
    assert first.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert offsets_of(first) == offsets
    assert (first.created_at_ms, first.newest_event_ms, first.trainer_id) == (1_234, 1_200, "trainer-0")
    assert first.registered_at_ms > 0

    shown = client.get_delta(MODEL, 1)
    assert shown.sequence == 1 and shown.payload == b"" and shown.payload_sha256 == first.payload_sha256
    assert offsets_of(shown) == offsets and shown.registered_at_ms == first.registered_at_ms
    downloaded = client.download_delta(MODEL, 1)
    assert downloaded.payload == payload and downloaded.sequence == 1 and offsets_of(downloaded) == offsets

    assert register(client, payload=b"second").sequence == 2
    assert client.download_delta(MODEL, 1).payload == b"second"
    assert registry.collector.get_sample_value("streamrec_registry_deltas_registered_total", {"model": MODEL}) == 2


def test_after_sequence_and_sequence_select_only_deltas_of_the_named_base(registry, client):
    assert [register(client, base=b, payload=f"d{i}".encode()).sequence
            for i, b in enumerate((1, 1, 2, 1), start=1)] == [1, 2, 3, 4]
    assert client.get_delta(MODEL, 1).sequence == 4  # the newest of v1
    assert client.get_delta(MODEL, 2).sequence == 3  # v2's only delta, though v1 has a newer one
    assert client.get_delta(MODEL, 1, after_sequence=1).sequence == 4  # the newest, not the next
    assert client.download_delta(MODEL, 1, sequence=2).payload == b"d2"
    assert client.download_delta(MODEL, 2, sequence=3).payload == b"d3"
    nothing = client.get_delta(MODEL, 1, after_sequence=4)
    assert (nothing.model_name, nothing.base_version, nothing.sequence, nothing.payload_sha256) == (MODEL, 1, 0, "")
    assert client.get_delta(MODEL, 1, sequence=3).sequence == 0  # delta 3 belongs to v2
    assert client.get_delta(MODEL, 2, after_sequence=3).sequence == 0
    assert client.get_delta(MODEL, 1, sequence=99).sequence == 0
    assert client.download_delta(MODEL, 1, after_sequence=4).payload == b""
    assert client.get_delta("another-model", 1).sequence == 0


def test_only_the_newest_keep_deltas_of_a_model_are_kept(registry, client):
    for i in range(1, 6):
        register(client, base=1 if i % 2 else 2, payload=f"d{i}".encode())
    assert [client.get_delta(MODEL, 1 if i % 2 else 2, sequence=i).sequence for i in range(1, 6)] == [0, 0, 3, 4, 5]
    assert client.get_delta(MODEL, 2).sequence == 4
    assert client.download_delta(MODEL, 1, after_sequence=0).payload == b"d5"


BAD_REQUESTS = [
    ("wrong sha256", dict(payload_sha256="0" * 64), "INVALID_ARGUMENT",
     "payload has sha256 " + hashlib.sha256(b"delta").hexdigest() + ", the request declared '" + "0" * 64 + "'"),
    ("oversize payload", dict(payload=b"x" * (MAX_DELTA_BYTES + 1),
                              payload_sha256=hashlib.sha256(b"x" * (MAX_DELTA_BYTES + 1)).hexdigest()),
     "INVALID_ARGUMENT",
     f"payload is {MAX_DELTA_BYTES + 1} bytes; at most {MAX_DELTA_BYTES} are allowed (registry.max_delta_bytes)"),
    ("empty payload", dict(payload=b"", payload_sha256=hashlib.sha256(b"").hexdigest()), "INVALID_ARGUMENT",
     "payload is empty"),
    ("unknown base version", dict(base_version=9), "NOT_FOUND", "model 'recommender' has no version 9"),
    ("unknown model", dict(model_name="nobody"), "NOT_FOUND", "model 'nobody' has no version 1"),
    ("base version 0", dict(base_version=0), "INVALID_ARGUMENT", "base_version must be a registered version"),
    ("negative base version", dict(base_version=-1), "INVALID_ARGUMENT", "base_version must be a registered version"),
    ("bad model name", dict(model_name="../etc"), "INVALID_ARGUMENT", "invalid model name '../etc'"),
    ("offsets behind the base's", dict(training_offsets=[
        registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0, offset=10),
        registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=1, offset=30)]), "FAILED_PRECONDITION",
     "trained on less than version 1: t.events[0] at offset 10, version 1 at 11"),
    ("missing partition", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0,
                                                                                   offset=50)]),
     "FAILED_PRECONDITION", "trained on less than version 1: no offset for t.events[1], which version 1 trained to 21"),
    ("no offsets at all", dict(training_offsets=[]), "FAILED_PRECONDITION", "no offset for t.events[0]"),
    ("negative partition", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=-1,
                                                                                    offset=5)]),
     "INVALID_ARGUMENT", "t.events[-1] offset 5: partition and offset must be >= 0"),
    ("negative offset", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0,
                                                                                 offset=-5)]),
     "INVALID_ARGUMENT", "t.events[0] offset -5: partition and offset must be >= 0"),
    ("empty topic", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic="", partition=0, offset=1)]),
     "INVALID_ARGUMENT", "topic must have 1-249 characters"),
    ("a partition twice", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0, offset=11),
                                                 registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=0, offset=12)]),
     "INVALID_ARGUMENT", "training_offsets names t.events[0] twice"),
    ("too many offsets", dict(training_offsets=[registry_pb2.TopicPartitionOffset(topic=TOPIC, partition=p, offset=99)
                                                for p in range(4097)]),
     "INVALID_ARGUMENT", "4097 training_offsets; at most 4096 are allowed"),
    ("negative created_at_ms", dict(created_at_ms=-1), "INVALID_ARGUMENT", "created_at_ms must be >= 0, got -1"),
    ("negative newest_event_ms", dict(newest_event_ms=-1), "INVALID_ARGUMENT", "newest_event_ms must be >= 0, got -1"),
    ("too-long trainer_id", dict(trainer_id="t" * 201), "INVALID_ARGUMENT",
     "trainer_id is 201 characters; at most 200 are allowed"),
]


@pytest.mark.parametrize("fields,code,message", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_hostile_register_delta_gets_a_clear_status_and_blocks_nothing(registry, client, fields, code, message):
    with open_channel(registry.target, tls_for("trainer")) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        got_code, details = refusal(lambda: stub.RegisterDelta(raw_request(**fields), timeout=30))
        assert got_code.name == code and message in details
        assert client.get_delta(MODEL, 1).sequence == 0
        assert registry.collector.get_sample_value("streamrec_registry_delta_failures_total",
                                                   {"reason": code.lower()}) == 1
        # A refusal takes no sequence number, and the next good delta goes through.
        assert stub.RegisterDelta(raw_request(), timeout=30).sequence == 1


def test_a_delta_of_an_archived_version_is_refused(registry, client):
    client.archive(MODEL, 1)
    code, details = refusal(lambda: register(client, base=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details == "recommender v1 is archived; deltas apply only to active versions"
    assert register(client, base=2).sequence == 1


@pytest.mark.parametrize("fields,message", [
    (dict(base_version=-1), "base_version must be >= 0, got -1"),
    (dict(after_sequence=-2), "after_sequence must be >= 0, got -2"),
    (dict(sequence=-3), "sequence must be >= 0, got -3"),
    (dict(model_name=""), "invalid model name ''"),
])
def test_hostile_get_delta_is_invalid_argument(registry, fields, message):
    with open_channel(registry.target, tls_for("inference")) as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        request = registry_pb2.GetDeltaRequest(**{"model_name": MODEL, "base_version": 1, **fields})
        for call in (stub.GetDelta, stub.DownloadDelta):
            code, details = refusal(lambda: call(request, timeout=30))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(message)


def test_only_can_register_registers_and_only_can_download_downloads_deltas(registry, client):
    register(client, payload=b"secret weights")
    for identity in ("operator", "inference", "app"):
        with RegistryClient(registry.target, tls=tls_for(identity)) as other:
            code, details = refusal(lambda: register(other))
            assert code == grpc.StatusCode.PERMISSION_DENIED and f"'{identity}' may not call RegisterDelta" in details
    for identity in ("operator", "app"):
        with RegistryClient(registry.target, tls=tls_for(identity)) as other:
            code, details = refusal(lambda: other.download_delta(MODEL, 1))
            assert code == grpc.StatusCode.PERMISSION_DENIED and f"'{identity}' may not call DownloadDelta" in details
    for identity in ("operator", "app", "inference", "trainer"):  # any authenticated caller reads metadata
        with RegistryClient(registry.target, tls=tls_for(identity)) as other:
            assert other.get_delta(MODEL, 1).sequence == 1
    for identity in ("inference", "trainer"):
        with RegistryClient(registry.target, tls=tls_for(identity)) as other:
            assert other.download_delta(MODEL, 1).payload == b"secret weights"
    assert client.get_delta(MODEL, 1, after_sequence=1).sequence == 0  # the refused ones left nothing


def test_sequence_numbers_are_never_reused_after_deletion_or_a_restart(tmp_path):
    service = start(tmp_path, keep_deltas=1)
    try:
        with registry_client(service.target) as client:
            client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
            assert [register(client).sequence for _ in range(3)] == [1, 2, 3]
            assert client.get_delta(MODEL, 1, sequence=2).sequence == 0  # deleted: only the newest is kept
    finally:
        service.stop(0)
    service = start(tmp_path, keep_deltas=1)
    try:
        with registry_client(service.target) as client:
            assert client.get_delta(MODEL, 1).sequence == 3
            assert register(client, payload=b"after restart").sequence == 4
            assert client.download_delta(MODEL, 1).payload == b"after restart"
            # Another model counts on its own.
            client.register("other", make_artifact_dir(tmp_path / "b1", model_name="other", seed=1), trainer_id="t")
            assert client.register_delta("other", 1, b"x", V1_OFFSETS, created_at_ms=0, newest_event_ms=0).sequence == 1
    finally:
        service.stop(0)


def test_a_registry_database_from_before_deltas_still_opens(tmp_path):
    service = start(tmp_path)
    with registry_client(service.target) as client:
        client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
    service.stop(0)
    # What a registry.db written by the release before deltas looks like.
    with sqlite3.connect(tmp_path / "registry" / "registry.db") as conn:
        conn.execute("DROP TABLE model_deltas")
        conn.execute("ALTER TABLE registered_models DROP COLUMN last_delta")
    service = start(tmp_path)
    try:
        with registry_client(service.target) as client:
            assert client.get_version(MODEL, 1).version == 1
            assert register(client).sequence == 1
            assert client.register(MODEL, make_artifact_dir(tmp_path / "a2", seed=2), trainer_id="t").version == 2
            assert register(client, base=2).sequence == 2
    finally:
        service.stop(0)


def test_a_payload_of_the_default_max_delta_bytes_fits_the_default_grpc_message_limit(tmp_path):
    defaults = RegistryConfig().registry
    service = start(tmp_path, max_delta_bytes=defaults.max_delta_bytes)
    try:
        with registry_client(service.target) as client:
            client.register(MODEL, make_artifact_dir(tmp_path / "a1", seed=1), trainer_id="t")
            # As many offsets as a large deployment has, beside the largest payload allowed.
            offsets = {TOPIC: {0: 11, 1: 21, **{p: 5 for p in range(2, 256)}}}
            payload = bytes(range(256)) * (defaults.max_delta_bytes // 256)
            assert len(payload) == defaults.max_delta_bytes
            assert register(client, payload=payload, offsets=offsets).payload_size_bytes == len(payload)
            assert client.download_delta(MODEL, 1).payload == payload
            code, details = refusal(lambda: register(client, payload=payload + b"!"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "registry.max_delta_bytes" in details
    finally:
        service.stop(0)


def test_max_delta_bytes_must_leave_room_in_a_grpc_message():
    with pytest.raises(ConfigError) as err:
        load_config(RegistryConfig, environ={"STREAMREC_REGISTRY_MAX_DELTA_BYTES": str(4 * 1024 * 1024)})
    assert "registry.max_delta_bytes (4194304)" in str(err.value)
    assert "grpc.max_message_bytes (4194304)" in str(err.value)
    bigger = load_config(RegistryConfig, environ={"STREAMREC_REGISTRY_MAX_DELTA_BYTES": str(8 * 1024 * 1024),
                                                  "STREAMREC_GRPC_MAX_MESSAGE_BYTES": str(9 * 1024 * 1024)})
    assert bigger.registry.max_delta_bytes == 8 * 1024 * 1024
    assert RegistryConfig().registry.keep_deltas == 8


class CorruptingRegistry(registry_pb2_grpc.ModelRegistryServicer):
    """Hands back a delta whose payload changed after its digest was taken (a faulty proxy or disk)."""

    def DownloadDelta(self, request, context):
        return registry_pb2.ModelDelta(model_name=request.model_name, base_version=request.base_version, sequence=7,
                                       payload=b"weightz", payload_sha256=hashlib.sha256(b"weights").hexdigest(),
                                       payload_size_bytes=7)


def test_download_delta_refuses_a_payload_that_does_not_match_its_digest():
    server = GrpcServer("127.0.0.1", 0, tls=tls_for("registry"))
    server.add(registry_pb2_grpc.add_ModelRegistryServicer_to_server, CorruptingRegistry(), SERVICE_NAME)
    server.start()
    try:
        with RegistryClient(f"127.0.0.1:{server.port}", tls=tls_for("inference")) as client:
            with pytest.raises(DataLoss) as err:
                client.download_delta(MODEL, 1)
        assert str(err.value) == (f"recommender v1 delta 7: downloaded payload has sha256 "
                                  f"{hashlib.sha256(b'weightz').hexdigest()} and 7 bytes, the registry announced "
                                  f"{hashlib.sha256(b'weights').hexdigest()} and 7 bytes")
    finally:
        server.stop(0)
