"""Small, valid model artifacts for registry tests, built without the trainer.

The directory follows the artifact contract (flat files + manifest.json with every file's sha256);
``pack`` uses recmodel.artifact's tar writer, so the registry sees exactly what the trainer sends.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from recmodel import artifact as artifact_lib


def paired_evidence(production_version: int, candidate: float, production: float, n: int = 1000,
                    lower: float | None = None, upper: float | None = None) -> dict[str, float]:
    """``gate.*`` metrics as the trainer sends them (bounds default to the difference +- 0.02)."""
    diff = candidate - production
    return {"gate.production_version": float(production_version), "gate.n": float(n),
            "gate.candidate_hr@10": candidate, "gate.production_hr@10": production,
            "gate.diff_lower": diff - 0.02 if lower is None else lower,
            "gate.diff_upper": diff + 0.02 if upper is None else upper, "gate.confidence": 0.95}


def make_artifact_dir(root: Path, model_name: str = "recommender", hr: float = 0.30, seed: int = 0,
                      offsets: dict | None = None, extra_bytes: int = 2048, gate: dict | None = None) -> Path:
    """A flat artifact directory whose manifest lists every file's sha256; ``seed`` makes its bytes unique.

    ``gate``: paired evidence for the promotion gate (see ``paired_evidence``), added to the metrics.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = hashlib.sha256(f"seed-{seed}".encode()).digest()
    (root / "user_encoder.onnx").write_bytes(rng * (extra_bytes // len(rng)) + os.urandom(16))
    (root / "items.npz").write_bytes(b"items-" + rng + os.urandom(64))
    (root / "histories.jsonl").write_text(json.dumps({"user": "u1", "items": ["a", "b"], "seed": seed}) + "\n")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())
             if p.name != "manifest.json"}
    manifest = {
        "model_name": model_name,
        "version": 0,
        "created_at": "2024-05-01T12:00:00+00:00",
        "training_offsets": offsets if offsets is not None else {"t.events": {"0": 10 + seed, "1": 20 + seed}},
        "metrics": {"hr@10": hr, "ndcg@10": hr / 2, **(gate or {})},
        "files": files,
        "dim": 8,
        "max_len": 4,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    artifact_lib.verify_artifact(root)
    return root


def pack(artifact_dir: Path, out: Path) -> tuple[Path, str]:
    sha256 = artifact_lib.pack_artifact(artifact_dir, out)
    return out, sha256


def flip_one_byte_of_member(tar_path: Path, member: str) -> None:
    """Change one byte inside ``member``'s data in the tar (header untouched), like bit rot in transit."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    with open(tar_path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def start_registry(tmp_path: Path, kafka=None, **registry_overrides):
    """A real registry gRPC server on 127.0.0.1:0 over SQLite; Kafka unreachable unless ``kafka`` is given.

    Without Kafka the outbox publisher just keeps retrying in the background, which is what the
    registry does in production while Kafka is away.
    """
    from services.common.config import KafkaConfig
    from services.registry.config import RegistryConfig
    from services.registry.service import RegistryService

    from tests.pki import tls_section

    kafka = kafka or KafkaConfig(bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000)
    config = RegistryConfig.model_validate({
        "kafka": kafka.model_dump(),
        "tls": tls_section("registry"),
        "metrics": {"enabled": False},
        "grpc": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 0},
        "registry": {"database_url": f"sqlite:///{tmp_path / 'registry.db'}",
                     "artifact_root": str(tmp_path / "artifacts"), "publish_retry_s": 0.5,
                     "publish_timeout_s": 1, **registry_overrides},
    })
    return RegistryService(config).start()
