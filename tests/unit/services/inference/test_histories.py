"""User history store: bounded, newest-wins snapshot merge, popularity decay."""

from __future__ import annotations

from services.inference.histories import PopularityTracker, UserHistoryStore


def test_histories_are_bounded_per_user_and_in_users():
    store = UserHistoryStore(max_len=3, max_users=2)
    for t in range(5):
        store.append("a", f"i{t}", "click", t)
    assert [e[0] for e in store.get("a")] == ["i2", "i3", "i4"]
    store.append("b", "x", "view", 10)
    store.append("c", "y", "view", 11)
    assert store.get("a") == [] and len(store) == 2  # least recently active user evicted
    assert store.newest_event_ms == 11


def test_snapshot_merge_keeps_the_fresher_history():
    store = UserHistoryStore(max_len=10)
    store.merge_snapshot({"a": [("i1", "click", 100)], "b": [("i2", "click", 100)]}, only_newer=False)
    store.append("a", "i3", "click", 300)  # live store moved on for a
    taken = store.merge_snapshot({"a": [("i1", "click", 100), ("i9", "view", 200)],
                                  "b": [("i2", "click", 100), ("i4", "view", 250)], "c": [("i5", "like", 50)]})
    assert taken == 2
    assert [e[0] for e in store.get("a")] == ["i1", "i3"]  # store was newer: kept
    assert [e[0] for e in store.get("b")] == ["i2", "i4"]  # snapshot was newer: taken
    assert [e[0] for e in store.get("c")] == ["i5"]


def test_a_snapshot_larger_than_a_lock_hold_merges_every_user_and_bounds_the_store(monkeypatch):
    import services.inference.histories as histories

    monkeypatch.setattr(histories, "MERGE_CHUNK_USERS", 3)
    snapshot = {f"u{n}": [(f"i{n}", "click", n), ("x", "view", 100 + n), ("y", "view", 200 + n)] for n in range(8)}
    store = UserHistoryStore(max_len=2, max_users=8)
    store.append("u4", "live", "click", 10_000)  # the store is ahead for u4
    assert store.merge_snapshot(snapshot) == 7
    assert store.get("u4") == [("live", "click", 10_000)]
    assert store.get("u7") == [("x", "view", 107), ("y", "view", 207)]  # the last max_len events
    assert store.newest_event_ms == 10_000

    small = UserHistoryStore(max_len=2, max_users=5)
    assert small.merge_snapshot(snapshot, only_newer=False) == 8
    assert len(small) == 5 and small.get("u2") == [] and small.get("u3") != []  # the first merged went


def test_popularity_prefers_recent_weighted_events():
    pop = PopularityTracker(half_life_s=1.0)
    day = 86_400_000
    for _ in range(10):
        pop.add("old", "purchase", 0)
    pop.add("new", "click", day)
    pop.add("hated", "dislike", day)
    ranking = pop.ranking(max_age_s=0)
    assert [k for k, _ in ranking] == ["new", "old"]
