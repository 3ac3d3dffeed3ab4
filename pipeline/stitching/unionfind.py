"""Union-find over merge edges, reduced in an octree of blocks, and dense final ids.

Keys are ``block_id << 32 | local_id`` (see :mod:`emseg.pipeline.stitching.labels`). A block's labels ``1..n_core``
occur in its core; labels above ``n_core`` occur only in its halo. :func:`sort_keys` sets the top bit
of halo-only keys, so that the smallest key of a component is a core label whenever it has one.

**Bottom-up** (:func:`reduce_edges`): a group of the octree (level 1: 2×2×2 blocks; level L: 2×2×2
groups of level L-1) joins the edges whose two ends lie inside it. Each component's representative is
its smallest key; the group keeps ``key -> representative`` for the keys it renamed and passes the
edges that leave it up, with their ends renamed. The top group has nothing left to pass. Every step
holds only one group's edges: those inside it plus those crossing its faces.

**Top-down** (:func:`resolve`): the top group's representatives are final; each group composes its
own renaming with its parent's final map and hands each child the part about the child's keys. Level 1
hands each block a table: its labels that take part in merges and their final representatives.

**Dense ids**: a core label is a *root* when it is its own final representative. Roots are numbered
from 1 in key order, so for a root ``l`` of block ``b``::

    final_id(l) = 1 + offset[b] + (l - 1) - #{non-roots of b below l}
    offset[b]   = sum over blocks c < b of (n_core[c] - #non-roots of c)

and a non-root takes its representative's id. :func:`block_lut` applies this to one block; it needs
the tables of the blocks its representatives live in, which are small (labels at seams only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emseg.pipeline.stitching.labels import LOCAL_MASK, block_of, local_of

HALO_BIT = np.uint64(1) << np.uint64(63)
Vec = tuple[int, int, int]


# -- keys ----------------------------------------------------------------------------------------
def sort_keys(keys: np.ndarray, n_core: np.ndarray | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Set :data:`HALO_BIT` on keys whose local id exceeds their block's ``n_core``.

    >>> k = np.array([(0 << 32) | 2, (1 << 32) | 3], np.uint64)
    >>> (sort_keys(k, np.array([2, 2])) >> np.uint64(63)).tolist()
    [0, 1]
    """
    keys = np.asarray(keys, np.uint64)
    blocks = block_of(keys & ~HALO_BIT).astype(np.int64)
    cores = n_core(blocks) if callable(n_core) else np.asarray(n_core)[blocks]
    halo = local_of(keys).astype(np.int64) > cores
    return np.where(halo, keys | HALO_BIT, keys)


def plain_block(keys: np.ndarray) -> np.ndarray:
    """Block ids of (possibly halo-marked) keys."""
    return (np.asarray(keys, np.uint64) & ~HALO_BIT) >> np.uint64(32)


# -- the octree ----------------------------------------------------------------------------------
def levels(grid_shape: Sequence[int]) -> int:
    """Number of octree levels above the blocks: the top level holds the whole grid (at least 1)."""
    return max(1, max(math.ceil(math.log2(g)) if g > 1 else 0 for g in grid_shape))


