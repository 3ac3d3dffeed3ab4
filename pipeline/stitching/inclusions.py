"""Inclusions: segments that one neighbour encloses, merged into it after agglomeration.

In a neuropil, an object that is wrapped by a single other object is an organelle (a mitochondrion,
a vesicle cloud, a nucleus) of that object, never a neuron of its own: neurites run on and touch many
neighbours. Mean-affinity agglomeration does not know this, and a forest that sees a mitochondrion's
dark surface as a boundary leaves it a segment of its own (docs/phantom.md, "How the bundled models do
on it"). This module finds such segments on the region graph after agglomeration and returns the
extra merges; it never looks at voxels, so the result is the same for every block shape.

Two rules, on the *segment graph* (segments = fragments joined by the merged edges; two segments are
adjacent where some of their fragments touch; the region of interest's faces and voxels without data
count as one more node, "outside", since what lies beyond them is unknown)::

    inclusions    a set of segments whose every path to "outside" passes through one segment B
                  is merged into B (NeuroProof's inclusion removal, Parag et al. 2015: the
                  biconnected components of the graph that do not hold "outside" merge into their
                  articulation node)
    majority      a segment that shares more than ``fraction`` of its surface (its contacts with
                  other segments plus its faces on "outside") with one neighbour B, whose own surface
                  is larger, is merged into B; repeated until nothing changes (emseg's own rule: it
                  takes the mitochondria that touch the volume's faces, which no inclusion can)

Neither rule merges across faces whose score (1 - their mean affinity) exceeds ``max_score``: a
confident boundary (so binary affinities, the labels oracle, keep every object). Surfaces are
counted in voxel faces (the region graph's ``count``). The defaults of ``agglomeration.enclosed``
(majority 0.5, max_score 0.85) were chosen on FIB-25's training part (docs/agglomeration.md,
"Enclosed segments"). Sources: NeuroProof's ``Stack::remove_inclusions`` (janelia-flyem; Parag et
al. 2015, "A context-aware delayed agglomeration framework for electron microscopy segmentation",
PLoS ONE). Libraries: networkx (biconnected components), scipy (connected components). After these
rules, :mod:`emseg.pipeline.stitching.small` (``agglomeration.small``) merges small segments along
their best contact; :func:`segment` runs all three.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["enclosed_merges", "outside_faces", "segment"]

_OUTSIDE = -1


def _segments(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of nodes ``0..n-1`` joined by edges ``(a, b)``: one id per node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _contacts(seg_u: np.ndarray, seg_v: np.ndarray, count: np.ndarray, m: int, total: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Summed contact ``count`` (and ``total``) per ordered pair of distinct segments (both directions)."""
    apart = seg_u != seg_v
    a = np.r_[seg_u[apart], seg_v[apart]]
    b = np.r_[seg_v[apart], seg_u[apart]]
    c = np.r_[count[apart], count[apart]].astype(np.float64)
    pairs, inverse = np.unique(a * m + b, return_inverse=True)
    inverse = inverse.ravel()
    t = None if total is None else np.bincount(inverse, np.r_[total[apart], total[apart]].astype(np.float64))
    return pairs // m, pairs % m, np.bincount(inverse, c), t


def _inclusions(m: int, pa: np.ndarray, pb: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """For each segment ``0..m-1``, the segment it merges into (itself if none), by the inclusion rule.

    The block-cut tree is walked from "outside": a biconnected component reached through
    articulation node B that does not hold "outside" merges into B, and so do components nested
    deeper, so every segment ends in a segment of a component that holds "outside". Segments not
    connected to "outside" at all are left as they are.
    """
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(m))
    keep = pa < pb
    g.add_edges_from(zip(pa[keep].tolist(), pb[keep].tolist()))
    g.add_edges_from((_OUTSIDE, int(s)) for s in np.flatnonzero(outside > 0).tolist())
    target = np.arange(m)
    if _OUTSIDE not in g:
        return target
    blocks = [sorted(c, key=int) for c in nx.biconnected_components(g)]
    of_node: dict[int, list[int]] = {}
    for i, c in enumerate(blocks):
        for x in c:
            of_node.setdefault(x, []).append(i)
    seen = set(of_node[_OUTSIDE])
    queue = deque((i, None) for i in of_node[_OUTSIDE])
    while queue:
        i, via = queue.popleft()
        for x in blocks[i]:
            if x == via or x == _OUTSIDE:
                continue
            if via is not None:
                target[x] = target[via]  # via was reached first: its target is final already
            for j in of_node[x]:
                if j not in seen:
                    seen.add(j)
                    queue.append((j, x))
    return target


