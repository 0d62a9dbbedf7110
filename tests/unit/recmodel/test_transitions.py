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
    one_step = dict(holdout_fraction=0.3, transition_span=1, transition_backward=0.0)  # a count per step
    streaming, offline = make_trainer(**one_step), make_trainer(**one_step)
    streaming.train_events(events)
    offline.fit_offline(events, epochs=0)
    assert streaming.transitions.state_dict() == offline.transitions.state_dict()
    counted = sum(streaming.transitions.totals().values())
    held = sum(is_holdout(e.user_id, e.item_id, 0.3) for e in events if not e.event_id.endswith("-0"))
    assert held > 0 and counted == 40 * 5 - held


def test_the_trainer_ranks_the_next_item_of_a_chain_first_and_a_checkpoint_keeps_the_table(tmp_path):
    trainer = make_trainer()  # the recipe's weight, span and backward counts
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


def test_span_counts_each_target_from_the_items_before_it_and_backward_to_the_counted_ones():
    table = TransitionTable(span=2, span_decay=0.5, backward=0.5)
    recent = table.observe_sequence(None, [("a", True), ("b", True)])
    recent = table.observe_sequence(recent, [("x", False), ("c", True)])  # x: context, held out as a target
    assert recent == [("x", False), ("c", True)]
    assert table.successors("a") == pytest.approx({"b": 1.0})          # c is three steps after a: outside the span
    assert table.successors("b") == pytest.approx({"a": 0.5, "c": 0.5})  # back to a; on to c across x
    assert table.successors("x") == pytest.approx({"c": 1.0})
    assert table.successors("c") == pytest.approx({"b": 0.25})         # nothing back to the held-out x
    assert "x" not in table.bonus(["c", "b", "a"])                 # a held-out item is never suggested
    # The bonus reads the normalised rows: b's row sums to 1.
    assert table.bonus(["b"]) == pytest.approx({"a": 0.5, "c": 0.5})


def test_span_counting_is_the_same_in_one_pass_or_in_pieces_and_survives_a_checkpoint():
    rng = np.random.default_rng(1)
    steps = [(f"i{n}", bool(rng.random() > 0.2)) for n in rng.integers(0, 30, 200)]
    whole = TransitionTable(span=4, span_decay=0.6, backward=0.3)
    whole.observe_sequence(None, steps)
    pieces = TransitionTable(span=4, span_decay=0.6, backward=0.3)
    recent = None
    for lo in range(0, len(steps), 7):
        recent = pieces.observe_sequence(recent, steps[lo : lo + 7])
    assert pieces.state_dict() == whole.state_dict()  # the same additions in the same order
    restored = TransitionTable.from_state_dict(whole.state_dict())
    assert (restored.span, restored.span_decay, restored.backward) == (4, 0.6, 0.3)
    old = {k: v for k, v in whole.state_dict().items() if k not in ("span", "span_decay", "backward", "top")}
    assert TransitionTable.from_state_dict(old).span == 1  # a checkpoint from before the span
    taken = TransitionTable.from_state_dict(old, span=5, backward=0.5, top=20)
    assert (taken.span, taken.backward, taken.top) == (5, 0.5, 20) and taken.rows() == whole.rows()
    assert TransitionTable.from_state_dict(whole.state_dict(), span=9).span == 4  # a state's own settings win


@pytest.mark.parametrize("bad", [dict(span=0), dict(span_decay=0.0), dict(span_decay=1.5), dict(backward=-0.1),
                                 dict(backward=2.0)])
def test_bad_span_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TransitionTable(**bad)


def test_the_trainer_counts_its_span_the_same_streaming_or_offline():
    events = _sequence_stream()
    kw = dict(holdout_fraction=0.3, transition_span=3, transition_backward=0.5)
    streaming, offline = make_trainer(**kw), make_trainer(**kw)
    for lo in range(0, len(events), 37):  # micro-batches that cut users' sequences apart
        streaming.train_events(events[lo : lo + 37])
    offline.fit_offline(events, epochs=0)
    a, b = streaming.transitions.state_dict(), offline.transitions.state_dict()
    assert a["next"].keys() == b["next"].keys() and a["total"] == pytest.approx(b["total"])
    assert all(a["next"][k] == pytest.approx(b["next"][k]) for k in a["next"])  # users interleave differently
    assert streaming.transitions.span == 3 and streaming.transitions.backward == 0.5


