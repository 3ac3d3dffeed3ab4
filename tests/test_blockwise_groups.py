"""Blockwise agglomeration shares one context per 2 x 2 x 2 group of blocks.

The scores stage 2 stores for every block are checked against their definition, rebuilt here from
the stored edges alone: the block's group is its grid index // 2, the group's context is every block
with index 2g - 1 .. 2g + 2 along each axis, and the block's edges are scored by one mean-affinity
agglomeration of every edge owned by a block of that context whose two fragments both lie in it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from emseg.pipeline.io import kvstore
from emseg.pipeline.io.scratch import Scratch
from emseg.pipeline.stitching.agglomeration import Graph, affinities_from_labels, agglomerate
from emseg.pipeline.stitching.labels import block_of
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, run_config, write_zarr
from tests.test_stored_affinities import _model, _write

SHAPE = (40, 40, 48)  # 8³ blocks: a 5 x 5 x 6 grid, groups of 8, 4, 2 and 1 blocks


def _soft_affinities(shape: tuple[int, int, int]) -> np.ndarray:
    """Affinities of blob labels blurred with noise, so that the agglomeration's order matters."""
    labels = (blobs(shape, sigma=2.0, seed=11) // 32).astype(np.uint32)
    affs = affinities_from_labels(labels) * 0.7 + 0.15
    return np.clip(affs + np.random.default_rng(5).normal(0.0, 0.12, affs.shape), 0.0, 1.0).astype(np.float32)


def _expected_scores(store: Scratch, grid_shape: tuple[int, int, int], groups: bool = True) -> dict[int, np.ndarray]:
    """Every block's scores by their definition; ``groups=False``: with the block's own 3 x 3 x 3
    neighbourhood as its context instead (blockwise scope before the groups)."""
    gz, gy, gx = grid_shape
    ids = np.arange(gz * gy * gx).reshape(grid_shape)
    edges = {int(b): store.get_arrays(f"edges/{b}") for b in ids.ravel()}
    out = {}
    for index in itertools.product(range(gz), range(gy), range(gx)):
        if groups:
            g = [i // 2 for i in index]
            context = ids[tuple(slice(max(0, 2 * c - 1), 2 * c + 3) for c in g)].ravel()
            members = ids[tuple(slice(2 * c, 2 * c + 2) for c in g)].ravel()
        else:
            context = ids[tuple(slice(max(0, i - 1), i + 2) for i in index)].ravel()
            members = ids[index].ravel()
        graphs, where = [], {}
        at = 0
        for b in [*members, *(c for c in context if c not in members)]:
            e = edges[int(b)]
            keep = np.isin(block_of(e["b"]).astype(np.int64), context)
            graphs.append(Graph(e["a"][keep], e["b"][keep], e["total"][keep], e["count"][keep], join=e["join"][keep]))
            where[int(b)] = (at, keep)
            at += int(keep.sum())
        score = agglomerate(Graph.concat(graphs))
        block = int(ids[index])
        start, keep = where[block]
        assert keep.all(), "a block's own seams all lead into its group's context"
        out[block] = score[start:start + len(keep)]
    return out


@pytest.fixture(scope="module")
def soft(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("groups")
    img = write_zarr(root / "img.zarr", np.zeros(SHAPE, np.uint8), chunks=(8, 8, 8))
    return img, _write(root / "affs.zarr", _soft_affinities(SHAPE), [3, 8, 8, 8])


def test_each_group_scores_its_blocks_from_one_shared_context(soft, tmp_path, dask_address):
    img, affs = soft
    out = tmp_path / "out"
    cfg = run_config(img, out, dask_address, backend=_model(affs), blocks={"shape": [8, 8, 8], "halo": [4, 4, 4]},
                     write={"chunk_shape": [8, 8, 8]}, keep_scratch=True,
                     agglomeration={"scope": "blockwise", "threshold": 0.5})
    run = segment(cfg, progress=False)
    grid = (5, 5, 6)
    store = Scratch(str(out))
    want = _expected_scores(store, grid)
    got = {b: store.get_arrays(f"edges/{b}")["score"] for b in want}
    assert all(np.array_equal(got[b], want[b]) for b in want)
    # only the groups' other blocks read their scores from the first block (hood/<block>)
    leaders = {(z * 5 + y) * 6 + x for z, y, x in itertools.product(range(0, 5, 2), range(0, 5, 2), range(0, 6, 2))}
    stored = {int(k.rsplit("/", 1)[1]) for k in store.list_keys("hood/")}
    assert stored == set(range(150)) - leaders
    # and the context matters here: each block's own 3 x 3 x 3 neighbourhood scores some edges otherwise
    before = _expected_scores(store, grid, groups=False)
    assert sum(not np.array_equal(before[b], want[b]) for b in want) > 10

    # Resume after a member's task was lost with its stored scores: it scores the group itself,
    # and the same edges come out; its leader is not run again.
    member = 1  # block (0, 0, 1), in group (0, 0, 0)
    kvstore.delete_keys(store.kv, [f"hood/{member}", f"done/2-seams/{member}"])
    before = store.get_arrays(f"edges/{member}")["score"]
    again = segment(cfg, progress=False)
    assert again["stages"]["2-seams"]["ran"] == 1 and again["stages"]["1-segment"]["ran"] == 0
    assert np.array_equal(store.get_arrays(f"edges/{member}")["score"], before)
    assert again["segments"] == run["segments"] and again["status"] == "complete"
