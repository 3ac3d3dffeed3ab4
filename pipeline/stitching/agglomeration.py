"""Fragments and agglomeration on affinities: the stitching of boundary backends.

Affinities follow the waterz / MALA convention, shape ``(3, z, y, x)`` float32 in [0, 1]::

    affs[0][z, y, x]   affinity of voxel (z, y, x) with (z-1, y, x)
    affs[1][z, y, x]   ...                          with (z, y-1, x)
    affs[2][z, y, x]   ...                          with (z, y, x-1)

1 means "the same object". Per block (axis order z, y, x)::

      affinities on the write box ──▶ fragments (:func:`fragments`: seeded watershed, or zwatershed)
                                              │
                                              ▼
      region graph: touching fragments with the sum and count of the affinities across their faces
      (:func:`region_graph`), and the same across each block face (:func:`face_graph`)
                                              │
                                              ▼
      agglomeration of the region graph by mean affinity (:func:`agglomerate`): every edge gets the
      score at which its two ends join; union-find over the edges with score <= threshold

Only the write box is cut into fragments, so fragment ids are unique per block without coordination
(``block << 32 | local``). The stages run these kernels per block (``emseg.tasks.stage1_segment``,
``emseg.tasks.stage2_seams``) and agglomerate either the whole graph at once
(``emseg.tasks.stage3_unionfind.agglomerate_all``) or each 2 x 2 x 2 group of blocks with the group
and one block around it as context (``emseg.tasks.stage2_seams.group_scores``; ``agglomeration.scope``);
:func:`segment` is the whole-volume reference. docs/agglomeration.md has the measurements.

Libraries: edt and cc3d make the seeded-watershed fragments' seeds, and a numba-compiled flood
(:mod:`emseg.pipeline.stitching.flood`) grows them; waterz (Funke et al. 2019,
"Large scale image segmentation with structured loss based deep learning for connectome
reconstruction", IEEE TPAMI) makes zwatershed fragments, and its mean-affinity agglomeration is the
algorithm :func:`agglomerate` runs on a region graph assembled from blocks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

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


def _check_affs(affs: np.ndarray, contiguous: bool = True) -> np.ndarray:
    """``affs`` as float32 ``(3, z, y, x)``: C-contiguous (a copy if need be) unless ``contiguous`` is
    False, which keeps a view of a larger box as it is."""
    affs = np.asarray(affs)
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise ValueError(f"affinities must have shape (3, z, y, x), not {affs.shape}")
    return np.ascontiguousarray(affs, dtype=np.float32) if contiguous else affs.astype(np.float32, copy=False)


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
    excluded). Returns ``(z, y, x)`` uint32 fragment ids, 0 where ``mask`` is False.

    Libraries: ``edt`` (distance transform, anisotropic), ``cc3d`` (seed labels); the watershed is
    :func:`emseg.pipeline.stitching.flood.seeded_watershed` (scikit-image's flooding, compiled with
    numba, about 7 times faster per voxel it floods before it prefetched, more since:
    docs/agglomeration.md, "Known limits"). Unlike :func:`fragments_zwatershed` it tolerates soft, badly calibrated affinities
    (a forest's probabilities), but a fragment may cross a boundary where no seed lies on one side.

    >>> labels = np.zeros((6, 6, 12), np.uint32); labels[..., :6] = 1; labels[..., 6:] = 2
    >>> f = fragments_watershed(affinities_from_labels(labels), seed_min_distance=1)
    >>> len(np.unique(f[..., :5])) >= 1 and not set(np.unique(f[..., :5])) & set(np.unique(f[..., 7:]))
    True
    """
    import cc3d
    import edt
    from scipy import ndimage as ndi

    from emseg.pipeline.stitching.flood import seeded_watershed

    affs = _check_affs(affs, contiguous=False)  # a block's context box is a view: no copy for the mean
    mean = affs.mean(axis=0)
    if mask is not None:
        mean[~mask] = 0.0
    interior = mean > seed_threshold
    size = tuple(float(v) for v in (voxel_size_zyx or (1.0, 1.0, 1.0)))
    # a uint8 view of the mask: the same distances as from the bool array, and 20-25 % faster with
    # edt 3.1 (0.16 against 0.20 CPU-s on a 160³ box of FIB-25, any anisotropy; measured)
    depth = edt.edt(interior.view(np.uint8), anisotropy=size, black_border=False, parallel=1)
    finest = min(size)
    footprint = tuple(2 * max(0, int(round(seed_min_distance * finest / v))) + 1 for v in size)
    peaks = (depth == ndi.maximum_filter(depth, size=footprint, mode="nearest")) & interior
    # uint32 seeds and labels (a box holds fewer than 2**31 voxels): half the memory of uint64, and
    # a 160³ box's arrays can then stay below glibc's mmap threshold (at most 32 MB) instead of being
    # mapped and page-faulted anew for every block
    seeds = cc3d.connected_components(peaks, connectivity=26, out_dtype=np.uint32)
    return seeded_watershed(np.subtract(1.0, mean, out=mean), seeds, mask)


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


