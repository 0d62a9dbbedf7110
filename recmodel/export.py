"""Export a trained :class:`~recmodel.train.IncrementalTrainer` as a self-contained artifact.

Files (see :mod:`recmodel.artifact` for the manifest):

* ``user_encoder.onnx`` - inputs ``item_vectors`` [B,L,D] float32, ``event_types`` [B,L] int64,
  ``gap_buckets`` [B,L] int64, ``mask`` [B,L] bool (left-padded, most recent last); output
  ``user_vector`` [B,D] float32 (unit norm). Dynamic batch, fixed L; independent of catalog size.
* ``user_encoder.int8.onnx`` (optional, ``int8=True``) - dynamically quantised weights.
* ``items.npz`` - ``ids`` (str), ``vectors`` float32 [N,D] (unit norm), ``available`` bool,
  ``titles`` (str), ``categories`` (str, ``|``-joined).
* ``ivf.npz`` (catalogs of ``ivf_min_items`` available items or more) - ``centroids`` float32 [nlist,D] and
  ``assign`` int32 [N], the IVF quantizer servers index the items with (see :mod:`recmodel.ivf`).
* ``histories.json`` - {user_id: [[item_id, event_type, timestamp_ms], ...]} at the training offsets.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import json
import logging
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from recmodel.artifact import Manifest, write_manifest
from recmodel.data.types import EVENT_TYPES
from recmodel.features import N_GAP_BUCKETS
from recmodel.ivf import SHIP_MIN_ITEMS, quantize_items

log = logging.getLogger(__name__)

ONNX_INPUTS = ("item_vectors", "event_types", "gap_buckets", "mask")
ONNX_OUTPUT = "user_vector"
OPSET = 17


def _example_inputs(dim: int, max_len: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, max_len, dim, generator=gen),
        torch.ones(2, max_len, dtype=torch.long),
        torch.ones(2, max_len, dtype=torch.long),
        torch.ones(2, max_len, dtype=torch.bool),
    )


def _torch_export(encoder: torch.nn.Module, f, args: tuple, *, fold: bool = True) -> None:
    """``torch.onnx.export`` of the user encoder to ``f`` (a path or a binary file) with the TorchScript exporter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, args, f, input_names=list(ONNX_INPUTS), output_names=[ONNX_OUTPUT],
            dynamic_axes={n: {0: "batch"} for n in (*ONNX_INPUTS, ONNX_OUTPUT)},
            opset_version=OPSET, dynamo=False, do_constant_folding=fold,
        )


def export_user_encoder(encoder: torch.nn.Module, path: str | Path, *, dim: int, max_len: int) -> Path:
    """Export the user encoder to ONNX (TorchScript exporter; dynamo exporter as a fallback)."""
    path = Path(path)
    encoder = encoder.eval().cpu()
    args = _example_inputs(dim, max_len)
    try:
        _torch_export(encoder, str(path), args)
    except Exception as exc:  # the TorchScript exporter may be gone in a future torch
        log.info("falling back to the dynamo ONNX exporter", extra={"reason": str(exc)[:200]})
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                encoder, args, input_names=list(ONNX_INPUTS), output_names=[ONNX_OUTPUT],
                dynamic_shapes=tuple({0: batch} for _ in ONNX_INPUTS), dynamo=True, external_data=False,
            )
        program.save(str(path))
    return path


