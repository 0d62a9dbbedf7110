"""bench.catalog grows a trained catalog into a large one that keeps its shape."""

import numpy as np

from bench.catalog import grow_catalog


def _trained(n=300, dim=16, clusters=6):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim))
    v = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_grown_items_keep_the_trained_rows_norms_and_neighbourhoods():
    trained = _trained()
    grown = grow_catalog(trained, 5000)
    assert grown.shape == (5000, 16) and grown.dtype == np.float32
    np.testing.assert_array_equal(grown[:300], trained)
    np.testing.assert_allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)
    # Each new item lies near a trained one, not in empty space: its best trained match is far closer
    # than a random direction's would be.
    nearest = (grown[300:] @ trained.T).max(axis=1)
    rng = np.random.default_rng(1)
    random = rng.standard_normal((1000, 16)).astype(np.float32)
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    assert np.median(nearest) > 0.8 > np.median((random @ trained.T).max(axis=1))
    # Not copies either.
    assert nearest.max() < 0.9999
    np.testing.assert_array_equal(grow_catalog(trained, 5000), grown)  # seeded
    assert grow_catalog(trained, 100).shape == (100, 16)
