"""The octree union-find (stage 3) against connected components of the whole edge set."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.pipeline.geometry import Box
from emseg.pipeline.stitching.labels import key
from emseg.pipeline.io.scratch import Scratch
from emseg.pipeline.stitching.unionfind import components, groups, levels
from emseg.tasks.driver import runtime
from emseg.tasks import stage3_unionfind as stage3
from emseg.tasks.driver.context import RunContext


def _context(tmp_path, grid_blocks):
    roi = Box((0, 0, 0), tuple(8 * g for g in grid_blocks))
    return RunContext(input_spec={}, output=f"file://{tmp_path}", segmentation="", roi=roi, block_shape=(8, 8, 8),
                      halo=(1, 1, 1), backend_name="threshold-cc", backend_params={}, stitch={})


def _random_edges(ctx, n_core, n_halo, rng, per_pair):
    """Merge edges between forward face neighbours, some to halo-only labels, incl. long chains."""
    grid = ctx.grid
    edges = {}
    for block in grid:
        a_list, b_list = [], []
        for _, nb in grid.forward_neighbours(block):
            la = rng.integers(1, n_core[block.id] + n_halo + 1, per_pair)
            lb = rng.integers(1, n_core[nb.id] + n_halo + 1, per_pair)
            a_list.append(key(block.id, la))
            b_list.append(key(nb.id, lb))
        edges[block.id] = (np.concatenate(a_list) if a_list else np.zeros(0, np.uint64),
                           np.concatenate(b_list) if b_list else np.zeros(0, np.uint64))
    return edges


@pytest.mark.parametrize("grid_blocks", [(1, 1, 1), (1, 1, 5), (3, 4, 5), (5, 2, 9)])
def test_octree_matches_global_components(tmp_path, grid_blocks):
    rng = np.random.default_rng(sum(grid_blocks))
    ctx = _context(tmp_path, grid_blocks)
    grid = ctx.grid
    n = grid.num_blocks
    n_core = rng.integers(0, 12, n)
    n_halo = 3
    edges = _random_edges(ctx, n_core, n_halo, rng, per_pair=6)
    store = Scratch(ctx.output)
    for block_id, (a, b) in edges.items():
        store.put_arrays(f"edges/{block_id}", {"a": a, "b": b, "merge": np.ones(len(a), bool)})
        store.mark_done("1-segment", block_id, {"n_core": int(n_core[block_id]), "n_total": int(n_core[block_id]) + n_halo})
        store.put_arrays(f"labels/{block_id}", {"core": np.zeros(1, np.uint32),
                                                "n": np.array([n_core[block_id], n_core[block_id] + n_halo])})
    top = levels(grid.grid_shape)
    for level in range(1, top + 1):
        for group in groups(grid.grid_shape, level):
            stage3.up(ctx, level, group)
    for level in range(top, 0, -1):
        for group in groups(grid.grid_shape, level):
            stage3.down(ctx, level, group)
    token = stage3.finish(ctx)["token"]

    # The reference: components of all edges plus every core label as its own node.
    a = np.concatenate([e[0] for e in edges.values()])
    b = np.concatenate([e[1] for e in edges.values()])
    nodes, comp = components(a, b)
    all_core = np.concatenate([key(i, np.arange(1, n_core[i] + 1)) for i in range(n)])
    ours = np.concatenate([runtime.final_ids(ctx.output, token, i, np.arange(1, n_core[i] + 1)) for i in range(n)])
    # ids are dense 1..N and in key order of each component's smallest core key
    assert np.array_equal(np.unique(ours), np.arange(1, ours.max() + 1))
    ref_comp = np.full(len(all_core), -1, np.int64)
    pos = np.clip(np.searchsorted(nodes, all_core), 0, max(len(nodes) - 1, 0))
    found = (nodes[pos] == all_core) if len(nodes) else np.zeros(len(all_core), bool)
    ref_comp[found] = comp[pos[found]]
    singles = ~found
    ref_comp[singles] = -1 - np.arange(singles.sum())  # core labels in no edge: alone
    # same partition of the core labels
    pairs = np.unique(np.stack([ours.astype(np.int64), ref_comp]), axis=1)
    assert pairs.shape[1] == len(np.unique(ours)) == len(np.unique(ref_comp))
    # first appearance in key order gets the smallest id
    first = np.sort(np.unique(ours, return_index=True)[1])
    assert np.array_equal(ours[first], np.arange(1, ours.max() + 1))
