"""Which box of voxels one precomputed shard covers, and block shapes that align to it.

Sharded precomputed volumes order chunks by their *compressed Morton code*: the bits of the chunk
grid coordinates interleaved x, y, z, lowest first, skipping an axis once its coordinate needs no
more bits. A shard holds ``2 ** (preshift_bits + minishard_bits)`` consecutive codes, so its low
``n`` code bits say how many chunks it spans per axis: an aligned box of ``2 ** k_axis`` chunks.
A write box that is a union of whole shards is written by one task only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from emseg.pipeline.errors import AlignmentError

Vec = tuple[int, int, int]


def _bits(grid_zyx: Sequence[int]) -> list[int]:
    return [max(0, math.ceil(math.log2(g))) if g > 1 else 0 for g in grid_zyx]


def shard_chunks(grid_zyx: Sequence[int], low_bits: int) -> Vec:
    """Chunks per axis (z, y, x) spanned by the lowest ``low_bits`` bits of the Morton code.

    >>> shard_chunks((4, 4, 4), 3)
    (2, 2, 2)
    >>> shard_chunks((1, 4, 8), 4)   # z needs no bits; x, y, x, y
    (1, 4, 4)
    """
    bits_xyz = _bits(grid_zyx)[::-1]
    count = [0, 0, 0]
    taken = 0
    level = 0
    while taken < low_bits and level < max(bits_xyz + [0]):
        for axis in range(3):
            if taken < low_bits and level < bits_xyz[axis]:
                count[axis] += 1
                taken += 1
        level += 1
    x, y, z = (1 << c for c in count)
    return (z, y, x)


def total_bits(grid_zyx: Sequence[int]) -> int:
    return sum(_bits(grid_zyx))


def choose_bits(grid_zyx: Sequence[int], block_chunks_zyx: Sequence[int]) -> tuple[int, int, int]:
    """``(preshift_bits, minishard_bits, shard_bits)`` giving the largest shards inside one block."""
    total = total_bits(grid_zyx)
    best = 0
    for n in range(total + 1):
        shard = shard_chunks(grid_zyx, n)
        if all(_fits(b, s, g) for b, s, g in zip(block_chunks_zyx, shard, grid_zyx)):
            best = n
        else:
            break
    minishard = best // 2
    return best - minishard, minishard, total - best


def _fits(block: int, shard: int, grid: int) -> bool:
    return block % shard == 0 or block >= grid


def shard_shape(grid_zyx: Sequence[int], chunk_zyx: Sequence[int], preshift_bits: int, minishard_bits: int) -> Vec:
    """Voxels per axis covered by one shard."""
    chunks = shard_chunks(grid_zyx, preshift_bits + minishard_bits)
    return tuple(c * k for c, k in zip(chunk_zyx, chunks))  # type: ignore[return-value]


def check_alignment(
    block_zyx: Sequence[int], unit_zyx: Sequence[int], roi_shape_zyx: Sequence[int], what: str
) -> None:
    """Refuse block shapes whose write boxes would split a storage ``unit`` (chunk or shard).

    A block may be any multiple of the unit, or cover the whole region along an axis.

    >>> check_alignment((128, 128, 100), (64, 64, 64), (512, 512, 512), "chunk")
    Traceback (most recent call last):
    ...
    emseg.pipeline.errors.AlignmentError: block shape [128, 128, 100] is not a multiple of the output chunk shape [64, 64, 64]; use blocks.shape = [128, 128, 128] (or a write.chunk_shape that divides the block shape)
    """
    bad = [b % u != 0 and b < r for b, u, r in zip(block_zyx, unit_zyx, roi_shape_zyx)]
    if any(bad):
        fixed = [max(u, round(b / u) * u) if x else b for b, u, x in zip(block_zyx, unit_zyx, bad)]
        raise AlignmentError(
            f"block shape {list(block_zyx)} is not a multiple of the output {what} shape {list(unit_zyx)}; "
            f"use blocks.shape = {fixed} (or a write.chunk_shape that divides the block shape)"
        )
