"""Region adjacency graph kernels, compiled with numba: the edges of a box's fragments in one pass.

:func:`face_pairs_sum` sums, for every ordered pair of labels that two voxels of a box face each
other with, the affinities of those voxel pairs; :func:`box_pairs_sum` does the same for every pair
of 6-neighbours inside one labelled box. Both accumulate into an open-addressing hash table (linear
probing, grown at half full), in the order of the voxels, so each pair's float64 sum adds the same
numbers in the same order as ``numpy.bincount`` over the voxels would: the results are
bit-identical to the numpy formulation they replace (``np.unique`` of the pair keys, then
``np.bincount``), which sorted every boundary voxel pair. The table holds one entry per edge (a
few thousand per block), so it stays in cache while the voxels stream past.

Measured on FIB-25 forest affinities (96 x 160 x 160 voxels, 1,827 fragments): see
docs/agglomeration.md, "Known limits". Compiled on first use (about 2 CPU-s for both) and cached on
disk like :mod:`emseg.pipeline.stitching.flood`'s kernel (same rule: only under the package's name).
"""

from __future__ import annotations

import numpy as np

from emseg.pipeline.stitching.flood import compiled

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
#: numba's disk cache, only under the package's own module name (see emseg.pipeline.stitching.flood)
DISK_CACHE = __name__.startswith("emseg.")


@compiled(DISK_CACHE, nogil=True, inline="always")
def _slot(ka: np.ndarray, kb: np.ndarray, a: np.uint64, b: np.uint64) -> int:  # pragma: no cover - compiled
    mask = np.uint64(ka.size - 1)
    h = ((a * np.uint64(0x9E3779B97F4A7C15)) ^ (b * np.uint64(0xC2B2AE3D27D4EB4F))) >> np.uint64(17)
    s = h & mask
    while ka[s] != _EMPTY and (ka[s] != a or kb[s] != b):
        s = (s + np.uint64(1)) & mask
    return np.int64(s)


@compiled(DISK_CACHE, nogil=True)
def _grow(ka, kb, tot, cnt):  # pragma: no cover - compiled
    cap = ka.size * 2
    na = np.full(cap, _EMPTY, np.uint64)
    nb = np.zeros(cap, np.uint64)
    nt = np.zeros(cap, np.float64)
    nc = np.zeros(cap, np.int64)
    for s in range(ka.size):
        if ka[s] != _EMPTY:
            t = _slot(na, nb, ka[s], kb[s])
            na[t], nb[t], nt[t], nc[t] = ka[s], kb[s], tot[s], cnt[s]
    return na, nb, nt, nc