def _dense(fragments: np.ndarray) -> tuple[np.ndarray, int]:
    import fastremap

    out, remap = fastremap.renumber(fragments, start=1, preserve_zero=True, in_place=True)
    return out, len(remap) - (1 if 0 in remap else 0)


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


def fragments(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    method: str = "watershed",
    seed_threshold: float = 0.7,
    seed_min_distance: float = 3.0,
    voxel_size_zyx: tuple[float, float, float] | None = None,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
) -> tuple[np.ndarray, int]:
    """Cut a box into fragments: ``(z, y, x)`` uint32 ids ``1..n`` (0 where ``mask`` is False), and n.

    ``method`` is ``"watershed"`` (:func:`fragments_watershed`, with ``seed_threshold``,
    ``seed_min_distance`` and ``voxel_size_zyx``) or ``"zwatershed"`` (:func:`fragments_zwatershed`,
    with ``aff_threshold_low`` and ``aff_threshold_high``).

    Raises
    ------
    ValueError
        Affinities not of shape (3, z, y, x), a mask of another shape, an unknown method.
    """
    if method == "watershed":
        frags = fragments_watershed(affs, mask, seed_threshold=seed_threshold,
                                    seed_min_distance=seed_min_distance, voxel_size_zyx=voxel_size_zyx)
    elif method == "zwatershed":
        frags = fragments_zwatershed(affs, mask, aff_threshold_low=aff_threshold_low,
                                     aff_threshold_high=aff_threshold_high)
    else:
        raise ValueError(f"unknown fragments method {method!r}; choose 'watershed' or 'zwatershed'")
    frags, n = _dense(frags)
    return frags.astype(np.uint32, copy=False), n


@dataclass(frozen=True)
class BlockFragments:
    """A block's fragments on its write box (:func:`block_fragments`).

    ``labels``: ``(z, y, x)`` uint32 ids ``1..n`` on the write box (0 where there is no data);
    ``n``: their number; ``continues``: for each ``(axis, direction)`` (direction -1: the write box's
    first plane along ``axis``, +1: its last), a bool plane that is True where the voxel's fragment
    goes on across the block face, i.e. the voxel and its neighbour just outside the write box lie
    in one fragment of the block's context cut (False where the context has no such voxel).
    """

    labels: np.ndarray
    n: int
    continues: dict[tuple[int, int], np.ndarray]


def block_fragments(
    affs: np.ndarray,
    write: tuple[slice, slice, slice],
    mask: np.ndarray | None = None,
    *,
    context: int = 8,
    **options: Any,
) -> BlockFragments:
    """Fragments of one block's write box, cut with ``context`` voxels of the affinities around it.

    ``affs`` ``(3, z, y, x)`` cover the block's read box; ``write`` slices its write box out of
    them; ``mask`` (read box, or None) is False where there is no data. The box cut into fragments is
    the write box grown by ``context`` voxels on each side, clipped to ``affs``; its fragments
    (:func:`fragments` with ``options``) are cropped to the write box and renumbered. Seeds and
    watershed basins near a block face then see both sides of it, so the write box's fragments are
    the whole volume's cut at the face (measured on FIB-25 with the bundled forest: docs/agglomeration.md),
    and :attr:`BlockFragments.continues` tells which face voxels belong to a fragment that the face
    cut, which :func:`face_graph` turns into ``join`` edges.

    Raises
    ------
    ValueError
        ``context`` < 0, a write box outside ``affs``, and the errors of :func:`fragments`.
    """
    affs = _check_affs(affs)
    if context < 0:
        raise ValueError(f"context must be >= 0 voxels, not {context}")
    shape = affs.shape[1:]
    if any(w.start < 0 or w.stop > n or w.start >= w.stop for w, n in zip(write, shape)):
        raise ValueError(f"write box {write} is not inside the affinities' box {shape}")
    box = tuple(slice(max(0, w.start - context), min(n, w.stop + context)) for w, n in zip(write, shape))
    cut, _ = fragments(affs[(slice(None), *box)], None if mask is None else mask[box], **options)
    inner = tuple(slice(w.start - b.start, w.stop - b.start) for w, b in zip(write, box))
    labels, n = _dense(cut[inner].copy())  # a copy: renumbering works in place
    continues = {}
    for axis in range(3):
        for direction in (-1, 1):
            face = list(inner)
            face[axis] = slice(inner[axis].start, inner[axis].start + 1) if direction < 0 else \
                slice(inner[axis].stop - 1, inner[axis].stop)
            beyond = list(face)
            step = face[axis].start + direction
            if 0 <= step < cut.shape[axis]:
                beyond[axis] = slice(step, step + 1)
                here = cut[tuple(face)]
                continues[(axis, direction)] = (here == cut[tuple(beyond)]) & (here > 0)
            else:
                continues[(axis, direction)] = np.zeros(cut[tuple(face)].shape, bool)
    return BlockFragments(labels.astype(np.uint32, copy=False), n, continues)


