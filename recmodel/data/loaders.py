"""Loaders for public interaction datasets and the streamrec jsonl format.

Every loader returns a :class:`Dataset` whose events are sorted by time (stable, so equal timestamps
keep file order; evaluation shuffles ties itself). A malformed line raises :class:`DataFormatError`
naming the file and the 1-based line number.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from recmodel.data.synthetic import SyntheticStream
from recmodel.data.types import DEFAULT_EVENT_WEIGHTS, Event, Item

FORMATS = ("synthetic", "ml-100k", "movielens-csv", "jsonl")

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names file and line."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


@dataclass
class Dataset:
    events: list[Event]
    items: list[Item] = field(default_factory=list)

    @property
    def users(self) -> set[str]:
        return {e.user_id for e in self.events}


def _sorted(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.timestamp_ms)


def _rating_event(path: Path, line_no: int, user: str, item: str, rating: str, ts: str, ts_scale: int) -> Event:
    try:
        value = float(rating)
        timestamp_ms = int(float(ts)) * ts_scale if "." in ts else int(ts) * ts_scale
    except ValueError as exc:
        raise DataFormatError(path, line_no, f"bad number ({exc})") from None
    if not user or not item:
        raise DataFormatError(path, line_no, "empty user or item id")
    return Event(
        event_id=f"{path.name}:{line_no}",
        user_id=user,
        item_id=item,
        type="rating",
        value=value,
        timestamp_ms=timestamp_ms,
    )


def load_ml100k(path: str | Path) -> Dataset:
    """``u.data`` (user, item, rating, unix seconds; tab separated) and optional ``u.item`` beside it."""
    path = Path(path)
    data_file = path / "u.data" if path.is_dir() else path
    events: list[Event] = []
    with open(data_file, encoding="latin-1") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise DataFormatError(data_file, line_no, f"expected 4 tab-separated fields, got {len(parts)}")
            events.append(_rating_event(data_file, line_no, parts[0].strip(), parts[1].strip(), parts[2], parts[3].strip(), 1000))
    items: list[Item] = []
    item_file = data_file.parent / "u.item"
    if item_file.exists():
        with open(item_file, encoding="latin-1") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("|")
                if len(parts) != 5 + len(ML100K_GENRES):
                    raise DataFormatError(item_file, line_no, f"expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(parts)}")
                flags = parts[5:]
                if any(f not in ("0", "1") for f in flags):
                    raise DataFormatError(item_file, line_no, "genre flags must be 0 or 1")
                genres = tuple(g for g, f in zip(ML100K_GENRES, flags) if f == "1")
                items.append(Item(item_id=parts[0], title=parts[1], categories=genres, attributes={"release_date": parts[2]}))
    return Dataset(_sorted(events), items)


def load_movielens_csv(path: str | Path) -> Dataset:
    """``ratings.csv`` (userId,movieId,rating,timestamp with header) and optional ``movies.csv``."""
    path = Path(path)
    ratings = path / "ratings.csv" if path.is_dir() else path
    events: list[Event] = []
    with open(ratings, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != ["userId", "movieId", "rating", "timestamp"]:
            raise DataFormatError(ratings, 1, "expected header userId,movieId,rating,timestamp")
        for row in reader:
            line_no = reader.line_num
            if not row:
                continue
            if len(row) != 4:
                raise DataFormatError(ratings, line_no, f"expected 4 comma-separated fields, got {len(row)}")
            events.append(_rating_event(ratings, line_no, row[0].strip(), row[1].strip(), row[2], row[3].strip(), 1000))
    items: list[Item] = []
    movies = ratings.parent / "movies.csv"
    if movies.exists():
        with open(movies, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["movieId", "title", "genres"]:
                raise DataFormatError(movies, 1, "expected header movieId,title,genres")
            for row in reader:
                if not row:
                    continue
                if len(row) != 3:
                    raise DataFormatError(movies, reader.line_num, f"expected 3 fields, got {len(row)}")
                genres = tuple(g for g in row[2].split("|") if g and g != "(no genres listed)")
                items.append(Item(item_id=row[0].strip(), title=row[1], categories=genres))
    return Dataset(_sorted(events), items)


def _event_from_json(path: Path, line_no: int, obj: object) -> Event:
    if not isinstance(obj, dict):
        raise DataFormatError(path, line_no, "expected a JSON object")
    try:
        ts = obj["timestamp_ms"] if "timestamp_ms" in obj else obj["timestamp"]
        event = Event(
            event_id=str(obj.get("event_id") or f"{path.name}:{line_no}"),
            user_id=str(obj["user_id"]),
            item_id=str(obj["item_id"]),
            type=str(obj.get("type", "view")),
            value=float(obj.get("value", 1.0)),
            timestamp_ms=int(ts),
            context={str(k): str(v) for k, v in (obj.get("context") or {}).items()},
        )
    except KeyError as exc:
        raise DataFormatError(path, line_no, f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataFormatError(path, line_no, f"bad field value ({exc})") from None
    if not event.user_id or not event.item_id:
        raise DataFormatError(path, line_no, "empty user_id or item_id")
    if event.type not in DEFAULT_EVENT_WEIGHTS:
        raise DataFormatError(path, line_no, f"unknown event type {event.type!r}")
    return event


def _item_from_json(path: Path, line_no: int, obj: object) -> Item:
    if not isinstance(obj, dict):
        raise DataFormatError(path, line_no, "expected a JSON object")
    try:
        cats = obj.get("categories") or ()
        if isinstance(cats, str):
            raise TypeError("categories must be a list")
        return Item(
            item_id=str(obj["item_id"]),
            title=str(obj.get("title", "")),
            text=str(obj.get("text", "")),
            categories=tuple(str(c) for c in cats),
            attributes={str(k): str(v) for k, v in (obj.get("attributes") or {}).items()},
            available=bool(obj.get("available", True)),
        )
    except KeyError as exc:
        raise DataFormatError(path, line_no, f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataFormatError(path, line_no, f"bad field value ({exc})") from None


def _read_jsonl(path: Path, parse) -> list:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(path, line_no, f"invalid JSON ({exc.msg})") from None
            out.append(parse(path, line_no, obj))
    return out


def load_jsonl(path: str | Path) -> Dataset:
    """One event per line (Event fields; ``timestamp`` accepted for ``timestamp_ms``).

    ``path`` is the events file or a directory holding ``events.jsonl``; an ``items.jsonl`` beside it
    is read as the catalog.
    """
    path = Path(path)
    events_file = path / "events.jsonl" if path.is_dir() else path
    events = _read_jsonl(events_file, _event_from_json)
    items_file = events_file.parent / "items.jsonl"
    items = _read_jsonl(items_file, _item_from_json) if items_file.exists() and items_file != events_file else []
    return Dataset(_sorted(events), items)


def write_jsonl(dataset: Dataset, directory: str | Path) -> Path:
    """Write ``events.jsonl`` and ``items.jsonl`` into ``directory``; returns the events file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in dataset.events:
            fh.write(json.dumps(e.to_dict()) + "\n")
    with open(directory / "items.jsonl", "w", encoding="utf-8") as fh:
        for it in dataset.items:
            fh.write(json.dumps(it.to_dict()) + "\n")
    return directory / "events.jsonl"


