import json

import pytest

from recmodel.data import (
    DataFormatError,
    Dataset,
    Event,
    Item,
    load_dataset,
    write_jsonl,
)

GENRES = ["0"] * 19


def _ml_line(item_id, title, genre_idx):
    flags = list(GENRES)
    for g in genre_idx:
        flags[g] = "1"
    return "|".join([str(item_id), title, "01-Jan-1995", "", "http://x"] + flags)


def test_ml100k_reads_ratings_in_time_order_and_genres(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t881250000\n1\t20\t4\t881251000\n")
    (tmp_path / "u.item").write_bytes(
        (_ml_line(10, "Toy Story (1995)", [3, 5]) + "\n" + _ml_line(20, "Caf\xe9 (1996)", [8]) + "\n").encode("latin-1")
    )
    ds = load_dataset(tmp_path, "ml-100k")
    assert [(e.user_id, e.item_id, e.value) for e in ds.events] == [("2", "20", 3.0), ("1", "10", 5.0), ("1", "20", 4.0)]
    assert ds.events[1].timestamp_ms == 881250949000
    assert all(e.type == "rating" for e in ds.events)
    assert ds.items[0] == Item("10", title="Toy Story (1995)", categories=("Animation", "Comedy"), attributes={"release_date": "01-Jan-1995"})
    assert ds.items[1].title == "Café (1996)"


@pytest.mark.parametrize(
    "content, line, reason",
    [
        ("1\t10\t5\t881250949\n1\t10\t5\n", 2, "expected 4"),
        ("1\t10\t5\t881250949\n\n1\t10\tfive\t881250949\n", 3, "bad number"),
    ],
)
def test_ml100k_malformed_line_names_file_and_line(tmp_path, content, line, reason):
    (tmp_path / "u.data").write_text(content)
    with pytest.raises(DataFormatError) as err:
        load_dataset(tmp_path / "u.data", "ml-100k")
    assert err.value.line == line
    assert f"u.data:{line}:" in str(err.value) and reason in str(err.value)


def test_ml100k_bad_item_line(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n")
    (tmp_path / "u.item").write_text(_ml_line(10, "A", []) + "\n10|broken\n")
    with pytest.raises(DataFormatError, match=r"u\.item:2:"):
        load_dataset(tmp_path, "ml-100k")


def test_movielens_csv_with_movies(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier Old Men, The (1995)",(no genres listed)\n'
    )
    ds = load_dataset(tmp_path / "ratings.csv", "movielens-csv")
    assert [e.item_id for e in ds.events] == ["3", "1"]
    assert ds.events[0].value == 4.5
    assert ds.items[0].categories == ("Adventure", "Animation")
    assert ds.items[1] == Item("3", title="Grumpier Old Men, The (1995)")


def test_movielens_csv_errors(tmp_path):
    (tmp_path / "ratings.csv").write_text("user,movie\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:1: expected header"):
        load_dataset(tmp_path, "movielens-csv")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,x,964982703\n")
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: bad number"):
        load_dataset(tmp_path, "movielens-csv")


def test_jsonl_round_trip_with_items(tmp_path):
    ds = Dataset(
        events=[
            Event("e1", "u1", "a", "click", 1.0, 1000, {"page": "home"}),
            Event("e2", "u1", "b", "dislike", 1.0, 2000),
        ],
        items=[Item("a", "Alpha", "first", ("x",), {"k": "v"}), Item("b", available=False)],
    )
    path = write_jsonl(ds, tmp_path)
    loaded = load_dataset(path, "jsonl")
    assert loaded.events == ds.events
    assert loaded.items == ds.items
    assert loaded.events[0].context["page"] == "home"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"user_id": "u", "type": "view", "timestamp_ms": 1}), "missing field 'item_id'"),
        (json.dumps({"user_id": "u", "item_id": "i", "type": "teleport", "timestamp_ms": 1}), "unknown event type"),
        (json.dumps({"user_id": "u", "item_id": "i", "type": "view", "timestamp_ms": "soon"}), "bad field value"),
    ],
)
def test_jsonl_malformed_line_names_line(tmp_path, bad, reason):
    good = json.dumps({"user_id": "u", "item_id": "i", "type": "view", "timestamp_ms": 1})
    (tmp_path / "events.jsonl").write_text(good + "\n" + bad + "\n")
    with pytest.raises(DataFormatError) as err:
        load_dataset(tmp_path, "jsonl")
    assert "events.jsonl:2:" in str(err.value) and reason in str(err.value)


def test_synthetic_format_uses_spec_as_parameters():
    ds = load_dataset("seed=3,n_users=20,n_items=40,n_categories=4,n_events=300", "synthetic")
    assert len(ds.users) <= 20 and len(ds.items) == 40
    assert len(ds.events) > 250
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset("x", "parquet")


def test_event_and_item_are_frozen_and_hashable():
    e = Event("e", "u", "i", "view", 1.0, 5, {"a": "b"})
    with pytest.raises(AttributeError):
        e.user_id = "v"  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.context["a"] = "c"  # type: ignore[index]
    assert Item("x", "T", "body", ["c1"]).document() == "T body Categories: c1."
