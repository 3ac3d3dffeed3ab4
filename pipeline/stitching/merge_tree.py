"""The mean-affinity merge tree of a region graph, compiled with numba: :func:`merge_levels`.

:func:`emseg.pipeline.stitching.agglomeration.agglomerate` prepares the graph (one edge per
touching pair, sums and counts added) and calls :func:`merge_levels`, which merges regions in order
of the score ``1 - total / count`` and returns the level at which each edge's ends became one
region. The merge order, the tie-breaking (lowest score first, then lowest edge index) and every
float64 sum are those of the pure-Python loop it replaces (kept in ``tests/test_merge_tree.py`` as the
reference it is checked against), so the levels are bit-identical. On the region graph of a 160³
box of FIB-25 forest affinities (3,418 fragments, 21,338 edges with repeats and joins, as stage 2
builds them) :func:`~emseg.pipeline.stitching.agglomeration.agglomerate` took 0.014-0.023 CPU-s
against 0.085-0.130 with the Python loop (6-9 times less, with the binary heap and numba's typed
dict it first had; docs/agglomeration.md, "Which library does what").

Data structures: a 4-ary min-heap of ``(score, edge)`` with lazy deletion (an entry whose score is
no longer the edge's current one is skipped); an open-addressing table ``(region, region) -> edge``
(linear probing, Fibonacci hashing, deletion by moving the rest of the probe run back, at most half
full) to find the edge a merged region already has to a neighbour; per region a singly linked list
of ``(neighbour, edge)`` entries, stale ones skipped when read (an entry is live while its edge is
alive and still joins those two regions); and the live degree of each region, which decides which
of two merging regions keeps its id (the one with more neighbours, as in waterz). Any priority
queue pops the same sequence, since ``(score, edge)`` orders the entries totally (two equal
entries are one edge at one score).

The heap and the table replaced a binary heap and numba's typed dict (same levels): on the graph
that blockwise stage 2 agglomerated for an inner 128³ block of a 384³ volume of mirrored FIB-25
forest affinities (its 3 x 3 x 3 neighbourhood, blockwise scope's context then: 51,407 fragments, 269,696 edges, 488,000 heap
entries of which 437,000 go stale) 0.27-0.28 against 0.42 CPU-s; on a 160³ box's region graph
(14,946 edges) 0.0052 against 0.0083. The table alone gave 0.34; an earlier session had found it no
faster on the smaller graph, with the binary heap.

Compiled on first use (about 2.7 CPU-s, once per install; 3.2 with the typed dict) and cached on
disk like :mod:`emseg.pipeline.stitching.flood`'s kernels.
"""

from __future__ import annotations

import numpy as np

from emseg.pipeline.stitching.flood import compiled

#: numba's disk cache, only under the package's own module name (see emseg.pipeline.stitching.flood)
DISK_CACHE = __name__.startswith("emseg.")
_EMPTY = -1  # an empty slot of the pair table


@compiled(DISK_CACHE, nogil=True)
def _push(hs: np.ndarray, he: np.ndarray, size: int, s: float, e: int) -> int:  # pragma: no cover - compiled
    """Add ``(s, e)`` to the 4-ary min-heap of ``size`` entries; its new size."""
    i = size
    while i > 0:
        p = (i - 1) >> 2
        if hs[p] < s or (hs[p] == s and he[p] < e):
            break
        hs[i] = hs[p]
        he[i] = he[p]
        i = p
    hs[i] = s
    he[i] = e
    return size + 1


@compiled(DISK_CACHE, nogil=True)
def _pop(hs: np.ndarray, he: np.ndarray, size: int) -> int:  # pragma: no cover - compiled
    """Remove the heap's least entry (read it at index 0 first); its new size."""
    size -= 1
    s, e = hs[size], he[size]
    i = 0
    while True:
        c = 4 * i + 1
        if c >= size:
            break
        best, bs, be = c, hs[c], he[c]
        for k in range(c + 1, min(c + 4, size)):
            if hs[k] < bs or (hs[k] == bs and he[k] < be):
                best, bs, be = k, hs[k], he[k]
        if not (bs < s or (bs == s and be < e)):
            break
        hs[i] = bs
        he[i] = be
        i = best
    hs[i] = s
    he[i] = e
    return size


@compiled(DISK_CACHE, nogil=True, inline="always")
def _home(key: int, shift: int) -> int:  # pragma: no cover - compiled
    return np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift))


@compiled(DISK_CACHE, nogil=True, inline="always")
def _find(keys: np.ndarray, key: int, shift: int) -> int:  # pragma: no cover - compiled
    """The slot of ``key`` in the table, or ``-1 - slot`` of the empty slot where it would go."""
    mask = keys.size - 1
    i = _home(key, shift)
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == _EMPTY:
            return -1 - i
        i = (i + 1) & mask


@compiled(DISK_CACHE, nogil=True, inline="always")
def _delete(keys: np.ndarray, values: np.ndarray, i: int, shift: int) -> None:  # pragma: no cover - compiled
    """Empty slot ``i``, moving later keys of its probe run back so that no search stops short."""
    mask = keys.size - 1
    j = i
    while True:
        j = (j + 1) & mask
        k = keys[j]
        if k == _EMPTY:
            break
        h = _home(k, shift)
        if (i <= j and (h <= i or h > j)) or (i > j and h <= i and h > j):  # its home is not in (i, j]
            keys[i] = k
            values[i] = values[j]
            i = j
    keys[i] = _EMPTY


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
    # the pair table (region, region) -> edge: open addressing, at most half full
    bits = 1
    while (1 << bits) < 2 * m + 2:
        bits += 1
    shift = 64 - bits
    pair_key = np.full(1 << bits, _EMPTY, np.int64)
    pair_edge = np.empty(1 << bits, np.int64)
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
        slot = -1 - _find(pair_key, min(a, b) * n + max(a, b), shift)
        pair_key[slot], pair_edge[slot] = min(a, b) * n + max(a, b), e
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
        _delete(pair_key, pair_edge, _find(pair_key, min(x, y) * n + max(x, y), shift), shift)
        degree[x] -= 1
        k = head[y]
        while k != -1:
            z, e2 = ent_nbr[k], ent_edge[k]
            k = ent_next[k]
            if not alive[e2] or not ((ea[e2] == y and eb[e2] == z) or (ea[e2] == z and eb[e2] == y)):
                continue  # a stale entry
            _delete(pair_key, pair_edge, _find(pair_key, min(y, z) * n + max(y, z), shift), shift)
            degree[z] -= 1
            key = min(x, z) * n + max(x, z)
            slot = _find(pair_key, key, shift)
            if slot < 0:  # the edge moves over to x
                pair_key[-1 - slot], pair_edge[-1 - slot] = key, e2
                ea[e2], eb[e2] = x, z
                if used + 2 > cap:
                    cap *= 2
                    ent_nbr = np.concatenate((ent_nbr, np.empty(cap - ent_nbr.size, np.int64)))
                    ent_edge = np.concatenate((ent_edge, np.empty(cap - ent_edge.size, np.int64)))
                    ent_next = np.concatenate((ent_next, np.empty(cap - ent_next.size, np.int64)))
                used = _link(ent_nbr, ent_edge, ent_next, head, degree, used, x, z, e2)
                continue
            e1 = pair_edge[slot]  # x has an edge to z already: both become one
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
