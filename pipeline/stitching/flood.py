"""A seeded watershed by priority flooding, compiled with numba: the fragments' watershed.

:func:`seeded_watershed` grows seed labels over a cost map (z, y, x) in the order of the cost, the
way scikit-image's ``skimage.segmentation.watershed`` does with its default 6-connectivity (Meyer's
flooding: Beucher & Meyer 1993): the voxel popped next is the one of lowest cost among those
reached, ties first come first served, and a voxel takes the label of the voxel that reached it.
The queue is a bucket queue over the cost quantised to 65,536 levels (uint16), so a flood costs a
fixed amount per voxel instead of a heap's log n. Each voxel enters the queue at most once and at
its own level, so a counting sort of the levels sizes every bucket in advance: a bucket is a FIFO in
one segment of a single array, and pushes and pops walk it in order (a linked list through the
voxels, which it replaced, wrote and read a random voxel's entry for every push and pop: 1.5-2 times
slower with the same labels; docs/agglomeration.md, "Known limits").

The flood's time goes to reading the neighbourhoods of voxels all over the box, in cost order, so
its cost per voxel is set by how much of the box stays in the processor's caches. Each voxel is
therefore one word, its label above the low 16 bits and its level in them: a neighbour's label and
level are one read. A box with fewer than 65,535 seed labels (every block's box in practice: 3,220
in a 160³ box of FIB-25) takes uint32 words, 4 bytes per voxel instead of the 6 of the separate
uint32 labels and uint16 levels this replaced; a box with more takes uint64 words (32-bit labels;
still faster than the separate arrays: 0.32-0.36 against 0.58-0.61 CPU-s for the whole call on the
box below in one run, where an earlier session, with the linked-list queue, had found a 64-bit word
no faster). The same labels as before (compared on FIB-25 boxes; ``tests/test_flood.py`` checks both
widths against Meyer's flooding in Python, ties included); on a 160³ box of FIB-25 forest
affinities, old and new side by side in each of several runs (load about 1; the machine varied by up
to 30 % between runs), the kernel took 0.22-0.27 against 0.48-0.55 CPU-s and the whole call
0.20-0.30 against 0.38-0.61. The words are packed (quantising the cost as numpy's
``rint(clip(cost, 0, 1) * 65535)`` does, in the cost's precision) and unpacked by two more compiled
passes, instead of numpy's eight over the box: 0.20-0.27 against 0.26-0.29 CPU-s for the whole call
on that box in one run.

The flood pops voxels from all over the box, so each pop waits for its voxel's cache line and then
for those of its neighbours one row and one plane away. A few pops ahead (:data:`_AHEAD`) it asks
the processor for those five lines (``llvm.prefetch``, a hint that changes no value), and the wait
overlaps the pops in between. Side by side on FIB-25 forest affinities (2-core AMD EPYC, two
rounds, CPU-s per Mvoxel of box, the same labels): 0.046-0.067 against 0.041-0.050 on a 160³ box,
0.095-0.106 against 0.064-0.077 on 288³; bigger boxes gain more, as less of them stays in the
caches. Prefetching only that voxel, without its neighbours, gained nothing, and looking 4 to 12
pops ahead measured the same. A layout of 4 x 4 x 4 bricks, which keeps a voxel's neighbours in fewer cache lines,
was again no faster (same labels).

Why not a library: on forest affinities of FIB-25 (80 x 128 x 128 voxels, ``time.process_time``)
scikit-image's watershed took 0.46-0.85 CPU-s per Mvoxel, mahotas' ``cwatershed`` the same, higra's
seeded watershed 1.2 and mwatershed's seeded mutex watershed grew faster than linearly with the
seed count; scipy's ``watershed_ift`` gives wrong labels on plateaus. This flood took 0.18-0.2
(2.8-3.5 times less than scikit-image's on the same boxes at a load average of 1; with the sized
buckets, 0.07-0.11 on a 96 x 160 x 160 box) and gave
the same segmentation as scikit-image's after agglomeration (VOI and adapted Rand equal to three
decimals on FIB-25 z >= 170 and z < 150; docs/agglomeration.md). Fewer levels (256, or a flood
that never goes back to a lower level) changed the fragments enough to change the agglomeration;
16,384 or 4,096 levels were at most 13 % faster on the 160³ box and labelled 15-22 % of its voxels
otherwise.

The kernels are compiled on first use (about 1.6 CPU-s for the flood on uint32 words with its packing) and
cached on disk by numba (``cache=True``, in ``__pycache__`` beside this file or numba's user cache
directory), so later processes, Dask workers included, load them instead of compiling them: about
0.5 CPU-s for a process's first numba
kernel (most of it numba importing cffi's C parser), milliseconds for the others. The cache is used
only when this module is imported as ``emseg.pipeline.stitching.flood`` (:data:`DISK_CACHE`): numba names a cache after the source file
but records the module's name in it, and a cache written while the file ran as another module
(``python -m doctest flood.py``) made every later load fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: levels of the bucket queue; costs in [0, 1] are quantised to them
LEVELS = 65536
#: numba's disk cache, only under the package's own module name (see the module's docstring)
DISK_CACHE = __name__.startswith("emseg.")


def compiled(cache: bool, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)``, with numba's disk cache when ``cache`` is True and numba finds a
    writable place for it (beside the source or in the user's cache directory); without one (a
    read-only install and home), the function is compiled in each process instead of failing."""

    def wrap(fn: Callable[..., Any]) -> Any:
        if cache:
            try:
                return njit(cache=True, **options)(fn)
            except RuntimeError:  # numba: "no locator available" for the cache
                pass
        return njit(**options)(fn)

    return wrap


