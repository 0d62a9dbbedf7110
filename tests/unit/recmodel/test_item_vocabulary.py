from recmodel.vocab import ItemVocabulary


def test_slots_are_stable_and_least_recently_seen_id_is_evicted():
    vocab = ItemVocabulary(3)
    assert [vocab.add(i, t)[0] for i, t in [("a", 1), ("b", 2), ("c", 3)]] == [1, 2, 3]
    vocab.touch("a", 10)
    slot, evicted = vocab.add("d", 11)
    assert (slot, evicted) == (2, "b")
    assert vocab.slot("b") == 0 and "b" not in vocab
    assert vocab.slot("a") == 1 and vocab.slot("d") == 2
    assert len(vocab) == 3 and vocab.evictions == 1


def test_state_round_trip_keeps_ids_and_eviction_order():
    vocab = ItemVocabulary(2)
    vocab.add("x", 5)
    vocab.add("y", 1)
    restored = ItemVocabulary.from_state_dict(vocab.state_dict())
    assert restored.items() == vocab.items()
    assert restored.add("z", 6) == (2, "y")