def _unless_confident(target: np.ndarray, seg_u: np.ndarray, seg_v: np.ndarray, count: np.ndarray,
                      total: np.ndarray, max_score: float) -> np.ndarray:
    """``target`` with the inclusions into a segment B undone where the faces between B and the
    segments it takes score above ``max_score`` (1 - their mean affinity): a confident boundary."""
    tu, tv = target[seg_u], target[seg_v]
    m = len(target)
    idx = np.arange(m)
    # faces between an absorbed segment and its encloser itself
    edge = (tu == tv) & (seg_u != seg_v) & (((seg_u == tu) & (seg_v != tv)) | ((seg_v == tv) & (seg_u != tu)))
    c = np.bincount(tu[edge], count[edge], minlength=m)
    t = np.bincount(tu[edge], total[edge], minlength=m)
    confident = (c > 0) & (1.0 - t / np.maximum(c, 1) > max_score)
    return np.where(confident[target], idx, target)


def _majority(target: np.ndarray, seg_u: np.ndarray, seg_v: np.ndarray, count: np.ndarray,
              outside: np.ndarray, fraction: float, total: np.ndarray | None = None,
              max_score: float = 1.0, rounds: int = 100) -> np.ndarray:
    """``target`` after repeatedly merging every segment into the neighbour that holds more than
    ``fraction`` of its surface and has a larger surface itself."""
    m = len(target)
    for _ in range(rounds):
        u, v = target[seg_u], target[seg_v]
        a, b, c, t = _contacts(u, v, count, m, total)
        surface = np.bincount(a, c, minlength=m) + np.bincount(target, outside, minlength=m)
        order = np.lexsort((-c, a))  # per segment, its largest contact first
        first = order[np.r_[True, a[order][1:] != a[order][:-1]]] if len(a) else order
        s, big, shared = a[first], b[first], c[first]
        go = (shared > fraction * surface[s]) & (surface[s] < surface[big])
        if t is not None:
            go &= 1.0 - t[first] / shared <= max_score
        if not go.any():
            break
        step = np.arange(m)
        step[s[go]] = big[go]
        while True:  # chains s -> B -> C end at C (no cycles: surfaces grow along a chain)
            nxt = step[step]
            if np.array_equal(nxt, step):
                break
            step = nxt
        target = step[target]
    return target


def enclosed_merges(
    u: np.ndarray,
    v: np.ndarray,
    count: np.ndarray,
    merged: np.ndarray,
    outside_keys: np.ndarray,
    outside_count: np.ndarray,
    *,
    inclusions: bool = True,
    majority: float | None = None,
    total: np.ndarray | None = None,
    max_score: float = 1.0,
) -> np.ndarray:
    """Extra merges of segments that one neighbour encloses: a bool per edge (True = merge it too).

    Parameters
    ----------
    u, v
        The region graph's edges: fragment ids or global keys (any integers), ``u[i] != v[i]``.
    count
        Voxel faces each edge's two fragments share.
    merged
        Bool per edge: the agglomeration's merges (score <= threshold); segments are their components.
    outside_keys, outside_count
        Fragments that touch the region of interest's faces or voxels without data, with the number
        of their voxel faces there (a fragment may be listed more than once; counts add).
    inclusions
        Apply the inclusion rule (module docstring).
    majority
        Apply the majority rule with this fraction (in [0.5, 1); None = not at all).
    total
        The sum of the affinities across each edge's faces (the region graph's ``total``); None: no
        ``max_score`` guard.
    max_score
        Segments whose shared faces score above this (1 - total / count) do not merge.

    Returns
    -------
    numpy.ndarray
        bool, one per edge: True where the edge joins two segments that the rules put together, and
        ``merged`` is False. Merging ``merged | result`` gives the final segments.

    Raises
    ------
    ValueError
        Arrays of different lengths, ``majority`` outside [0.5, 1).

    >>> # fragment 2 lies inside 1; 1 and 3 touch the volume's faces
    >>> enclosed_merges(np.array([1, 1]), np.array([2, 3]), np.array([10, 5]), np.array([False, False]),
    ...                 np.array([1, 3]), np.array([4, 4])).tolist()
    [True, False]
    """
    u = np.asarray(u)
    v = np.asarray(v)
    merged = np.asarray(merged, bool)
    if not (len(u) == len(v) == len(count) == len(merged)):
        raise ValueError("u, v, count and merged must have one value per edge")
    if majority is not None and not 0.5 <= majority < 1.0:
        raise ValueError(f"majority must be in [0.5, 1), not {majority}")
    out = np.zeros(len(u), bool)
    if not len(u) or not (inclusions or majority is not None):
        return out
    nodes, inverse = np.unique(np.concatenate([u, v, np.asarray(outside_keys, u.dtype)]), return_inverse=True)
    inverse = inverse.ravel()
    iu, iv, io = inverse[:len(u)], inverse[len(u):2 * len(u)], inverse[2 * len(u):]
    seg = _segments(len(nodes), iu[merged], iv[merged])
    m = int(seg.max()) + 1
    seg_u, seg_v = seg[iu], seg[iv]
    outside = np.bincount(seg[io], np.asarray(outside_count, np.float64), minlength=m)
    count = np.asarray(count, np.float64)
    target = np.arange(m)
    total = None if total is None else np.asarray(total, np.float64)
    # the segment graph, once: each pair of touching segments (one direction) with its faces summed;
    # the majority rule's rounds group these pairs, not the region graph's edges (2.4 times faster on
    # a 3 x 3 x 3 neighbourhood of 128³ blocks, 270,000 edges: the same merges)
    apart = seg_u != seg_v
    lo, hi = np.minimum(seg_u[apart], seg_v[apart]), np.maximum(seg_u[apart], seg_v[apart])
    pairs, inverse = np.unique(lo * m + hi, return_inverse=True)
    inverse = inverse.ravel()
    su, sv = pairs // m, pairs % m
    if inclusions:
        target = _inclusions(m, np.r_[su, sv], np.r_[sv, su], outside)
        if total is not None:
            target = _unless_confident(target, seg_u, seg_v, count, total, max_score)
    if majority is not None:
        # outside faces of a merged group: the sum of its members' (bincount over target in _majority)
        target = _majority(target, su, sv, np.bincount(inverse, count[apart]), outside, majority,
                           None if total is None else np.bincount(inverse, total[apart]), max_score)
    return (target[seg_u] == target[seg_v]) & (seg_u != seg_v) & ~merged


