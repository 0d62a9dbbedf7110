import numpy as np
import pytest
from conftest import make_trainer

from recmodel.data import Event, Item
from recmodel.holdout import is_holdout
from recmodel.transitions import TransitionRows, TransitionTable


def test_bonus_is_the_decayed_next_item_frequency_of_the_last_items():
    table = TransitionTable(window=2, decay=0.5)
    for a, b in [("a", "b"), ("a", "b"), ("a", "c"), ("b", "c"), ("c", "c")]:
        table.observe(a, b)
    bonus = table.bonus(["z", "b", "a"])  # "z" is outside the window of 2
    assert bonus == pytest.approx({"b": 2 / 3, "c": 1 / 3 + 0.5 * 1.0})
    assert "c" not in table.bonus(["c"])  # a repeat of the same item is not a step


def test_rows_stay_bounded_and_keep_the_most_frequent_successors():
    table = TransitionTable(max_next=4)
    for n in range(1000):
        table.observe("hub", f"rare{n}")
        table.observe("hub", "common")
    row = table.bonus(["hub"])
    assert len(row) <= 8 and row["common"] == pytest.approx(0.5)  # probabilities stay calibrated


def test_csr_export_and_rerank_equal_brute_force():
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(300)]
    table = TransitionTable(window=3, decay=0.7)
    for _ in range(3000):
        a, b = rng.integers(0, 300, 2)
        table.observe(ids[a], ids[min(b, a + 5)])
    rows = TransitionRows(**table.to_csr(ids), n_items=len(ids), window=3, decay=0.7)
    history = [ids[n] for n in (4, 17, 250, 251)]
    hrows = [4, 17, 250, 251]
    dense = rows.dense_bonus(hrows, len(ids))
    expected = table.bonus(history)
    assert {ids[j]: dense[j] for j in np.flatnonzero(dense)} == pytest.approx(expected, rel=1e-5)

    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    user = rng.normal(size=8).astype(np.float32)
    allowed_mask = rng.random(300) > 0.2
    allowed_mask[hrows] = False
    for weight in (0.0, 0.5, 5.0):
        cos = vectors @ user
        full = np.where(allowed_mask, cos + weight * dense, -np.inf)
        want = np.argsort(-full, kind="stable")[:10]
        retrieved = np.argsort(-np.where(allowed_mask, cos, -np.inf), kind="stable")[:10]
        got, scores = rows.rerank(user, vectors, retrieved, cos[retrieved], hrows, weight, 10, lambda r: allowed_mask[r])
        assert got.tolist() == want.tolist()
        np.testing.assert_allclose(scores, full[want], rtol=1e-5)


@pytest.mark.parametrize("bad", [
    dict(indptr=[0, 1, 5], indices=[1], probs=[0.5]),           # indptr past the data
    dict(indptr=[0, 1, 1], indices=[7], probs=[0.5]),           # column outside the table
    dict(indptr=[0, 1, 1], indices=[1], probs=[float("nan")]),  # not a probability
    dict(indptr=[0, 1], indices=[1], probs=[0.5]),              # wrong number of rows
])
def test_a_malformed_table_is_refused(bad):
    with pytest.raises(ValueError):
        TransitionRows(**bad, n_items=2, window=5, decay=0.7)


def _sequence_stream(n_users=40, chain=8):
    """Every user walks the same chain of items, starting at a different place."""
    events = []
    for u in range(n_users):
        for step in range(6):
            item = (u + step) % chain
            events.append(Event(f"e{u}-{step}", f"u{u}", f"i{item}", "click", 1.0, 1_000_000 + u * 100 + step))
    return sorted(events, key=lambda e: e.timestamp_ms)


def test_streaming_counts_equal_offline_counts_and_held_out_steps_are_not_counted():
    events = _sequence_stream()
    streaming, offline = make_trainer(holdout_fraction=0.3), make_trainer(holdout_fraction=0.3)
    streaming.train_events(events)
    offline.fit_offline(events, epochs=0)
    assert streaming.transitions.state_dict() == offline.transitions.state_dict()
    counted = sum(streaming.transitions._total.values())
    held = sum(is_holdout(e.user_id, e.item_id, e.timestamp_ms, 0.3) for e in events if not e.event_id.endswith("-0"))
    assert held > 0 and counted == 40 * 5 - held


def test_the_trainer_ranks_the_next_item_of_a_chain_first_and_a_checkpoint_keeps_the_table(tmp_path):
    trainer = make_trainer(transition_weight=1.0)
    trainer.upsert_items([Item(f"i{n}") for n in range(8)])
    trainer.train_events(_sequence_stream())
    history = [("i2", "click", 2_000_000), ("i3", "click", 2_000_001)]
    assert trainer.recommend(history, k=1)[0][0] == "i4"
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    restored, _ = type(trainer).load_checkpoint(path, text_encoder=trainer.text_encoder, device="cpu")
    assert restored.transitions.state_dict() == trainer.transitions.state_dict()
    assert restored.recommend(history, k=1)[0][0] == "i4"
    # Weight 0: the score is the two towers' cosine alone.
    off = make_trainer(transition_weight=0.0)
    off.train_events(_sequence_stream())
    cosine = off.user_vectors([history], [2_000_002]) @ off.item_vectors(["i4", "i5"]).T
    np.testing.assert_allclose(off.score([history], [2_000_002], ["i4", "i5"]), cosine, rtol=1e-6)
    assert trainer.score([history], [2_000_002], ["i4"])[0, 0] > 0.5 + trainer.score([history], [2_000_002], ["i5"])[0, 0]


def test_the_transition_baseline_counts_positive_steps_only_and_scores_the_next_item():
    from recmodel.evaluate import TransitionBaseline

    events = _sequence_stream()
    dislike = Event("d", "u0", "i7", "dislike", 1.0, 1_000_000 + 99)  # not a step anyone should take
    baseline = TransitionBaseline().fit(events + [dislike])
    ids = [f"i{n}" for n in range(8)]
    scores = baseline.score([[("i2", "click", 0), ("i3", "click", 1)]], [2], ids)[0]
    assert ids[int(np.argmax(scores))] == "i4" and scores[ids.index("i4")] == pytest.approx(1.0)
    assert "i7" not in baseline.table.bonus(["i5"])  # u0 walked i0..i5 and then only disliked i7
