"""The numba flood that grows watershed fragments against scikit-image's watershed."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from skimage.segmentation import watershed

from emseg.pipeline.stitching import flood
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


def test_flood_refuses_a_cost_that_is_not_floats():
    # an integer cost would be clipped to [0, 1] and flood in the wrong order without a word
    with pytest.raises(ValueError, match="cost must be floats"):
        seeded_watershed(np.full((2, 2, 2), 200, np.uint8), np.ones((2, 2, 2), np.int64))


def test_flood_refuses_float_seeds():
    with pytest.raises(ValueError, match="integer labels"):
        seeded_watershed(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def _meyer(cost: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Meyer's flooding in Python, the reference: a heap of (level, age, voxel), the seeds entered
    in raster order, each voxel labelled by the first popped neighbour that reaches it."""
    level = np.rint(np.clip(cost, 0, 1) * (LEVELS - 1)).astype(np.int64).ravel()
    out = seeds.astype(np.int64).ravel().copy()
    nz, ny, nx = cost.shape
    heap = [(int(level[i]), age, int(i)) for age, i in enumerate(np.flatnonzero(out))]
    heapq.heapify(heap)
    age = len(heap)
    while heap:
        _, _, i = heapq.heappop(heap)
        z, y, x = i // (ny * nx), i // nx % ny, i % nx
        for dz, dy, dx in ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 1), (0, 1, 0), (1, 0, 0)):
            if 0 <= z + dz < nz and 0 <= y + dy < ny and 0 <= x + dx < nx:
                j = i + (dz * ny + dy) * nx + dx
                if out[j] == 0:
                    out[j] = out[i]
                    heapq.heappush(heap, (int(level[j]), age, j))
                    age += 1
    return out.reshape(cost.shape).astype(np.uint64)


def test_both_word_widths_flood_as_meyer():
    # 16-bit labels in uint32 words; a box with 0xFFFF seed labels or more takes uint64 words.
    # Costs repeat here (more voxels than levels), so ties decide the labels: first in, first out.
    rng = np.random.default_rng(3)
    shape = (40, 48, 48)
    cost = rng.integers(0, LEVELS, shape) / (LEVELS - 1)
    for n, narrow in ((40, True), (0xFFFE, True), (0xFFFF, False)):
        seeds = np.zeros(shape, np.int64)
        seeds.flat[rng.choice(cost.size, n, replace=False)] = np.arange(1, n + 1)
        assert flood._seed_labels(seeds)[2] is narrow
        out = seeded_watershed(cost, seeds)
        assert np.array_equal(out, _meyer(cost, seeds)), n
        assert len(np.unique(out)) == n
        # uint32 seeds give uint32 labels, the same ones; large values are mapped there and back
        out32 = seeded_watershed(cost, seeds.astype(np.uint32))
        assert out.dtype == np.uint64 and out32.dtype == np.uint32 and np.array_equal(out32, out), n
        high = np.where(seeds > 0, seeds + 2**31, 0).astype(np.uint32)
        assert np.array_equal(seeded_watershed(cost, high), np.where(out > 0, out + 2**31, 0)), n
    # many seed labels that do not fit 32 bits: mapped to 1..n and back
    far = np.where(seeds > 0, seeds * 3 + 2**40, 0)
    assert flood._seed_labels(far)[2] is False
    assert np.array_equal(seeded_watershed(cost, far), np.where(out > 0, out * 3 + 2**40, 0).astype(np.uint64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_levels_are_numpys_quantisation(dtype):
    # the packed flood quantises in its own kernel: the same levels as numpy's rint(clip(cost) * top)
    # in the cost's precision, halfway costs (rounded to even) and costs outside [0, 1] included
    rng = np.random.default_rng(4)
    k = rng.integers(-3, LEVELS + 3, (6, 20, 30))
    cost = np.concatenate([(k + 0.5) / (LEVELS - 1), rng.random(k.shape) * 3 - 1]).astype(dtype)
    cost[0, 0, :3] = np.nan
    expected = np.rint(np.clip(cost, 0, 1) * dtype(LEVELS - 1))
    expected[np.isnan(expected)] = 0  # NaN: level 0, as numpy's cast to uint16 gave the flood before
    word = np.zeros([n + 2 for n in cost.shape], np.uint32)
    flood._pack(cost, np.ones(cost.shape, np.uint64), np.zeros((0, 0, 0), bool), dtype(LEVELS - 1), flood._WALL_16, word)
    assert np.array_equal(word[1:-1, 1:-1, 1:-1] & 0xFFFF, expected.astype(np.uint32))
    assert (word[1:-1, 1:-1, 1:-1] >> 16 == 1).all()
