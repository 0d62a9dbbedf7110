"""A synthetic interaction stream with a known structure, for tests and benchmarks.

What a good streaming recommender should be able to pick up, and the baselines mostly cannot:

* users like a few categories, and their tastes drift (one liked category is swapped now and then);
* items belong to a category and carry latent features; the item text is generated from both, so a
  text encoder can place a brand-new item before anyone has touched it;
* sequential habits: items come in series (part 1, 2, 3, ...); after part n a user often takes
  part n+1, and sessions tend to stay in the category of the previous item;
* popularity skew (log-normal item appeal) and an attention boost for freshly arrived items;
* new items and new users keep arriving over time.

Everything is drawn from ``numpy`` generators seeded with ``seed``, so a seed gives the same stream. An
``episode`` other than 0 is another draw of the events in the same world (the same users, items and
tastes at the start): a stream that goes on without repeating any user's sequence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from recmodel.data.types import Event, Item

_CATEGORY_WORDS: list[tuple[str, list[str]]] = [
    ("cooking", ["recipe", "kitchen", "flavor", "spice", "oven", "dinner", "chef", "baking"]),
    ("travel", ["journey", "island", "mountain", "passport", "beach", "road", "hotel", "voyage"]),
    ("science", ["physics", "atoms", "experiment", "laboratory", "theory", "molecule", "energy", "quantum"]),
    ("sports", ["football", "stadium", "athlete", "coach", "championship", "goal", "training", "team"]),
    ("music", ["guitar", "melody", "concert", "album", "rhythm", "singer", "piano", "band"]),
    ("history", ["empire", "ancient", "war", "kingdom", "medieval", "dynasty", "revolution", "archive"]),
    ("gardening", ["garden", "flowers", "soil", "seeds", "roses", "harvest", "compost", "greenhouse"]),
    ("finance", ["money", "investing", "stocks", "budget", "savings", "market", "bank", "tax"]),
    ("fitness", ["workout", "muscle", "running", "yoga", "cardio", "strength", "gym", "stretching"]),
    ("technology", ["software", "computer", "robot", "programming", "internet", "gadget", "chip", "code"]),
    ("fashion", ["dress", "style", "shoes", "designer", "fabric", "jacket", "runway", "trend"]),
    ("animals", ["dogs", "cats", "wildlife", "birds", "horses", "zoo", "puppy", "safari"]),
    ("space", ["planet", "galaxy", "rocket", "astronaut", "orbit", "telescope", "moon", "stars"]),
    ("crime", ["detective", "murder", "police", "thief", "mystery", "heist", "investigation", "suspect"]),
    ("romance", ["love", "wedding", "heart", "kiss", "couple", "passion", "date", "romantic"]),
    ("cars", ["engine", "racing", "driver", "wheels", "motor", "garage", "speed", "highway"]),
]

# One word pair per latent feature: the sign of the feature picks the word, so text reflects features.
_FEATURE_WORDS: list[tuple[str, str]] = [
    ("light", "dark"),
    ("short", "long"),
    ("simple", "advanced"),
    ("calm", "thrilling"),
    ("classic", "modern"),
    ("funny", "serious"),
]

_FILLER = ["guide", "story", "collection", "series", "edition", "notes", "tales", "handbook"]

# Event kinds and how often each is drawn.
_EVENT_KINDS = np.array(["view", "click", "cart", "purchase", "like", "rating"])
_EVENT_KIND_P = [0.55, 0.2, 0.08, 0.05, 0.07, 0.05]


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """``rng.choice(len(cdf), p=p)`` for ``cdf = _cdf(p)``: the same uniform draw and the same arithmetic as
    numpy's (``Generator.choice`` takes ``p.cumsum()``, divides it by its last entry and searches a
    ``random()`` in it), without checking ``p`` at every draw."""
    return int(cdf.searchsorted(rng.random(), side="right"))


def _cdf(p) -> np.ndarray:
    cdf = np.asarray(p, dtype=np.float64).cumsum()
    cdf /= cdf[-1]
    return cdf


_EVENT_KIND_CDF = _cdf(_EVENT_KIND_P)


@dataclass
class _UserState:
    """What the simulation tracks per user: liked categories (they drift), items consumed, the last item."""

    taste: list[int]
    consumed: set[int] = field(default_factory=set)
    last_item: int = -1


class SyntheticStream:
    """Deterministic synthetic users, items and events (see module docstring)."""

    def __init__(
        self,
        seed: int = 0,
        n_users: int = 600,
        n_items: int = 1200,
        n_categories: int = 12,
        n_events: int = 36_000,
        *,
        tastes_per_user: int = 2,
        drift_prob: float = 0.03,
        series_prob: float = 0.35,
        same_category_prob: float = 0.6,
        series_length: int = 4,
        new_item_fraction: float = 0.3,
        new_user_fraction: float = 0.3,
        new_item_boost: float = 3.0,
        start_ms: int = 1_700_000_000_000,
        duration_ms: int = 30 * 24 * 3600 * 1000,
        episode: int = 0,
    ) -> None:
        if not 1 <= n_categories <= len(_CATEGORY_WORDS):
            raise ValueError(f"n_categories must be in 1..{len(_CATEGORY_WORDS)}")
        self.seed = seed
        self.n_users = n_users
        self.n_items = n_items
        self.n_categories = n_categories
        self.n_events = n_events
        self.tastes_per_user = min(tastes_per_user, n_categories)
        self.drift_prob = drift_prob
        self.series_prob = series_prob
        self.same_category_prob = same_category_prob
        self.series_length = series_length
        self.new_item_fraction = new_item_fraction
        self.new_user_fraction = new_user_fraction
        self.new_item_boost = new_item_boost
        self.start_ms = start_ms
        self.duration_ms = duration_ms
        if episode < 0:
            raise ValueError("episode must be >= 0")
        self.episode = episode
        self._build_world()
        self._events: list[Event] | None = None
        self._final_taste: dict[str, set[str]] = {}

    # ---------------------------------------------------------------- world
    def _build_world(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        n_feat = len(_FEATURE_WORDS)
        self.categories = [name for name, _ in _CATEGORY_WORDS[: self.n_categories]]
        cat = rng.integers(0, self.n_categories, self.n_items)
        self._item_cat = cat
        self._item_feat = rng.normal(size=(self.n_items, n_feat))
        self._item_appeal = rng.lognormal(0.0, 1.0, self.n_items)
        # Arrival: an initial catalog at t=0, the rest spread over the stream.
        n_new = int(round(self.n_items * self.new_item_fraction))
        arrivals = np.zeros(self.n_items, dtype=np.int64)
        arrivals[self.n_items - n_new :] = np.sort(rng.integers(1, self.duration_ms, n_new))
        self._item_arrival = arrivals + self.start_ms
        # Series: consecutive items of one category (in arrival order) form series of series_length.
        self._successor = np.full(self.n_items, -1, dtype=np.int64)
        self._series_part = np.ones(self.n_items, dtype=np.int64)
        for c in range(self.n_categories):
            members = np.flatnonzero(cat == c)
            for start in range(0, len(members), self.series_length):
                run = members[start : start + self.series_length]
                for part, (a, b) in enumerate(zip(run[:-1], run[1:]), start=1):
                    self._successor[a] = b
                    self._series_part[b] = part + 1
        self._item_ids = [f"i{j}" for j in range(self.n_items)]
        self._item_index = {iid: j for j, iid in enumerate(self._item_ids)}
        self._items = [self._make_item(j, rng) for j in range(self.n_items)]
        # Users.
        n_new_u = int(round(self.n_users * self.new_user_fraction))
        u_arr = np.zeros(self.n_users, dtype=np.int64)
        u_arr[self.n_users - n_new_u :] = np.sort(rng.integers(1, int(self.duration_ms * 0.8), n_new_u))
        self._user_arrival = u_arr + self.start_ms
        self._user_activity = rng.lognormal(0.0, 0.5, self.n_users)
        self._user_feat = rng.normal(size=(self.n_users, n_feat))
        self._user_taste0 = [
            rng.choice(self.n_categories, self.tastes_per_user, replace=False).tolist() for _ in range(self.n_users)
        ]
        self._user_ids = [f"u{u}" for u in range(self.n_users)]

    def _make_item(self, j: int, rng: np.random.Generator) -> Item:
        c = int(self._item_cat[j])
        cat_name, words = _CATEGORY_WORDS[c]
        feat = self._item_feat[j]
        adjectives = [pair[int(f > 0)] for pair, f in zip(_FEATURE_WORDS, feat)]
        strongest = np.argsort(-np.abs(feat))[:3]
        kws = rng.choice(words, 3, replace=False)
        title = f"The {adjectives[strongest[0]]} {kws[0]} {rng.choice(_FILLER)}"
        part = int(self._series_part[j])
        if part > 1:
            title += f", part {part}"
        text = (
            f"A {adjectives[strongest[1]]} and {adjectives[strongest[2]]} {cat_name} {rng.choice(_FILLER)} "
            f"about {kws[1]} and {kws[2]}."
        )
        return Item(
            item_id=self._item_ids[j],
            title=title,
            text=text,
            categories=(cat_name,),
            attributes={"series_part": str(part)},
        )

    # ---------------------------------------------------------------- catalog
    def items(self) -> list[Item]:
        """All items in arrival order (ties by id order)."""
        order = np.argsort(self._item_arrival, kind="stable")
        return [self._items[j] for j in order]

    def item_arrival_ms(self, item_id: str) -> int:
        return int(self._item_arrival[self._item_index[item_id]])

    def user_arrival_ms(self, user_id: str) -> int:
        return int(self._user_arrival[int(user_id[1:])])

    def item_categories(self, item_id: str) -> set[str]:
        return {self.categories[int(self._item_cat[self._item_index[item_id]])]}

    def item_successor(self, item_id: str) -> str | None:
        nxt = int(self._successor[self._item_index[item_id]])
        return None if nxt < 0 else self._item_ids[nxt]

    def user_taste(self, user_id: str, final: bool = False) -> set[str]:
        """Categories the user likes: at arrival, or (``final=True``) after all drift in the stream."""
        u = int(user_id[1:])
        if final:
            self._ensure_events()
            return set(self._final_taste[user_id])
        return {self.categories[c] for c in self._user_taste0[u]}

    def with_episode(self, episode: int) -> "SyntheticStream":
        """The same world (users, items, their ids and texts) with the events of ``episode``."""
        if episode < 0:
            raise ValueError("episode must be >= 0")
        other = copy.copy(self)  # the world's arrays are shared, never written after _build_world
        other.episode = episode
        other._events = None
        return other

    # ---------------------------------------------------------------- events
    def events(self) -> Iterator[Event]:
        """Events in time order; event ids are unique."""
        self._ensure_events()
        assert self._events is not None
        return iter(self._events)

    def _ensure_events(self) -> None:
        if self._events is None:
            self._events = self._simulate()

    def _simulate(self) -> list[Event]:
        rng = np.random.default_rng([self.seed, 2] if self.episode == 0 else [self.seed, 2, self.episode])
        times = np.sort(rng.integers(0, self.duration_ms, self.n_events)) + self.start_ms
        by_cat = [np.flatnonzero(self._item_cat == c) for c in range(self.n_categories)]
        users = [_UserState(taste=list(t)) for t in self._user_taste0]
        user_order = np.argsort(self._user_arrival, kind="stable")
        user_arr_sorted = self._user_arrival[user_order]
        active_cdfs: dict[int, np.ndarray] = {}  # per number of users arrived
        events: list[Event] = []
        for n, t in enumerate(times):
            u = self._pick_active_user(rng, t, user_order, user_arr_sorted, active_cdfs)
            state = users[u]
            if rng.random() < self.drift_prob:
                self._drift_taste(rng, state.taste)
            j = self._pick_item(rng, t, u, state, by_cat)
            if j < 0:
                continue  # nothing left that this user has not consumed
            state.consumed.add(j)
            state.last_item = j
            events.append(self._make_event(rng, n, u, j, t))
        self._final_taste = {
            self._user_ids[u]: {self.categories[c] for c in users[u].taste} for u in range(self.n_users)
        }
        return events

    def _pick_active_user(self, rng: np.random.Generator, t, user_order, user_arr_sorted, cdfs: dict) -> int:
        """A user who has arrived by ``t``, drawn in proportion to activity."""
        n_active = int(np.searchsorted(user_arr_sorted, t, side="right"))
        cdf = cdfs.get(n_active)  # changes only as users arrive
        if cdf is None:
            w = self._user_activity[user_order[:n_active]]
            cdf = cdfs[n_active] = _cdf(w / w.sum())
        return int(user_order[_draw(rng, cdf)])

    def _drift_taste(self, rng: np.random.Generator, taste: list[int]) -> None:
        """Swap one liked category for one the user does not like yet."""
        others = [c for c in range(self.n_categories) if c not in taste]
        if others:
            # The right-hand side draws first, then the index: keep one statement so the draw order stays.
            taste[rng.integers(len(taste))] = int(rng.choice(others))

    def _pick_item(self, rng: np.random.Generator, t, u: int, state: _UserState, by_cat) -> int:
        """The item user ``u`` takes at ``t``: the next series part, or a draw from a liked category (-1: none left)."""
        prev = state.last_item
        if prev >= 0 and rng.random() < self.series_prob:
            nxt = int(self._successor[prev])
            if nxt >= 0 and nxt not in state.consumed and self._item_arrival[nxt] <= t:
                return nxt
        if prev >= 0 and rng.random() < self.same_category_prob and int(self._item_cat[prev]) in state.taste:
            c = int(self._item_cat[prev])
        else:
            c = int(state.taste[rng.integers(len(state.taste))])
        cand = self._unconsumed_candidates(by_cat[c], t, state.consumed)
        if len(cand) == 0:
            return -1
        p = self._item_weights(cand, t, u)
        return int(cand[_draw(rng, _cdf(p / p.sum()))])

    def _unconsumed_candidates(self, in_category: np.ndarray, t, consumed: set[int]) -> np.ndarray:
        """Items of the category that have arrived and the user has not consumed; else any such item."""
        cand = in_category[self._item_arrival[in_category] <= t]
        if consumed:  # (membership of Python ints: numpy scalars hash alike, but slowly)
            cand = cand[np.fromiter((k not in consumed for k in cand.tolist()), dtype=bool, count=len(cand))]
        if len(cand) == 0:
            # The user has exhausted this category: explore anything not yet consumed.
            cand = np.flatnonzero(self._item_arrival <= t)
            cand = cand[np.fromiter((k not in consumed for k in cand.tolist()), dtype=bool, count=len(cand))]
        return cand

    def _item_weights(self, cand: np.ndarray, t, u: int) -> np.ndarray:
        """Unnormalised choice weights: appeal, freshness of new arrivals, user affinity, series habit."""
        age_days = (t - self._item_arrival[cand]) / 86_400_000.0
        fresh = 1.0 + self.new_item_boost * np.exp(-age_days / 2.0) * (self._item_arrival[cand] > self.start_ms)
        affinity_scale = 1.0 / np.sqrt(self._item_feat.shape[1])
        aff = np.exp(1.5 * affinity_scale * (self._item_feat[cand] @ self._user_feat[u]))
        # Later series parts are mostly reached through part 1 (sequential habit).
        first_part = np.where(self._series_part[cand] == 1, 1.0, 0.25)
        return self._item_appeal[cand] * fresh * aff * first_part

    def _make_event(self, rng: np.random.Generator, n: int, u: int, j: int, t) -> Event:
        kind = _EVENT_KINDS[_draw(rng, _EVENT_KIND_CDF)]
        value = float(rng.integers(1, 6)) if kind == "rating" else 1.0
        return Event(
            event_id=f"s{self.seed}-e{n}" if self.episode == 0 else f"s{self.seed}.{self.episode}-e{n}",
            user_id=self._user_ids[u],
            item_id=self._item_ids[j],
            type=str(kind),
            value=value,
            timestamp_ms=int(t),
        )
