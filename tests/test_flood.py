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


def test_flood_keeps_labels_beyond_uint32_and_negative_ones():
    # the flood holds uint32 labels internally; other labels are mapped there and back
    cost = _distinct_costs((3, 4, 5), 7)
    seeds = np.zeros(cost.shape, np.int64)
    seeds[0, 0, 0], seeds[2, 3, 4], seeds[1, 2, 2] = 2**40 + 5, -3, 0xFFFFFFFF
    out = seeded_watershed(cost, seeds)
    expected = watershed(cost, seeds)
    assert np.array_equal(out, expected.astype(np.uint64))
    assert set(np.unique(out).tolist()) == {2**40 + 5, 0xFFFFFFFF, np.uint64(-3 % 2**64)}


def test_flood_refuses_float_seeds():
    with pytest.raises(ValueError, match="integer labels"):
        seeded_watershed(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
