"""DeltaRegistry: weight deltas of registered versions, shipped by the trainer between full versions.

A delta names the full version it applies to (its base), which must be active and trained on no
more of the stream than the delta. Deltas are numbered per model by ``registered_models.last_delta``
in the transaction that inserts them, so a sequence number is never reused, even after old deltas
are deleted (only the newest ``keep_deltas`` of a model are kept). Nothing is announced on Kafka:
the servers that apply deltas poll ``get_delta``, which answers an empty delta (sequence 0) when
there is nothing newer, so polling is cheap and never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from sqlalchemy import delete, select, update

from services.common.errors import FailedPrecondition, InvalidInput, NotFound, StreamrecError
from services.registry.database import Database, model_deltas, model_versions, registered_models
from services.registry.metrics import RegistryMetrics
from services.registry.reads import ACTIVE, offset_protos
from services.registry.upload import check_model_name
from streamrec_proto.v1 import registry_pb2

logger = logging.getLogger(__name__)

MAX_TRAINER_ID_CHARS = model_deltas.c.trainer_id.type.length
MAX_OFFSETS = 4096
MAX_TOPIC_CHARS = 249  # Kafka's own limit on a topic name

# Every column but the payload: what GetDelta reads on each poll.
_WITHOUT_PAYLOAD = [c for c in model_deltas.c if c.name != "payload"]


class DeltaRegistry:
    def __init__(self, db: Database, metrics: RegistryMetrics | None = None,
                 max_delta_bytes: int = 3 * 1024 * 1024, keep_deltas: int = 8) -> None:
        self.db = db
        self.metrics = metrics
        self.max_delta_bytes = max_delta_bytes
        self.keep_deltas = keep_deltas

    # -- register -------------------------------------------------------------------------------

    def register_delta(self, request: registry_pb2.RegisterDeltaRequest) -> registry_pb2.ModelDelta:
        """Check and store ``request`` as the model's next delta; -> the delta without its payload."""
        try:
            return self._register(request)
        except StreamrecError as exc:
            if self.metrics:
                self.metrics.delta_failures.labels(exc.code.name.lower()).inc()
            raise
        except Exception:
            if self.metrics:
                self.metrics.delta_failures.labels("internal").inc()
            raise

    def _register(self, request: registry_pb2.RegisterDeltaRequest) -> registry_pb2.ModelDelta:
        model, base = request.model_name, request.base_version
        offsets = _checked_request(request, self.max_delta_bytes)
        with self.db.write() as conn:
            # Row lock on PostgreSQL (SQLite is already inside BEGIN IMMEDIATE under the writer lock):
            # deltas of one model are numbered one at a time, and the base cannot be archived meanwhile.
            last = conn.execute(select(registered_models.c.last_delta)
                                .where(registered_models.c.name == model).with_for_update()).scalar_one_or_none()
            row = conn.execute(select(model_versions.c.state, model_versions.c.training_offsets_json).where(
                model_versions.c.model_name == model, model_versions.c.version == base)).first()
            if last is None or row is None:
                raise NotFound(f"model {model!r} has no version {base}")
            if row.state != ACTIVE:
                raise FailedPrecondition(f"{model} v{base} is {row.state}; deltas apply only to active versions")
            _check_not_behind(base, offsets, json.loads(row.training_offsets_json))
            sequence = last + 1
            conn.execute(update(registered_models).where(registered_models.c.name == model)
                         .values(last_delta=sequence))
            values = dict(
                model_name=model, sequence=sequence, base_version=base,
                training_offsets_json=json.dumps([[t, p, o] for (t, p), o in sorted(offsets.items())]),
                created_at_ms=request.created_at_ms, registered_at_ms=int(time.time() * 1000),
                newest_event_ms=request.newest_event_ms, payload_sha256=request.payload_sha256,
                payload_size_bytes=len(request.payload), payload=request.payload, trainer_id=request.trainer_id,
            )
            conn.execute(model_deltas.insert().values(**values))
            # Sequence numbers of a model are consecutive, so the newest keep_deltas are the last ones.
            removed = conn.execute(delete(model_deltas).where(
                model_deltas.c.model_name == model, model_deltas.c.sequence <= sequence - self.keep_deltas)).rowcount
        logger.debug("delta registered", extra={"model": model, "model_version": base, "sequence": sequence,
                                               "size_bytes": len(request.payload), "deleted_deltas": removed})
        if self.metrics:
            self.metrics.deltas_registered.labels(model).inc()
        values.pop("payload")
        return _delta_proto(values, with_payload=False)

    # -- read -----------------------------------------------------------------------------------

    def get_delta(self, model_name: str, base_version: int, after_sequence: int = 0, sequence: int = 0,
                  with_payload: bool = False) -> registry_pb2.ModelDelta:
        """Delta ``sequence`` of ``base_version`` if given, else its newest after ``after_sequence``.

        When there is none (nothing newer, another base, no longer kept): an empty delta with
        sequence 0. ``with_payload`` False leaves the payload out (its size and sha256 are set).
        """
        check_model_name(model_name)
        for name, value in (("base_version", base_version), ("after_sequence", after_sequence),
                            ("sequence", sequence)):
            if value < 0:
                raise InvalidInput(f"{name} must be >= 0, got {value}")
        query = select(*(model_deltas.c if with_payload else _WITHOUT_PAYLOAD)).where(
            model_deltas.c.model_name == model_name, model_deltas.c.base_version == base_version)
        if sequence > 0:
            query = query.where(model_deltas.c.sequence == sequence)
        else:
            query = query.where(model_deltas.c.sequence > after_sequence) \
                .order_by(model_deltas.c.sequence.desc()).limit(1)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return registry_pb2.ModelDelta(model_name=model_name, base_version=base_version)
        return _delta_proto(row._asdict(), with_payload)


