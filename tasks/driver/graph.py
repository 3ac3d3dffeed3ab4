"""The tasks of the segmentation stages (1-4), generated dependencies first.

One graph per run, but never all of it in memory: the generators below yield tasks in an order in
which every task's dependencies come before it, and :class:`emseg.tasks.driver.engine.Streamer`
submits them with a bounded number in flight. The driver holds O(window) futures plus O(blocks)
bookkeeping, whatever the size of the volume — a million-block run starts at once.

Order: stage-1 blocks in C order (with ``write.affinities``, each after ``1-predict`` of the
blocks whose stored affinities it reads, :func:`emseg.pipeline.stitching.resume.predict_window`);
each stage-2 task as soon as its block and its forward neighbours are submitted (with blockwise
agglomeration, its whole hood, ``BlockGrid.hood``, and the first block of its group, which scores
the group's edges); each octree group of stage 3 as soon as its inputs are; then, after a barrier,
the top-down half of stage 3, its ``finish`` and, after another barrier, stage 4.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

import numpy as np

from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.stitching.unionfind import children, group_shape, groups, levels
from emseg.tasks import stage3_unionfind as stage3
from emseg.tasks.driver.context import RunContext
from emseg.tasks.driver.engine import Task
from emseg.tasks.stage1_segment import predict_block, segment_block
from emseg.tasks.stage2_seams import seams_block
from emseg.tasks.stage4_relabel import relabel_block
from emseg.pipeline import stages
from emseg.pipeline.stitching import resume


def _group_positions(grid: BlockGrid, block_pos: np.ndarray) -> list[np.ndarray]:
    """Per octree level (index 0 = level 1), each group's position: the latest of its blocks'."""
    index = grid.block_indices(np.arange(grid.num_blocks))
    out = []
    for level in range(1, levels(grid.grid_shape) + 1):
        shape = group_shape(grid.grid_shape, level)
        g = index >> level
        flat = (g[:, 0] * shape[1] + g[:, 1]) * shape[2] + g[:, 2]
        level_pos = np.zeros(shape[0] * shape[1] * shape[2], np.int64)
        np.maximum.at(level_pos, flat, block_pos)
        out.append(level_pos)
    return out


def _group_stream(level: int, level_pos: np.ndarray, shape: tuple[int, int, int]) -> Iterator[tuple[int, float, Any]]:
    for f in np.argsort(level_pos, kind="stable").tolist():
        group = (f // (shape[1] * shape[2]), f // shape[2] % shape[1], f % shape[2])
        yield int(level_pos[f]), 1 + level, ("up", level, group)


def _latest(pos: np.ndarray, own: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``max(own, pos[others])`` per row, ignoring the -1 entries of ``others``."""
    return np.maximum(own, np.where(others >= 0, pos[np.maximum(others, 0)], -1).max(axis=1))


