"""Fragments and agglomeration on affinities: the stitching of boundary backends.

Affinities follow the waterz / MALA convention, shape ``(3, z, y, x)`` float32 in [0, 1]::

    affs[0][z, y, x]   affinity of voxel (z, y, x) with (z-1, y, x)
    affs[1][z, y, x]   ...                          with (z, y-1, x)
    affs[2][z, y, x]   ...                          with (z, y, x-1)

1 means "the same object". Per block (axis order z, y, x)::

      affinities on the write box  ──▶ fragments (waterz's seeded watershed, zwatershed)
                                              │
                                              ▼
      merge tree: hierarchical agglomeration of the fragments (waterz), the score of every merge
      recorded; score = 1 - mean affinity on the shared face (or a quantile of it)
                                              │
      seam edges: fragments facing each other across a block face, scored the same way from the
      affinities on that face                 │
                                              ▼
      global union-find over every tree and seam edge whose score <= threshold

Only the write box is cut into fragments, so fragment ids are unique per block without coordination
(``block << 32 | local``). The model's affinities inside the write box do not depend on where the
block was cut when the halo covers the model's context, so every edge score is a property of the
volume, not of the blocks — except the order of in-block merges, which agglomeration decides from
the regions it has grown so far, inside the block only. ``benchmarks/bench_affinities.py`` measures
how much that moves the result.

Libraries: waterz (Funke et al. 2019, "Large scale image segmentation with structured loss based
deep learning for connectome reconstruction", IEEE TPAMI) makes the fragments and the in-block
merge tree; the seam edges, thresholding and union-find are numpy. This module is pure numpy/waterz;
``tasks.stage1_segment`` and ``tasks.stage2_seams`` run it per block.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: waterz scoring functions by the names the config uses (all are compiled ahead of time by waterz)
SCORING: dict[str, str] = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    **{
        f"quantile_{q}": f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256, false>>"
        for q in range(10, 100, 5)
    },
}


def affinities_from_labels(labels: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities of a label volume: 1 between two voxels of one object, else 0.

    ``labels`` is ``(z, y, x)``; 0 is background and has affinity 0 to everything. Returns
    ``(3, z, y, x)`` float32; the first plane along each axis (no predecessor) is 0.

    >>> a = affinities_from_labels(np.array([[[1, 1, 2, 0]]]))
    >>> a[2].tolist()
    [[[0.0, 1.0, 0.0, 0.0]]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), not of shape {labels.shape}")
    affs = np.zeros((3, *labels.shape), np.float32)
    for axis in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis] = slice(1, None)
        lo[axis] = slice(None, -1)
        a, b = labels[tuple(hi)], labels[tuple(lo)]
        affs[(axis, *hi)] = (a == b) & (a != 0)
    return affs


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """waterz prints its progress to stdout (from C++ and from Python); keep it out of emseg's output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (e.g. captured by a notebook)
        fd = 1
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        with open(os.devnull, "w") as text, contextlib.redirect_stdout(text):  # its Python-level prints
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _check_affs(affs: np.ndarray) -> np.ndarray:
    affs = np.asarray(affs)
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise ValueError(f"affinities must have shape (3, z, y, x), not {affs.shape}")
    return np.ascontiguousarray(affs, dtype=np.float32)


def _scoring(scoring: str) -> str:
    try:
        return SCORING[scoring]
    except KeyError:
        raise ValueError(
            f"unknown agglomeration scoring {scoring!r}; choose 'mean' or 'quantile_N' with N in 10, 15, ..., 95"
        ) from None


@dataclass(frozen=True)
class BlockAgglomeration:
    """The result of :func:`agglomerate_block`.

    ``fragments`` is ``(z, y, x)`` uint32 with ids ``1..n`` (0 where ``mask`` was False);
    ``a``, ``b``, ``score`` are the merge tree: merging every edge with ``score <= t`` gives the
    block's agglomeration at threshold ``t``. Scores are non-decreasing along the tree's merge
    order (a running maximum of waterz's scores, so that a threshold cuts the merge history at the
    same point as waterz itself).
    """

    fragments: np.ndarray
    n: int
    a: np.ndarray  # uint32 fragment ids
    b: np.ndarray
    score: np.ndarray  # float32