@intrinsic
def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    """``_prefetch(a, i)`` in a compiled function: ask the processor to bring ``a[i]``'s cache line
    in (LLVM's ``llvm.prefetch``: a read, kept in all cache levels). A hint only: it changes no value,
    and an index outside ``a`` is never read (a prefetch does not fault)."""
    from llvmlite import ir

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False, boundscheck=False)
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [byte], ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(ptr, byte), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(array, index), codegen


_GROUP = 8  # log2 of the levels per group: the queue skips groups with nothing queued
#: how many queue entries ahead of the one popped the flood prefetches its voxel and four of its
#: neighbours (4-12 measured about equal; the module's docstring)
_AHEAD = 6
#: the label of the padding around the box and of voxels outside the mask, never flooded: in a
#: uint32 word (16-bit labels) and in a uint64 word (32-bit labels)
_WALL_16 = 0xFFFF
_WALL_32 = 0xFFFFFFFF
_LOW = np.uint64(0xFFFF)  # a word's level


@compiled(DISK_CACHE, nogil=True)
def _flood(word: np.ndarray, wall: int, row: int, plane: int) -> None:  # pragma: no cover - compiled
    # ``word`` is the box padded by one voxel on every side, raveled: per voxel its label above the
    # low 16 bits (0: not reached yet; ``wall``: the padding and the voxels outside the mask, so a
    # neighbour needs no bounds check) and its level in them. A word > 0xFFFF is labelled or a wall.
    # The queue (the module's docstring): a counting sort of the levels gives every level a segment
    # of ``queue`` of the right size, a FIFO inside it (``rd`` pops, ``wr`` appends).
    n = word.size
    wall = np.uint64(wall)
    count = np.zeros(LEVELS + 1, np.int64)
    for i in range(n):
        if np.uint64(word[i]) >> np.uint64(16) != wall:
            count[np.int64(word[i] & _LOW) + 1] += 1
    start = np.cumsum(count)
    rd = start[:LEVELS].copy()
    wr = start[:LEVELS].copy()
    queue = np.empty(max(1, start[LEVELS]), np.int32)
    queued = np.zeros((LEVELS >> _GROUP) + 1, np.int64)
    for i in range(n):
        lab = np.uint64(word[i]) >> np.uint64(16)
        if lab != 0 and lab != wall:
            lv = np.int64(word[i] & _LOW)
            queued[lv >> _GROUP] += 1
            queue[wr[lv]] = i
            wr[lv] += 1
    step = np.array([-plane, -row, -1, 1, row, plane], np.int64)
    cur = 0
    while cur < LEVELS:
        if queued[cur >> _GROUP] == 0:
            cur = ((cur >> _GROUP) + 1) << _GROUP
            continue
        r = rd[cur]
        if r == wr[cur]:
            cur += 1
            continue
        if r + _AHEAD < wr[cur]:  # the voxel popped a few pops from now, and its far neighbours
            a = np.int64(queue[r + _AHEAD])
            _prefetch(word, a)
            _prefetch(word, a - row)
            _prefetch(word, a + row)
            _prefetch(word, a - plane)
            _prefetch(word, a + plane)
        i = queue[r]
        rd[cur] = r + 1
        queued[cur >> _GROUP] -= 1
        label = np.uint64(word[i]) & ~_LOW
        for k in range(6):
            j = i + step[k]
            w = np.uint64(word[j])
            if w > _LOW:  # labelled, or a wall
                continue
            word[j] = label | w
            lv = np.int64(w)
            if lv < cur:
                cur = lv  # as a heap would: a lower cost pops next
            queued[lv >> _GROUP] += 1
            queue[wr[lv]] = j
            wr[lv] += 1


@compiled(DISK_CACHE, nogil=True)
def _pack(cost: np.ndarray, seeds: np.ndarray, mask: np.ndarray, top: float, wall: int,
          word: np.ndarray) -> None:  # pragma: no cover - compiled
    # word[1:-1, 1:-1, 1:-1] = seed << 16 | level, or the wall outside the mask (``mask`` of size 0:
    # no mask); the padding is already the wall. The level is numpy's rint(clip(cost, 0, 1) * top)
    # in the cost's precision (``top``: LEVELS - 1 of the cost's type; NaN: level 0).
    nz, ny, nx = cost.shape
    walled = np.uint64(wall) << np.uint64(16)
    masked = mask.size > 0
    zero, one = top - top, top / top  # in the cost's type: a float64 constant would round differently
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if masked and not mask[z, y, x]:
                    word[z + 1, y + 1, x + 1] = walled
                    continue
                c = cost[z, y, x]
                if not c > zero:  # below 0, or NaN
                    c = zero
                elif c > one:
                    c = one
                word[z + 1, y + 1, x + 1] = (np.uint64(seeds[z, y, x]) << np.uint64(16)) | np.uint64(np.rint(c * top))