class EncoderTemplate:
    """The user encoder's ONNX graph, traced once; each export writes the module's current weights into it.

    Tracing costs ~0.1 s of CPU, which a trainer shipping a weight delta every second would pay every
    second; the graph never changes while training goes on, only the initializers' values do. It is traced
    without constant folding (ONNX Runtime folds at session creation), so every parameter and buffer stays
    an initializer named by its ``state_dict`` key, and from a copy of the module whose parameters hold
    distinct random values: the exporter merges initializers that are equal, such as two LayerNorms still
    at their initial ones, which would tie them for good. Construction checks that every ``state_dict``
    entry is an initializer of that name and that the filled graph computes what the module computes
    (ONNX Runtime against torch), and raises ``TemplateUnavailable`` otherwise.
    """

    def __init__(self, encoder: torch.nn.Module, *, dim: int, max_len: int) -> None:
        import onnx

        self._signature = self._shapes(encoder)
        probe = copy.deepcopy(encoder).cpu().eval()
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in probe.parameters():
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype))
        args = _example_inputs(dim, max_len)
        buf = io.BytesIO()
        with torch.random.fork_rng(devices=[]):
            _torch_export(probe, buf, args, fold=False)
        self._model = onnx.load_model_from_string(buf.getvalue())
        by_name = {init.name: init for init in self._model.graph.initializer}
        missing = [k for k in self._signature if k not in by_name]
        if missing:
            raise TemplateUnavailable(f"weights not initializers of the traced graph: {missing[:5]}")
        self._slots = {k: by_name[k] for k in self._signature}
        self._check(encoder, args)

    @staticmethod
    def _shapes(encoder: torch.nn.Module) -> dict[str, tuple]:
        return {k: (tuple(v.shape), v.dtype) for k, v in encoder.state_dict().items()}

    def matches(self, encoder: torch.nn.Module) -> bool:
        return self._shapes(encoder) == self._signature

    def to_bytes(self, encoder: torch.nn.Module) -> bytes:
        """The ONNX file of ``encoder`` (same structure as the one traced) with its current weights."""
        from onnx import numpy_helper

        for name, tensor in encoder.state_dict().items():
            slot = self._slots[name]
            slot.CopyFrom(numpy_helper.from_array(tensor.detach().cpu().numpy(), name))
        return self._model.SerializeToString()

    def _check(self, encoder: torch.nn.Module, args: tuple) -> None:
        import onnxruntime as ort

        data = self.to_bytes(encoder)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = copy.deepcopy(encoder).cpu().eval()(*args).numpy()
        got = session.run(None, dict(zip(ONNX_INPUTS, (a.numpy() for a in args))))[0]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise TemplateUnavailable("the traced graph filled with the module's weights does not reproduce it")


class TemplateUnavailable(RuntimeError):
    """The encoder cannot be exported through an :class:`EncoderTemplate` (it is traced in full each time)."""


_templates: "weakref.WeakKeyDictionary[torch.nn.Module, EncoderTemplate | None]" = weakref.WeakKeyDictionary()
_templates_lock = threading.Lock()


def encoder_onnx_bytes(encoder: torch.nn.Module, *, dim: int, max_len: int) -> bytes:
    """``encoder`` as ONNX file bytes, through its cached :class:`EncoderTemplate` (traced at the first call,
    and again if the module's parameters change shape); a module that no template reproduces is traced in
    full every time. The module's mode, device and the RNG state are left as they were."""
    with _templates_lock:
        template = _templates.get(encoder, False)
        if template is False or (template is not None and not template.matches(encoder)):
            try:
                template = EncoderTemplate(encoder, dim=dim, max_len=max_len)
            except Exception as exc:  # noqa: BLE001 - any exporter failure: trace in full instead
                log.info("exporting the user encoder in full each time", extra={"reason": str(exc)[:200]})
                template = None
            _templates[encoder] = template
        if template is not None:
            return template.to_bytes(encoder)
    probe = copy.deepcopy(encoder)
    with tempfile.TemporaryDirectory(prefix="streamrec-onnx-") as tmp, torch.random.fork_rng(devices=[]):
        path = export_user_encoder(probe, Path(tmp) / "user_encoder.onnx", dim=dim, max_len=max_len)
        return path.read_bytes()


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def export_artifact(
    trainer,
    out_dir: str | Path,
    *,
    model_name: str,
    training_offsets: Mapping[str, Mapping[str | int, int]] | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping | None = None,
    int8: bool = False,
    max_history_users: int = 100_000,
    ivf_min_items: int = SHIP_MIN_ITEMS,
) -> Manifest:
    """Write the artifact directory ``out_dir`` (created; must be empty) and return its manifest.

    ``histories.json`` holds the ``max_history_users`` most recently active users only: the
    artifact stays bounded however many users the stream has seen (servers rebuild the rest from
    the ``events`` topic), and fewer people's histories travel with every download.
    """
    out = _empty_dir(out_dir)
    _write_encoders(trainer, out, int8=int8)
    table = trainer.item_table()
    _write_item_table(out / "items.npz", table)
    available = np.asarray(table["available"], dtype=bool)
    if int(available.sum()) >= ivf_min_items:
        centroids, lists = quantize_items(np.asarray(table["vectors"], dtype=np.float32), available)
        with open(out / "ivf.npz", "wb") as fh:
            np.savez(fh, centroids=centroids, assign=lists)
    with open(out / "transitions.npz", "wb") as fh:
        np.savez(fh, **trainer.transitions.to_csr(table["ids"]))
    _write_recent_histories(out / "histories.json", trainer.user_histories(), max_history_users)
    manifest = _manifest(trainer, model_name, training_offsets, metrics, extra)
    return write_manifest(out, manifest)