def _table(expected: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An empty hash table for about ``expected`` pairs: keys (a, b), totals, counts."""
    cap = 1 << max(10, int(2 * max(expected, 1) - 1).bit_length())
    return (np.full(cap, _EMPTY, np.uint64), np.zeros(cap, np.uint64), np.zeros(cap, np.float64),
            np.zeros(cap, np.int64))


@compiled(DISK_CACHE, nogil=True, inline="always")
def _add(ka, kb, tot, cnt, used, a, b, value):  # pragma: no cover - compiled
    """Add ``value`` to pair ``(a, b)``'s total and 1 to its count; the table (grown when half
    full) and its number of used slots come back."""
    s = _slot(ka, kb, a, b)
    if ka[s] == _EMPTY:
        if 2 * (used + 1) > ka.size:
            ka, kb, tot, cnt = _grow(ka, kb, tot, cnt)
            s = _slot(ka, kb, a, b)
        ka[s], kb[s] = a, b
        used += 1
    tot[s] += value
    cnt[s] += 1
    return ka, kb, tot, cnt, used


@compiled(DISK_CACHE, nogil=True)
def _add_pairs(a, b, aff, same_ids_differ, ka, kb, tot, cnt):  # pragma: no cover - compiled
    used = 0
    for i in range(a.size):
        x, y = np.uint64(a[i]), np.uint64(b[i])
        if x == 0 or y == 0 or (x == y and not same_ids_differ):
            continue
        ka, kb, tot, cnt, used = _add(ka, kb, tot, cnt, used, x, y, np.float64(aff[i]))
    return ka, kb, tot, cnt


@compiled(DISK_CACHE, nogil=True)
def _add_box(frags, affs, ka, kb, tot, cnt):  # pragma: no cover - compiled
    nz, ny, nx = frags.shape
    used = 0
    for axis in range(3):
        for z in range(1 if axis == 0 else 0, nz):
            for y in range(1 if axis == 1 else 0, ny):
                for x in range(1 if axis == 2 else 0, nx):
                    p = frags[z, y, x]
                    if axis == 0:
                        q = frags[z - 1, y, x]
                    elif axis == 1:
                        q = frags[z, y - 1, x]
                    else:
                        q = frags[z, y, x - 1]
                    if p == q or p == 0 or q == 0:
                        continue
                    lo, hi = (np.uint64(p), np.uint64(q)) if p < q else (np.uint64(q), np.uint64(p))
                    ka, kb, tot, cnt, used = _add(ka, kb, tot, cnt, used, lo, hi, np.float64(affs[axis, z, y, x]))
    return ka, kb, tot, cnt


def _sorted(ka: np.ndarray, kb: np.ndarray, tot: np.ndarray, cnt: np.ndarray):
    full = ka != _EMPTY
    ka, kb, tot, cnt = ka[full], kb[full], tot[full], cnt[full]
    order = np.lexsort((kb, ka))
    return ka[order], kb[order], tot[order], cnt[order]


def face_pairs_sum(a: np.ndarray, b: np.ndarray, aff: np.ndarray, *, same_ids_differ: bool = False):
    """Sum ``aff`` per ordered label pair ``(a[i], b[i])``, skipping label 0 (and equal labels
    unless ``same_ids_differ``). Any shapes of one size; labels as unsigned or non-negative integers.

    Returns ``(u, v, total, count)``: uint64, uint64, float64, int64 arrays, one entry per distinct
    pair, sorted by ``(u, v)``.

    >>> u, v, t, c = face_pairs_sum(np.array([1, 1, 2, 0]), np.array([3, 3, 3, 3]), np.array([0.5, 1, 1, 1]))
    >>> u.tolist(), v.tolist(), t.tolist(), c.tolist()
    ([1, 2], [3, 3], [1.5, 1.0], [2, 1])
    """
    a, b = np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()
    aff = np.ascontiguousarray(aff).ravel()
    if not (a.size == b.size == aff.size):
        raise ValueError(f"pairs need three arrays of one size, got {a.size}, {b.size}, {aff.size}")
    table = _table(min(a.size, 4096))
    return _sorted(*_add_pairs(a.astype(np.uint64, copy=False), b.astype(np.uint64, copy=False), aff,
                               same_ids_differ, *table))


def box_pairs_sum(frags: np.ndarray, affs: np.ndarray):
    """Every pair of 6-neighbour voxels of different fragments inside a box, summed per fragment pair.

    ``frags`` ``(z, y, x)`` integer labels (0 = none), ``affs`` ``(3, z, y, x)``: ``affs[d]`` at a
    voxel is its affinity with its predecessor along axis ``d``, the value summed for that pair.
    Returns ``(u, v, total, count)`` with ``u < v``, sorted by ``(u, v)``; the first plane along each
    axis (pairs with voxels outside the box) is not used.

    >>> f = np.array([[[1, 1, 2, 2]]]); a = np.zeros((3, 1, 1, 4), np.float32); a[2] = [0, 1, 0.25, 1]
    >>> [x.tolist() for x in box_pairs_sum(f, a)]
    [[1], [2], [0.25], [1]]
    """
    frags = np.ascontiguousarray(frags)
    affs = np.ascontiguousarray(affs)
    if frags.ndim != 3 or affs.shape != (3,) + frags.shape:
        raise ValueError(f"fragments of shape {frags.shape} and affinities of {affs.shape} do not match")
    table = _table(4096)
    return _sorted(*_add_box(frags, affs, *table))
