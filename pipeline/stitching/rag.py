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
_H1 = np.uint64(0x9E3779B97F4A7C15)  # the slot of pair (a, b): ((a * _H1) ^ (b * _H2)) >> 17, masked
_H2 = np.uint64(0xC2B2AE3D27D4EB4F)
#: numba's disk cache, only under the package's own module name (see emseg.pipeline.stitching.flood)
DISK_CACHE = __name__.startswith("emseg.")


@compiled(DISK_CACHE, nogil=True, inline="always")
def _slot(ka: np.ndarray, kb: np.ndarray, a: np.uint64, b: np.uint64) -> int:  # pragma: no cover - compiled
    mask = np.uint64(ka.size - 1)
    s = ((a * _H1) ^ (b * _H2)) >> np.uint64(17) & mask
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


# The kernels below insert into the table in their own loop, and never rebind its arrays inside
# it. Until 2026-12-01 they grew the table inside the loop (a helper returned the arrays, grown or
# not, on every insert), and numba compiled that loop about 7 times slower: the region graph of a
# 64³ write box of FIB-25 took 11.1 ms against 1.6 ms now (one thread, the same sums bit for bit;
# the loop with the rebinding alone, without the helper, was as slow). Now a kernel stops before an
# insert that would fill the table past half and returns where it stopped; the caller grows the
# table and calls it again from there, so each pair's values are still added in voxel order.


@compiled(DISK_CACHE, nogil=True)
def _add_pairs(a, b, aff, same_ids_differ, ka, kb, tot, cnt, used, start):  # pragma: no cover - compiled
    """Add pairs ``start..`` into the table; returns (used slots, index to resume at or -1 when done)."""
    mask = np.uint64(ka.size - 1)
    for i in range(start, a.size):
        x, y = np.uint64(a[i]), np.uint64(b[i])
        if x == 0 or y == 0 or (x == y and not same_ids_differ):
            continue
        s = ((x * _H1) ^ (y * _H2)) >> np.uint64(17) & mask
        while ka[s] != _EMPTY and (ka[s] != x or kb[s] != y):
            s = (s + np.uint64(1)) & mask
        if ka[s] == _EMPTY:
            if 2 * (used + 1) > ka.size:
                return used, i
            ka[s], kb[s] = x, y
            used += 1
        tot[s] += np.float64(aff[i])
        cnt[s] += 1
    return used, -1


@compiled(DISK_CACHE, nogil=True)
def _add_box(frags, affs, ka, kb, tot, cnt, used, start):  # pragma: no cover - compiled
    """Add the 6-neighbour pairs from position ``start`` (``((axis * nz + z) * ny + y) * nx + x``) on
    into the table; returns (used slots, position to resume at or -1 when done)."""
    nz, ny, nx = frags.shape
    mask = np.uint64(ka.size - 1)
    a0, rest = divmod(start, nz * ny * nx)
    z0, rest = divmod(rest, ny * nx)
    y0, x0 = divmod(rest, nx)
    first = True  # the first row resumes at (z0, y0, x0); every row starts past the axis' first plane
    for axis in range(a0, 3):
        zlo, ylo, xlo = 1 if axis == 0 else 0, 1 if axis == 1 else 0, 1 if axis == 2 else 0
        for z in range(max(z0, zlo) if first else zlo, nz):
            for y in range(max(y0, ylo) if first else ylo, ny):
                for x in range(max(x0, xlo) if first else xlo, nx):
                    first = False
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
                    s = ((lo * _H1) ^ (hi * _H2)) >> np.uint64(17) & mask
                    while ka[s] != _EMPTY and (ka[s] != lo or kb[s] != hi):
                        s = (s + np.uint64(1)) & mask
                    if ka[s] == _EMPTY:
                        if 2 * (used + 1) > ka.size:
                            return used, ((axis * nz + z) * ny + y) * nx + x
                        ka[s], kb[s] = lo, hi
                        used += 1
                    tot[s] += np.float64(affs[axis, z, y, x])
                    cnt[s] += 1
    return used, -1


def _fill(kernel, args: tuple, table: tuple, start: int):
    """Run ``kernel`` over ``args`` into ``table`` from ``start``, growing the table whenever the
    kernel stops; the filled table."""
    used = 0
    while True:
        used, start = kernel(*args, *table, used, start)
        if start < 0:
            return table
        table = _grow(*table)


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
    args = (a.astype(np.uint64, copy=False), b.astype(np.uint64, copy=False), aff, same_ids_differ)
    return _sorted(*_fill(_add_pairs, args, _table(min(a.size, 4096)), 0))


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
    if frags.size == 0:
        return _sorted(*_table(1))
    return _sorted(*_fill(_add_box, (frags, affs), _table(4096), 0))