def test_top_gives_the_bonus_to_the_best_items_the_user_may_be_shown_only():
    rng = np.random.default_rng(2)
    ids = [f"i{n}" for n in range(120)]
    full, cut = TransitionTable(window=3, decay=0.7), TransitionTable(window=3, decay=0.7, top=5)
    for _ in range(3000):
        a, b = (int(x) for x in rng.integers(0, 120, 2))
        count = float(rng.random())  # no ties at the cut
        for table in (full, cut):
            table.observe(ids[a], ids[min(119, a + b % 9)], count)
    history = ["i10", "i11", "i12"]
    everything = full.bonus(history, exclude=history)
    best = dict(sorted(everything.items(), key=lambda kv: -kv[1])[:5])
    assert len(everything) > 5 and cut.bonus(history, exclude=history) == pytest.approx(best)
    assert not set(cut.bonus(history, exclude=history)) & set(history)  # seen items leave their place
    # The serving side cuts the same way: the same five items and values.
    rows = TransitionRows(**cut.to_csr(ids), n_items=len(ids), window=3, decay=0.7, top=5)
    dense = rows.dense_bonus([10, 11, 12], len(ids))
    assert {ids[j]: dense[j] for j in np.flatnonzero(dense)} == pytest.approx(best, rel=1e-5)
    with pytest.raises(ValueError):
        TransitionRows(**cut.to_csr(ids), n_items=len(ids), window=3, decay=0.7, top=-1)



def test_a_trainer_restored_from_a_checkpoint_before_the_span_counts_with_its_own_settings(tmp_path):
    from recmodel.checkpoint import read_checkpoint, write_checkpoint
    from recmodel.recipe import RECIPE

    trainer = make_trainer(transition_span=1, transition_backward=0.0, transition_top=0)
    trainer.train_events(_sequence_stream())
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    state, extra = read_checkpoint(path)
    for key in ("span", "span_decay", "backward", "top"):  # as the version before them wrote it
        del state["transitions"][key]
        del state["hyperparameters"]["transition_" + key]
    write_checkpoint(path, state, extra)
    restored, _ = type(trainer).load_checkpoint(path, text_encoder=trainer.text_encoder, device="cpu")
    table = restored.transitions
    assert (table.span, table.backward, table.top) == (RECIPE["transition_span"], RECIPE["transition_backward"],
                                                       RECIPE["transition_top"])
    assert table.rows() == trainer.transitions.rows()  # the counts so far are kept


def test_sequences_count_exactly_what_observing_each_pair_counts_pruning_included():
    rng = np.random.default_rng(3)
    fast = TransitionTable(max_next=3, span=4, span_decay=0.6, backward=0.4)
    pairwise = TransitionTable(max_next=3, span=4, span_decay=0.6, backward=0.4)
    recent_fast: dict[int, list] = {}
    recent_pairs: dict[int, list] = {}
    for _ in range(300):
        user = int(rng.integers(5))
        steps = [(f"i{rng.integers(12)}", bool(rng.random() < 0.8)) for _ in range(int(rng.integers(1, 6)))]
        recent_fast[user] = fast.observe_sequence(recent_fast.get(user), steps)
        recent = list(recent_pairs.get(user, []))
        for item, counted in steps:  # the definition, one pair at a time
            if counted:
                for d, (previous, previous_counted) in enumerate(reversed(recent)):
                    pairwise.observe(previous, item, 0.6**d)
                    if previous_counted:
                        pairwise.observe(item, previous, 0.4 * 0.6**d)
            recent = (recent + [(item, counted)])[-4:]
        recent_pairs[user] = recent
    assert fast.rows() == pairwise.rows() and fast.totals() == pairwise.totals()  # equal floats, not approximately
    assert recent_fast == recent_pairs
    assert max(len(row) for row in fast.rows().values()) <= 6  # pruned along the way


def test_pruning_keeps_the_most_frequent_successors_and_the_first_seen_among_equals():
    table = TransitionTable(max_next=2)
    for item, count in (("a", 1.0), ("b", 3.0), ("c", 1.0), ("d", 3.0), ("e", 2.0)):
        table.observe("x", item, count)  # the fifth successor exceeds 2 * max_next: pruned
    assert list(table.successors("x").items()) == [("b", 3.0), ("d", 3.0)]
    assert table.totals()["x"] == 10.0  # the total keeps the pruned counts
    table = TransitionTable(max_next=2)
    for item in "pqrst":
        table.observe("x", item, 1.0)
    assert list(table.successors("x")) == ["p", "q"]


class _DictTable:
    """The definition, one pair at a time in plain dicts: what the table's batched arrays must equal exactly."""

    def __init__(self, max_next, span, span_decay, backward):
        self.max_next, self.span, self.span_decay, self.backward = max_next, span, span_decay, backward
        self.next: dict[str, dict[str, float]] = {}
        self.total: dict[str, float] = {}

    def add(self, previous, item, w):
        row = self.next.setdefault(previous, {})
        row[item] = row.get(item, 0.0) + w
        self.total[previous] = self.total.get(previous, 0.0) + w
        if len(row) > 2 * self.max_next:
            self.next[previous] = dict(sorted(row.items(), key=lambda kv: kv[1], reverse=True)[: self.max_next])

    def observe_sequence(self, recent, steps):
        recent = list(recent or ())[-self.span :]
        for item, counted in steps:
            if counted:
                for d, (previous, previous_counted) in enumerate(reversed(recent)):
                    if previous != item:
                        self.add(previous, item, self.span_decay**d)
                        if previous_counted:
                            self.add(item, previous, self.span_decay**d * self.backward)
            recent = (recent + [(item, counted)])[-self.span :]
        return recent

    def forget(self, item):
        self.next.pop(item, None)
        self.total.pop(item, None)


