"""Resume planning: which tasks of the four segmentation stages must (re)run, from the done-markers.

Every task leaves a done-marker in scratch after its outputs (see :mod:`emseg.pipeline.io.scratch`);
a rerun runs what has no marker, and everything that depends on redone work. Pure functions of the
markers and the block grid, so the driver (:mod:`emseg.tasks.driver.run`) and the tests share them.

Stage 3's items: ``agglomerate`` (a boundary backend's global agglomeration, first), ``up-L-z_y_x`` per
octree group bottom-up, ``down-L-z_y_x`` top-down, then ``finish``.

>>> from emseg.pipeline.geometry import BlockGrid, Box
>>> grid = BlockGrid(Box((0, 0, 0), (4, 4, 8)), (4, 4, 4), (1, 1, 1))
>>> unionfind_items(grid.grid_shape)
['up-1-0_0_0', 'down-1-0_0_0', 'finish']
>>> done = {stages.SEGMENT: {"0", "1"}, stages.SEAMS: {"0", "1"}, stages.UNIONFIND: set(), stages.RELABEL: set()}
>>> todo(done, grid)[stages.UNIONFIND], todo(done, grid)[stages.SEGMENT]
(['up-1-0_0_0', 'down-1-0_0_0', 'finish'], [])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emseg.pipeline import stages
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.stitching.unionfind import groups, levels

Vec = tuple[int, int, int]
AGGLOMERATE = "agglomerate"
FINISH = "finish"


def group_name(group: Vec) -> str:
    """An octree group's index as a name: ``(1, 0, 2)`` -> ``"1_0_2"``."""
    return "_".join(map(str, group))


def up_item(level: int, group: Vec) -> str:
    """Stage 3's bottom-up task of an octree group."""
    return f"up-{level}-{group_name(group)}"


def down_item(level: int, group: Vec) -> str:
    """Stage 3's top-down task of an octree group."""
    return f"down-{level}-{group_name(group)}"


def unionfind_items(grid_shape: Vec, agglomerate: bool = False) -> list[str]:
    """Every stage-3 task of a grid, in an order that respects dependencies (``agglomerate``: a
    boundary backend's global agglomeration comes first)."""
    top = levels(grid_shape)
    out = [AGGLOMERATE] if agglomerate else []
    out += [up_item(L, g) for L in range(1, top + 1) for g in groups(grid_shape, L)]
    out += [down_item(L, g) for L in range(top, 0, -1) for g in groups(grid_shape, L)]
    return out + [FINISH]


def all_items(grid: BlockGrid, global_agglomeration: bool = False) -> dict[str, list[Any]]:
    """Every task of the four segmentation stages, by stage."""
    ids = list(range(grid.num_blocks))
    return {stages.SEGMENT: ids, stages.SEAMS: ids,
            stages.UNIONFIND: list(unionfind_items(grid.grid_shape, global_agglomeration)), stages.RELABEL: ids}


