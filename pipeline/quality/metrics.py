"""Segmentation metrics from a sparse contingency table.

A :class:`Contingency` accumulates, block by block, how many voxels carry each (segment id, ground
truth id) pair. Only the pairs that occur are stored, so the table grows with the number of objects
and their overlaps, never with the number of voxels, and a volume far larger than memory can be
scored one block at a time. Tables built on different workers merge with :meth:`Contingency.merge`.

:func:`scores` turns a table into the usual numbers:

- variation of information (Meila 2007), split into ``voi_split = H(seg | gt)`` (over-segmentation)
  and ``voi_merge = H(gt | seg)`` (under-segmentation), in **bits** (log base 2), as CREMI and
  ``skimage.metrics.variation_of_information`` report it;
- the adapted Rand error of SNEMI3D / CREMI (Arganda-Carreras et al. 2015): one minus the F-score of
  Rand precision and recall over pairs of distinct voxels, as ``skimage.metrics.adapted_rand_error``
  computes it;
- object-level precision, recall and F1 of a one-to-one matching of segments to ground-truth
  objects at an IoU threshold, and the mean IoU of the matched pairs.

Conventions: ground-truth voxels labelled 0 are unlabelled and left out of every score when
``ignore_gt_zero`` (the default). A segmentation's 0 is its background: in VOI and Rand it counts as
one ordinary segment (so leaving labelled voxels unsegmented is penalised as a merge), and in the
matching it is never a predicted object.

>>> import numpy as np
>>> gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.uint64)
>>> seg = np.array([[5, 5, 7, 7], [5, 5, 7, 9]], dtype=np.uint64)
>>> table = Contingency()
>>> table.add(seg, gt)
>>> s = scores(table)
>>> round(s["voi_split"], 3), s["voi_merge"], s["n_matched"], s["f1"]
(0.406, 0.0, 2, 0.8)
"""

from __future__ import annotations

import math
from typing import Any

import fastremap
import numpy as np

from emseg.pipeline.errors import DtypeError, ShapeMismatchError

