"""The compiled region-graph kernels (pipeline/stitching/rag.py) against a plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.pipeline.stitching.rag import box_pairs_sum, face_pairs_sum


def _reference(a: np.ndarray, b: np.ndarray, aff: np.ndarray, same_ids_differ: bool):
    a, b, aff = a.ravel().astype(np.uint64), b.ravel().astype(np.uint64), aff.ravel().astype(np.float64)
    keep = (a != 0) & (b != 0) & ((a != b) | same_ids_differ)
    a, b, aff = a[keep], b[keep], aff[keep]
    pairs, inverse = np.unique(np.stack([a, b]), axis=1, return_inverse=True)
    inverse = inverse.ravel()
    return pairs[0], pairs[1], np.bincount(inverse, aff), np.bincount(inverse)


@pytest.mark.parametrize("same_ids_differ", [False, True])
@pytest.mark.parametrize("high", [50, 3000])  # 3000 labels: thousands of pairs, the table grows several times
def test_face_pairs_match_numpy(same_ids_differ, high) -> None:
    rng = np.random.default_rng(high)
    a = rng.integers(0, high, 40_000)
    b = rng.integers(0, high, 40_000)
    aff = rng.random(40_000, dtype=np.float32)
    got = face_pairs_sum(a, b, aff, same_ids_differ=same_ids_differ)
    want = _reference(a, b, aff, same_ids_differ)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # bit-identical sums: same numbers added in the same order


def test_face_pairs_take_global_keys_above_32_bits() -> None:
    big = np.uint64(7) << np.uint64(40)
    a = np.array([big + np.uint64(1), big + np.uint64(1), np.uint64(3)], np.uint64)
    b = np.array([np.uint64(2), np.uint64(2), big], np.uint64)
    u, v, t, c = face_pairs_sum(a, b, np.array([0.25, 0.5, 1.0]))
    assert u.tolist() == [3, int(big) + 1] and v.tolist() == [int(big), 2]
    assert t.tolist() == [1.0, 0.75] and c.tolist() == [1, 2]


@pytest.mark.parametrize("shape, high", [((9, 11, 13), 400), ((20, 30, 40), 100_000)])
def test_box_pairs_match_numpy_over_all_three_axes(shape, high) -> None:
    """(20, 30, 40) with 100,000 labels: about 70,000 pairs, so the kernel stops to grow its table
    several times, on each axis, and resumes where it stopped."""
    rng = np.random.default_rng(0)
    frags = rng.integers(0, high, shape).astype(np.uint32)
    affs = rng.random((3, *shape), dtype=np.float32)
    a_parts, b_parts, v_parts = [], [], []
    for axis in range(3):
        hi = tuple(slice(1, None) if d == axis else slice(None) for d in range(3))
        lo = tuple(slice(None, -1) if d == axis else slice(None) for d in range(3))
        x, y = frags[hi].ravel(), frags[lo].ravel()
        a_parts.append(np.minimum(x, y))
        b_parts.append(np.maximum(x, y))
        v_parts.append(affs[axis][hi].ravel())
    want = _reference(np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(v_parts), False)
    got = box_pairs_sum(frags, affs)
    assert len(got[0]) > (1024 if high < 1000 else 4 * 8192)  # (20, 30, 40): past the first table's size
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="do not match"):
        box_pairs_sum(frags, affs[:, :-1])