def synthetic_dataset(spec: str | Path | None = None) -> tuple[Dataset, "SyntheticStream"]:
    """Build the synthetic stream from a spec like ``"seed=3,n_users=200"`` (empty: defaults)."""
    from recmodel.data.synthetic import SyntheticStream

    kwargs: dict[str, int | float] = {}
    text = str(spec or "").strip()
    if text and text not in (".", "-", "synthetic"):
        for part in text.split(","):
            key, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"synthetic spec {text!r}: expected key=value pairs separated by commas")
            key = key.strip()
            kwargs[key] = float(val) if "." in val else int(val)
    stream = SyntheticStream(**kwargs)  # type: ignore[arg-type]
    return Dataset(list(stream.events()), stream.items()), stream


def load_dataset(path: str | Path | None, format: str) -> Dataset:
    """Load ``path`` in ``format`` (one of :data:`FORMATS`).

    For ``synthetic`` the path is a spec such as ``seed=3`` or ``seed=1,n_users=200,n_events=5000``
    (empty for defaults).
    """
    if format == "synthetic":
        return synthetic_dataset(path)[0]
    if path is None:
        raise ValueError(f"format {format!r} needs a path")
    if format == "ml-100k":
        return load_ml100k(path)
    if format == "movielens-csv":
        return load_movielens_csv(path)
    if format == "jsonl":
        return load_jsonl(path)
    raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
