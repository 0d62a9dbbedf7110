"""Training windows and the padded tensors the sequence model reads.

A token is ``(slot, event type id, timestamp_ms, is a training target)`` for one known item of a user's
history. A window is ``(tokens, first)``: the model predicts every token from the ones before it, and
learns the predictions of the tokens at index ``first`` and later that are training targets (earlier
ones were learnt already). Windows hold at most ``max_len + 1`` tokens once clipped; all tensors are
left-padded with slot 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from recmodel.features import gap_buckets

Token = tuple[int, int, int, bool]
Window = tuple[list[Token], int]


def clip(window: Window, max_len: int) -> Window:
    """The last ``max_len + 1`` tokens, with ``first`` moved to match (at least 1: token 0 is input only)."""
    tokens, first = window
    tok = tokens[-(max_len + 1):]
    return tok, max(1, first - (len(tokens) - len(tok)))


def has_target(window: Window, max_len: int) -> bool:
    """Whether training on ``window`` learns anything (the loss mask of :func:`training_tensors` is not empty)."""
    tok, first = clip(window, max_len)
    return any(t[3] for t in tok[first:])


def new_target_windows(tokens: list[Token], n_old: int, max_len: int) -> list[Window]:
    """Windows of at most ``max_len`` inputs, each ending at a new target, that together learn every
    token after the first ``n_old`` (those were learnt before)."""
    out = []
    end = len(tokens)
    while end > max(n_old, 1):
        lo = max(0, end - max_len - 1)
        out.append((tokens[lo:end], max(1, n_old - lo)))
        end = lo + 1 if lo > 0 else 0
    return out


def sequence_windows(tokens: list[Token], max_len: int) -> list[Window]:
    """A whole sequence cut into consecutive windows of ``max_len`` predictions (offline training)."""
    return [(tokens[lo:lo + max_len + 1], 1) for lo in range(0, max(len(tokens) - 1, 0), max_len)]


def training_tensors(windows: Sequence[Window], max_len: int, device: torch.device):
    """(slots, types, gaps, mask, targets, loss_mask), each [len(windows), max_len], on ``device``."""
    L = max_len
    B = len(windows)
    slots = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    gaps = np.zeros((B, L), dtype=np.int64)
    targets = np.zeros((B, L), dtype=np.int64)
    loss_mask = np.zeros((B, L), dtype=bool)
    for b, window in enumerate(windows):
        tok, first = clip(window, L)
        n = len(tok) - 1
        arr = np.array(tok, dtype=np.int64)
        slots[b, L - n:] = arr[:-1, 0]
        types[b, L - n:] = arr[:-1, 1]
        gaps[b, L - n:] = gap_buckets(arr[1:, 2] - arr[:-1, 2])
        targets[b, L - n:] = arr[1:, 0]
        loss_mask[b, L - n:] = (np.arange(1, n + 1) >= first) & (arr[1:, 3] > 0)
    return tuple(torch.from_numpy(a).to(device) for a in (slots, types, gaps, slots > 0, targets, loss_mask))


def inference_tensors(token_lists: Sequence[Sequence[Token]], now_ms: Sequence[int], max_len: int,
                      device: torch.device):
    """(slots, types, gaps, mask) for encoding users whose histories are ``token_lists`` at ``now_ms``."""
    L = max_len
    B = len(token_lists)
    slots = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    gaps = np.zeros((B, L), dtype=np.int64)
    for b, (tokens, now) in enumerate(zip(token_lists, now_ms)):
        tok = list(tokens)[-L:]
        if not tok:
            continue
        n = len(tok)
        arr = np.array([t[:3] for t in tok], dtype=np.int64)
        slots[b, L - n:] = arr[:, 0]
        types[b, L - n:] = arr[:, 1]
        gaps[b, L - n:] = gap_buckets(np.append(arr[1:, 2], int(now)) - arr[:, 2])
    return tuple(torch.from_numpy(a).to(device) for a in (slots, types, gaps, slots > 0))
