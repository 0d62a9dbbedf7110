"""ModelRegistry: the transport-neutral core that owns versions, aliases, gates and announcements.

The read side (``VersionReads``: versions, aliases and artifacts as the API returns them) lives in
``services.registry.reads``.

Each change runs in one database transaction that also appends its announcement to the outbox,
so a change is durable and will be announced, or neither. See ``database`` for how version numbers
stay gapless.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import Connection, delete, func, select, update

from services.common.aliases import CANDIDATE, PRODUCTION
from services.common.errors import FailedPrecondition, NotFound, StreamrecError
from services.registry.artifact_store import ArtifactStore
from services.registry.database import (
    Database, alias_history, aliases, artifacts, model_versions, outbox, pending_uploads, registered_models,
)
from services.registry.gate import HELD, PROMOTED, PromotionGate
from services.registry.metrics import RegistryMetrics
from services.registry.reads import ACTIVE, ARCHIVED, VersionReads, check_alias
from services.registry.upload import (
    check_model_name, manifest_created_at_ms, manifest_metrics, manifest_offsets, receive_upload, staging_prefix,
)
from streamrec_proto.v1 import registry_pb2

logger = logging.getLogger(__name__)



def now_ms() -> int:
    return int(time.time() * 1000)


class ModelRegistry(VersionReads):
    def __init__(
        self,
        db: Database,
        store: ArtifactStore,
        staging_dir: str | Path,
        gate: PromotionGate,
        metrics: RegistryMetrics | None = None,
        keep_last: int = 20,
        max_artifact_bytes: int = 4 * 1024**3,
        chunk_bytes: int = 1024 * 1024,
        on_change: Callable[[], None] = lambda: None,
        owner: str = "",
    ) -> None:
        self.db = db
        self.store = store
        self.staging_dir = Path(staging_dir)
        self.gate = gate
        self.metrics = metrics
        self.keep_last = keep_last
        self.max_artifact_bytes = max_artifact_bytes
        self.chunk_bytes = chunk_bytes
        self.on_change = on_change  # wakes the outbox announcer
        # Who this registry process is among replicas sharing a database and store (stable across
        # restarts: the pod name of a StatefulSet, else the host name).
        self.owner = owner or os.environ.get("POD_NAME") or socket.gethostname()
        # Held from "bytes stored" to "version committed" and by garbage collection, so GC never
        # deletes an archive a registration is about to reference.
        self._artifact_lock = threading.Lock()

    # -- start-up -------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a crash: drop this registry's half-received uploads and the archives it stored but never committed.

        Only its own: replicas sharing the database and the store (or a staging volume) may be in
        the middle of an upload right now, and their files must survive this one's start-up.
        """
        if self.staging_dir.exists():
            for child in self.staging_dir.glob(staging_prefix(self.owner) + "*"):
                shutil.rmtree(child, ignore_errors=True)
        with self._artifact_lock:
            with self.db.read() as conn:
                mine = list(conn.scalars(select(pending_uploads.c.sha256).where(pending_uploads.c.owner == self.owner)))
                others = set(conn.scalars(select(pending_uploads.c.sha256)
                                          .where(pending_uploads.c.owner != self.owner)))
                known = set(conn.scalars(select(artifacts.c.sha256)))
            for sha256 in mine:
                if sha256 not in known and sha256 not in others:
                    logger.info("removing an archive this registry stored but never committed",
                                extra={"sha256": sha256, "owner": self.owner})
                    self.store.delete(sha256)
            with self.db.write() as conn:
                conn.execute(delete(pending_uploads).where(pending_uploads.c.owner == self.owner))
        self.collect_garbage()

    # -- register -------------------------------------------------------------------------------

    def register(self, header: registry_pb2.RegisterHeader, chunks: Iterable[bytes]) -> registry_pb2.ModelVersion:
        try:
            return self._register(header, chunks)
        except StreamrecError as exc:
            if self.metrics:
                self.metrics.upload_failures.labels(exc.code.name.lower()).inc()
            raise
        except Exception:
            if self.metrics:
                self.metrics.upload_failures.labels("interrupted").inc()
            raise

    def _register(self, header: registry_pb2.RegisterHeader, chunks: Iterable[bytes]) -> registry_pb2.ModelVersion:
        with receive_upload(header, chunks, self.staging_dir, self.max_artifact_bytes,
                            prefix=staging_prefix(self.owner)) as upload:
            manifest = upload.manifest
            metrics = manifest_metrics(manifest)
            offsets = manifest_offsets(manifest)
            created_at = manifest_created_at_ms(manifest.get("created_at"), default_ms=now_ms())
            with self._artifact_lock:
                # Noted before the bytes go in, so recovery after a crash here removes exactly them.
                with self.db.write() as conn:
                    conn.execute(self.db.insert_ignore(pending_uploads, sha256=upload.sha256, owner=self.owner,
                                                       started_at_ms=now_ms()))
                self.store.put(upload.sha256, upload.tar_path)
                with self.db.write() as conn:
                    conn.execute(delete(pending_uploads).where(pending_uploads.c.sha256 == upload.sha256,
                                                               pending_uploads.c.owner == self.owner))
                    version = self._next_version(conn, header.model_name)
                    stamp = now_ms()
                    conn.execute(self.db.insert_ignore(
                        artifacts, sha256=upload.sha256, size_bytes=upload.size_bytes, stored_at_ms=stamp))
                    conn.execute(model_versions.insert().values(
                        model_name=header.model_name, version=version, state=ACTIVE,
                        manifest_json=upload.manifest_json, metrics_json=json.dumps(metrics),
                        training_offsets_json=json.dumps(offsets), artifact_sha256=upload.sha256,
                        artifact_size_bytes=upload.size_bytes, created_at_ms=created_at, registered_at_ms=stamp,
                        parent_version=header.parent_version, trainer_id=header.trainer_id,
                        gate_decision="", gate_reason="",
                    ))
                    self._move_alias(conn, header.model_name, CANDIDATE, version, "registered", "new version")
                    self._announce(conn, header.model_name, "registered", version, "")
                    decision = None
                    if header.auto_promote:
                        decision = self._run_gate(conn, header.model_name, version, metrics, stamp)
                    result = self._version_proto(conn, header.model_name, version)
        logger.info("registered", extra={"model": header.model_name, "model_version": version,
                                         "sha256": upload.sha256, "gate": decision.decision if decision else ""})
        if self.metrics:
            self.metrics.versions_registered.labels(header.model_name).inc()
            # Zero-valued series from the model's first version on, so rates and alerts read 0, not "no data".
            self.metrics.gate_rejections.labels(header.model_name)
            self.metrics.promotions.labels(header.model_name, PRODUCTION)
            self.metrics.gate_holds.labels(header.model_name)
            if decision:
                self._count_decision(header.model_name, decision)
        self.on_change()
        self.apply_retention(header.model_name)
        self.refresh_staleness(header.model_name)
        return result

    # -- the promotion gate ---------------------------------------------------------------------

    def _run_gate(self, conn: Connection, model: str, version: int, metrics: dict[str, float], stamp: int):
        """Decide on ``version`` against the current production, record the decision and announce it."""
        prod = self._alias_target(conn, model, PRODUCTION)
        age_s = (stamp - self._row(conn, model, prod).registered_at_ms) / 1000.0 if prod else 0.0
        decision = self.gate.decide(metrics, prod, age_s)
        conn.execute(update(model_versions).where(
            model_versions.c.model_name == model, model_versions.c.version == version,
        ).values(gate_decision=decision.decision, gate_reason=decision.reason))
        if decision.promoted:
            self._move_alias(conn, model, PRODUCTION, version, PROMOTED, decision.reason)
        self._announce(conn, model, decision.decision, version, decision.reason)
        return decision

    def _count_decision(self, model: str, decision) -> None:
        if decision.promoted:
            self.metrics.promotions.labels(model, PRODUCTION).inc()
        elif decision.decision == HELD:
            self.metrics.gate_holds.labels(model).inc()
        else:
            self.metrics.gate_rejections.labels(model).inc()

    def promote_stale(self) -> list[registry_pb2.ModelVersion]:
        """Give a held version another decision now that time has passed: once production is older than the
        gate's staleness bound, the newest version is promoted if it was held (a version the gate rejected
        never is, and neither is a held one older than a rejection: the trainer has moved on from it).
        Returns the versions promoted; refreshes the staleness gauge."""
        promoted = []
        with self.db.read() as conn:
            models = list(conn.scalars(select(registered_models.c.name)))
        for model in models:
            with self.db.read() as conn:
                due = self._stale_held(conn, model, now_ms())
            if due is not None:
                with self.db.write() as conn:
                    self._lock_model(conn, model)
                    stamp = now_ms()
                    version = self._stale_held(conn, model, stamp)  # again, under the lock
                    decision = None
                    if version is not None:
                        decision = self._run_gate(conn, model, version, self._metrics(conn, model, version), stamp)
                        if decision.promoted:
                            promoted.append(self._version_proto(conn, model, version))
                if decision is not None:
                    logger.info("held version decided again: production was stale",
                                extra={"model": model, "model_version": version, "gate": decision.decision})
                    if self.metrics:
                        self._count_decision(model, decision)
                    self.on_change()
            self.refresh_staleness(model)
        return promoted

    def _stale_held(self, conn: Connection, model: str, stamp: int) -> int | None:
        """The newest version, if it was held and production is older than the staleness bound."""
        prod = self._alias_target(conn, model, PRODUCTION)
        if prod is None:
            return None
        if (stamp - self._row(conn, model, prod).registered_at_ms) / 1000.0 < self.gate.stale_after_s:
            return None
        newest = conn.execute(select(model_versions.c.version, model_versions.c.gate_decision).where(
            model_versions.c.model_name == model, model_versions.c.version > prod, model_versions.c.state == ACTIVE,
        ).order_by(model_versions.c.version.desc()).limit(1)).first()
        return newest.version if newest is not None and newest.gate_decision == HELD else None

    def production_staleness_s(self, model: str) -> float:
        """Seconds since production was registered while a newer active version exists, else 0."""
        with self.db.read() as conn:
            prod = self._alias_target(conn, model, PRODUCTION)
            newest = conn.execute(select(func.max(model_versions.c.version)).where(
                model_versions.c.model_name == model, model_versions.c.state == ACTIVE)).scalar_one_or_none()
            if prod is None or newest is None or newest <= prod:
                return 0.0
            return max(0.0, (now_ms() - self._row(conn, model, prod).registered_at_ms) / 1000.0)

    def refresh_staleness(self, model: str) -> None:
        if self.metrics:
            self.metrics.production_staleness.labels(model).set(self.production_staleness_s(model))

    def _next_version(self, conn: Connection, model: str) -> int:
        conn.execute(self.db.insert_ignore(registered_models, name=model, last_version=0, created_at_ms=now_ms()))
        # Row lock on PostgreSQL; SQLite is already inside BEGIN IMMEDIATE under the writer lock.
        last = conn.execute(select(registered_models.c.last_version)
                            .where(registered_models.c.name == model).with_for_update()).scalar_one()
        conn.execute(update(registered_models).where(registered_models.c.name == model)
                     .values(last_version=last + 1))
        return last + 1

    def _lock_model(self, conn: Connection, model: str) -> None:
        """Serialise changes to one model (alias moves) like registrations are serialised."""
        found = conn.execute(select(registered_models.c.name)
                             .where(registered_models.c.name == model).with_for_update()).first()
        if found is None:
            raise NotFound(f"model {model!r} has no versions")

    # -- aliases --------------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: int, reason: str = "") -> registry_pb2.ModelVersion:
        check_model_name(model)
        check_alias(alias)
        with self.db.write() as conn:
            self._lock_model(conn, model)
            row = self._row(conn, model, version)
            if row.state != ACTIVE:
                raise FailedPrecondition(f"{model} v{version} is archived; it cannot take alias {alias!r}")
            action = PROMOTED if alias == PRODUCTION else "alias_set"
            self._move_alias(conn, model, alias, version, action, reason or "manual")
            self._announce(conn, model, action, version, reason or f"{alias} set to v{version}")
            result = self._version_proto(conn, model, version)
        return self._alias_moved(model, alias, result, "alias set", {"alias": alias, "model_version": version})

    def rollback(self, model: str, reason: str = "") -> registry_pb2.ModelVersion:
        """Re-point production to the version it pointed to before (skipping archived and rolled-back ones)."""
        check_model_name(model)
        with self.db.write() as conn:
            self._lock_model(conn, model)
            current = self._alias_target(conn, model, PRODUCTION)
            if current is None:
                raise FailedPrecondition(f"model {model!r} has no production version to roll back")
            target = self._previous_good(conn, model, current)
            if target is None:
                raise FailedPrecondition(f"{model}: no earlier active production version to roll back to from v{current}")
            why = reason or f"rolled back from v{current}"
            self._move_alias(conn, model, PRODUCTION, target, "rolled_back", why)
            self._announce(conn, model, "rolled_back", target, why)
            result = self._version_proto(conn, model, target)
        return self._alias_moved(model, PRODUCTION, result, "rolled back", {"from_version": current, "model_version": target})

    def _alias_moved(self, model: str, alias: str, result: registry_pb2.ModelVersion, message: str,
                     fields: dict) -> registry_pb2.ModelVersion:
        """After the transaction that moved ``alias``: log, count and wake the outbox announcer."""
        logger.info(message, extra={"model": model, **fields})
        if self.metrics:
            self.metrics.promotions.labels(model, alias).inc()
        self.on_change()
        return result

    def _previous_good(self, conn: Connection, model: str, current: int) -> int | None:
        rows = conn.execute(select(alias_history.c.version, alias_history.c.previous_version, alias_history.c.action)
                            .where(alias_history.c.model_name == model, alias_history.c.alias == PRODUCTION)
                            .order_by(alias_history.c.id)).all()
        bad: set[int] = set()
        for version, previous, action in rows:
            if action == "rolled_back":
                bad.add(previous)  # rolled back from: not a good version to return to
            else:
                bad.discard(version)  # promoted again on purpose
        archived = set(conn.scalars(select(model_versions.c.version).where(
            model_versions.c.model_name == model, model_versions.c.state == ARCHIVED)))
        for version, _previous, _action in reversed(rows):
            if version != current and version not in bad and version not in archived:
                return version
        return None

    # -- archive and retention ------------------------------------------------------------------

    def archive(self, model: str, version: int, reason: str = "archived by request") -> registry_pb2.ModelVersion:
        check_model_name(model)
        with self.db.write() as conn:
            self._lock_model(conn, model)
            row = self._row(conn, model, version)
            if row.state == ARCHIVED:
                return self._version_proto(conn, model, version)
            held = sorted(a for a, v in self._aliases(conn, model).items() if v == version)
            if held:
                raise FailedPrecondition(f"{model} v{version} is pointed to by {', '.join(held)}; "
                                         "move those aliases first")
            self._archive_row(conn, model, version, reason)
            result = self._version_proto(conn, model, version)
        self.on_change()
        self.collect_garbage()
        return result

    def _archive_row(self, conn: Connection, model: str, version: int, reason: str) -> None:
        conn.execute(update(model_versions).where(model_versions.c.model_name == model,
                                                  model_versions.c.version == version)
                     .values(state=ARCHIVED, archived_at_ms=now_ms()))
        self._announce(conn, model, "archived", version, reason)
        logger.info("archived", extra={"model": model, "model_version": version, "reason": reason})

    def apply_retention(self, model: str) -> list[int]:
        """Archive active versions beyond the newest ``keep_last`` that no alias points to."""
        with self.db.write() as conn:
            self._lock_model(conn, model)
            active = list(conn.scalars(select(model_versions.c.version).where(
                model_versions.c.model_name == model, model_versions.c.state == ACTIVE)
                .order_by(model_versions.c.version.desc())))
            keep = set(active[: self.keep_last]) | set(self._aliases(conn, model).values())
            doomed = [v for v in active if v not in keep]
            for version in doomed:
                self._archive_row(conn, model, version, f"retention: keeping the newest {self.keep_last}")
        if doomed:
            self.on_change()
            self.collect_garbage()
        return doomed

    def collect_garbage(self) -> int:
        """Delete stored archives that no active version references; returns how many."""
        with self._artifact_lock:
            with self.db.read() as conn:
                live = select(model_versions.c.artifact_sha256).where(model_versions.c.state == ACTIVE)
                dead = list(conn.scalars(select(artifacts.c.sha256).where(artifacts.c.sha256.not_in(live))))
            for sha256 in dead:
                self.store.delete(sha256)
                with self.db.write() as conn:
                    conn.execute(delete(artifacts).where(artifacts.c.sha256 == sha256))
            with self.db.read() as conn:
                total = conn.execute(select(func.coalesce(func.sum(artifacts.c.size_bytes), 0))).scalar_one()
        if self.metrics:
            self.metrics.artifact_bytes.set(total)
        if dead:
            logger.info("deleted unreferenced artifacts", extra={"count": len(dead)})
        return len(dead)

    # -- helpers --------------------------------------------------------------------------------

    def _move_alias(self, conn: Connection, model: str, alias: str, version: int, action: str, reason: str) -> None:
        previous = self._alias_target(conn, model, alias)
        stamp = now_ms()
        if previous is None:
            conn.execute(aliases.insert().values(model_name=model, alias=alias, version=version, updated_at_ms=stamp))
        else:
            conn.execute(update(aliases).where(aliases.c.model_name == model, aliases.c.alias == alias)
                         .values(version=version, updated_at_ms=stamp))
        conn.execute(alias_history.insert().values(
            model_name=model, alias=alias, version=version, previous_version=previous or 0,
            action=action, reason=reason, at_ms=stamp))

    def _announce(self, conn: Connection, model: str, action: str, version: int, reason: str) -> None:
        """Append the change to the outbox inside the caller's transaction (sequence = the row id)."""
        event = registry_pb2.ModelVersionEvent(
            model_name=model, action=action, version=version, aliases=self._aliases(conn, model),
            model_version=self._version_proto(conn, model, version), timestamp_ms=now_ms(), reason=reason)
        conn.execute(outbox.insert().values(model_name=model, payload=event.SerializeToString(),
                                            created_at_ms=event.timestamp_ms))
