"""A standing holdout: a stable, hash-chosen fraction of interactions that no model ever trains on.

Every model (the one being trained now and every version already served) keeps these interactions as
*input* (the user did watch the film) but never as a training target, so all of them can be scored on
the most recent holdout interactions without any having learnt the answer. The choice is a pure
function of (user, item, timestamp), so it is recomputable from a history entry anywhere (trainer,
evaluation, a restarted process) without storing a flag.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def is_holdout(user_id: str, item_id: str, timestamp_ms: int, fraction: float) -> bool:
    """True for about ``fraction`` of interactions, always the same ones."""
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{user_id}\x1f{item_id}\x1f{int(timestamp_ms)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * _SCALE