def _checked_request(request: registry_pb2.RegisterDeltaRequest, max_bytes: int) -> dict[tuple[str, int], int]:
    """Everything about a RegisterDeltaRequest that needs no database; -> its offsets by (topic, partition)."""
    check_model_name(request.model_name)
    if request.base_version <= 0:
        raise InvalidInput(f"base_version must be a registered version (> 0), got {request.base_version}")
    if len(request.trainer_id) > MAX_TRAINER_ID_CHARS:
        raise InvalidInput(f"trainer_id is {len(request.trainer_id)} characters; "
                           f"at most {MAX_TRAINER_ID_CHARS} are allowed")
    for name in ("created_at_ms", "newest_event_ms"):
        if getattr(request, name) < 0:
            raise InvalidInput(f"{name} must be >= 0, got {getattr(request, name)}")
    size = len(request.payload)
    if size == 0:
        raise InvalidInput("payload is empty")
    if size > max_bytes:
        raise InvalidInput(f"payload is {size} bytes; at most {max_bytes} are allowed (registry.max_delta_bytes)")
    actual = hashlib.sha256(request.payload).hexdigest()
    if request.payload_sha256 != actual:
        raise InvalidInput(f"payload has sha256 {actual}, the request declared {request.payload_sha256!r}")
    if len(request.training_offsets) > MAX_OFFSETS:
        raise InvalidInput(f"{len(request.training_offsets)} training_offsets; at most {MAX_OFFSETS} are allowed")
    offsets: dict[tuple[str, int], int] = {}
    for tpo in request.training_offsets:
        if not tpo.topic or len(tpo.topic) > MAX_TOPIC_CHARS:
            raise InvalidInput(f"training_offsets: topic must have 1-{MAX_TOPIC_CHARS} characters, got {tpo.topic!r}")
        if tpo.partition < 0 or tpo.offset < 0:
            raise InvalidInput(f"training_offsets: {tpo.topic}[{tpo.partition}] offset {tpo.offset}: "
                               "partition and offset must be >= 0")
        if (tpo.topic, tpo.partition) in offsets:
            raise InvalidInput(f"training_offsets names {tpo.topic}[{tpo.partition}] twice")
        offsets[(tpo.topic, tpo.partition)] = tpo.offset
    return offsets


def _check_not_behind(base: int, offsets: dict[tuple[str, int], int], base_offsets: list) -> None:
    """A delta applies on top of its base: it must have trained on at least what the base did."""
    for topic, partition, base_offset in sorted(base_offsets):
        mine = offsets.get((topic, partition))
        if mine is None:
            raise FailedPrecondition(f"trained on less than version {base}: no offset for {topic}[{partition}], "
                                     f"which version {base} trained to {base_offset}")
        if mine < base_offset:
            raise FailedPrecondition(f"trained on less than version {base}: {topic}[{partition}] at offset {mine}, "
                                     f"version {base} at {base_offset}")


def _delta_proto(row: dict, with_payload: bool) -> registry_pb2.ModelDelta:
    return registry_pb2.ModelDelta(
        model_name=row["model_name"], base_version=row["base_version"], sequence=row["sequence"],
        training_offsets=offset_protos(row["training_offsets_json"]),
        created_at_ms=row["created_at_ms"], registered_at_ms=row["registered_at_ms"],
        newest_event_ms=row["newest_event_ms"], payload_sha256=row["payload_sha256"],
        payload_size_bytes=row["payload_size_bytes"], payload=row["payload"] if with_payload else b"",
        trainer_id=row["trainer_id"],
    )
