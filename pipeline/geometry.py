"""Boxes and the block grid.

Axis order is z, y, x everywhere in this module. A :class:`Box` is half-open, ``[start, stop)``, in
voxels of the volume (zero-origin: a volume's own voxel offset is applied at the I/O edge).

A block owns its *write box* (the core) and reads its *read box*: the core grown by the halo and
clipped to the region of interest. Two face neighbours A and B therefore both segment the overlap
``A.read_box & B.read_box``, which is where their labels are matched::

        A.read_box
    ┌───────────────────┐
    │   A.write_box  ┌──┼────────────────┐
    │                │▓▓│                │   ▓▓ = overlap, 2 × halo wide,
    │                │▓▓│  B.write_box   │        centred on the seam
    └────────────────┼──┘                │
                     └───────────────────┘
                        B.read_box

Write boxes tile the region of interest exactly, in C order of the grid index, and a block's id is
its C-order rank, so ids are deterministic for a given region and block shape.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

Vec = tuple[int, int, int]


def _vec(values: Sequence[int]) -> Vec:
    if len(values) != 3:
        raise ValueError(f"expected 3 values (z, y, x), got {list(values)}")
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` in z, y, x voxels.

    >>> Box((0, 0, 0), (4, 4, 4)).intersect(Box((2, 3, -1), (9, 9, 2)))
    Box(start=(2, 3, 0), stop=(4, 4, 2))
    """

    start: Vec
    stop: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _vec(self.start))
        object.__setattr__(self, "stop", _vec(self.stop))

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] = (0, 0, 0)) -> Box:
        off = _vec(offset)
        return cls(off, tuple(o + s for o, s in zip(off, _vec(shape))))

    @property
    def shape(self) -> Vec:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    def intersect(self, other: Box) -> Box:
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        stop = tuple(max(s, e) for s, e in zip(start, stop))
        return Box(start, stop)

    __and__ = intersect

    def grow(self, amount: Sequence[int]) -> Box:
        a = _vec(amount)
        return Box(tuple(s - g for s, g in zip(self.start, a)), tuple(e + g for e, g in zip(self.stop, a)))

    def shift(self, offset: Sequence[int]) -> Box:
        o = _vec(offset)
        return Box(tuple(s + d for s, d in zip(self.start, o)), tuple(e + d for e, d in zip(self.stop, o)))

    def contains(self, other: Box) -> bool:
        return all(a <= b for a, b in zip(self.start, other.start)) and all(
            a >= b for a, b in zip(self.stop, other.stop)
        )

    def slices(self, origin: Sequence[int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
        """Slices that cut this box out of an array whose first voxel is at ``origin``."""
        o = _vec(origin)
        return tuple(slice(s - d, e - d) for s, e, d in zip(self.start, self.stop, o))  # type: ignore[return-value]

    def to_json(self) -> dict[str, list[int]]:
        return {"start": list(self.start), "stop": list(self.stop)}


@dataclass(frozen=True)
class Block:
    """One unit of work: the core it writes and the (larger) box it reads."""

    id: int
    index: Vec
    write_box: Box
    read_box: Box


@dataclass(frozen=True)
class BlockGrid:
    """Tiles ``roi`` with blocks of ``block_shape`` (the last ones clipped) grown by ``halo``."""

    roi: Box
    block_shape: Vec
    halo: Vec

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_shape", _vec(self.block_shape))
        object.__setattr__(self, "halo", _vec(self.halo))
        if any(b <= 0 for b in self.block_shape):
            raise ValueError(f"block shape must be positive, got {list(self.block_shape)}")
        if any(h < 0 for h in self.halo):
            raise ValueError(f"halo must be >= 0, got {list(self.halo)}")

    @functools.cached_property
    def grid_shape(self) -> Vec:
        return tuple(-(-s // b) for s, b in zip(self.roi.shape, self.block_shape))  # type: ignore[return-value]

    @property
    def num_blocks(self) -> int:
        z, y, x = self.grid_shape
        return z * y * x

    def block_id(self, index: Sequence[int]) -> int:
        gz, gy, gx = self.grid_shape
        z, y, x = _vec(index)
        return (z * gy + y) * gx + x

    def block_index(self, block_id: int) -> Vec:
        gz, gy, gx = self.grid_shape
        if not 0 <= block_id < gz * gy * gx:
            raise IndexError(f"block id {block_id} outside a grid of {gz * gy * gx} blocks")
        return (block_id // (gy * gx), (block_id // gx) % gy, block_id % gx)

    def block(self, block_id: int) -> Block:
        index = self.block_index(block_id)
        start = tuple(r + i * b for r, i, b in zip(self.roi.start, index, self.block_shape))
        write = Box(start, tuple(s + b for s, b in zip(start, self.block_shape))).intersect(self.roi)
        read = write.grow(self.halo).intersect(self.roi)
        return Block(block_id, index, write, read)

    def __iter__(self) -> Iterator[Block]:
        for block_id in range(self.num_blocks):
            yield self.block(block_id)

    def __len__(self) -> int:
        return self.num_blocks

    def forward_neighbours(self, block: Block) -> Iterator[tuple[int, Block]]:
        """The face neighbours after ``block`` along each axis, as ``(axis, neighbour)``.

        Every face-adjacent pair appears exactly once over the whole grid.
        """
        grid = self.grid_shape
        for axis in range(3):
            index = list(block.index)
            index[axis] += 1
            if index[axis] < grid[axis]:
                yield axis, self.block(self.block_id(index))

    def block_indices(self, block_ids: np.ndarray) -> np.ndarray:
        """Grid indices (z, y, x) of many block ids at once: int64 array of shape ``(n, 3)``.

        >>> import numpy as np
        >>> BlockGrid(Box((0, 0, 0), (4, 6, 6)), (2, 2, 2), (0, 0, 0)).block_indices(np.array([0, 10, 17])).tolist()
        [[0, 0, 0], [1, 0, 1], [1, 2, 2]]
        """
        import numpy as np

        _, gy, gx = self.grid_shape
        ids = np.asarray(block_ids).astype(np.int64)
        return np.stack([ids // (gy * gx), (ids // gx) % gy, ids % gx], axis=1)

    def _index_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every block id and its grid index along z, y, x, as arrays."""
        import numpy as np

        ids = np.arange(self.num_blocks, dtype=np.int64)
        index = self.block_indices(ids)
        return ids, index[:, 0], index[:, 1], index[:, 2]

    def forward_ids(self) -> np.ndarray:
        """For every block id, the ids of its forward face neighbours along z, y, x (-1 where none)."""
        import numpy as np

        gz, gy, gx = self.grid_shape
        ids, z, y, x = self._index_arrays()
        return np.stack(
            [np.where(z + 1 < gz, ids + gy * gx, -1), np.where(y + 1 < gy, ids + gx, -1), np.where(x + 1 < gx, ids + 1, -1)],
            axis=1,
        )

    def backward_ids(self) -> np.ndarray:
        """For every block id, the ids of its backward face neighbours along z, y, x (-1 where none)."""
        import numpy as np

        _, gy, gx = self.grid_shape
        ids, z, y, x = self._index_arrays()
        return np.stack(
            [np.where(z > 0, ids - gy * gx, -1), np.where(y > 0, ids - gx, -1), np.where(x > 0, ids - 1, -1)], axis=1
        )

    def odd(self) -> np.ndarray:
        """For every block id, its checkerboard colour: whether ``i + j + k`` is odd.

        Face neighbours always differ in colour.
        """
        _, z, y, x = self._index_arrays()
        return (z + y + x) % 2 == 1

    def offset_ids(self, offset: Sequence[int]) -> np.ndarray:
        """For every block id, the id of the block ``offset`` (dz, dy, dx) grid steps away (-1 where none).

        >>> g = BlockGrid(Box((0, 0, 0), (4, 4, 4)), (2, 2, 2), (0, 0, 0))
        >>> g.offset_ids((1, 1, 1)).tolist(), g.offset_ids((0, 0, -1)).tolist()
        ([7, -1, -1, -1, -1, -1, -1, -1], [-1, 0, -1, 2, -1, 4, -1, 6])
        """
        import numpy as np

        ids, z, y, x = self._index_arrays()
        _, gy, gx = self.grid_shape
        dz, dy, dx = (int(o) for o in offset)
        inside = np.ones(len(ids), bool)
        for i, d, n in ((z, dz, self.grid_shape[0]), (y, dy, gy), (x, dx, gx)):
            inside &= (i + d >= 0) & (i + d < n)
        return np.where(inside, ids + (dz * gy + dy) * gx + dx, -1)

    def neighbourhood(self, block: Block) -> list[Block]:
        """The blocks of the 3 x 3 x 3 neighbourhood around ``block`` inside the grid, ``block``
        included, in id order (face, edge and corner neighbours: up to 27 blocks)."""
        out = []
        for offset in itertools.product((-1, 0, 1), repeat=3):
            index = [i + d for i, d in zip(block.index, offset)]
            if all(0 <= i < n for i, n in zip(index, self.grid_shape)):
                out.append(self.block(self.block_id(index)))
        return out

    def group(self, block: Block) -> Vec:
        """The 2 x 2 x 2 group of ``block`` (grid index // 2): the union-find octree's level-1 group,
        and the unit of blockwise agglomeration (:meth:`hood`)."""
        return tuple(i // 2 for i in block.index)  # type: ignore[return-value]

    def group_members(self, group: Sequence[int]) -> list[Block]:
        """The blocks of ``group`` inside the grid (1 to 8), in id order; the first is the group's
        leader, which scores the whole group's edges in blockwise scope."""
        return [self.block(i) for i in self.group_member_ids(group)]

    def group_member_ids(self, group: Sequence[int]) -> list[int]:
        """The ids of :meth:`group_members`, without building the blocks (the driver needs only ids)."""
        return self._box_ids([(2 * g, 2 * g + 2) for g in group])

    def group_hood_ids(self, group: Sequence[int]) -> list[int]:
        """The ids of the :meth:`hood` that the blocks of ``group`` share, in id order."""
        return self._box_ids([(2 * g - 1, 2 * g + 3) for g in group])

    def hood(self, block: Block) -> list[Block]:
        """The blocks whose region graphs ``block``'s edges are agglomerated with in blockwise scope:
        its :meth:`group` and one block around it (grid indices ``2g - 1 .. 2g + 2`` per axis), inside
        the grid, in id order: up to 4 x 4 x 4 blocks. It holds the block's 3 x 3 x 3
        :meth:`neighbourhood`, and all eight blocks of a group share it, so one agglomeration scores
        them all.

        >>> g = BlockGrid(Box((0, 0, 0), (2, 2, 10)), (1, 1, 1), (0, 0, 0))
        >>> [b.index[2] for b in g.hood(g.block(4)) if b.index[:2] == (0, 0)]  # x 4 and 5: group 2
        [3, 4, 5, 6]
        """
        return [self.block(i) for i in self.group_hood_ids(self.group(block))]

    def hood_max(self, values: np.ndarray, fill: Any = -1) -> np.ndarray:
        """Per block id, the largest of ``values`` (one per block id; numbers or bools) over the
        block's :meth:`hood`; ``fill`` must be at most every value (-1 for positions >= 0, False).

        >>> import numpy as np
        >>> g = BlockGrid(Box((0, 0, 0), (1, 1, 7)), (1, 1, 1), (0, 0, 0))
        >>> g.hood_max(np.arange(7)).tolist()  # groups {0, 1}, {2, 3}, {4, 5}, {6}
        [2, 2, 4, 4, 6, 6, 6]
        """
        import numpy as np

        out = np.asarray(values).reshape(self.grid_shape)
        for axis, n in enumerate(self.grid_shape):
            pad = [(0, 0)] * 3
            pad[axis] = (1, 1 + n % 2)  # index -1 in front; an even length, with index n behind
            padded = np.pad(out, pad, constant_values=fill)
            pairs = np.maximum(np.take(padded, range(0, padded.shape[axis], 2), axis=axis),
                               np.take(padded, range(1, padded.shape[axis], 2), axis=axis))
            groups = (n + 1) // 2  # group g covers indices 2g - 1 .. 2g + 2: pairs g and g + 1
            hood = np.maximum(np.take(pairs, range(groups), axis=axis), np.take(pairs, range(1, groups + 1), axis=axis))
            out = np.take(hood, np.arange(n) // 2, axis=axis)
        return out.ravel()

    def _box_ids(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """Ids of the blocks with grid index in ``[a, b)`` along each axis, clipped to the grid, in id order."""
        (z0, z1), (y0, y1), (x0, x1) = ((max(0, a), min(n, b)) for (a, b), n in zip(ranges, self.grid_shape))
        _, gy, gx = self.grid_shape
        return [(z * gy + y) * gx + x for z in range(z0, z1) for y in range(y0, y1) for x in range(x0, x1)]

    def neighbours(self, block: Block) -> Iterator[tuple[int, int, Block]]:
        """All face neighbours as ``(axis, direction, neighbour)`` with direction -1 or +1."""
        grid = self.grid_shape
        for axis, direction in itertools.product(range(3), (-1, 1)):
            index = list(block.index)
            index[axis] += direction
            if 0 <= index[axis] < grid[axis]:
                yield axis, direction, self.block(self.block_id(index))
