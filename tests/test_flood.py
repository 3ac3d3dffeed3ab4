"""The numba flood that grows watershed fragments against scikit-image's watershed."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import watershed

from emseg.pipeline.stitching.flood import LEVELS, seeded_watershed


def _distinct_costs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Costs that are distinct levels of the queue: the flood order is then the cost order alone."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    assert n < LEVELS
    return (rng.permutation(LEVELS)[:n] / (LEVELS - 1)).reshape(shape)


@pytest.mark.parametrize("seed", range(3))
def test_flood_equals_scikit_image_watershed(seed):
    rng = np.random.default_rng(seed)
    shape = (20, 31, 27)
    cost = _distinct_costs(shape, seed)
    seeds = np.zeros(shape, np.int64)
    seeds.flat[rng.choice(cost.size, 40, replace=False)] = np.arange(1, 41)
    out = seeded_watershed(cost, seeds)
    assert out.dtype == np.uint64 and (out > 0).all()
    assert np.array_equal(out, watershed(cost, seeds))
    mask = rng.random(shape) > 0.3
    out = seeded_watershed(cost, seeds, mask)
    assert (out[~mask] == 0).all()
    assert np.array_equal(out, watershed(cost, seeds, mask=mask))


def test_flood_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        seeded_watershed(np.zeros((2, 2, 2)), np.zeros((2, 2, 3), np.int64))