def test_batches_of_sequences_count_exactly_the_definition_with_pruning_forgetting_and_compaction():
    rng = np.random.default_rng(7)
    table = TransitionTable(max_next=3, span=4, span_decay=0.6, backward=0.4, window=3, decay=0.5)
    table._compact_at = 64  # renumber early and often
    definition = _DictTable(3, 4, 0.6, 0.4)
    recent_t: dict[int, list] = {}
    recent_d: dict[int, list] = {}
    for batch in range(120):
        items = 10 + batch  # new items keep arriving; old ones are forgotten
        users = rng.choice(20, size=int(rng.integers(1, 12)), replace=False)
        sequences = {int(u): [(f"i{rng.integers(batch, items + 10)}", bool(rng.random() < 0.8))
                              for _ in range(int(rng.integers(1, 6)))] for u in users}
        outs = table.observe_sequences([(recent_t.get(u), steps) for u, steps in sequences.items()])
        for u, out in zip(sequences, outs):
            recent_t[u] = out
            recent_d[u] = definition.observe_sequence(recent_d.get(u), sequences[u])
        if batch % 5 == 4:
            gone = f"i{batch - 4}"
            table.forget(gone)
            definition.forget(gone)
        assert recent_t == recent_d
    rows = table.rows()
    assert {k: list(v.items()) for k, v in rows.items()} == {k: list(v.items()) for k, v in definition.next.items()}
    assert table.totals() == definition.total  # equal floats, not approximately
    assert len(table._ids) < 130 + 10  # ids of forgotten items nothing refers to were dropped
    for history in (["i118", "i119"], ["i121", "i125", "i119", "i120"], ["i3"]):
        expected: dict[str, float] = {}
        for d, item in enumerate(reversed(history[-3:])):
            for nxt, count in definition.next.get(item, {}).items():
                expected[nxt] = expected.get(nxt, 0.0) + 0.5**d / definition.total[item] * count
        assert table.bonus(history) == expected
    ids = sorted(definition.next) + ["unknown"]
    csr = table.to_csr(ids)
    for n, iid in enumerate(ids):
        got = dict(zip(csr["indices"][csr["indptr"][n] : csr["indptr"][n + 1]].tolist(),
                       csr["probs"][csr["indptr"][n] : csr["indptr"][n + 1]].tolist()))
        want = {ids.index(j): np.float32(c / definition.total[iid]) for j, c in definition.next.get(iid, {}).items()
                if j in ids}
        assert got == pytest.approx(want)
    # A copy and a restored state count on exactly as the table does.
    copied, restored = table.copy(), TransitionTable.from_state_dict(table.state_dict())
    for other in (copied, restored):
        other.observe_sequences([(recent_t[0], [("i200", True), ("i118", True)])])
    table.observe_sequences([(recent_t[0], [("i200", True), ("i118", True)])])
    assert copied.rows() == table.rows() == restored.rows() and copied.totals() == table.totals() == restored.totals()


def test_the_pair_index_finds_what_was_added_and_not_what_was_removed():
    from recmodel.transitions import _PairIndex

    rng = np.random.default_rng(2)
    index, mirror = _PairIndex(), {}
    for _ in range(60):
        rows, cols = rng.integers(0, 50, 400), rng.integers(0, 2**31 - 1, 400)
        keys = np.unique(_PairIndex.key(rows, cols))
        keys = keys[[int(k) not in mirror for k in keys]]
        slots = rng.integers(0, 100, len(keys)).astype(np.int32)
        index.add(keys, slots)
        mirror.update(zip(keys.tolist(), slots.tolist()))
        present = np.array(list(mirror), dtype=np.int64)
        gone = rng.choice(present, size=len(present) // 3, replace=False)
        index.remove(gone)
        for k in gone.tolist():
            del mirror[k]
        present = np.array(list(mirror), dtype=np.int64)
        moved = present[: len(present) // 2]
        index.set(moved, np.full(len(moved), 7, dtype=np.int32))
        mirror.update(dict.fromkeys(moved.tolist(), 7))
        probe = np.concatenate([present, gone, _PairIndex.key(rng.integers(50, 60, 50), rng.integers(0, 9, 50))])
        expected = [mirror.get(k, -1) for k in probe.tolist()]
        assert index.lookup(probe).tolist() == expected
    assert index.live == len(mirror) and len(index.keys) <= 8 * 4 * len(mirror)  # rebuilt, not grown for ever