def outside_faces(
    labels: np.ndarray,
    open_faces: list[tuple[int, int]],
    beyond: dict[tuple[int, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which fragments of a block touch "outside", and with how many voxel faces.

    ``labels`` ``(z, y, x)`` are a block's fragments on its write box (0 = no data). "Outside" is
    what the region graph cannot see: the region of interest's faces, listed in ``open_faces`` as
    ``(axis, direction)`` (direction -1 the first plane along ``axis``, +1 the last), and voxels
    without data: label 0 inside the box, and, in ``beyond[(axis, direction)]`` (a bool plane, True
    = no data), the voxels just across a face that has a neighbour block. Returns the fragment ids
    (ascending, uint32) and their face counts (int64).

    >>> ids, n = outside_faces(np.array([[[1, 1, 0, 2]]]), [(2, -1)])
    >>> ids.tolist(), n.tolist()
    ([1, 2], [2, 1])
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), not of shape {labels.shape}")
    parts = []
    for axis, direction in open_faces:
        plane = [slice(None)] * 3
        plane[axis] = slice(0, 1) if direction < 0 else slice(labels.shape[axis] - 1, labels.shape[axis])
        parts.append(labels[tuple(plane)].ravel())
    for (axis, direction), empty in (beyond or {}).items():
        plane = [slice(None)] * 3
        plane[axis] = slice(0, 1) if direction < 0 else slice(labels.shape[axis] - 1, labels.shape[axis])
        parts.append(labels[tuple(plane)].ravel()[np.asarray(empty, bool).ravel()])
    for axis in range(3):  # fragments next to a voxel without data inside the box
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis] = slice(1, None)
        lo[axis] = slice(None, -1)
        a, b = labels[tuple(hi)], labels[tuple(lo)]
        parts.append(a[(b == 0) & (a != 0)])
        parts.append(b[(a == 0) & (b != 0)])
    touching = np.concatenate(parts) if parts else np.zeros(0, labels.dtype)
    touching = touching[touching != 0]
    ids, counts = np.unique(touching, return_counts=True)
    return ids.astype(np.uint32), counts.astype(np.int64)


def segment(
    affs: np.ndarray,
    threshold: float,
    mask: np.ndarray | None = None,
    *,
    inclusions: bool = True,
    majority: float | None = 0.5,
    max_score: float = 0.85,
    min_size: int = 0,
    small_max_score: float = 0.8,
    **options: Any,
) -> np.ndarray:
    """:func:`emseg.pipeline.stitching.agglomeration.segment` (the whole volume in memory) followed by
    the enclosed-segment merges and, with ``min_size`` > 0, the small-segment merges
    (:func:`emseg.pipeline.stitching.small.small_merges` with ``small_max_score``): the one-block
    reference of a chunked run with
    ``agglomeration.enclosed`` and ``agglomeration.small``.

    ``affs`` ``(3, z, y, x)``; returns ``(z, y, x)`` uint32 labels 1.. (0 where ``mask`` is False). The
    box's six faces and the voxels without data are "outside"; ``options`` go to
    :func:`emseg.pipeline.stitching.agglomeration.fragments`.
    """
    from emseg.pipeline.stitching.agglomeration import agglomerate, components, fragments, region_graph

    frags, n = fragments(affs, mask, **options)
    graph = region_graph(frags, affs)
    merged = agglomerate(graph) <= threshold
    out_id, out_n = outside_faces(frags, [(a, d) for a in range(3) for d in (-1, 1)])
    merged |= enclosed_merges(graph.u, graph.v, graph.count, merged, out_id, out_n, inclusions=inclusions,
                              majority=majority, total=graph.total, max_score=max_score)
    if min_size > 0:
        from emseg.pipeline.stitching.small import small_merges

        sizes = np.bincount(frags.ravel(), minlength=n + 1)[1:]
        merged |= small_merges(graph.u, graph.v, graph.total, graph.count, merged, np.arange(1, n + 1),
                               sizes, min_size=min_size, max_score=small_max_score)
    lut = components(n, graph.u[merged].astype(np.int64), graph.v[merged].astype(np.int64))
    return lut[frags]
