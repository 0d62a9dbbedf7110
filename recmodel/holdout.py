"""A standing holdout: a stable, hash-chosen fraction of (user, item) pairs that no model ever trains on.

Every model (the one being trained now and every version already served) keeps these interactions as
*input* (the user did watch the film) but never as a training target, so all of them can be scored on
the most recent holdout interactions without any having learnt the answer. The choice is a pure
function of (user, item), so it is recomputable from a history entry anywhere (trainer, evaluation, a
restarted process) without storing a flag.

Why the pair and not each interaction (the timestamp too): a user who repeats an interaction (a song played
again, an order placed again, a stream that replays) would then have it held out one time and trained the
next. A version trained on the latest repetitions has reinforced everything around the held-out
interaction except the interaction itself, while an older version learnt it as a target the time before,
so the paired comparison favours older versions: on a demo stream replayed with new timestamps, every new
version scored 4-7 points of hit@10 below one trained 30,000 events earlier, and the gate rejected most of
them. With pairs, a held-out interaction is never a target, however often it repeats (the same replay:
new and older versions within noise of each other).
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def is_holdout(user_id: str, item_id: str, fraction: float) -> bool:
    """True for about ``fraction`` of (user, item) pairs, always the same ones."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * _SCALE
