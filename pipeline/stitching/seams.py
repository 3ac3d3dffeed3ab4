"""Seam matching: scored candidate edges between two blocks' labels on their shared overlap.

Both neighbours segment the overlap box, so each voxel there has a label from A and one from B. The
contingency table of those pairs gives, for every pair (a, b) that shares voxels, the overlap count
and the IoU *inside the overlap*. A :class:`StitchRule` decides which candidates are merges; every
candidate keeps its scores so that a merge can be audited later.

This module is pure numpy; ``emseg.tasks.stage2_seams`` is the thin wrapper that runs it per block pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class StitchRule(BaseModel):
    """Which overlap candidates become merges (config key ``stitch``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the pair must share at least this many voxels in the overlap
    min_overlap: int = Field(1, ge=1)
    #: IoU of the two labels restricted to the overlap
    min_iou: float = Field(0.0, ge=0.0, le=1.0)
    #: keep only pairs that are each other's largest partner
    mutual_best: bool = False


@dataclass(frozen=True)
class Edges:
    """Candidate edges between labels ``a`` (block A) and ``b`` (block B), with their scores."""

    a: np.ndarray  # uint64 keys or local ids
    b: np.ndarray
    count: np.ndarray  # int64 voxels shared in the overlap
    iou: np.ndarray  # float32
    merge: np.ndarray  # bool: chosen by the rule

    def __len__(self) -> int:
        return len(self.a)

    @classmethod
    def empty(cls) -> Edges:
        u = np.zeros(0, np.uint64)
        return cls(u, u.copy(), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, bool))

    @classmethod
    def concat(cls, parts: list[Edges]) -> Edges:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("a", "b", "count", "iou", "merge")))


def _sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, counts = np.unique(labels, return_counts=True)
    return ids, counts


def match_overlap(labels_a: np.ndarray, labels_b: np.ndarray, rule: StitchRule) -> Edges:
    """Score every (a, b) pair that shares voxels in the overlap, and apply ``rule``.

    ``labels_a`` and ``labels_b`` are the two blocks' labels on the same overlap box; 0 is
    background and never matched.

    >>> a = np.array([[1, 1, 1, 2], [1, 1, 0, 2]])
    >>> b = np.array([[7, 7, 7, 8], [7, 9, 0, 8]])
    >>> e = match_overlap(a, b, StitchRule(min_iou=0.5))
    >>> e.a.tolist(), e.b.tolist(), e.count.tolist(), e.merge.tolist()
    ([1, 1, 2], [7, 9, 8], [4, 1, 2], [True, False, True])
    >>> [round(float(v), 2) for v in e.iou]
    [0.8, 0.2, 1.0]
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"overlap shapes differ: {labels_a.shape} vs {labels_b.shape}")
    a = labels_a.ravel().astype(np.uint64, copy=False)
    b = labels_b.ravel().astype(np.uint64, copy=False)
    both = (a != 0) & (b != 0)
    if not both.any():
        return Edges.empty()
    a_ids, a_sizes = _sizes(a[a != 0])
    b_ids, b_sizes = _sizes(b[b != 0])
    # Pack the pair into one sortable key through dense indices (at most the overlap's voxel count).
    ai = np.searchsorted(a_ids, a[both])
    bi = np.searchsorted(b_ids, b[both])
    pair, count = np.unique(ai.astype(np.int64) * len(b_ids) + bi, return_counts=True)
    ai, bi = pair // len(b_ids), pair % len(b_ids)
    union = a_sizes[ai] + b_sizes[bi] - count
    iou = (count / union).astype(np.float32)
    merge = (count >= rule.min_overlap) & (iou >= rule.min_iou)
    if rule.mutual_best:
        merge &= _is_best(ai, count) & _is_best(bi, count)
    return Edges(a_ids[ai], b_ids[bi], count.astype(np.int64), iou, merge)


def _is_best(owner: np.ndarray, count: np.ndarray) -> np.ndarray:
    """True where ``count`` is the largest among the entries of the same ``owner`` (first wins ties)."""
    order = np.lexsort((-count, owner))
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    best = np.zeros(len(order), bool)
    best[order[first]] = True
    return best


def pair_centroids(mine: np.ndarray, theirs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean voxel position (z, y, x, in the overlap's voxel coordinates) of the voxels where ``mine``
    holds ``a[i]`` and ``theirs`` holds ``b[i]``, for each pair ``i``; shape ``(len(a), 3)``, float64.

    >>> m = np.array([[[1, 1, 2]]]); t = np.array([[[5, 5, 5]]])
    >>> pair_centroids(m, t, np.array([1, 2]), np.array([5, 5])).tolist()
    [[0.0, 0.0, 0.5], [0.0, 0.0, 2.0]]
    """
    both = (mine != 0) & (theirs != 0)
    coords = np.nonzero(both)
    la = mine[coords].astype(np.uint64)
    lb = theirs[coords].astype(np.uint64)
    width = np.uint64(int(max(lb.max(initial=0), b.max(initial=0))) + 1)
    voxel_keys = la * width + lb
    pair_keys = a.astype(np.uint64) * width + b.astype(np.uint64)
    order = np.argsort(pair_keys)
    idx = np.searchsorted(pair_keys[order], voxel_keys)
    idx = np.clip(idx, 0, len(order) - 1)
    hit = pair_keys[order][idx] == voxel_keys
    which = order[idx[hit]]
    n = np.bincount(which, minlength=len(a)).astype(np.float64)
    out = np.zeros((len(a), 3))
    for axis in range(3):
        out[:, axis] = np.bincount(which, weights=coords[axis][hit], minlength=len(a)) / np.maximum(n, 1)
    return out


def near(iou: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """Edges whose IoU lies within ``margin`` of ``threshold``.

    >>> near(np.array([0.1, 0.45, 0.5, 0.62, 0.9]), 0.5, 0.1).tolist()
    [False, True, True, False, False]
    """
    return np.abs(iou.astype(np.float64) - threshold) <= margin + 1e-9


def nearest(cat: dict[str, np.ndarray], threshold: float, limit: int) -> dict[str, np.ndarray]:
    """The ``limit`` points whose IoU lies nearest ``threshold`` (ties: the earlier point), in their
    order. Exact under a tree reduce: a point among the nearest overall is among its part's nearest.

    >>> nearest({"iou": np.array([0.9, 0.5, 0.45, 0.1])}, 0.5, 2)["iou"].tolist()
    [0.5, 0.45]
    """
    if len(cat["iou"]) <= limit:
        return cat
    keep = np.argsort(np.abs(cat["iou"].astype(np.float64) - threshold), kind="stable")[:limit]
    return {k: v[np.sort(keep)] for k, v in cat.items()}
