"""Start-up recovery removes only this registry's own leftovers, never another replica's upload in flight."""

from __future__ import annotations

from sqlalchemy import insert

from services.registry.artifact_store import FilesystemArtifactStore
from services.registry.database import Database, pending_uploads
from services.registry.gate import PromotionGate
from services.registry.upload import staging_prefix
from services.registry.model_registry import ModelRegistry


def _replica(tmp_path, db, owner: str) -> ModelRegistry:
    # Replicas share the database, the artifact store and (here) the staging volume.
    return ModelRegistry(db, FilesystemArtifactStore(tmp_path / "store"), tmp_path / "staging",
                         PromotionGate("hr@10", tolerance=0.02), owner=owner)


def _stored_but_uncommitted(reg: ModelRegistry, tmp_path, sha: str) -> None:
    """What a replica leaves between putting an archive in the store and committing its version."""
    src = tmp_path / f"{sha[:8]}.tar"
    src.write_bytes(sha.encode())
    with reg.db.write() as conn:
        conn.execute(insert(pending_uploads).values(sha256=sha, owner=reg.owner, started_at_ms=0))
    reg.store.put(sha, src)


def test_recovery_keeps_another_replicas_upload_and_removes_its_own(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        a, b = _replica(tmp_path, db, "registry-0"), _replica(tmp_path, db, "registry-1")
        mine, theirs = "a" * 64, "b" * 64
        _stored_but_uncommitted(a, tmp_path, mine)      # a crashed after storing this one
        _stored_but_uncommitted(b, tmp_path, theirs)    # b is uploading this one right now
        (tmp_path / "staging").mkdir()
        (tmp_path / "staging" / (staging_prefix("registry-0") + "x1")).mkdir()
        (tmp_path / "staging" / (staging_prefix("registry-1") + "x2")).mkdir()

        a.recover()  # a restarts

        assert not a.store.exists(mine)
        assert b.store.exists(theirs)
        assert [p.name for p in (tmp_path / "staging").iterdir()] == [staging_prefix("registry-1") + "x2"]
    finally:
        db.close()
