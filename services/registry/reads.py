"""The registry's read side: versions, aliases and artifacts as the API returns them (no locks, no writes)."""

from __future__ import annotations

import json
import re
from typing import Iterator

from sqlalchemy import Connection, func, select

from services.common.errors import FailedPrecondition, InvalidInput, NotFound
from services.registry.artifact_store import ArtifactStore
from services.registry.database import Database, aliases, model_versions, outbox
from services.registry.upload import check_model_name
from streamrec_proto.v1 import registry_pb2

ACTIVE, ARCHIVED = "active", "archived"
_ALIAS = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")


class VersionReads:
    """Queries over the registry's tables; ``ModelRegistry`` adds the writes."""

    db: Database
    store: ArtifactStore
    chunk_bytes: int

    # -- API reads ----------------------------------------------------------------------------------

    def get_version(self, model: str, version: int) -> registry_pb2.ModelVersion:
        check_model_name(model)
        with self.db.read() as conn:
            self._row(conn, model, version)
            return self._version_proto(conn, model, version)

    def list_versions(self, model: str, include_archived: bool = False) -> list[registry_pb2.ModelVersion]:
        check_model_name(model)
        with self.db.read() as conn:
            query = select(model_versions).where(model_versions.c.model_name == model)
            if not include_archived:
                query = query.where(model_versions.c.state == ACTIVE)
            rows = conn.execute(query.order_by(model_versions.c.version)).all()
            alias_map = self._aliases(conn, model)
            return [version_proto_of(row, alias_map) for row in rows]

    def get_alias(self, model: str, alias: str) -> registry_pb2.ModelVersion:
        check_model_name(model)
        check_alias(alias)
        with self.db.read() as conn:
            version = self._alias_target(conn, model, alias)
            if version is None:
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            return self._version_proto(conn, model, version)

    def download(self, model: str, version: int) -> Iterator[registry_pb2.ArtifactChunk]:
        check_model_name(model)
        with self.db.read() as conn:
            row = self._row(conn, model, version)
        if row.state != ACTIVE:
            raise FailedPrecondition(f"{model} v{version} is archived; its artifact may have been deleted")
        first = True
        for data in self.store.read_chunks(row.artifact_sha256, self.chunk_bytes):
            if first:
                yield registry_pb2.ArtifactChunk(data=data, artifact_sha256=row.artifact_sha256,
                                                 artifact_size_bytes=row.artifact_size_bytes)
                first = False
            else:
                yield registry_pb2.ArtifactChunk(data=data)

    def outbox_backlog(self) -> int:
        with self.db.read() as conn:
            return conn.execute(select(func.count()).select_from(outbox)).scalar_one()

    def _row(self, conn: Connection, model: str, version: int):
        row = conn.execute(select(model_versions).where(
            model_versions.c.model_name == model, model_versions.c.version == version)).first()
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}")
        return row

    def _aliases(self, conn: Connection, model: str) -> dict[str, int]:
        return dict(conn.execute(select(aliases.c.alias, aliases.c.version)
                                 .where(aliases.c.model_name == model)).all())

    def _alias_target(self, conn: Connection, model: str, alias: str) -> int | None:
        return conn.execute(select(aliases.c.version).where(
            aliases.c.model_name == model, aliases.c.alias == alias)).scalar_one_or_none()

    def _metrics(self, conn: Connection, model: str, version: int) -> dict[str, float]:
        return json.loads(self._row(conn, model, version).metrics_json)

    def _version_proto(self, conn: Connection, model: str, version: int) -> registry_pb2.ModelVersion:
        return version_proto_of(self._row(conn, model, version), self._aliases(conn, model))


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias or ""):
        raise InvalidInput(f"invalid alias {alias!r}: use lower-case letters, digits, '.', '_' or '-'")
    return alias


def offset_protos(training_offsets_json: str) -> list[registry_pb2.TopicPartitionOffset]:
    """Stored ``[[topic, partition, offset], ...]`` (versions and deltas alike) as the API returns them."""
    return [registry_pb2.TopicPartitionOffset(topic=t, partition=p, offset=o)
            for t, p, o in json.loads(training_offsets_json)]


def version_proto_of(row, alias_map: dict[str, int]) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model_name=row.model_name, version=row.version, state=row.state,
        aliases=sorted(a for a, v in alias_map.items() if v == row.version),
        manifest_json=row.manifest_json, metrics=json.loads(row.metrics_json),
        artifact_sha256=row.artifact_sha256, artifact_size_bytes=row.artifact_size_bytes,
        created_at_ms=row.created_at_ms, parent_version=row.parent_version, trainer_id=row.trainer_id,
        training_offsets=offset_protos(row.training_offsets_json),
        gate_decision=row.gate_decision, gate_reason=row.gate_reason, registered_at_ms=row.registered_at_ms or 0,
    )