def predict_reach(grid: BlockGrid, fragment_context: int) -> tuple[int, int, int]:
    """With ``write.affinities``: how many blocks away (z, y, x) a block's stage 1 reads stored
    affinities, the write box grown by ``fragment_context`` within its read box.

    >>> from emseg.pipeline.geometry import Box
    >>> predict_reach(BlockGrid(Box((0, 0, 0), (64, 64, 64)), (16, 16, 8), (24, 4, 24)), 16)
    (1, 1, 2)
    """
    return tuple(-(-min(fragment_context, h) // b) for h, b in zip(grid.halo, grid.block_shape))  # type: ignore[return-value]


def predict_window(grid: BlockGrid, block_id: int, reach: Sequence[int]) -> list[int]:
    """The blocks whose stored affinities stage 1 of ``block_id`` reads: those up to ``reach``
    blocks away along each axis (:func:`predict_reach`), in id order."""
    index = grid.block_index(block_id)
    ranges = [range(max(0, i - r), min(g, i + r + 1)) for i, r, g in zip(index, reach, grid.grid_shape)]
    return [grid.block_id((z, y, x)) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def predict_last(grid: BlockGrid, reach: Sequence[int]) -> np.ndarray:
    """Per block id, the largest id of its :func:`predict_window` (the window's far corner)."""
    index = grid.block_indices(np.arange(grid.num_blocks))
    far = np.minimum(index + np.asarray(reach), np.asarray(grid.grid_shape) - 1)
    return np.ravel_multi_index(far.T, grid.grid_shape)


def predict_todo(grid: BlockGrid, segment_todo: Sequence[int], predicted: set[str], reach: Sequence[int]) -> list[int]:
    """The ``1-predict`` blocks to run: those in the window of a stage-1 block to run that have no
    done-marker (``predicted``: the marker names)."""
    from scipy import ndimage

    want = np.zeros(grid.num_blocks, bool)
    want[np.asarray(segment_todo, np.int64)] = True
    size = [2 * r + 1 for r in reach]
    need = ndimage.maximum_filter(want.reshape(grid.grid_shape), size=size, mode="constant", cval=False).ravel()
    done = [int(i) for i in predicted if i.isdigit() and int(i) < grid.num_blocks]
    need[done] = False
    return np.flatnonzero(need).tolist()


def incomplete(done: Mapping[str, set[str]], stage: str, grid: BlockGrid, global_agglomeration: bool = False) -> bool:
    """Whether some task of ``stage`` has no done-marker."""
    return not {str(i) for i in all_items(grid, global_agglomeration)[stage]} <= done[stage]


def todo(done: Mapping[str, set[str]], grid: BlockGrid, neighbour_prompts: bool = False,
         threshold: float | None = None, finished_threshold: float | None = None, boundary: bool = False,
         global_agglomeration: bool = False) -> dict[str, list[int | str]]:
    """What must run, given the done-markers ``done[stage]`` (item names as strings).

    The dependants of redone work are redone too. With ``neighbour_prompts``, an odd block whose
    (even) face neighbour is redone is redone too, since it took its prompts from that neighbour's
    labels. With a boundary backend's agglomeration ``threshold``, union-find and relabel are redone
    when the finished union-find used another one (``finished_threshold``); and since a boundary seam
    task reads its backward neighbours too (with blockwise agglomeration, its whole hood:
    ``BlockGrid.hood``), their redone blocks redo it.
    """
    n = grid.num_blocks

    def finished(stage: str) -> np.ndarray:
        mask = np.zeros(n, bool)
        ids = [int(i) for i in done[stage] if i.isdigit() and int(i) < n]
        mask[ids] = True
        return mask

    redo_seg = ~finished(stages.SEGMENT)
    fwd = grid.forward_ids()
    if neighbour_prompts:
        nbs = np.concatenate([fwd, grid.backward_ids()], axis=1)
        prompted_by_redo = (redo_seg[np.maximum(nbs, 0)] & (nbs >= 0)).any(axis=1)
        redo_seg |= grid.odd() & prompted_by_redo
    redo_nb = np.zeros(n, bool)
    if boundary and not global_agglomeration:  # blockwise: a seam task reads its hood (BlockGrid.hood)
        redo_nb = grid.hood_max(redo_seg, False)
    else:
        readers = np.concatenate([fwd, grid.backward_ids()], axis=1) if boundary else fwd
        for axis in range(readers.shape[1]):
            has = readers[:, axis] >= 0
            redo_nb[has] |= redo_seg[readers[has, axis]]
    redo_seams = ~finished(stages.SEAMS) | redo_seg | redo_nb
    uf_items = unionfind_items(grid.grid_shape, global_agglomeration)
    stale = threshold is not None and finished_threshold != threshold
    uf: list[int | str] = (list(uf_items) if stale or redo_seams.any() or not set(uf_items) <= done[stages.UNIONFIND]
                           else [])
    redo_relabel = np.ones(n, bool) if uf else ~finished(stages.RELABEL)
    return {
        stages.SEGMENT: np.flatnonzero(redo_seg).tolist(),
        stages.SEAMS: np.flatnonzero(redo_seams).tolist(),
        stages.UNIONFIND: uf,
        stages.RELABEL: np.flatnonzero(redo_relabel).tolist(),
    }