def streaming_tasks(ctx: RunContext, todo: dict[str, list[Any]]) -> Iterator[Task]:
    """The bottom-up part of a run (stages 1, 2 and stage 3's ``up``), dependencies first.

    Every task gets a position, the latest position of its dependencies (a stage-1 block's is its
    id, or with neighbour prompts an odd block's is that of its latest face neighbour), and the
    tasks are merged in position order: so a task is always yielded after everything it needs.
    """
    grid = ctx.grid
    gz, gy, gx = grid.grid_shape
    n = grid.num_blocks
    ids = np.arange(n)
    fwd = grid.forward_ids()
    bwd = grid.backward_ids()
    odd = grid.odd() if ctx.neighbour_prompts else np.zeros(n, bool)
    seg_pos = np.where(odd, _latest(ids, ids, fwd), ids)  # odd blocks wait for their forward neighbours
    predict = todo.get(stages.PREDICT, [])
    reach = (0, 0, 0)
    if ctx.affinities is not None:  # write.affinities: stage 1 reads what its window's blocks predicted
        reach = resume.predict_reach(grid, int(ctx.backend_params["fragment_context"]))
        seg_pos = resume.predict_last(grid, reach)
    predicting = np.zeros(n, bool)  # one bit per block: which 1-predict tasks this run submits
    predicting[np.asarray(predict, np.int64)] = True
    blockwise = ctx.boundary and not ctx.global_agglomeration
    if blockwise:  # a block's edges are scored with its hood: it waits for all of it
        seam_pos = grid.hood_max(seg_pos)
    else:
        seam_pos = _latest(seg_pos, seg_pos, fwd)
    # a level-1 group also reads its backward neighbours' edges; with blockwise enclosed / small rules,
    # the edges of every block in those blocks' hoods (stage3.group_hood_merges)
    hood_rules = blockwise and (ctx.enclosed is not None or ctx.small is not None)
    read_pos = grid.hood_max(seam_pos) if hood_rules else seam_pos
    group_pos = _latest(read_pos, read_pos, bwd)
    agglomerate = ctx.global_agglomeration and stage3.AGGLOMERATE in todo[stages.UNIONFIND]
    if agglomerate:  # one task after every seam task; every group after it
        group_pos = np.full(n, n)
    seg = np.flatnonzero(np.isin(ids, todo[stages.SEGMENT]))
    seams = np.flatnonzero(np.isin(ids, todo[stages.SEAMS]))
    seg = seg[np.lexsort((odd[seg], seg_pos[seg]))]  # at one position: the even block, then the odd
    streams: list[Iterator[tuple[int, float, Any]]] = [
        ((int(b), -1, ("predict", int(b))) for b in sorted(predict)),
        ((int(seg_pos[b]), 0.5 if odd[b] else 0, ("seg", int(b))) for b in seg),
    ]
    order = seams[np.argsort(seam_pos[seams], kind="stable")]
    streams.append((int(seam_pos[c]), 1, ("seams", int(c))) for c in order)
    if agglomerate:
        streams.append(iter([(n, 1.5, ("agglomerate",))]))
    if todo[stages.UNIONFIND]:
        for level, level_pos in enumerate(_group_positions(grid, group_pos), start=1):
            streams.append(_group_stream(level, level_pos, group_shape(grid.grid_shape, level)))
    for _, _, what in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
        if what[0] == "predict":
            yield Task(stages.PREDICT, what[1], predict_block, (ctx, what[1]), resources=ctx.model_resources)
        elif what[0] == "seg":
            b = what[1]
            deps = []
            if odd[b]:
                deps = [(stages.SEGMENT, int(j)) for j in sorted(np.concatenate([bwd[b], fwd[b]]).tolist()) if j >= 0]
            if ctx.affinities is not None:
                deps = [(stages.PREDICT, j) for j in resume.predict_window(grid, b, reach) if predicting[j]]
            # the model runs in 1-predict when predicting first, else here
            yield Task(stages.SEGMENT, b, segment_block, (ctx, b), deps,
                       resources=ctx.model_resources if ctx.affinities is None else None)
        elif what[0] == "seams":
            c = what[1]
            if blockwise:  # the group's first block scores the group's edges (stage2_seams.group_scores)
                group = tuple(i // 2 for i in grid.block_index(c))
                deps = [(stages.SEGMENT, i) for i in grid.group_hood_ids(group)]
                leader = grid.group_member_ids(group)[0]
                if leader != c:
                    deps.append((stages.SEAMS, leader))
            else:
                readers = np.concatenate([fwd[c], bwd[c]]) if ctx.boundary else fwd[c]  # boundary: both sides
                deps = [(stages.SEGMENT, c)] + [(stages.SEGMENT, int(j)) for j in readers if j >= 0]
            yield Task(stages.SEAMS, c, seams_block, (ctx, c), deps)
        elif what[0] == "agglomerate":
            deps = [(stages.SEAMS, int(c)) for c in range(n)]
            yield Task(stages.UNIONFIND, stage3.AGGLOMERATE, stage3.agglomerate_all, (ctx,), deps)
        else:
            _, level, group = what
            kids = children(group, level, grid.grid_shape)
            if level == 1 and ctx.global_agglomeration:
                deps = [(stages.UNIONFIND, stage3.AGGLOMERATE)]
            elif level == 1:
                members = {(k[0] * gy + k[1]) * gx + k[2] for k in kids}
                sources = members | {int(j) for m in members for j in bwd[m] if j >= 0}
                if hood_rules:
                    hoods = {tuple(i // 2 for i in grid.block_index(s)) for s in sources}  # blocks of a group share one
                    sources = {i for g in hoods for i in grid.group_hood_ids(g)}
                deps = [(stages.SEAMS, i) for i in sorted(sources)]
            else:
                deps = [(stages.UNIONFIND, stage3.up_item(level - 1, k)) for k in kids]
            yield Task(stages.UNIONFIND, stage3.up_item(level, group), stage3.up, (ctx, level, group), deps)


def resolving_tasks(ctx: RunContext) -> Iterator[Task]:
    """Stage 3's top-down half (each group after its parent)."""
    grid = ctx.grid
    top = levels(grid.grid_shape)
    for level in range(top, 0, -1):
        for group in groups(grid.grid_shape, level):
            deps = [(stages.UNIONFIND, stage3.up_item(level, group))]
            if level < top:
                deps.append((stages.UNIONFIND, stage3.down_item(level + 1, tuple(g // 2 for g in group))))
            yield Task(stages.UNIONFIND, stage3.down_item(level, group), stage3.down, (ctx, level, group), deps)


def relabel_tasks(ctx: RunContext, blocks: list[int], token: str) -> Iterator[Task]:
    for b in blocks:
        yield Task(stages.RELABEL, b, relabel_block, (ctx, b, token))
