"""Weight deltas: a base artifact plus a delta serves exactly what a full export of the same state serves."""

import io

import numpy as np
import pytest

from recmodel.artifact import ArtifactError, verify_artifact
from recmodel.delta import DeltaBase, apply_transitions, build_delta, read_delta
from recmodel.export import export_artifact
from recmodel.serving import ArtifactModel
from recmodel.transitions import TransitionRows
from tests.unit.recmodel.conftest import make_trainer

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def rounds(small_stream, tmp_path_factory):
    """A base artifact, a delta of two more rounds of training against it, and the full export of that state."""
    root = tmp_path_factory.mktemp("delta")
    events = list(small_stream.events())
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(events[:1500])
    export_artifact(trainer, root / "base", model_name="demo")
    base = DeltaBase.from_artifact(root / "base", verify_artifact(root / "base"))
    unchanged, unchanged_counts = build_delta(trainer, base)
    trainer.train_events(events[1500:])
    data, counts = build_delta(trainer, base)
    export_artifact(trainer, root / "full", model_name="demo")
    return {"base": ArtifactModel.load(root / "base", providers=CPU), "full": ArtifactModel.load(root / "full", providers=CPU),
            "data": data, "counts": counts, "unchanged": unchanged, "unchanged_counts": unchanged_counts,
            "events": events}


def _read(rounds, data=None):
    base = rounds["base"]
    return read_delta(rounds["data"] if data is None else data, dim=base.dim, n_items=len(base.item_ids))


def test_base_plus_delta_recommends_what_the_full_export_of_the_same_state_does(rounds):
    base, full = rounds["base"], rounds["full"]
    patched = base.with_delta(_read(rounds), CPU)
    np.testing.assert_array_equal(patched.item_vectors, full.item_vectors)
    for name in ("indptr", "indices", "probs"):
        np.testing.assert_array_equal(getattr(patched.transitions, name), getattr(full.transitions, name))
    histories = {}
    for e in rounds["events"]:
        histories.setdefault(e.user_id, []).append((e.item_id, e.type, e.timestamp_ms))
    moved = 0
    for user, history in list(histories.items())[:20]:
        got, want = patched.recommend(history, 10), full.recommend(history, 10)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
        moved += base.recommend(history, 10) != full.recommend(history, 10)
    assert moved, "training moved the recommendations, so the delta carries something"
    # The base model is not changed by applying a delta to it.
    assert not np.array_equal(base.item_vectors, full.item_vectors)


def test_a_delta_carries_only_what_changed(rounds):
    assert rounds["unchanged_counts"]["rows"] == 0 and rounds["unchanged_counts"]["transition_rows"] == 0
    nothing = _read(rounds, rounds["unchanged"])
    assert len(nothing.rows) == 0 and len(nothing.tr_rows) == 0
    assert rounds["counts"]["rows"] > 0 and rounds["counts"]["bytes"] == len(rounds["data"])


def _with(rounds, **changes) -> bytes:
    with np.load(io.BytesIO(rounds["data"]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_malformed_delta_is_refused_with_what_is_wrong(rounds):
    d = _read(rounds)
    n = len(rounds["base"].item_ids)
    cases = {
        b"not an npz at all": "not a readable npz",
        _with(rounds, encoder=None): "missing ['encoder']",
        _with(rounds, vectors=d.vectors[:, :-1]): "do not describe rows of dimension",
        _with(rounds, rows=np.full(len(d.rows), n + 5)): "within the base's",
        _with(rounds, rows=np.zeros(len(d.rows), dtype=np.int64)): "distinct",
        _with(rounds, vectors=np.full_like(d.vectors, np.nan)): "finite",
        _with(rounds, tr_indptr=d.tr_indptr[::-1].copy()): "transition rows",
        _with(rounds, tr_indices=np.full_like(d.tr_indices, n)): "transition rows",
        _with(rounds, encoder=np.zeros(0, dtype=np.uint8)): "encoder",
        _with(rounds, ids=np.array([object()] * len(d.rows), dtype=object)): "not a readable npz",
    }
    for data, message in cases.items():
        with pytest.raises(ArtifactError, match=None) as err:
            _read(rounds, data)
        assert message in str(err.value)


def test_a_delta_for_another_table_or_with_a_broken_encoder_is_not_applied(rounds):
    base = rounds["base"]
    with pytest.raises(ArtifactError, match="another item table"):
        base.with_delta(_read(rounds, _with(rounds, base_items_sha256=np.array("0" * 64))), CPU)
    d = _read(rounds)
    swapped = _with(rounds, ids=np.roll(d.ids, 1))
    with pytest.raises(ArtifactError, match="do not match the base's rows"):
        base.with_delta(_read(rounds, swapped), CPU)
    garbage = np.frombuffer(b"this is not an ONNX model" * 10, dtype=np.uint8)
    with pytest.raises(ArtifactError, match="cannot load its encoder"):
        base.with_delta(_read(rounds, _with(rounds, encoder=garbage)), CPU)


def test_transition_rows_are_replaced_and_the_others_kept():
    table = TransitionRows(np.array([0, 2, 2, 3]), np.array([1, 2, 0]), np.array([0.5, 0.5, 1.0], dtype=np.float32),
                           n_items=3, window=2, decay=0.5, top=4)
    delta = read_delta(_npz(tr_rows=np.array([1, 2]), tr_indptr=np.array([0, 1, 3]), tr_indices=np.array([2, 0, 1]),
                            tr_probs=np.array([1.0, 0.25, 0.75], dtype=np.float32)), dim=2, n_items=3)
    out = apply_transitions(table, delta)
    assert out.indptr.tolist() == [0, 2, 3, 5]
    assert out.indices.tolist() == [1, 2, 2, 0, 1]
    assert out.probs.tolist() == [0.5, 0.5, 1.0, 0.25, 0.75]
    assert (out.window, out.decay, out.top) == (2, 0.5, 4)
    assert table.indptr.tolist() == [0, 2, 2, 3]  # the table served so far is not changed


def _npz(**transitions) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, base_items_sha256=np.array("x"), encoder=np.ones(4, dtype=np.uint8), rows=np.zeros(0, dtype=np.int64),
             ids=np.zeros(0, dtype=np.str_), vectors=np.zeros((0, 2), dtype=np.float32), **transitions)
    return buf.getvalue()
