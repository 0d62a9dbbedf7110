from collections import Counter

import pytest

from recmodel.data import Event, Item, SyntheticStream

SMALL = dict(n_users=80, n_items=150, n_categories=6, n_events=3000)


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(seed=7, **SMALL)


def test_same_seed_gives_the_same_stream_and_another_seed_does_not(stream):
    again = SyntheticStream(seed=7, **SMALL)
    assert list(again.events()) == list(stream.events())
    assert again.items() == stream.items()
    other = SyntheticStream(seed=8, **SMALL)
    assert [e.item_id for e in other.events()] != [e.item_id for e in stream.events()]


def test_another_episode_is_the_same_world_with_other_events_and_ids(stream):
    episode = stream.with_episode(1)
    assert episode.items() == stream.items()
    events, first = list(episode.events()), list(stream.events())
    assert list(stream.with_episode(1).events()) == events  # deterministic
    assert list(stream.with_episode(0).events()) == first
    assert [e.item_id for e in events[:200]] != [e.item_id for e in first[:200]]
    assert not {e.event_id for e in events} & {e.event_id for e in first}
    assert {e.user_id for e in events} <= {f"u{n}" for n in range(SMALL["n_users"])}
    assert list(stream.events()) == first  # the original is untouched
    with pytest.raises(ValueError, match="episode"):
        stream.with_episode(-1)


def test_events_are_time_ordered_with_unique_ids_and_reference_arrived_items(stream):
    events = list(stream.events())
    assert all(isinstance(e, Event) for e in events)
    assert [e.timestamp_ms for e in events] == sorted(e.timestamp_ms for e in events)
    assert len({e.event_id for e in events}) == len(events)
    for e in events:
        assert stream.item_arrival_ms(e.item_id) <= e.timestamp_ms
        assert stream.user_arrival_ms(e.user_id) <= e.timestamp_ms


def test_new_items_and_users_arrive_during_the_stream(stream):
    items = stream.items()
    arrivals = [stream.item_arrival_ms(i.item_id) for i in items]
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] > arrivals[0]
    first_seen: dict[str, int] = {}
    for e in stream.events():
        first_seen.setdefault(e.user_id, e.timestamp_ms)
    start = min(first_seen.values())
    late_users = [u for u, t in first_seen.items() if t > start + stream.duration_ms // 4]
    assert len(late_users) >= 5


def test_users_mostly_consume_their_taste_categories(stream):
    hits = total = 0
    for e in stream.events():
        total += 1
        hits += bool(stream.item_categories(e.item_id) & (stream.user_taste(e.user_id) | stream.user_taste(e.user_id, final=True)))
    assert hits / total > 0.8


def test_series_habit_and_popularity_skew_are_present(stream):
    last: dict[str, str] = {}
    follows = 0
    for e in stream.events():
        if e.user_id in last and stream.item_successor(last[e.user_id]) == e.item_id:
            follows += 1
        last[e.user_id] = e.item_id
    assert follows / stream.n_events > 0.1
    counts = sorted(Counter(e.item_id for e in stream.events()).values(), reverse=True)
    top_decile = sum(counts[: len(counts) // 10])
    assert top_decile / sum(counts) > 0.15  # uniform popularity would give 0.10


def test_item_text_reflects_category(stream):
    for item in stream.items()[:20]:
        assert isinstance(item, Item)
        (category,) = stream.item_categories(item.item_id)
        assert category in item.document()
        assert item.title and item.text
