"""Metrics from a sparse contingency table, checked against skimage.metrics and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from emseg.pipeline.errors import DtypeError
from emseg.pipeline.quality.metrics import Contingency, ShapeMismatchError, evaluate_arrays, scores


def _random_pair(seed: int, shape=(12, 13, 14), n_seg=9, n_gt=6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, n_gt, size=shape).astype(np.uint64)
    # A segmentation correlated with the ground truth, with splits and merges.
    seg = (gt * 2 + rng.integers(0, 2, size=shape)) % n_seg
    noise = rng.random(shape) < 0.2
    seg[noise] = rng.integers(0, n_seg, size=int(noise.sum()))
    return seg.astype(np.uint64), gt


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ignore_gt_zero", [True, False])
def test_voi_and_rand_match_skimage(seed: int, ignore_gt_zero: bool) -> None:
    seg, gt = _random_pair(seed)
    ignore = (0,) if ignore_gt_zero else ()
    s = evaluate_arrays(seg, gt, ignore_gt_zero=ignore_gt_zero)
    # skimage returns [H(image1 | image0), H(image0 | image1)], in bits.
    split, merge = variation_of_information(gt.astype(np.int64), seg.astype(np.int64), ignore_labels=ignore)
    are, _, _ = adapted_rand_error(gt.astype(np.int64), seg.astype(np.int64), ignore_labels=ignore)
    assert s["voi_split"] == pytest.approx(split, rel=1e-9, abs=1e-12)
    assert s["voi_merge"] == pytest.approx(merge, rel=1e-9, abs=1e-12)
    assert s["voi"] == pytest.approx(split + merge, rel=1e-9)
    assert s["adapted_rand_error"] == pytest.approx(are, rel=1e-9, abs=1e-12)
    assert 0 < s["voi_split"] and 0 < s["voi_merge"] and 0 < s["adapted_rand_error"] < 1
    expected_voxels = int((gt != 0).sum()) if ignore_gt_zero else gt.size
    assert s["n_voxels"] == expected_voxels


def test_identical_partition_scores_perfect() -> None:
    rng = np.random.default_rng(5)
    gt = rng.integers(1, 30, size=(10, 11, 12)).astype(np.uint64)
    # Same partition, different ids (a bijection), including ids beyond 32 bits.
    ids = rng.permutation(1000)[:30].astype(np.uint64) + np.uint64(1 << 40)
    seg = ids[gt.astype(np.intp)]
    s = evaluate_arrays(seg, gt)
    assert s["voi_split"] == 0.0 and s["voi_merge"] == 0.0
    assert s["adapted_rand_error"] == pytest.approx(0.0, abs=1e-15)
    assert s["f1"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert s["mean_iou"] == 1.0
    assert s["n_gt"] == s["n_seg"] == s["n_matched"] == len(np.unique(gt))


def test_permutation_invariance() -> None:
    seg, gt = _random_pair(7)
    base = evaluate_arrays(seg, gt, iou_threshold=0.2)
    rng = np.random.default_rng(8)
    # Relabel both with random bijections that keep 0 as 0 (0 is special in both).
    seg_map = np.concatenate([[0], rng.permutation(np.arange(1, 50)) * 1000 + 3]).astype(np.uint64)
    gt_map = np.concatenate([[0], rng.permutation(np.arange(1, 50)) + 77]).astype(np.uint64)
    other = evaluate_arrays(seg_map[seg.astype(np.intp)], gt_map[gt.astype(np.intp)], iou_threshold=0.2)
    for key, value in base.items():
        assert other[key] == pytest.approx(value, rel=1e-12), key
    # Swapping seg and gt swaps split and merge.
    swapped = evaluate_arrays(gt, seg, ignore_gt_zero=False)
    plain = evaluate_arrays(seg, gt, ignore_gt_zero=False)
    assert swapped["voi_split"] == pytest.approx(plain["voi_merge"])
    assert swapped["voi_merge"] == pytest.approx(plain["voi_split"])


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    # gt: A = [0, 10), B = [10, 20).  seg: 1 = [0, 8), 2 = [8, 14), 3 = [14, 20).
    gt = np.repeat(np.array([1, 2], dtype=np.uint64), 10)
    seg = np.array([1] * 8 + [2] * 6 + [3] * 6, dtype=np.uint64)
    return seg, gt


def test_matching_by_hand() -> None:
    seg, gt = _hand_case()
    # IoUs: (1, A) = 8/10, (2, A) = 2/14, (2, B) = 4/12, (3, B) = 6/10.
    s = evaluate_arrays(seg, gt, iou_threshold=0.3)
    # Greedy: (1, A) then (3, B); (2, B) loses B to the better pair.
    assert (s["n_seg"], s["n_gt"], s["n_matched"]) == (3, 2, 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == 1.0
    assert s["f1"] == pytest.approx(0.8)
    assert s["mean_iou"] == pytest.approx((0.8 + 0.6) / 2)

    s = evaluate_arrays(seg, gt, iou_threshold=0.7)
    assert s["n_matched"] == 1
    assert s["f1"] == pytest.approx(2 / 5)
    assert s["mean_iou"] == pytest.approx(0.8)

    # Without segment 3, segment 2 takes B at a low threshold, but not at 0.5.
    seg2 = np.where(seg == 3, 0, seg).astype(np.uint64)
    low = evaluate_arrays(seg2, gt, iou_threshold=0.25)
    assert low["n_matched"] == 2
    assert low["mean_iou"] == pytest.approx((0.8 + 4 / 12) / 2)
    high = evaluate_arrays(seg2, gt, iou_threshold=0.5)
    assert high["n_matched"] == 1 and high["n_seg"] == 2


def test_matching_is_one_to_one_below_half() -> None:
    # One segment overlapping two gt objects equally well at IoU 0.5 must match only one.
    gt = np.array([1, 1, 2, 2], dtype=np.uint64)
    seg = np.array([5, 5, 5, 5], dtype=np.uint64)
    s = evaluate_arrays(seg, gt, iou_threshold=0.5)
    assert s["n_matched"] == 1 and s["mean_iou"] == 0.5
    assert s["recall"] == 0.5 and s["precision"] == 1.0


def test_min_size_ignores_small_objects() -> None:
    gt = np.array([1] * 50 + [2] * 3 + [0] * 5, dtype=np.uint64)
    seg = np.array([4] * 50 + [4] * 3 + [9] * 4 + [8], dtype=np.uint64)
    every = evaluate_arrays(seg, gt)
    assert every["n_gt"] == 2 and every["voi_merge"] > 0
    big = evaluate_arrays(seg, gt, min_size=10)
    # gt 2 is masked like label 0, so the merge disappears; segments 9 and 8 see no evaluated voxel.
    assert big["n_gt"] == 1 and big["n_seg"] == 1 and big["n_matched"] == 1
    assert big["voi_merge"] == 0.0 and big["voi_split"] == 0.0 and big["n_voxels"] == 50
    # A segment under min_size inside the evaluated voxels is not a predicted object.
    seg_small = seg.copy()
    seg_small[:5] = 6
    s = evaluate_arrays(seg_small, gt, min_size=10)
    assert s["n_seg"] == 1 and s["voi_split"] > 0


def test_blockwise_equals_whole() -> None:
    seg, gt = _random_pair(3, shape=(20, 18, 16), n_seg=40, n_gt=25)
    seg[::3] += np.uint64(1 << 35)  # some wide ids too, to take the other code path
    whole = Contingency()
    whole.add(seg, gt)
    blocks = Contingency()
    for z in range(0, 20, 7):
        for y in range(0, 18, 9):
            for x in range(0, 16, 5):
                sl = np.s_[z : z + 7, y : y + 9, x : x + 5]
                blocks.add(seg[sl], gt[sl])
    for a, b in zip(whole.pairs(), blocks.pairs()):
        np.testing.assert_array_equal(a, b)
    assert blocks.n_voxels == seg.size
    # Tables made apart and merged (a tree reduction) agree too.
    left, right = Contingency(), Contingency()
    left.add(seg[:10], gt[:10])
    right.add(seg[10:], gt[10:])
    merged = left.merge(right)
    assert scores(merged, iou_threshold=0.3) == scores(whole, iou_threshold=0.3)


def test_pairs_match_a_dense_count() -> None:
    seg, gt = _random_pair(4, n_seg=7, n_gt=5)
    table = Contingency()
    table.add(seg, gt)
    dense = np.zeros((7, 5), dtype=np.int64)
    np.add.at(dense, (seg.ravel().astype(np.intp), gt.ravel().astype(np.intp)), 1)
    s, g, c = table.pairs()
    np.testing.assert_array_equal(dense[s.astype(np.intp), g.astype(np.intp)], c)
    assert c.sum() == seg.size and len(table) == np.count_nonzero(dense)


def test_bad_inputs_raise_clear_errors() -> None:
    table = Contingency()
    with pytest.raises(ShapeMismatchError, match="same box"):
        table.add(np.zeros((2, 3), np.uint32), np.zeros((3, 2), np.uint32))
    with pytest.raises(DtypeError, match="integer"):
        table.add(np.zeros(3, np.float32), np.zeros(3, np.uint32))
    with pytest.raises(DtypeError, match="negative"):
        table.add(np.array([-1, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="iou_threshold"):
        scores(table, iou_threshold=0)


def test_empty_table_is_defined() -> None:
    s = scores(Contingency())
    assert s["voi"] == 0.0 and s["n_voxels"] == 0 and s["n_gt"] == 0
    assert math.isnan(s["adapted_rand_error"]) and math.isnan(s["f1"])
