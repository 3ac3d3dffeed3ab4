"""The mean-affinity merge tree of a region graph, compiled with numba: :func:`merge_levels`.

:func:`emseg.pipeline.stitching.agglomeration.agglomerate` prepares the graph (one edge per
touching pair, sums and counts added) and calls :func:`merge_levels`, which merges regions in order
of the score ``1 - total / count`` and returns the level at which each edge's ends became one
region. The merge order, the tie-breaking (lowest score first, then lowest edge index) and every
float64 sum are those of the pure-Python loop it replaces (kept in ``tests/test_merge_tree.py`` as the
reference it is checked against), so the levels are bit-identical. On the region graph of a 160³
box of FIB-25 forest affinities (3,418 fragments, 21,338 edges with repeats and joins, as stage 2
builds them) :func:`~emseg.pipeline.stitching.agglomeration.agglomerate` took 0.014-0.023 CPU-s
against 0.085-0.130 with the Python loop (6-9 times less; docs/agglomeration.md, "Which library
does what").

Data structures: a binary min-heap of ``(score, edge)`` with lazy deletion (an entry whose score is
no longer the edge's current one is skipped); a hash map ``(region, region) -> edge`` (numba's
typed dict) to find the edge a merged region already has to a neighbour; per region a singly linked
list of ``(neighbour, edge)`` entries, stale ones skipped when read (an entry is live while its edge
is alive and still joins those two regions); and the live degree of each region, which decides
which of two merging regions keeps its id (the one with more neighbours, as in waterz).

Compiled on first use (about 3.8 CPU-s, once per install; an open-addressing table of our own in
place of numba's typed dict compiled in 3.5 and ran no faster, so the typed dict stays) and cached
on disk like
:mod:`emseg.pipeline.stitching.flood`'s kernel.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.typed import Dict

from emseg.pipeline.stitching.flood import compiled

#: numba's disk cache, only under the package's own module name (see emseg.pipeline.stitching.flood)
DISK_CACHE = __name__.startswith("emseg.")


@compiled(DISK_CACHE, nogil=True, inline="always")
def _less(hs: np.ndarray, he: np.ndarray, i: int, j: int) -> bool:  # pragma: no cover - compiled
    return hs[i] < hs[j] or (hs[i] == hs[j] and he[i] < he[j])


@compiled(DISK_CACHE, nogil=True, inline="always")
def _swap(hs: np.ndarray, he: np.ndarray, i: int, j: int) -> None:  # pragma: no cover - compiled
    hs[i], hs[j] = hs[j], hs[i]
    he[i], he[j] = he[j], he[i]


@compiled(DISK_CACHE, nogil=True)
def _push(hs: np.ndarray, he: np.ndarray, size: int, s: float, e: int) -> int:  # pragma: no cover - compiled
    i = size
    hs[i] = s
    he[i] = e
    while i > 0:
        p = (i - 1) >> 1
        if not _less(hs, he, i, p):
            break
        _swap(hs, he, i, p)
        i = p
    return size + 1


@compiled(DISK_CACHE, nogil=True)
def _pop(hs: np.ndarray, he: np.ndarray, size: int) -> int:  # pragma: no cover - compiled
    size -= 1
    hs[0] = hs[size]
    he[0] = he[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        c = left
        if left + 1 < size and _less(hs, he, left + 1, left):
            c = left + 1
        if not _less(hs, he, c, i):
            break
        _swap(hs, he, i, c)
        i = c
    return size


@compiled(DISK_CACHE, nogil=True, inline="always")
def _link(ent_nbr, ent_edge, ent_next, head, degree, used, a, b, e):  # pragma: no cover - compiled
    """Enter edge ``e`` between regions ``a`` and ``b`` in both regions' lists; the next free slot."""
    ent_nbr[used], ent_edge[used], ent_next[used] = b, e, head[a]
    head[a] = used
    ent_nbr[used + 1], ent_edge[used + 1], ent_next[used + 1] = a, e, head[b]
    head[b] = used + 1
    degree[a] += 1
    degree[b] += 1
    return used + 2


