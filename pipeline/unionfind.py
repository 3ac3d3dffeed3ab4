"""Union-find over merge edges, and sequential final ids without a global relabelling pass.

Every block's labels ``1..n_core`` occur in its core (see :func:`pipeline.labels.renumber_core_first`).
A component's *representative* is its smallest core key (block id first, then local id). A core label
that is its component's representative is a *root*; the others are *non-roots*. Final ids are the
ranks of the roots in key order, from 1, so for block ``b``::

    final(root l in b)  = 1 + offset[b] + (l - 1) - #{non-roots in b below l}
    offset[b]           = sum over blocks c < b of (n_core[c] - #non-roots in c)
    final(non-root)     = final(its representative)

Only labels that appear in some merge edge can be non-roots, so the result is stored as a small
table per block (non-root local ids and their final ids) plus one offset per block: memory
proportional to the number of blocks and edges, never to voxels. Labels that occur only in a block's
halo get no id unless they join a component with a core label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.labels import block_of, local_of

NO_ID = np.uint64(np.iinfo(np.uint64).max)


@dataclass(frozen=True)
class Mapping:
    """The global mapping: per-block offsets plus the non-root entries of all blocks."""

    offsets: np.ndarray  # int64 per block: number of roots in earlier blocks
    keys: np.ndarray  # uint64, sorted: non-root (or halo-only) labels that appear in edges
    final: np.ndarray  # uint64 final id for each key (0 for halo-only components)
    num_segments: int

    def block_table(self, block_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(local ids, final ids)`` of block ``block_id``'s labels that are not plain roots."""
        lo = np.searchsorted(self.keys, np.uint64(block_id) << np.uint64(32))
        hi = np.searchsorted(self.keys, np.uint64(block_id + 1) << np.uint64(32))
        return local_of(self.keys[lo:hi]), self.final[lo:hi]


def components(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph with edges ``a[i] - b[i]`` (uint64 keys).

    Returns ``(nodes, component)``: the sorted unique keys and a component index for each.

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


def build_mapping(a: np.ndarray, b: np.ndarray, n_core: np.ndarray) -> Mapping:
    """Final ids from merge edges ``a - b`` (uint64 keys) and each block's number of core labels.

    >>> # block 0 has core labels 1, 2; block 1 has 1, 2 and a halo-only label 3
    >>> key = lambda blk, l: (blk << 32) | l
    >>> m = build_mapping(np.array([key(0, 2), key(1, 3)], np.uint64),
    ...                   np.array([key(1, 1), key(0, 1)], np.uint64), np.array([2, 2]))
    >>> m.num_segments, m.offsets.tolist()
    (3, [0, 2])
    >>> [(int(k >> 32), int(k & 0xFFFFFFFF), int(f)) for k, f in zip(m.keys, m.final)]
    [(1, 1, 2), (1, 3, 1)]
    """
    n_core = np.asarray(n_core, dtype=np.int64)
    nodes, comp = components(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    if len(nodes) == 0:
        offsets = np.concatenate([[0], np.cumsum(n_core)[:-1]]).astype(np.int64)
        return Mapping(offsets, nodes, nodes.copy(), int(n_core.sum()))
    blocks = block_of(nodes).astype(np.int64)
    is_core = local_of(nodes).astype(np.int64) <= n_core[blocks]
    # Representative = smallest core key per component (nodes are sorted, so the first core node).
    ncomp = int(comp.max()) + 1
    rep = np.full(ncomp, -1, np.int64)
    core_idx = np.flatnonzero(is_core)
    first = np.unique(comp[core_idx], return_index=True)
    rep[first[0]] = core_idx[first[1]]
    node_rep = rep[comp]  # index into nodes, or -1 for halo-only components
    is_root = node_rep == np.arange(len(nodes))
    # Everything in `nodes` that is not a root goes into the table.
    table = ~is_root
    nonroot_core = table & is_core
    nonroot_counts = np.bincount(blocks[nonroot_core], minlength=len(n_core))
    roots_per_block = n_core - nonroot_counts
    offsets = np.concatenate([[0], np.cumsum(roots_per_block)[:-1]]).astype(np.int64)
    # Rank of each representative among its block's roots.
    nonroot_keys = nodes[nonroot_core]  # sorted
    has_rep = node_rep >= 0
    rep_keys = nodes[node_rep[has_rep]]
    rep_blocks = blocks[node_rep[has_rep]]
    below = np.searchsorted(nonroot_keys, rep_keys) - np.searchsorted(
        nonroot_keys, rep_blocks.astype(np.uint64) << np.uint64(32)
    )
    final = np.zeros(len(nodes), np.uint64)
    final[has_rep] = (1 + offsets[rep_blocks] + local_of(rep_keys).astype(np.int64) - 1 - below).astype(np.uint64)
    return Mapping(offsets, nodes[table], final[table], int(roots_per_block.sum()))


def block_lut(block_id: int, n_total: int, mapping: Mapping) -> np.ndarray:
    """Lookup table local id -> final id (uint64) for one block; entry 0 is background.

    Applied to the block's core labels only (which are all ``<= n_core``).
    """
    locals_, finals = mapping.block_table(block_id)
    lut = np.zeros(n_total + 1, np.uint64)
    ids = np.arange(1, n_total + 1, dtype=np.int64)
    # Roots: rank among the block's roots = l - 1 - #non-roots (any table entry) below l.
    # Table entries above n_core are halo-only; they never sit below a core label.
    below = np.searchsorted(locals_.astype(np.int64), ids)
    lut[1:] = (1 + mapping.offsets[block_id] + ids - 1 - below).astype(np.uint64)
    lut[locals_.astype(np.int64)] = finals
    return lut
