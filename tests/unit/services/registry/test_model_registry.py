"""ModelRegistry on SQLite and the filesystem store: versions, aliases, rollback, retention, outbox."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from sqlalchemy import select

from services.common.errors import DataLoss, FailedPrecondition, InvalidInput, NotFound
from services.registry.artifact_store import FilesystemArtifactStore
from services.registry.database import Database, outbox
from services.registry.gate import PromotionGate
from services.registry.model_registry import ModelRegistry
from streamrec_proto.v1 import registry_pb2
from tests.unit.services.registry.builders import (
    flip_one_byte_of_member,
    make_artifact_dir,
    pack,
    paired_evidence,
)


@pytest.fixture
def registry(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    reg = ModelRegistry(db, FilesystemArtifactStore(tmp_path / "store"), tmp_path / "staging",
                        PromotionGate("hr@10", tolerance=0.02), keep_last=3)
    yield reg
    db.close()


def upload(reg, tmp_path, *, hr=0.3, seed=0, model="m", auto_promote=True, tamper=None, parent=0, gate=None):
    d = make_artifact_dir(tmp_path / f"a{seed}", model_name=model, hr=hr, seed=seed, gate=gate)
    tar, sha = pack(d, tmp_path / f"a{seed}.tar")
    size = tar.stat().st_size
    if tamper:
        # A file changed after its manifest was written: the archive digest matches, the file's does not.
        flip_one_byte_of_member(tar, tamper)
        sha = hashlib.sha256(tar.read_bytes()).hexdigest()
    header = registry_pb2.RegisterHeader(model_name=model, manifest_json=(d / "manifest.json").read_text(),
                                         trainer_id="trainer-0", parent_version=parent, artifact_sha256=sha,
                                         artifact_size_bytes=size, auto_promote=auto_promote)
    data = tar.read_bytes()
    return reg.register(header, (data[i:i + 1000] for i in range(0, len(data), 1000)))


def outbox_events(reg):
    with reg.db.read() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.payload).order_by(outbox.c.id)).all()
    return [(i, registry_pb2.ModelVersionEvent.FromString(p)) for i, p in rows]


def test_register_records_lineage_and_runs_the_gate(registry, tmp_path):
    v1 = upload(registry, tmp_path, hr=0.30, seed=1)
    assert (v1.version, v1.state, v1.gate_decision) == (1, "active", "promoted")
    assert set(v1.aliases) == {"candidate", "production"}
    assert v1.trainer_id == "trainer-0" and v1.metrics["hr@10"] == pytest.approx(0.30)
    assert {(o.topic, o.partition, o.offset) for o in v1.training_offsets} == {("t.events", 0, 11), ("t.events", 1, 21)}
    assert v1.created_at_ms == 1714564800000  # the manifest's time; the registry's own is when it took it
    assert abs(v1.registered_at_ms - time.time() * 1000) < 600_000
    v2 = upload(registry, tmp_path, hr=0.10, seed=2, parent=1, gate=paired_evidence(1, 0.10, 0.30))
    assert (v2.version, v2.gate_decision, v2.parent_version) == (2, "rejected", 1)
    assert "worse beyond noise" in v2.gate_reason and "0.1000 vs production v1 0.3000" in v2.gate_reason
    assert registry.get_alias("m", "production").version == 1
    assert registry.get_alias("m", "candidate").version == 2
    actions = [(e.action, e.version, dict(e.aliases)) for _, e in outbox_events(registry)]
    assert actions == [
        ("registered", 1, {"candidate": 1}),
        ("promoted", 1, {"candidate": 1, "production": 1}),
        ("registered", 2, {"candidate": 2, "production": 1}),
        ("rejected", 2, {"candidate": 2, "production": 1}),
    ]
    # The announcement carries the evidence: the decision, its reason and the paired metrics.
    rejected = outbox_events(registry)[-1][1]
    assert rejected.reason == v2.gate_reason
    assert rejected.model_version.gate_decision == "rejected"
    assert rejected.model_version.metrics["gate.n"] == 1000


def test_without_evidence_a_version_is_held_until_production_is_stale(registry, tmp_path, monkeypatch):
    from services.registry import model_registry

    clock = {"ms": 1_800_000_000_000}
    monkeypatch.setattr(model_registry, "now_ms", lambda: clock["ms"])
    upload(registry, tmp_path, seed=1)
    clock["ms"] += 30_000
    v2 = upload(registry, tmp_path, seed=2)  # no gate.* metrics: nothing to judge on
    assert v2.gate_decision == "held" and "no paired evidence" in v2.gate_reason and "30s old" in v2.gate_reason
    v3 = upload(registry, tmp_path, seed=3, gate=paired_evidence(1, 0.3, 0.3, n=20))
    assert v3.gate_decision == "held" and "too few holdout events" in v3.gate_reason
    assert registry.get_alias("m", "production").version == 1
    assert registry.production_staleness_s("m") == 30.0
    assert registry.promote_stale() == []  # not stale yet

    clock["ms"] += 100_000  # production v1 is now 130 s old, over the 120 s bound
    promoted = registry.promote_stale()
    assert [v.version for v in promoted] == [3]  # the newest held version
    assert "staleness bound" in promoted[0].gate_reason and promoted[0].gate_decision == "promoted"
    assert registry.get_alias("m", "production").version == 3
    assert registry.production_staleness_s("m") == 0.0
    assert outbox_events(registry)[-1][1].action == "promoted"
    assert registry.promote_stale() == []


def test_a_rejected_version_is_never_promoted_by_staleness(registry, tmp_path, monkeypatch):
    from services.registry import model_registry

    clock = {"ms": 1_800_000_000_000}
    monkeypatch.setattr(model_registry, "now_ms", lambda: clock["ms"])
    upload(registry, tmp_path, seed=1)
    clock["ms"] += 500_000
    v2 = upload(registry, tmp_path, seed=2, gate=paired_evidence(1, 0.1, 0.3))
    assert v2.gate_decision == "rejected"  # stale production, but worse beyond noise
    clock["ms"] += 500_000
    assert registry.promote_stale() == []
    assert registry.get_alias("m", "production").version == 1
    assert registry.production_staleness_s("m") == 1000.0


def test_a_held_version_older_than_a_rejection_is_not_promoted_by_staleness(registry, tmp_path, monkeypatch):
    from services.registry import model_registry

    clock = {"ms": 1_800_000_000_000}
    monkeypatch.setattr(model_registry, "now_ms", lambda: clock["ms"])
    upload(registry, tmp_path, seed=1)
    clock["ms"] += 10_000
    assert upload(registry, tmp_path, seed=2).gate_decision == "held"
    assert upload(registry, tmp_path, seed=3, gate=paired_evidence(1, 0.1, 0.3)).gate_decision == "rejected"
    clock["ms"] += 500_000
    # The trainer's line went bad after v2: v2 is not promoted behind the rejection's back.
    assert registry.promote_stale() == []
    assert registry.get_alias("m", "production").version == 1
    # A new version without evidence, production stale: promoted at once.
    v4 = upload(registry, tmp_path, seed=4)
    assert v4.gate_decision == "promoted" and "staleness bound" in v4.gate_reason


def test_tampered_upload_is_refused_naming_the_file_and_leaves_nothing(registry, tmp_path):
    with pytest.raises(DataLoss, match="user_encoder.onnx"):
        upload(registry, tmp_path, tamper="user_encoder.onnx")
    assert list((tmp_path / "store").rglob("*.tar")) == []
    assert list((tmp_path / "staging").iterdir()) == []
    with pytest.raises(NotFound):
        registry.get_version("m", 1)
    assert upload(registry, tmp_path, seed=5).version == 1  # the refused upload took no number


def test_bytes_changed_in_transit_fail_the_archive_digest(registry, tmp_path):
    d = make_artifact_dir(tmp_path / "a")
    tar, sha = pack(d, tmp_path / "a.tar")
    flip_one_byte_of_member(tar, "items.npz")
    data = tar.read_bytes()
    header = registry_pb2.RegisterHeader(model_name="m", artifact_sha256=sha, artifact_size_bytes=len(data))
    with pytest.raises(DataLoss, match="sha256"):
        registry.register(header, iter([data]))
    assert registry.list_versions("m") == []


def test_wrong_header_digest_or_size_is_data_loss(registry, tmp_path):
    d = make_artifact_dir(tmp_path / "a")
    tar, sha = pack(d, tmp_path / "a.tar")
    data = tar.read_bytes()
    bad_sha = registry_pb2.RegisterHeader(model_name="m", artifact_sha256="0" * 64, artifact_size_bytes=len(data))
    with pytest.raises(DataLoss, match="sha256"):
        registry.register(bad_sha, iter([data]))
    short = registry_pb2.RegisterHeader(model_name="m", artifact_sha256=sha, artifact_size_bytes=len(data) + 1)
    with pytest.raises(DataLoss, match="bytes"):
        registry.register(short, iter([data]))
    with pytest.raises(InvalidInput, match="model name"):
        registry.register(registry_pb2.RegisterHeader(model_name="../x", artifact_sha256=sha,
                                                      artifact_size_bytes=len(data)), iter([data]))


def test_manual_promote_then_rollback_returns_to_the_previous_good_version(registry, tmp_path):
    for seed in (1, 2, 3):
        upload(registry, tmp_path, seed=seed, hr=0.3, gate=paired_evidence(seed - 1, 0.3, 0.3))  # each promoted
    assert registry.get_alias("m", "production").version == 3
    assert registry.rollback("m", "bad canary").version == 2
    assert registry.rollback("m").version == 1  # not back to 3: it was rolled back from
    with pytest.raises(FailedPrecondition, match="no earlier"):
        registry.rollback("m")
    assert registry.set_alias("m", "production", 3, "fixed").version == 3
    assert registry.rollback("m").version == 1  # 2 was rolled back from and not promoted since


def test_rollback_skips_archived_versions(registry, tmp_path):
    for seed in (1, 2, 3):
        upload(registry, tmp_path, seed=seed, hr=0.3, auto_promote=False)
    for v in (1, 2, 3):
        registry.set_alias("m", "production", v)
    registry.set_alias("m", "candidate", 3)
    registry.archive("m", 2)
    assert registry.rollback("m").version == 1


def test_archive_refuses_alias_targets_and_retention_keeps_last_n_plus_aliases(registry, tmp_path):
    upload(registry, tmp_path, seed=1, hr=0.9)  # production stays at v1: later ones are worse
    for seed in range(2, 7):
        upload(registry, tmp_path, seed=seed, hr=0.1, gate=paired_evidence(1, 0.1, 0.9))
    with pytest.raises(FailedPrecondition, match="production"):
        registry.archive("m", 1)
    active = [v.version for v in registry.list_versions("m")]
    assert active == [1, 4, 5, 6]  # newest 3 + production
    archived = {v.version: v.state for v in registry.list_versions("m", include_archived=True)}
    assert archived[2] == archived[3] == "archived"
    stored = {p.name[:-4] for p in (tmp_path / "store").rglob("*.tar")}
    assert stored == {v.artifact_sha256 for v in registry.list_versions("m")}
    with pytest.raises(FailedPrecondition, match="archived"):
        list(registry.download("m", 2))


def test_download_streams_the_archive_with_its_digest_first(registry, tmp_path):
    v = upload(registry, tmp_path, seed=1)
    chunks = list(registry.download("m", 1))
    assert chunks[0].artifact_sha256 == v.artifact_sha256 and chunks[0].artifact_size_bytes == v.artifact_size_bytes
    assert sum(len(c.data) for c in chunks) == v.artifact_size_bytes
    assert (tmp_path / "a1.tar").read_bytes() == b"".join(c.data for c in chunks)


def test_concurrent_registrations_get_distinct_consecutive_versions(registry, tmp_path):
    results, errors = [], []

    def one(seed):
        try:
            results.append(upload(registry, tmp_path, seed=seed, auto_promote=False).version)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 13))


def test_interrupted_upload_leaves_nothing_and_recover_cleans_orphans(registry, tmp_path):
    d = make_artifact_dir(tmp_path / "a")
    tar, sha = pack(d, tmp_path / "a.tar")
    data = tar.read_bytes()

    def cut_off():
        yield data[:1000]
        raise ConnectionResetError("client went away")

    header = registry_pb2.RegisterHeader(model_name="m", artifact_sha256=sha, artifact_size_bytes=len(data))
    with pytest.raises(ConnectionResetError):
        registry.register(header, cut_off())
    assert registry.list_versions("m") == []
    assert list((tmp_path / "staging").iterdir()) == []
    # A crash after storing bytes but before the commit leaves an orphan: start-up removes it
    # (it is this registry's own: noted in pending_uploads under its name; see test_recovery.py).
    from services.registry.database import pending_uploads
    from services.registry.upload import staging_prefix

    with registry.db.write() as conn:
        conn.execute(pending_uploads.insert().values(sha256=sha, owner=registry.owner, started_at_ms=0))
    registry.store.put(sha, tar)
    (tmp_path / "staging" / (staging_prefix(registry.owner) + "leftover")).mkdir()
    registry.recover()
    assert list((tmp_path / "store").rglob("*.tar")) == []
    assert list((tmp_path / "staging").iterdir()) == []