@dataclass(frozen=True)
class Graph:
    """Region adjacency edges with the affinity statistics the mean-affinity score needs.

    ``u``, ``v``: node ids (fragment ids or global keys), ``u != v``; ``total``: the sum of the
    affinities of the voxel pairs across the shared face (float64); ``count``: their number. The
    edge's score is ``1 - total / count``. ``join`` (bool per edge, or None for all False) marks
    the seam edges between two pieces of one fragment that a block face cut (:func:`face_graph`):
    :func:`agglomerate` merges them before any other edge, so the pieces act as the fragment the
    whole volume would have.
    """

    u: np.ndarray
    v: np.ndarray
    total: np.ndarray
    count: np.ndarray
    join: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.u)

    @property
    def score(self) -> np.ndarray:
        return (1.0 - self.total / np.maximum(self.count, 1)).astype(np.float32)

    @property
    def joins(self) -> np.ndarray:
        """``join`` as a bool array of one value per edge (all False when None)."""
        return np.zeros(len(self), bool) if self.join is None else np.asarray(self.join, bool)

    @classmethod
    def concat(cls, parts: list[Graph]) -> Graph:
        if not parts:
            return _pairs(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0))
        fields = [np.concatenate([getattr(p, f) for p in parts]) for f in ("u", "v", "total", "count")]
        join = np.concatenate([p.joins for p in parts]) if any(p.join is not None for p in parts) else None
        return cls(*fields, join=join)


def _pairs(a: np.ndarray, b: np.ndarray, aff: np.ndarray, *, same_ids_differ: bool = False) -> Graph:
    """Sum the affinities of voxel pairs ``(a[i], b[i])`` per ordered label pair; 0 is no label.

    With ``same_ids_differ`` the two sides are id spaces of their own (two blocks' fragments), so a
    pair of equal ids is an edge too. The sums are :func:`emseg.pipeline.stitching.rag.face_pairs_sum`'s.
    """
    from emseg.pipeline.stitching.rag import face_pairs_sum

    return Graph(*face_pairs_sum(a, b, aff, same_ids_differ=same_ids_differ))


def region_graph(frags: np.ndarray, affs: np.ndarray) -> Graph:
    """Every pair of touching fragments inside a box, with the affinities across their shared faces.

    ``frags`` ``(z, y, x)`` (0 = no fragment), ``affs`` ``(3, z, y, x)``. Pairs are ordered
    ``u < v``; the first plane along each axis (affinities to voxels outside the box) is not used.

    >>> f = np.array([[[1, 1, 2, 2]]]); a = np.zeros((3, 1, 1, 4), np.float32); a[2] = [0, 1, 0.25, 1]
    >>> g = region_graph(f, a)
    >>> g.u.tolist(), g.v.tolist(), g.total.tolist(), g.count.tolist()
    ([1], [2], [0.25], [1])
    """
    from emseg.pipeline.stitching.rag import box_pairs_sum

    affs = _check_affs(affs)
    if frags.shape != affs.shape[1:]:
        raise ValueError(f"fragments of shape {frags.shape} and affinities of {affs.shape} do not match")
    return Graph(*box_pairs_sum(frags, affs))