@compiled(DISK_CACHE, nogil=True)
def _unpack(word: np.ndarray, wall: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    # out = the label of word[1:-1, 1:-1, 1:-1], 0 for the wall
    nz, ny, nx = out.shape
    wall = np.uint64(wall)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                lab = np.uint64(word[z + 1, y + 1, x + 1]) >> np.uint64(16)
                out[z, y, x] = 0 if lab == wall else lab


def seeded_watershed(cost: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Grow ``seeds`` over ``cost`` in order of increasing cost (6-connected); every voxel that a
    seed reaches gets its label.

    ``cost`` ``(z, y, x)`` float in [0, 1] (values outside are clipped); ``seeds`` ``(z, y, x)``
    integer labels, 0 = unlabelled; ``mask`` (bool, or None for all) limits the flood: voxels
    outside it stay 0, and seeds there are dropped. Returns ``(z, y, x)`` labels: uint32 for
    seeds of an unsigned type of up to 32 bits, uint64 for any other. Voxels that no seed reaches
    (cut off by the mask) stay 0.

    Raises
    ------
    ValueError
        Arrays not 3D or of different shapes; a cost that is not floats (it is not scaled to
        [0, 1] here); seeds not integers; a box of 2**31 voxels or more with one voxel of padding
        on every side.

    >>> cost = np.array([[[0.0, 0.1, 0.9, 0.2, 0.0]]])
    >>> seeded_watershed(cost, np.array([[[1, 0, 0, 0, 2]]])).tolist()
    [[[1, 1, 1, 2, 2]]]
    """
    cost = np.asarray(cost)
    seeds = np.asarray(seeds)
    if cost.ndim != 3 or cost.shape != seeds.shape or (mask is not None and np.shape(mask) != cost.shape):
        raise ValueError(f"cost {cost.shape}, seeds {seeds.shape} and mask {None if mask is None else np.shape(mask)} "
                         "must be 3D arrays of one shape")
    padded = int(np.prod([n + 2 for n in cost.shape]))
    if padded >= 2**31:
        raise ValueError(f"{cost.shape} is {padded} voxels with the flood's one-voxel padding: it indexes at "
                         "most 2**31 - 1; cut the volume into smaller blocks")
    if cost.dtype.kind != "f":
        raise ValueError(f"cost must be floats in [0, 1], not {cost.dtype}; scale it first (e.g. uint8 / 255)")
    out_dtype = np.uint32 if seeds.dtype.kind == "u" and seeds.dtype.itemsize <= 4 else np.uint64
    if not cost.size:
        return np.zeros(cost.shape, out_dtype)
    if cost.dtype not in (np.float32, np.float64):
        cost = cost.astype(np.float64)
    seeds, ids, narrow = _seed_labels(seeds)
    z, y, x = cost.shape
    dtype, wall = (np.uint32, _WALL_16) if narrow else (np.uint64, _WALL_32)
    word = np.empty((z + 2, y + 2, x + 2), dtype)
    for axis in range(3):  # the padding: wall
        index = [slice(None)] * 3
        index[axis] = [0, -1]
        word[tuple(index)] = wall << 16
    no_mask = np.zeros((0, 0, 0), bool)
    _pack(cost, seeds, no_mask if mask is None else np.asarray(mask, bool), cost.dtype.type(LEVELS - 1), wall, word)
    _flood(word.ravel(), wall, x + 2, (y + 2) * (x + 2))
    out = np.empty(cost.shape, out_dtype if ids is None else np.uint32)
    _unpack(word, wall, out)
    return out if ids is None else ids.astype(out_dtype, copy=False)[out]


def _seed_labels(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Seed labels the flood can hold, the table back to the caller's labels (None when they need
    none), and whether they fit 16 bits (below :data:`_WALL_16`: uint32 words; otherwise they are
    labels below :data:`_WALL_32` in uint64 words)."""
    if seeds.dtype.kind not in "iu":
        raise ValueError(f"seeds must be integer labels, not {seeds.dtype}")
    if not seeds.size:
        return seeds, None, True
    low, high = seeds.min(), seeds.max()
    if low >= 0 and high < _WALL_16:
        return seeds, None, True
    labelled = seeds != 0
    ids = np.unique(seeds[labelled])
    narrow = len(ids) < _WALL_16
    if not narrow and low >= 0 and high < _WALL_32:
        return seeds, None, False
    out = np.zeros(seeds.shape, np.uint32)
    out[labelled] = np.searchsorted(ids, seeds[labelled]) + 1
    return out, np.r_[np.uint64(0), ids.astype(np.uint64)], narrow
