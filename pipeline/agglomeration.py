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
from typing import Any, Iterator

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


def fragments_watershed(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    seed_threshold: float = 0.7,
    seed_min_distance: float = 3.0,
    voxel_size_zyx: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Fragments by a seeded watershed on the mean affinity (the recipe of the LSD pipelines).

    The boundary map is ``1 - mean(affs)``; voxels whose mean affinity exceeds ``seed_threshold`` are
    interior; seeds are the maxima of the interior's Euclidean distance transform within
    ``seed_min_distance`` (nm-isotropic: in voxels of the finest axis, scaled per axis by
    ``voxel_size_zyx``); a watershed on the boundary map grows them over the whole box (``mask``
    excluded). Returns ``(z, y, x)`` uint64 fragment ids, 0 where ``mask`` is False.

    Libraries: ``edt`` (distance transform, anisotropic), ``cc3d`` (seed labels), scikit-image
    (watershed). Unlike :func:`fragments_zwatershed` it tolerates soft, badly calibrated affinities
    (a forest's probabilities), but a fragment may cross a boundary where no seed lies on one side.

    >>> labels = np.zeros((6, 6, 12), np.uint32); labels[..., :6] = 1; labels[..., 6:] = 2
    >>> f = fragments_watershed(affinities_from_labels(labels), seed_min_distance=1)
    >>> len(np.unique(f[..., :5])) >= 1 and not set(np.unique(f[..., :5])) & set(np.unique(f[..., 7:]))
    True
    """
    import cc3d
    import edt
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    affs = _check_affs(affs)
    mean = affs.mean(axis=0)
    if mask is not None:
        mean[~mask] = 0.0
    interior = mean > seed_threshold
    size = tuple(float(v) for v in (voxel_size_zyx or (1.0, 1.0, 1.0)))
    depth = edt.edt(interior, anisotropy=size, black_border=False, parallel=1)
    finest = min(size)
    footprint = tuple(2 * max(0, int(round(seed_min_distance * finest / v))) + 1 for v in size)
    peaks = (depth == ndi.maximum_filter(depth, size=footprint, mode="nearest")) & interior
    seeds = cc3d.connected_components(peaks, connectivity=26, out_dtype=np.uint64)
    return watershed(1.0 - mean, seeds, mask=mask).astype(np.uint64)


def fragments_zwatershed(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
) -> np.ndarray:
    """Fragments by waterz's watershed on the affinity graph (zwatershed; Zlateski & Seung 2015).

    Voxels joined by an affinity above ``aff_threshold_high`` form one region, affinities below
    ``aff_threshold_low`` are never followed, and every other voxel joins the region its steepest
    ascent leads to. Exact on binary affinities (it never crosses an affinity-0 face), but on soft
    affinities it makes many small fragments. Voxels nothing joins (a one-voxel object) get an id of
    their own. Returns ``(z, y, x)`` uint64, 0 where ``mask`` is False.
    """
    import waterz

    affs = _masked(_check_affs(affs), mask)
    with _quiet_stdout():
        first = waterz.agglomerate(affs, [0.0], aff_threshold_low=aff_threshold_low,
                                   aff_threshold_high=aff_threshold_high)
        frags = next(first).astype(np.uint64)  # waterz reuses the array it yields
        del first
    if mask is not None:
        frags[~mask] = 0
    orphans = (frags == 0) if mask is None else (mask & (frags == 0))
    if orphans.any():
        frags[orphans] = frags.max() + np.arange(1, int(orphans.sum()) + 1, dtype=np.uint64)
    return frags


def _masked(affs: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A copy of ``affs`` with no edge out of the box (first planes) or into a voxel without data."""
    affs = affs.copy()
    for axis in range(3):
        index = [axis, slice(None), slice(None), slice(None)]
        index[axis + 1] = 0
        affs[tuple(index)] = 0.0
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != affs.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from the affinities' {affs.shape[1:]}")
        affs[:, ~mask] = 0.0
        for axis in range(3):
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis] = slice(None, -1)
            dst[axis] = slice(1, None)
            affs[axis][tuple(dst)] *= mask[tuple(src)]
    return affs


def agglomerate_block(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    scoring: str = "mean",
    fragments: str = "watershed",
    seed_threshold: float = 0.7,
    seed_min_distance: float = 3.0,
    voxel_size_zyx: tuple[float, float, float] | None = None,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
) -> BlockAgglomeration:
    """Cut one block into fragments and agglomerate them completely, recording every merge.

    Parameters
    ----------
    affs
        ``(3, z, y, x)`` float32 affinities of the block's write box (see the module docstring). The
        first plane along each axis holds the affinities to the voxels before the box: the fragments'
        boundary map uses them, the merge tree does not (they lead out of the box).
    mask
        ``(z, y, x)`` bool, False where there is no data (fragments 0 there); None means all data.
    scoring
        ``"mean"`` (waterz's mean affinity) or ``"quantile_N"``: the edge score is one minus that
        statistic of the affinities on the faces two regions share.
    fragments
        ``"watershed"`` (:func:`fragments_watershed`, with ``seed_threshold``, ``seed_min_distance``
        and ``voxel_size_zyx``) or ``"zwatershed"`` (:func:`fragments_zwatershed`, with
        ``aff_threshold_low`` and ``aff_threshold_high``).

    Raises
    ------
    ValueError
        For affinities not of shape (3, z, y, x), a mask of another shape, an unknown method.

    >>> labels = np.zeros((4, 4, 4), np.uint32); labels[:, :2] = 1; labels[:, 2:] = 2
    >>> r = agglomerate_block(affinities_from_labels(labels), fragments="zwatershed")
    >>> r.n, r.a.tolist(), r.b.tolist(), r.score.tolist()
    (2, [], [], [])
    """
    import waterz

    affs = _check_affs(affs)
    if fragments == "watershed":
        frags = fragments_watershed(affs, mask, seed_threshold=seed_threshold,
                                    seed_min_distance=seed_min_distance, voxel_size_zyx=voxel_size_zyx)
    elif fragments == "zwatershed":
        frags = fragments_zwatershed(affs, mask, aff_threshold_low=aff_threshold_low,
                                     aff_threshold_high=aff_threshold_high)
    else:
        raise ValueError(f"unknown fragments method {fragments!r}; choose 'watershed' or 'zwatershed'")
    frags, n = _dense(frags)
    history: list[dict[str, float]] = []
    if n > 1:
        with _quiet_stdout():
            seg, history = next(
                waterz.agglomerate(_masked(affs, mask), [1.0], fragments=frags.astype(np.uint64),
                                   scoring_function=_scoring(scoring), return_merge_history=True)
            )
        del seg
    a, b, score = _tree(history)
    return BlockAgglomeration(frags.astype(np.uint32), n, a, b, score)


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
    affs: np.ndarray, threshold: float, mask: np.ndarray | None = None, *, scoring: str = "mean", **fragments: Any
) -> np.ndarray:
    """Fragments + agglomeration of a whole volume in memory: the reference the chunked run matches.

    ``affs`` ``(3, z, y, x)`` float32; returns ``(z, y, x)`` uint32 labels, 1.. (0 where ``mask`` is
    False). Merges every tree edge whose score is at most ``threshold``; ``fragments`` takes the
    keyword arguments of :func:`agglomerate_block` that choose and tune the fragments.

    >>> labels = np.zeros((3, 4, 4), np.uint32); labels[:, :, :2] = 7; labels[:, :, 2:] = 9
    >>> segment(affinities_from_labels(labels), 0.5, fragments="zwatershed")[0].tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]]
    """
    r = agglomerate_block(affs, mask, scoring=scoring, **fragments)
    keep = r.score <= threshold
    lut = components(r.n, r.a[keep], r.b[keep])
    return lut[r.fragments]