def group_shape(grid_shape: Sequence[int], level: int) -> Vec:
    return tuple(-(-g // (1 << level)) for g in grid_shape)  # type: ignore[return-value]


def groups(grid_shape: Sequence[int], level: int) -> Iterator[Vec]:
    gz, gy, gx = group_shape(grid_shape, level)
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                yield (z, y, x)


def children(group: Vec, level: int, grid_shape: Sequence[int]) -> list[Vec]:
    """The level ``level - 1`` groups (block indices at level 1) inside ``group``."""
    below = group_shape(grid_shape, level - 1)
    out = []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                c = (2 * group[0] + dz, 2 * group[1] + dy, 2 * group[2] + dx)
                if all(ci < bi for ci, bi in zip(c, below)):
                    out.append(c)
    return out


# -- bottom-up -----------------------------------------------------------------------------------
def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges ``a[i] - b[i]`` (uint64 keys).

    Returns the sorted unique keys and a component index for each.

    >>> nodes, comp = components(np.array([1, 2, 9], np.uint64), np.array([2, 3, 10], np.uint64))
    >>> nodes.tolist(), comp.tolist()
    ([1, 2, 3, 9, 10], [0, 0, 0, 1, 1])
    """
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    if n == 0:
        return nodes, np.zeros(0, np.int64)
    ia, ib = inverse[: len(a)], inverse[len(a) :]
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return nodes, comp.astype(np.int64)


@dataclass(frozen=True)
class Renaming:
    """``keys[i] -> reps[i]`` (keys sorted; only keys that changed)."""

    keys: np.ndarray
    reps: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return x
        i = np.clip(np.searchsorted(self.keys, x), 0, len(self.keys) - 1)
        return np.where(self.keys[i] == x, self.reps[i], x)


def reduce_edges(
    a: np.ndarray, b: np.ndarray, inside_a: np.ndarray, inside_b: np.ndarray
) -> tuple[Renaming, np.ndarray, np.ndarray]:
    """One group's step: join the edges inside it, return what its parent needs.

    ``inside_a`` / ``inside_b`` say which ends lie in the group; every edge has at least one.
    Returns the group's renaming (each key of a component -> the component's smallest key) and the
    edges passed up: the crossing edges as they are, plus a link ``u - rep(u)`` for each inside end
    ``u`` of a crossing edge that was renamed. The parent thus sees each component through its
    representative, and both groups of a crossing edge pass it, so neither needs the other's renaming.

    >>> a = np.array([5, 7, 7], np.uint64); b = np.array([7, 9, 20], np.uint64)
    >>> inside = np.array([True, True, True]); out = np.array([True, True, False])
    >>> ren, pa, pb = reduce_edges(a, b, inside, out)
    >>> ren.keys.tolist(), ren.reps.tolist(), pa.tolist(), pb.tolist()
    ([7, 9], [5, 5], [5, 7], [7, 20])
    """
    internal = inside_a & inside_b
    nodes, comp = components(a[internal], b[internal])
    if len(nodes):
        # nodes are sorted, so the first node of each component is its smallest key
        first = np.full(int(comp.max()) + 1, len(nodes), np.int64)
        np.minimum.at(first, comp, np.arange(len(nodes)))
        reps = nodes[first[comp]]
        changed = reps != nodes
        renaming = Renaming(nodes[changed], reps[changed])
    else:
        renaming = Renaming(nodes, nodes.copy())
    crossing = ~internal
    ca, cb = a[crossing], b[crossing]
    ends = np.unique(np.concatenate([ca[inside_a[crossing]], cb[inside_b[crossing]]]))
    ends_rep = renaming.apply(ends)
    linked = ends_rep != ends
    pa = np.concatenate([ca, ends[linked]])
    pb = np.concatenate([cb, ends_rep[linked]])
    if len(pa):
        pairs = np.unique(np.stack([np.minimum(pa, pb), np.maximum(pa, pb)], axis=1), axis=0)
        pa, pb = pairs[:, 0].copy(), pairs[:, 1].copy()
    return renaming, pa, pb


# -- top-down ------------------------------------------------------------------------------------
def resolve(own: Renaming, parent: Renaming) -> Renaming:
    """Final representatives of this group's keys: its own renaming, then its parent's.

    ``parent`` holds the parent's final map restricted to this group's keys (representatives of
    this group that were merged further up).

    >>> own = Renaming(np.array([7, 9], np.uint64), np.array([5, 5], np.uint64))
    >>> up = Renaming(np.array([5], np.uint64), np.array([2], np.uint64))
    >>> r = resolve(own, up); r.keys.tolist(), r.reps.tolist()
    ([5, 7, 9], [2, 2, 2])
    """
    final_own = parent.apply(own.reps)
    keys = np.concatenate([own.keys, parent.keys])
    reps = np.concatenate([final_own, parent.reps])
    keys, idx = np.unique(keys, return_index=True)
    return Renaming(keys, reps[idx])


def split_by(renaming: Renaming, owner: np.ndarray) -> dict[int, Renaming]:
    """Split a renaming into parts by an integer owner per key (a child group or a block)."""
    out: dict[int, Renaming] = {}
    if len(renaming.keys) == 0:
        return out
    order = np.argsort(owner, kind="stable")
    owner_sorted = owner[order]
    bounds = np.flatnonzero(np.diff(owner_sorted)) + 1
    for part in np.split(np.arange(len(order)), bounds):
        idx = order[part]
        out[int(owner_sorted[part[0]])] = Renaming(renaming.keys[idx], renaming.reps[idx])
    return out


# -- dense ids -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockTable:
    """A block's labels that take part in merges: local ids (sorted) and final representative keys."""

    locals: np.ndarray  # int64, sorted
    finals: np.ndarray  # uint64 keys (HALO_BIT set for components without a core label)
    block_id: int

    @property
    def nonroots(self) -> np.ndarray:
        """Sorted local ids of this block's labels whose final representative is another label."""
        own = (np.uint64(self.block_id) << np.uint64(32)) | self.locals.astype(np.uint64)
        return self.locals[self.finals != own]

    def rank(self, local_ids: np.ndarray) -> np.ndarray:
        """Rank of root labels among this block's roots (0-based)."""
        return local_ids.astype(np.int64) - 1 - np.searchsorted(self.nonroots, local_ids)


def table_from(renaming: Renaming, block_id: int) -> BlockTable:
    locals_ = (renaming.keys & ~HALO_BIT & LOCAL_MASK).astype(np.int64)
    order = np.argsort(locals_)
    return BlockTable(locals_[order], renaming.reps[order], block_id)


def offsets(n_core: np.ndarray, nonroot_core: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-block offsets of the final ids, and the number of segments."""
    roots = np.asarray(n_core, np.int64) - np.asarray(nonroot_core, np.int64)
    off = np.concatenate([[0], np.cumsum(roots)[:-1]]).astype(np.int64)
    return off, int(roots.sum())


def final_ids(
    table: BlockTable, n_core: int, offs: np.ndarray, table_of: Callable[[int], BlockTable], local_ids: np.ndarray
) -> np.ndarray:
    """Final ids (uint64) of local labels of ``table.block_id``; 0 for a halo-only label no merge reached.

    ``table_of(block)`` gives another block's table (for representatives that live there).
    """
    local_ids = np.asarray(local_ids, np.int64)
    out = np.zeros(len(local_ids), np.uint64)
    pos = np.clip(np.searchsorted(table.locals, local_ids), 0, max(len(table.locals) - 1, 0))
    in_table = (table.locals[pos] == local_ids) if len(table.locals) else np.zeros(len(local_ids), bool)
    plain = ~in_table & (local_ids >= 1) & (local_ids <= n_core)
    out[plain] = (1 + offs[table.block_id] + table.rank(local_ids[plain])).astype(np.uint64)
    reps = table.finals[pos[in_table]] if len(table.locals) else np.zeros(0, np.uint64)
    has_core = (reps & HALO_BIT) == 0
    idx = np.flatnonzero(in_table)[has_core]
    reps = reps[has_core]
    rep_blocks = plain_block(reps).astype(np.int64)
    for rep_block in np.unique(rep_blocks).tolist():
        sel = rep_blocks == rep_block
        other = table if rep_block == table.block_id else table_of(rep_block)
        rank = other.rank(local_of(reps[sel]).astype(np.int64))
        out[idx[sel]] = (1 + offs[rep_block] + rank).astype(np.uint64)
    return out


def block_lut(
    table: BlockTable, n_total: int, n_core: int, offs: np.ndarray, table_of: Callable[[int], BlockTable]
) -> np.ndarray:
    """Lookup table local id -> final id (uint64) for one block's labels; entry 0 is background."""
    lut = np.zeros(n_total + 1, np.uint64)
    lut[1:] = final_ids(table, n_core, offs, table_of, np.arange(1, n_total + 1))
    return lut


def group_index(indices: np.ndarray, grid_shape: Vec, level: int) -> np.ndarray:
    """One flat int64 per group of ``level`` (2^level blocks a side) from its (n, 3) z, y, x group indices.

    Row-major over the grid of groups at that level, whose extent per axis is the block grid's divided by
    2^level, rounded up: distinct groups never share an index, however long an axis is.

    >>> group_index(np.array([[0, 1, 0], [0, 0, 1 << 20]]), (1, 3, 1 << 21), 0).tolist()
    [2097152, 1048576]
    """
    extent = tuple(-(-int(g) // (1 << level)) for g in grid_shape)
    idx = np.asarray(indices, np.int64).reshape(-1, 3)
    if len(idx) == 0:
        return np.zeros(0, np.int64)
    return np.ravel_multi_index(tuple(idx.T), extent).astype(np.int64)
