"""recmodel.arrays.member_mask: np.isin's answer, by pairwise comparison for small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from recmodel import arrays
from recmodel.arrays import member_mask


@pytest.mark.parametrize("n, m", [(0, 0), (0, 5), (5, 0), (1, 1), (58, 15), (58, 1000), (300, 4000)])
def test_member_mask_equals_isin(n, m):
    rng = np.random.default_rng(n * 7919 + m)
    values = rng.integers(0, 500, n)
    of = rng.integers(0, 500, m).astype(np.int32)  # mixed integer types, as rows and bans can come
    got = member_mask(values, of)
    assert got.dtype == bool and got.shape == (n,)
    assert np.array_equal(got, np.isin(values, of))


def test_member_mask_falls_back_to_isin_above_the_limit(monkeypatch):
    calls = []
    real = np.isin
    monkeypatch.setattr(arrays.np, "isin", lambda a, b: calls.append(1) or real(a, b))
    monkeypatch.setattr(arrays, "_BROADCAST_LIMIT", 100)
    values, of = np.arange(20), np.array([3, 5, 7, 11, 13, 19])
    assert member_mask(values, of).nonzero()[0].tolist() == [3, 5, 7, 11, 13, 19] and calls
    calls.clear()
    assert member_mask(values[:10], of[:3]).nonzero()[0].tolist() == [3, 5, 7] and not calls
