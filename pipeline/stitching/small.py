"""Small segments, merged along their best contact after agglomeration (``agglomeration.small``).

After the threshold and the enclosed-segment merges (:mod:`emseg.pipeline.stitching.inclusions`),
segments of fewer than ``min_size`` voxels merge along their best-scoring contact, if it scores at
most ``max_score`` (size-dependent single linkage, the last step of Zlateski & Seung 2015, "Image
segmentation by size-dependent single linkage clustering of a watershed basin graph", arXiv:1505.00249).
A forest's noisy affinities leave pieces of neurites split off along stretches of false boundary,
most of them along the volume's faces where the features lack context; the threshold that keeps two
large neurites apart does not need the same evidence to keep a sliver of a few thousand voxels
apart. Its defaults (5000 voxels, 0.8) were chosen on FIB-25's training part (docs/agglomeration.md,
"Small segments").

Like the enclosed-segment rules it works on the region graph only (fragment ids, their voxel counts,
the affinity sums and counts of their contacts), so its result does not depend on the block shape.
"""

from __future__ import annotations

import numpy as np

from emseg.pipeline.stitching.agglomeration import components

__all__ = ["small_merges"]


def small_merges(
    u: np.ndarray,
    v: np.ndarray,
    total: np.ndarray,
    count: np.ndarray,
    merged: np.ndarray,
    node_keys: np.ndarray,
    node_sizes: np.ndarray,
    *,
    min_size: int,
    max_score: float,
) -> np.ndarray:
    """Extra merges of segments smaller than ``min_size`` voxels: a bool per edge (True = merge it too).

    Segments are the components of the ``merged`` edges. Their contacts are scored like the
    agglomeration's edges (1 - mean affinity over every voxel face two segments share) and taken in
    ascending order of score up to ``max_score``; a contact joins its two groups when either group
    has fewer than ``min_size`` voxels at that moment (sizes add as groups join). Contacts between
    two segments of ``min_size`` or more are never taken. Source: size-dependent single linkage
    (Zlateski & Seung 2015, arXiv:1505.00249), on mean-affinity scores of segments.

    Parameters
    ----------
    u, v, total, count
        The region graph's edges (fragment ids or global keys, ``u[i] != v[i]``), the sum of the
        affinities across each edge's voxel faces and their number.
    merged
        Bool per edge: the merges so far (threshold and enclosed segments).
    node_keys, node_sizes
        Every fragment's id and its number of voxels (a fragment listed more than once adds up;
        one that is not listed counts 0 voxels).
    min_size
        Voxels; 0 makes no merges.
    max_score
        Contacts that score above this never join (a confident boundary keeps even a tiny object).

    Returns
    -------
    numpy.ndarray
        bool, one per edge; for each contact taken, one of the fragment edges between the two
        segments is True (``merged`` is False there). Merging ``merged | result`` gives the segments.

    Raises
    ------
    ValueError
        Arrays of different lengths, ``min_size`` < 0.

    >>> # fragments 1 (500 voxels) and 2 (50) touch with mean affinity 0.4; 2 and 3 (5000) with 0.1
    >>> small_merges(np.array([1, 2]), np.array([2, 3]), np.array([4.0, 1.0]), np.array([10, 10]),
    ...              np.zeros(2, bool), np.array([1, 2, 3]), np.array([500, 50, 5000]),
    ...              min_size=1000, max_score=0.8).tolist()
    [True, False]
    """
    u = np.asarray(u)
    v = np.asarray(v)
    merged = np.asarray(merged, bool)
    if not (len(u) == len(v) == len(total) == len(count) == len(merged)):
        raise ValueError("u, v, total, count and merged must have one value per edge")
    if len(node_keys) != len(node_sizes):
        raise ValueError("node_keys and node_sizes must have one value per fragment")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 voxels, not {min_size}")
    out = np.zeros(len(u), bool)
    if not len(u) or min_size == 0:
        return out
    nodes, inverse = np.unique(np.concatenate([u, v, np.asarray(node_keys, u.dtype)]), return_inverse=True)
    inverse = inverse.ravel()
    iu, iv, ik = inverse[:len(u)], inverse[len(u):2 * len(u)], inverse[2 * len(u):]
    seg = components(len(nodes), iu[merged] + 1, iv[merged] + 1)[1:].astype(np.int64) - 1  # 0..m-1
    m = int(seg.max()) + 1
    size = np.bincount(seg[ik], np.asarray(node_sizes, np.float64), minlength=m)
    su, sv = seg[iu], seg[iv]
    apart = np.flatnonzero(su != sv)
    lo, hi = np.minimum(su, sv)[apart], np.maximum(su, sv)[apart]
    pairs, first, inv = np.unique(lo * m + hi, return_index=True, return_inverse=True)
    inv = inv.ravel()
    score = 1.0 - np.bincount(inv, np.asarray(total, np.float64)[apart]) / np.maximum(
        np.bincount(inv, np.asarray(count, np.float64)[apart]), 1.0)
    pa, pb = pairs // m, pairs % m
    take = (score <= max_score) & (np.minimum(size[pa], size[pb]) < min_size)  # sizes only grow
    order = np.flatnonzero(take)[np.argsort(score[take], kind="stable")]
    parent = list(range(m))
    grown = size.tolist()

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, a, b in zip(order.tolist(), pa[order].tolist(), pb[order].tolist()):
        ra, rb = root(a), root(b)
        if ra == rb or min(grown[ra], grown[rb]) >= min_size:
            continue
        parent[rb] = ra
        grown[ra] += grown[rb]
        out[apart[first[p]]] = True
    return out