def agglomerate_block(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    scoring: str = "mean",
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
) -> BlockAgglomeration:
    """Cut one block into fragments and agglomerate them completely, recording every merge.

    Parameters
    ----------
    affs
        ``(3, z, y, x)`` float32 affinities of the block's write box (see the module docstring). The
        first plane along each axis refers to voxels outside the box and is ignored.
    mask
        ``(z, y, x)`` bool, False where there is no data (fragments 0 there); None means all data.
    scoring
        ``"mean"`` (waterz's mean affinity) or ``"quantile_N"``: the edge score is one minus that
        statistic of the affinities on the faces two regions share.
    aff_threshold_low, aff_threshold_high
        zwatershed's thresholds: voxels joined by an affinity above ``high`` form one seed region;
        affinities below ``low`` are never followed (waterz's defaults).

    >>> labels = np.zeros((4, 4, 4), np.uint32); labels[:, :2] = 1; labels[:, 2:] = 2
    >>> r = agglomerate_block(affinities_from_labels(labels))
    >>> r.n, r.a.tolist(), r.b.tolist(), r.score.tolist()
    (2, [], [], [])
    """
    import waterz

    affs = _check_affs(affs).copy()
    for axis in range(3):
        index = [axis, slice(None), slice(None), slice(None)]
        index[axis + 1] = 0
        affs[tuple(index)] = 0.0
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != affs.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from the affinities' {affs.shape[1:]}")
        affs[:, ~mask] = 0.0
        for axis in range(3):  # no edge into a voxel without data
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis] = slice(None, -1)
            dst[axis] = slice(1, None)
            affs[axis][tuple(dst)] *= mask[tuple(src)]
    with _quiet_stdout():
        first = waterz.agglomerate(
            affs, [0.0], scoring_function=_scoring(scoring),
            aff_threshold_low=aff_threshold_low, aff_threshold_high=aff_threshold_high,
        )
        fragments = next(first).astype(np.uint64)  # waterz reuses the array it yields
        del first
        if mask is not None:
            fragments[~mask] = 0
        # zwatershed leaves voxels that no affinity above aff_threshold_low joins to anything as 0;
        # inside the data they are objects of their own (a one-voxel object of a label volume)
        orphans = (fragments == 0) if mask is None else (mask & (fragments == 0))
        if orphans.any():
            fragments[orphans] = fragments.max() + np.arange(1, int(orphans.sum()) + 1, dtype=np.uint64)
        fragments, n = _dense(fragments)
        if n > 1:
            seg, history = next(
                waterz.agglomerate(affs, [1.0], fragments=fragments.astype(np.uint64),
                                   scoring_function=_scoring(scoring), return_merge_history=True)
            )
            del seg
        else:
            history = []
    a, b, score = _tree(history)
    return BlockAgglomeration(fragments.astype(np.uint32), n, a, b, score)


def _dense(fragments: np.ndarray) -> tuple[np.ndarray, int]:
    import fastremap

    out, remap = fastremap.renumber(fragments, start=1, preserve_zero=True, in_place=True)
    return out, len(remap) - (1 if 0 in remap else 0)