def _empty_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    return out


def export_trainer_encoder(trainer, path: str | Path) -> Path:
    """``trainer``'s user encoder as ONNX at ``path``; the trainer's model and RNG state are left as they were
    (a full artifact's ``user_encoder.onnx``, and a weight delta's encoder)."""
    path = Path(path)
    path.write_bytes(encoder_onnx_bytes(trainer.model.user_encoder, dim=trainer.dim, max_len=trainer.max_len))
    return path


def _write_encoders(trainer, out: Path, *, int8: bool) -> None:
    """``user_encoder.onnx`` (and its int8 twin)."""
    export_trainer_encoder(trainer, out / "user_encoder.onnx")
    if int8:
        quantize_int8(out / "user_encoder.onnx", out / "user_encoder.int8.onnx")


def _write_item_table(path: Path, table: Mapping) -> None:
    with open(path, "wb") as fh:
        np.savez(
            fh,
            ids=np.array(table["ids"], dtype=np.str_),
            vectors=np.asarray(table["vectors"], dtype=np.float32),
            available=np.asarray(table["available"], dtype=bool),
            titles=np.array(table["titles"], dtype=np.str_),
            categories=np.array(table["categories"], dtype=np.str_),
        )


def _write_recent_histories(path: Path, all_histories: Mapping[str, list], max_users: int) -> None:
    """The histories of the ``max_users`` users with the newest last event, by user id."""
    recent = sorted(((h[-1][2] if h else 0, u) for u, h in all_histories.items()), reverse=True)
    keep = {u for _, u in recent[:max_users]}
    histories = {u: [list(e) for e in h] for u, h in sorted(all_histories.items()) if u in keep}
    path.write_text(json.dumps(histories, separators=(",", ":")), encoding="utf-8")


def _manifest(trainer, model_name: str, training_offsets, metrics, extra) -> Manifest:
    return Manifest(
        model_name=model_name,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        training_offsets={str(t): {str(p): int(o) for p, o in parts.items()} for t, parts in (training_offsets or {}).items()},
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        dim=trainer.dim,
        max_len=trainer.max_len,
        event_types=list(EVENT_TYPES),
        extra={
            "n_gap_buckets": N_GAP_BUCKETS,
            "events_trained": trainer.events_trained,
            "newest_event_ms": trainer.clock_ms,
            "text_encoder": trainer.text_encoder_name,
            "hyperparameters": trainer.hyperparameters(),
            "transitions": {"weight": trainer.transition_weight, "window": trainer.transitions.window,
                            "decay": trainer.transitions.decay, "top": trainer.transitions.top},
            **dict(extra or {}),
        },
    )