def face_graph(mine: np.ndarray, theirs: np.ndarray, affs: np.ndarray, joined: np.ndarray | None = None) -> Graph:
    """Edges between the fragments that face each other across a block face.

    ``mine`` holds one block's fragments on its last write-box plane along an axis, ``theirs`` the
    next block's fragments on its first plane, and ``affs`` the affinities between those voxel pairs
    (the next block's affinity channel of that axis, on its first plane); all of one shape. ``u``
    are ids of ``mine``, ``v`` of ``theirs``. ``joined`` (bool, same shape) marks the voxel pairs
    that both blocks put in one fragment (:attr:`BlockFragments.continues` of both sides); an edge
    with at least one such pair is a ``join`` edge (see :class:`Graph`).

    >>> g = face_graph(np.array([[1, 1, 2]]), np.array([[5, 5, 5]]), np.array([[1.0, 0.5, 0.0]]))
    >>> g.u.tolist(), g.v.tolist(), g.count.tolist(), g.score.tolist()
    ([1, 2], [5, 5], [2, 1], [0.25, 1.0])
    >>> face_graph(np.array([[1, 1, 2]]), np.array([[5, 5, 5]]), np.array([[1.0, 0.5, 0.0]]),
    ...            joined=np.array([[True, False, False]])).join.tolist()
    [True, False]
    """
    if not (mine.shape == theirs.shape == affs.shape):
        raise ValueError(f"face shapes differ: {mine.shape}, {theirs.shape}, {affs.shape}")
    graph = _pairs(mine, theirs, affs, same_ids_differ=True)
    if joined is None:
        return graph
    joined = np.asarray(joined, bool)
    if joined.shape != mine.shape:
        raise ValueError(f"joined of shape {joined.shape} differs from the face's {mine.shape}")
    hit = _pairs(mine[joined], theirs[joined], np.zeros(int(joined.sum())), same_ids_differ=True)
    keys = (graph.u.astype(np.uint64) << np.uint64(32)) | graph.v.astype(np.uint64)
    hits = (hit.u.astype(np.uint64) << np.uint64(32)) | hit.v.astype(np.uint64)
    if len(graph) and max(int(graph.u.max()), int(graph.v.max())) >= 1 << 32:
        raise ValueError("face_graph with joined takes block-local fragment ids (below 2**32)")
    return Graph(graph.u, graph.v, graph.total, graph.count, join=np.isin(keys, hits))


def agglomerate(graph: Graph) -> np.ndarray:
    """Hierarchical agglomeration by mean affinity: the score at which each edge's ends join.

    Regions start as the graph's nodes. Repeatedly, the two adjacent regions with the lowest score
    ``1 - mean affinity over all voxel pairs across their shared faces`` merge, and their edges to a
    common neighbour combine (sums and counts add), until one region per connected component is
    left; this is waterz's ``OneMinus<MeanAffinity>`` agglomeration (Funke et al. 2019) on a region
    graph. Returns float32, one value per edge of ``graph``: the running maximum of the merge scores
    when the edge's two ends first became one region, so that merging every edge with value ``<= t``
    gives the agglomeration stopped at threshold ``t``. Duplicate edges (one pair listed twice)
    are combined first.

    ``join`` edges (:class:`Graph`; two pieces of one fragment cut by a block face) merge before
    every other edge and get the value 0; an edge combined with a join edge becomes one. Their
    affinity statistics add to the joined region's edges like any other, so a fragment cut into
    pieces is agglomerated as the whole fragment would be.

    >>> g = Graph(np.array([1, 2, 1]), np.array([2, 3, 3]), np.array([0.9, 0.6, 0.0]), np.array([1, 1, 1]))
    >>> [round(float(s), 2) for s in agglomerate(g)]  # 1-2 at 0.1; then {1,2}-3 has mean (0.6+0)/2
    [0.1, 0.7, 0.7]
    """
    from emseg.pipeline.stitching.merge_tree import merge_levels

    m = len(graph)
    out = np.ones(m, np.float32)
    if not m:
        return out
    nodes, inverse = np.unique(np.concatenate([graph.u, graph.v]), return_inverse=True)
    inverse = inverse.ravel()
    iu, iv = inverse[:m], inverse[m:]
    n = len(nodes)
    lo, hi = np.minimum(iu, iv).astype(np.int64), np.maximum(iu, iv).astype(np.int64)
    uniq, einv = np.unique(lo * n + hi, return_inverse=True)
    einv = einv.ravel()
    total = np.bincount(einv, graph.total.astype(np.float64))
    count = np.bincount(einv, graph.count.astype(np.float64))
    joined = np.bincount(einv, graph.joins.astype(np.float64), minlength=len(uniq)) > 0
    levels = merge_levels(n, np.stack([uniq // n, uniq % n], axis=1), total, count, joined)
    return np.minimum(levels[einv].astype(np.float32), np.float32(1.0))


def segment(
    affs: np.ndarray, threshold: float, mask: np.ndarray | None = None, **options: Any
) -> np.ndarray:
    """Fragments + agglomeration of a whole volume in memory: the one-block reference of a chunked run.

    ``affs`` ``(3, z, y, x)`` float32; returns ``(z, y, x)`` uint32 labels, 1.. (0 where ``mask`` is
    False). Merges every edge whose agglomeration score is at most ``threshold``; ``options`` are
    the keyword arguments of :func:`fragments`.

    >>> labels = np.zeros((3, 4, 4), np.uint32); labels[:, :, :2] = 7; labels[:, :, 2:] = 9
    >>> segment(affinities_from_labels(labels), 0.5, method="zwatershed")[0].tolist()
    [[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]]
    """
    frags, n = fragments(affs, mask, **options)
    graph = region_graph(frags, affs)
    keep = agglomerate(graph) <= threshold
    lut = components(n, graph.u[keep].astype(np.int64), graph.v[keep].astype(np.int64))
    return lut[frags]