def _tree(history: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tree edges from waterz's merge history: one edge per merge, between a fragment of each side.

    waterz names a merged region after one of its two parts (``c`` is ``a`` or ``b``), so the
    region ids of the history are fragment ids; a merge of regions a and b becomes the edge (a, b).
    Scores become their running maximum, so ``score <= t`` selects a prefix of the history.
    """
    if not history:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.float32)
    a = np.fromiter((m["a"] for m in history), np.uint32, len(history))
    b = np.fromiter((m["b"] for m in history), np.uint32, len(history))
    score = np.maximum.accumulate(np.fromiter((m["score"] for m in history), np.float64, len(history)))
    return a, b, score.astype(np.float32)


def face_edges(
    mine: np.ndarray, theirs: np.ndarray, affs: np.ndarray, *, scoring: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges between the fragments that face each other across a block face.

    ``mine`` holds one block's fragments on its last write-box plane along an axis, ``theirs`` the
    next block's fragments on its first plane, and ``affs`` the affinities between those voxel pairs
    (the next block's affinity channel of that axis, on its first plane); all three are 2D of one
    shape. Returns ``(a, b, contact, score)``: each pair of fragments that touch across the face
    (both ids nonzero), the number of voxel pairs, and the score (one minus the mean or quantile of
    their affinities, as in :func:`agglomerate_block`).

    >>> a, b, n, s = face_edges(np.array([[1, 1, 2]]), np.array([[5, 5, 5]]), np.array([[1.0, 0.5, 0.0]]))
    >>> a.tolist(), b.tolist(), n.tolist(), [round(float(v), 2) for v in s]
    ([1, 2], [5, 5], [2, 1], [0.25, 1.0])
    """
    if not (mine.shape == theirs.shape == affs.shape):
        raise ValueError(f"face shapes differ: {mine.shape}, {theirs.shape}, {affs.shape}")
    m = mine.ravel().astype(np.uint64)
    t = theirs.ravel().astype(np.uint64)
    v = affs.ravel().astype(np.float64)
    keep = (m != 0) & (t != 0)
    m, t, v = m[keep], t[keep], v[keep]
    empty = np.zeros(0, np.uint32)
    if not len(m):
        return empty, empty.copy(), np.zeros(0, np.int64), np.zeros(0, np.float32)
    pair = (m << np.uint64(32)) | t
    order = np.argsort(pair, kind="stable")
    pair, v = pair[order], v[order]
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    counts = np.diff(np.r_[starts, len(pair)])
    if scoring == "mean":
        stat = np.add.reduceat(v, starts) / counts
    elif scoring.startswith("quantile_"):
        _scoring(scoring)
        q = int(scoring.split("_")[1]) / 100.0
        stat = np.array([np.quantile(v[s : s + c], q) for s, c in zip(starts, counts)])
    else:
        _scoring(scoring)
        raise AssertionError("unreachable")
    uniq = pair[starts]
    return ((uniq >> np.uint64(32)).astype(np.uint32), (uniq & np.uint64(0xFFFFFFFF)).astype(np.uint32),
            counts.astype(np.int64), (1.0 - stat).astype(np.float32))


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of nodes ``1..n`` joined by edges ``(a, b)``: a lookup table, index 0 -> 0.

    >>> components(4, np.array([1, 3]), np.array([2, 4])).tolist()
    [0, 1, 1, 2, 2]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (np.asarray(a, np.int64), np.asarray(b, np.int64))),
                       shape=(n + 1, n + 1))
    _, comp = connected_components(graph, directed=False)
    # renumber so that ids are 1.. in order of first appearance and 0 stays 0
    _, first, inverse = np.unique(comp[1:], return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return np.r_[0, rank[inverse] + 1].astype(np.uint32)


def segment(
    affs: np.ndarray, threshold: float, mask: np.ndarray | None = None, *, scoring: str = "mean"
) -> np.ndarray:
    """Fragments + agglomeration of a whole volume in memory: the reference the chunked run matches.

    ``affs`` ``(3, z, y, x)`` float32; returns ``(z, y, x)`` uint32 labels, 1.. (0 where ``mask`` is
    False). Merges every tree edge whose score is at most ``threshold``.

    >>> labels = np.zeros((3, 4, 4), np.uint32); labels[:, :, :2] = 7; labels[:, :, 2:] = 9
    >>> segment(affinities_from_labels(labels), 0.5)[0].tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]]
    """
    r = agglomerate_block(affs, mask, scoring=scoring)
    keep = r.score <= threshold
    lut = components(r.n, r.a[keep], r.b[keep])
    return lut[r.fragments]
