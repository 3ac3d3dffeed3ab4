"""The cost model of ``emseg plan``: which blocks to calibrate on, whole-run totals per axis, rates.

Pure arithmetic on block grids and calibration samples; :mod:`emseg.tasks.commands.estimate` runs the
calibration and turns these into an estimate, :mod:`emseg.tasks.commands.estimate_table` prints it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emseg.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from emseg.pipeline.geometry import BlockGrid

Vec3 = tuple[int, int, int]


# ------------------------------------------------------------------------------------------------
# which blocks to calibrate on


def _radical_inverse(k: int, base: int) -> float:
    """The van der Corput radical inverse of ``k`` in ``base``.

    >>> [_radical_inverse(k, 2) for k in (1, 2, 3)]
    [0.5, 0.25, 0.75]
    """
    inv, f = 0.0, 1.0 / base
    while k:
        k, digit = divmod(k, base)
        inv += digit * f
        f /= base
    return inv


def _preferred_range(size: int, block: int, halo: int) -> tuple[int, int]:
    """Block indices along one axis whose read box is a full core + halo (else whose core is full).

    >>> _preferred_range(100, 10, 2)   # blocks 1..8 have the full halo on both sides
    (1, 8)
    >>> _preferred_range(16, 10, 2)    # no such block: those with a full core
    (0, 0)
    """
    n = -(-size // block)
    lo, hi = -(-halo // block), (size - halo) // block - 1
    if lo <= hi:
        return lo, hi
    full = size // block - 1
    return 0, max(0, min(full, n - 1))


def calibration_blocks(grid: BlockGrid, n: int) -> list[int]:
    """``n`` block ids spread over the grid (a Halton sequence), interior blocks preferred.

    Deterministic for a given grid. Falls back to the rest of the grid when the preferred blocks are
    fewer than ``n``; returns every block when the grid has no more than ``n``.

    >>> from emseg.pipeline.geometry import Box, BlockGrid
    >>> calibration_blocks(BlockGrid(Box((0, 0, 0), (80, 80, 80)), (16, 16, 16), (2, 2, 2)), 3)
    [61, 42, 82]
    >>> calibration_blocks(BlockGrid(Box((0, 0, 0), (16, 32, 16)), (16, 16, 16), (2, 2, 2)), 5)
    [0, 1]
    """
    if n <= 0:
        raise ConfigError(f"--calibrate must be at least 1, got {n}")
    if grid.num_blocks <= n:
        return list(range(grid.num_blocks))
    ranges = [_preferred_range(s, b, h) for s, b, h in zip(grid.roi.shape, grid.block_shape, grid.halo)]
    chosen: list[int] = []
    for space in (ranges, [(0, g - 1) for g in grid.grid_shape]):
        size = math.prod(hi - lo + 1 for lo, hi in space)
        k = 0
        while len(chosen) < n and k < 64 * size + 64:
            k += 1
            index = [lo + min(hi - lo, int(_radical_inverse(k, base) * (hi - lo + 1)))
                     for (lo, hi), base in zip(space, (2, 3, 5))]
            bid = grid.block_id(index)
            if bid not in chosen:
                chosen.append(bid)
    return chosen


# ------------------------------------------------------------------------------------------------
# the geometry of a whole run, computed per axis (a run may have millions of blocks)


@dataclass(frozen=True)
class GridTotals:
    """Voxel counts summed over every block of a grid."""

    grid_zyx: Vec3
    blocks: int
    core_voxels: int
    read_voxels: int
    #: voxels of the overlap faces stage 1 stores (each face-adjacent pair twice, once per block)
    face_voxels: int
    #: half of it: the forward overlaps that stage 2 matches
    forward_face_voxels: int


def _axis(size: int, block: int, halo: int) -> tuple[list[int], list[int]]:
    """Read lengths of the blocks along one axis, and the overlaps of consecutive ones.

    >>> _axis(40, 16, 2)
    ([18, 20, 10], [4, 4])
    """
    n = -(-size // block)
    start = [max(0, i * block - halo) for i in range(n)]
    stop = [min(size, (i + 1) * block + halo) for i in range(n)]
    return [b - a for a, b in zip(start, stop)], [stop[i] - start[i + 1] for i in range(n - 1)]


def grid_totals(shape: Sequence[int], block: Sequence[int], halo: Sequence[int]) -> GridTotals:
    """Totals for a region of ``shape`` tiled by ``block`` with ``halo``, without listing blocks.

    A read box is a product of one interval per axis, so sums over blocks factor into per-axis sums.

    >>> t = grid_totals((32, 32, 32), (16, 16, 16), (1, 1, 1))
    >>> t.blocks, t.core_voxels, t.read_voxels, t.face_voxels
    (8, 32768, 39304, 13872)
    """
    axes = [_axis(int(s), int(b), int(h)) for s, b, h in zip(shape, block, halo)]
    read_sums = [sum(r) for r, _ in axes]
    forward = 0
    for a, (_, overlaps) in enumerate(axes):
        forward += sum(overlaps) * math.prod(read_sums[j] for j in range(3) if j != a)
    grid = tuple(len(r) for r, _ in axes)
    return GridTotals(
        grid_zyx=grid,  # type: ignore[arg-type]
        blocks=math.prod(grid),
        core_voxels=math.prod(int(s) for s in shape),
        read_voxels=math.prod(read_sums),
        face_voxels=2 * forward,
        forward_face_voxels=forward,
    )


def readback_voxels(shape: Sequence[int], block: Sequence[int], context: int, chunk: Sequence[int]) -> int:
    """Voxels that stage 1 decodes reading stored affinities back (``write.affinities``), summed over
    blocks: each block's write box grown by ``context`` (the backend's ``fragment_context``), in whole
    chunks of the store (``chunk``, aligned to the region's start), clipped to the region.

    Chunks are decoded whole, so an inner 64³ block with 16 voxels of context reads 192³ in 64³
    chunks (27 of them) and a corner block 128³. Along one axis of 192 voxels in 64³ blocks the
    three blocks read 128 + 192 + 128 = 448; a 128³ region in 64³ blocks reads every chunk 8 times:

    >>> readback_voxels((192, 192, 192), (64, 64, 64), 16, (64, 64, 64)) == 448**3
    True
    >>> readback_voxels((128, 128, 128), (64, 64, 64), 16, (64, 64, 64)) // 128**3
    8
    >>> readback_voxels((128, 128, 128), (64, 64, 64), 16, (32, 32, 32)) // 128**3  # smaller chunks
    3
    """
    total = 1
    for size, b, c in zip(shape, block, chunk):
        n = -(-int(size) // int(b))
        lengths = []
        for i in range(n):
            start = max(0, (i * b - context) // c * c)
            stop = min(int(size), -(-((i + 1) * b + context) // c) * c)
            lengths.append(stop - start)
        total *= sum(lengths)
    return total


# ------------------------------------------------------------------------------------------------
# the calibration


@dataclass
class BlockSample:
    """What one calibration block measured."""

    block: int
    core_voxels: int
    read_voxels: int
    face_voxels: int
    forward_face_voxels: int
    segment_seconds: float
    labels_bytes: int
    faces_bytes: int
    seam_seconds: float
    edges: int
    edges_bytes: int
    write_seconds: float
    output_bytes: int
    #: seconds of the tasks that ask for cluster.model_resources: with write.affinities 1-predict's
    #: (part of ``segment_seconds``), else all of ``segment_seconds`` (stage 1 runs the model)
    model_task_seconds: float = 0.0


@dataclass
class Calibration:
    """The measurements of a calibration run."""

    device: str
    startup_seconds: float
    samples: list[BlockSample] = field(default_factory=list)
    #: write.affinities: bytes of stored affinities per voxel of write box (None: not stored)
    affinities_bytes_per_voxel: float | None = None


def rate(samples: list[BlockSample], num: str, den: str) -> tuple[float, float, float]:
    """(ratio of sums, smallest and largest per-block ratio) of two sample fields."""
    pairs = [(getattr(s, num), getattr(s, den)) for s in samples if getattr(s, den) > 0]
    if not pairs:
        return 0.0, 0.0, 0.0
    per = [a / b for a, b in pairs]
    return sum(a for a, _ in pairs) / sum(b for _, b in pairs), min(per), max(per)


def wall_seconds(startup: float, seconds: float, workers: int, blocks: int,
                 model_seconds: float = 0.0, model_workers: int | None = None) -> float:
    """A lower bound of a run's wall time: ``startup`` plus the task ``seconds`` spread evenly over
    ``min(workers, blocks)``; with ``model_workers`` (cluster.model_resources: only that many of the
    workers run the model's tasks, one at a time each), at least those tasks' ``model_seconds``
    spread over ``min(model_workers, blocks)``. Perfect load balance and no waiting between stages.

    >>> wall_seconds(1.0, 100.0, 4, 10)
    26.0
    >>> wall_seconds(1.0, 100.0, 4, 10, model_seconds=80.0, model_workers=1)   # the model's worker
    81.0
    >>> wall_seconds(1.0, 100.0, 4, 10, model_seconds=20.0, model_workers=1)   # all workers
    26.0
    """
    wall = seconds / max(1, min(workers, blocks))
    if model_workers is not None:
        wall = max(wall, model_seconds / max(1, min(model_workers, blocks)))
    return startup + wall


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}