@compiled(DISK_CACHE, nogil=True)
def _merge_levels(n, ea, eb, total, count, joined):  # pragma: no cover - compiled
    m = ea.size
    current = np.empty(m, np.float64)
    for e in range(m):
        current[e] = -1.0 if joined[e] else 1.0 - total[e] / count[e]
    alive = np.ones(m, np.bool_)
    popped = np.full(m, np.nan)  # the level at which an edge popped
    forward = np.full(m, -1, np.int64)  # the edge a combined edge was added to
    # the heap holds each edge once, plus one entry per combination (at most m - 1)
    hs = np.empty(2 * m + 1, np.float64)
    he = np.empty(2 * m + 1, np.int64)
    size = 0
    for e in range(m):
        size = _push(hs, he, size, current[e], e)
    edge_of = Dict.empty(key_type=types.int64, value_type=types.int64)
    # per region lists of (neighbour, edge) entries; grown by doubling
    cap = 2 * m + 16
    ent_nbr = np.empty(cap, np.int64)
    ent_edge = np.empty(cap, np.int64)
    ent_next = np.empty(cap, np.int64)
    head = np.full(n, -1, np.int64)
    degree = np.zeros(n, np.int64)
    used = 0
    for e in range(m):
        a, b = ea[e], eb[e]
        edge_of[min(a, b) * n + max(a, b)] = e
        used = _link(ent_nbr, ent_edge, ent_next, head, degree, used, a, b, e)
    level = 0.0
    while size > 0:
        s, e = hs[0], he[0]
        size = _pop(hs, he, size)
        if not alive[e] or s != current[e]:
            continue
        alive[e] = False
        x, y = ea[e], eb[e]
        if degree[x] < degree[y]:
            x, y = y, x  # the region with more neighbours keeps its id
        level = max(level, s)
        popped[e] = level
        del edge_of[min(x, y) * n + max(x, y)]
        degree[x] -= 1
        k = head[y]
        while k != -1:
            z, e2 = ent_nbr[k], ent_edge[k]
            k = ent_next[k]
            if not alive[e2] or not ((ea[e2] == y and eb[e2] == z) or (ea[e2] == z and eb[e2] == y)):
                continue  # a stale entry
            del edge_of[min(y, z) * n + max(y, z)]
            degree[z] -= 1
            key = min(x, z) * n + max(x, z)
            if key not in edge_of:  # the edge moves over to x
                edge_of[key] = e2
                ea[e2], eb[e2] = x, z
                if used + 2 > cap:
                    cap *= 2
                    ent_nbr = np.concatenate((ent_nbr, np.empty(cap - ent_nbr.size, np.int64)))
                    ent_edge = np.concatenate((ent_edge, np.empty(cap - ent_edge.size, np.int64)))
                    ent_next = np.concatenate((ent_next, np.empty(cap - ent_next.size, np.int64)))
                used = _link(ent_nbr, ent_edge, ent_next, head, degree, used, x, z, e2)
                continue
            e1 = edge_of[key]  # x has an edge to z already: both become one
            total[e1] += total[e2]
            count[e1] += count[e2]
            alive[e2] = False
            forward[e2] = e1
            joined[e1] = joined[e1] or joined[e2]
            current[e1] = -1.0 if joined[e1] else 1.0 - total[e1] / count[e1]
            size = _push(hs, he, size, current[e1], e1)
        head[y] = -1
        degree[y] = 0
    out = np.empty(m, np.float64)
    for e in range(m):
        r = e
        while forward[r] != -1:
            r = forward[r]
        out[e] = popped[r]
    return out


def merge_levels(n: int, ends: np.ndarray, total: np.ndarray, count: np.ndarray, joined: np.ndarray) -> np.ndarray:
    """Agglomerate a region graph by mean affinity; the level at which each edge's ends joined.

    ``n`` regions ``0..n-1``; ``ends`` ``(m, 2)`` int: the two regions of each edge (each pair at
    most once, no self-edges); ``total``, ``count`` ``(m,)``: the affinity sum and the number of voxel
    pairs across the shared face; ``joined`` ``(m,)`` bool: edges that merge first, at level 0
    (pieces of one fragment cut by a block face). Repeatedly the edge of lowest score ``1 - total /
    count`` (joined edges: -1; ties: the lower edge index) merges its two regions; the merged
    region's edges to a common neighbour add their sums and counts (and stay joined if either was).
    Returns ``(m,)`` float64: the running maximum of the merge scores, floored at 0, when each edge's
    ends first became one region. The inputs are not changed.

    >>> merge_levels(3, np.array([[0, 1], [1, 2], [0, 2]]), np.array([0.9, 0.6, 0.0]),
    ...              np.array([1.0, 1.0, 1.0]), np.zeros(3, bool)).round(2).tolist()
    [0.1, 0.7, 0.7]
    """
    ends = np.asarray(ends, np.int64).reshape(-1, 2)
    if not len(ends):
        return np.zeros(0, np.float64)
    return _merge_levels(int(n), ends[:, 0].copy(), ends[:, 1].copy(), np.array(total, np.float64),
                         np.array(count, np.float64), np.array(joined, np.bool_))