__all__ = ["Contingency", "ShapeMismatchError", "evaluate_arrays", "scores"]

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _as_uint64_labels(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` flattened as uint64 ids; refuse floats and negative ids."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.reshape(-1).astype(np.uint64)
    if not np.issubdtype(array.dtype, np.integer):
        raise DtypeError(
            f"{what} must hold integer label ids, got dtype {array.dtype}; "
            f"convert it with .astype(np.uint64) if its values are whole numbers"
        )
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise DtypeError(
            f"{what} holds negative label ids (min {array.min()}); label ids must be >= 0, "
            f"relabel it (e.g. fastremap.renumber) before scoring"
        )
    return array.reshape(-1).astype(np.uint64, copy=False)


def _reduce_pairs(
    seg: np.ndarray, gt: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum ``count`` over equal (seg, gt) pairs; the result is sorted by seg, then gt."""
    if seg.size == 0:
        return seg, gt, count
    order = np.lexsort((gt, seg))
    seg, gt, count = seg[order], gt[order], count[order]
    new = np.empty(seg.size, dtype=bool)
    new[0] = True
    np.not_equal(seg[1:], seg[:-1], out=new[1:])
    new[1:] |= gt[1:] != gt[:-1]
    starts = np.flatnonzero(new)
    return seg[starts], gt[starts], np.add.reduceat(count, starts)


class Contingency:
    """Voxel counts of (segment id, ground-truth id) pairs, accumulated over blocks.

    Ids are uint64. Each :meth:`add` reduces its block to unique pairs with one sort of a combined
    key; the running table is reduced again lazily, so adding many blocks costs time proportional
    to the pairs they contribute.

    >>> import numpy as np
    >>> t = Contingency()
    >>> t.add(np.array([1, 1, 2]), np.array([7, 7, 7]))
    >>> t.add(np.array([2]), np.array([0]))
    >>> seg, gt, count = t.pairs()
    >>> seg.tolist(), gt.tolist(), count.tolist(), t.n_voxels
    ([1, 2, 2], [7, 0, 7], [2, 1, 1], 4)
    """

    def __init__(self) -> None:
        empty_ids = np.zeros(0, dtype=np.uint64)
        self._seg = empty_ids
        self._gt = empty_ids
        self._count = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, seg_block: np.ndarray, gt_block: np.ndarray) -> None:
        """Count the voxels of one block (any shape; both arrays the same shape).

        Raises
        ------
        ShapeMismatchError
            If the two blocks differ in shape.
        DtypeError
            If either block is not integer-valued or holds negative ids.
        """
        seg_block = np.asarray(seg_block)
        gt_block = np.asarray(gt_block)
        if seg_block.shape != gt_block.shape:
            raise ShapeMismatchError(
                f"segmentation block has shape {seg_block.shape} but ground truth block has "
                f"{gt_block.shape}; read both from the same box"
            )
        seg = _as_uint64_labels(seg_block, "segmentation")
        gt = _as_uint64_labels(gt_block, "ground truth")
        if seg.size == 0:
            return
        if int(seg.max()) <= 0xFFFFFFFF and int(gt.max()) <= 0xFFFFFFFF:
            # Both fit in 32 bits: one combined key, one unique.
            keys, counts = fastremap.unique((seg << _SHIFT32) | gt, return_counts=True)
            pair_seg, pair_gt = keys >> _SHIFT32, keys & _LOW32
        else:
            # Wide ids (e.g. block id in the high bits): compact each side first.
            seg_ids, seg_idx = fastremap.unique(seg, return_inverse=True)
            gt_ids, gt_idx = fastremap.unique(gt, return_inverse=True)
            combined = seg_idx.astype(np.uint64) * np.uint64(gt_ids.size) + gt_idx.astype(np.uint64)
            keys, counts = fastremap.unique(combined, return_counts=True)
            pair_seg = seg_ids[(keys // np.uint64(gt_ids.size)).astype(np.intp)]
            pair_gt = gt_ids[(keys % np.uint64(gt_ids.size)).astype(np.intp)]
        self.add_pairs(pair_seg, pair_gt, counts)

    def add_pairs(self, seg_ids: np.ndarray, gt_ids: np.ndarray, counts: np.ndarray) -> None:
        """Add counts of given (seg id, gt id) pairs; pairs may repeat."""
        seg_ids = np.asarray(seg_ids, dtype=np.uint64).reshape(-1)
        gt_ids = np.asarray(gt_ids, dtype=np.uint64).reshape(-1)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        if not seg_ids.size == gt_ids.size == counts.size:
            raise ShapeMismatchError(
                f"add_pairs needs three arrays of one length, got {seg_ids.size}, "
                f"{gt_ids.size} and {counts.size}"
            )
        if seg_ids.size == 0:
            return
        self._pending.append((seg_ids, gt_ids, counts))
        self._pending_size += seg_ids.size
        if self._pending_size > max(1 << 20, 2 * self._seg.size):
            self._compact()

    def merge(self, other: Contingency) -> Contingency:
        """Add another table's counts to this one (for tree reductions); returns ``self``."""
        seg, gt, count = other.pairs()
        self.add_pairs(seg, gt, count)
        return self

    def _compact(self) -> None:
        if not self._pending:
            return
        parts = [(self._seg, self._gt, self._count), *self._pending]
        self._seg, self._gt, self._count = _reduce_pairs(
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
        self._pending = []
        self._pending_size = 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(seg_ids, gt_ids, counts)``: each pair once, sorted by seg id then gt id."""
        self._compact()
        return self._seg, self._gt, self._count

    @property
    def n_voxels(self) -> int:
        """Total voxels counted."""
        self._compact()
        return int(self._count.sum())

    def __len__(self) -> int:
        """Number of distinct (seg id, gt id) pairs."""
        self._compact()
        return int(self._seg.size)

    def __repr__(self) -> str:
        return f"Contingency(pairs={len(self)}, voxels={self.n_voxels})"


def _sizes(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique ids, the index of each entry into them, and the summed counts per id."""
    unique, index = np.unique(ids, return_inverse=True)
    return unique, index, np.bincount(index, weights=counts, minlength=unique.size)


def _greedy_match(iou: np.ndarray, seg_idx: np.ndarray, gt_idx: np.ndarray) -> np.ndarray:
    """Indices of candidate pairs kept by one-to-one matching, greedy by IoU descending.

    Ties are broken by segment index, then ground-truth index, so the result is deterministic.
    """
    order = np.lexsort((gt_idx, seg_idx, -iou))
    seg_used: set[int] = set()
    gt_used: set[int] = set()
    kept = []
    for k in order.tolist():
        s, g = int(seg_idx[k]), int(gt_idx[k])
        if s in seg_used or g in gt_used:
            continue
        seg_used.add(s)
        gt_used.add(g)
        kept.append(k)
    return np.asarray(kept, dtype=np.intp)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def scores(
    table: Contingency,
    *,
    iou_threshold: float = 0.5,
    ignore_gt_zero: bool = True,
    min_size: int = 0,
) -> dict[str, Any]:
    """Score a segmentation against ground truth from their contingency table.

    Parameters
    ----------
    table
        Counts of (segment, ground truth) voxel pairs.
    iou_threshold
        A segment and a ground-truth object match when their IoU is at least this. Matching is
        one-to-one, greedy by IoU descending, so thresholds below 0.5 are well defined too.
    ignore_gt_zero
        Leave voxels whose ground truth is 0 (unlabelled) out of every score.
    min_size
        Ground-truth objects smaller than this many voxels are left out like label 0; segments
        smaller than this (counting only evaluated voxels) are not predicted objects in the
        matching (their voxels still count in VOI and Rand).

    Returns
    -------
    dict
        ``voi_split`` = H(seg | gt) and ``voi_merge`` = H(gt | seg) in bits (log base 2, as
        CREMI), ``voi`` their sum; ``adapted_rand_error`` = 1 − F-score of ``rand_precision``
        (pairs together in the segmentation that are together in the ground truth) and
        ``rand_recall`` (the converse), over pairs of distinct voxels, as skimage; ``precision``,
        ``recall``, ``f1`` of the object matching and ``mean_iou`` over its matched pairs;
        counts ``n_gt``, ``n_seg``, ``n_matched`` (objects) and ``n_voxels`` (evaluated). Ratios
        with a zero denominator are NaN.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(
            f"iou_threshold must be in (0, 1], got {iou_threshold}; 0.5 is the usual choice"
        )
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 voxels, got {min_size}")
    seg, gt, n = table.pairs()
    keep = np.ones(seg.size, dtype=bool)
    if ignore_gt_zero:
        keep &= gt != 0
    if min_size > 0:
        _, gt_index, gt_total = _sizes(gt, n)
        keep &= gt_total[gt_index] >= min_size
    seg, gt, n = seg[keep], gt[keep], n[keep].astype(np.float64)
    total = float(n.sum())

    seg_ids, seg_index, seg_size = _sizes(seg, n)
    gt_ids, gt_index, gt_size = _sizes(gt, n)

    # Conditional entropies in bits: H(seg|gt) = -sum p_ij log2(n_ij / n_j(gt)).
    if total > 0:
        voi_split = float(-(n * np.log2(n / gt_size[gt_index])).sum() / total)
        voi_merge = float(-(n * np.log2(n / seg_size[seg_index])).sum() / total)
    else:
        voi_split = voi_merge = 0.0
    # Clip rounding noise (and -0.0) so that a perfect result reads exactly 0.
    voi_split = voi_split if voi_split > 0 else 0.0
    voi_merge = voi_merge if voi_merge > 0 else 0.0

    # Rand over pairs of distinct voxels (sum of squares minus the diagonal).
    together_both = float(n @ n) - total
    together_seg = float(seg_size @ seg_size) - total
    together_gt = float(gt_size @ gt_size) - total
    rand_precision = _ratio(together_both, together_seg)
    rand_recall = _ratio(together_both, together_gt)
    rand_f = _ratio(2.0 * together_both, together_seg + together_gt)

    # Object matching.
    seg_object = (seg_ids != 0) & (seg_size >= max(min_size, 1))
    gt_object = gt_ids != 0
    n_seg, n_gt = int(seg_object.sum()), int(gt_object.sum())
    candidate = seg_object[seg_index] & gt_object[gt_index]
    c_seg, c_gt, c_n = seg_index[candidate], gt_index[candidate], n[candidate]
    iou = c_n / (seg_size[c_seg] + gt_size[c_gt] - c_n)
    good = iou >= iou_threshold
    c_seg, c_gt, iou = c_seg[good], c_gt[good], iou[good]
    if iou_threshold > 0.5:
        matched_iou = iou  # IoU > 1/2 cannot hold for two disjoint partners
    else:
        matched_iou = iou[_greedy_match(iou, c_seg, c_gt)]
    n_matched = int(matched_iou.size)

    return {
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "adapted_rand_error": 1.0 - rand_f,
        "rand_precision": rand_precision,
        "rand_recall": rand_recall,
        "precision": _ratio(n_matched, n_seg),
        "recall": _ratio(n_matched, n_gt),
        "f1": _ratio(2.0 * n_matched, n_seg + n_gt),
        "mean_iou": float(matched_iou.mean()) if n_matched else math.nan,
        "n_gt": n_gt,
        "n_seg": n_seg,
        "n_matched": n_matched,
        "n_voxels": int(total),
        "iou_threshold": float(iou_threshold),
        "min_size": int(min_size),
    }


def evaluate_arrays(seg: np.ndarray, gt: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """:func:`scores` of two whole label arrays; keyword arguments go to :func:`scores`.

    >>> import numpy as np
    >>> labels = np.arange(8, dtype=np.uint64).reshape(2, 2, 2) // 2 + 1
    >>> evaluate_arrays(labels * 3, labels)["adapted_rand_error"]
    0.0
    """
    table = Contingency()
    table.add(seg, gt)
    return scores(table, **kwargs)


#: what each score says, in one line (printed beside the numbers by `emseg segment` and the notebook)
READINGS: dict[str, str] = {
    "adapted_rand_error": "share of voxel pairs wrongly joined or separated (1 - Rand F-score, SNEMI3D/CREMI); "
                          "0 is perfect",
    "voi_split": "over-segmentation: bits to tell which segment a true object's voxel is in; 0 = no splits",
    "voi_merge": "under-segmentation: bits to tell which true object a segment's voxel is in; 0 = no merges",
    "f1": "objects matched one-to-one at IoU >= {iou:g}: 2 x matched / (segments + true objects); "
          "1 is perfect",
    "precision": "share of segments that match a true object (low: many extra pieces)",
    "recall": "share of true objects that some segment matches (low: objects missed or merged)",
}


def readings(result: dict[str, Any]) -> list[str]:
    """One line per score of :func:`scores` (or ``emseg evaluate``): the number and what it says.

    >>> print(readings({"adapted_rand_error": 0.05, "f1": 0.9, "iou_threshold": 0.5})[1])
    f1                   0.9000  objects matched one-to-one at IoU >= 0.5: 2 x matched / (segments + true objects); 1 is perfect
    """
    iou = result.get("iou_threshold", 0.5)
    return [f"{key:<20} {result[key]:.4f}  {text.format(iou=iou)}" for key, text in READINGS.items() if key in result]
