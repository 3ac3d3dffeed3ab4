"""The task graph of a run, streamed to Dask in a bounded window.

One graph per run, but never all of it in memory: tasks are generated in an order in which every
task's dependencies come before it, and submitted while at most ``window`` tasks are in flight. A
dependency that is still running is passed to Dask as a future; one that has finished has left its
result in scratch and is not passed at all. So the driver holds O(window) futures plus O(blocks)
bookkeeping, whatever the size of the volume — a million-block run starts at once.

Order: stage-1 blocks in C order; each stage-2 task as soon as its block and its forward neighbours
are submitted; each octree group of stage 3 as soon as its inputs are; then, after a barrier, the
top-down half of stage 3, its ``finish`` and, after another barrier, stage 4.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.stitching.unionfind import children, group_shape, groups, levels
from emseg.tasks import stage3_unionfind as stage3
from emseg.tasks.driver.context import RunContext
from emseg.tasks.stage1_segment import segment_block
from emseg.tasks.stage2_seams import seams_block
from emseg.tasks.stage4_relabel import relabel_block

Item = tuple[str, Any]  # (stage, item)


@dataclass
class Task:
    stage: str
    item: Any
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]
    deps: list[Item] = field(default_factory=list)


def _group_positions(grid: BlockGrid, block_pos: np.ndarray) -> list[np.ndarray]:
    """Per octree level (index 0 = level 1), each group's position: the latest of its blocks'."""
    gz, gy, gx = grid.grid_shape
    ids = np.arange(grid.num_blocks)
    index = np.stack([ids // (gy * gx), (ids // gx) % gy, ids % gx], axis=1)
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
    seam_pos = _latest(seg_pos, seg_pos, fwd)
    group_pos = _latest(seam_pos, seam_pos, bwd)  # a level-1 group also reads its backward neighbours' edges
    agglomerate = ctx.global_agglomeration and stage3.AGGLOMERATE in todo["3-unionfind"]
    if agglomerate:  # one task after every seam task; every group after it
        group_pos = np.full(n, n)
    seg = np.flatnonzero(np.isin(ids, todo["1-segment"]))
    seams = np.flatnonzero(np.isin(ids, todo["2-seams"]))
    seg = seg[np.lexsort((odd[seg], seg_pos[seg]))]  # at one position: the even block, then the odd
    streams: list[Iterator[tuple[int, float, Any]]] = [
        ((int(seg_pos[b]), 0.5 if odd[b] else 0, ("seg", int(b))) for b in seg)
    ]
    order = seams[np.argsort(seam_pos[seams], kind="stable")]
    streams.append((int(seam_pos[c]), 1, ("seams", int(c))) for c in order)
    if agglomerate:
        streams.append(iter([(n, 1.5, ("agglomerate",))]))
    if todo["3-unionfind"]:
        for level, level_pos in enumerate(_group_positions(grid, group_pos), start=1):
            streams.append(_group_stream(level, level_pos, group_shape(grid.grid_shape, level)))
    for _, _, what in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
        if what[0] == "seg":
            b = what[1]
            deps = []
            if odd[b]:
                deps = [("1-segment", int(j)) for j in sorted(np.concatenate([bwd[b], fwd[b]]).tolist()) if j >= 0]
            yield Task("1-segment", b, segment_block, (ctx, b), deps)
        elif what[0] == "seams":
            c = what[1]
            readers = np.concatenate([fwd[c], bwd[c]]) if ctx.boundary else fwd[c]  # boundary: both sides
            deps = [("1-segment", c)] + [("1-segment", int(j)) for j in readers if j >= 0]
            yield Task("2-seams", c, seams_block, (ctx, c), deps)
        elif what[0] == "agglomerate":
            deps = [("2-seams", int(c)) for c in range(n)]
            yield Task("3-unionfind", stage3.AGGLOMERATE, stage3.agglomerate_all, (ctx,), deps)
        else:
            _, level, group = what
            kids = children(group, level, grid.grid_shape)
            if level == 1 and ctx.global_agglomeration:
                deps = [("3-unionfind", stage3.AGGLOMERATE)]
            elif level == 1:
                members = {(k[0] * gy + k[1]) * gx + k[2] for k in kids}
                backward = {int(j) for m in members for j in bwd[m] if j >= 0}
                deps = [("2-seams", i) for i in sorted(members | backward)]
            else:
                deps = [("3-unionfind", stage3.up_item(level - 1, k)) for k in kids]
            yield Task("3-unionfind", stage3.up_item(level, group), stage3.up, (ctx, level, group), deps)


def resolving_tasks(ctx: RunContext) -> Iterator[Task]:
    """Stage 3's top-down half (each group after its parent)."""
    grid = ctx.grid
    top = levels(grid.grid_shape)
    for level in range(top, 0, -1):
        for group in groups(grid.grid_shape, level):
            deps = [("3-unionfind", stage3.up_item(level, group))]
            if level < top:
                deps.append(("3-unionfind", stage3.down_item(level + 1, tuple(g // 2 for g in group))))
            yield Task("3-unionfind", stage3.down_item(level, group), stage3.down, (ctx, level, group), deps)


def relabel_tasks(ctx: RunContext, blocks: list[int], token: str) -> Iterator[Task]:
    for b in blocks:
        yield Task("4-relabel", b, relabel_block, (ctx, b, token))


class Streamer:
    """Submits tasks with at most ``window`` in flight; records results and failures as they finish."""

    def __init__(self, client: Any, *, run_id: str, retries: int, window: int, on_done: Callable[[Task], None]):
        from distributed import as_completed

        self.client = client
        self.run_id = run_id
        self.retries = retries
        self.window = window
        self.on_done = on_done
        self.inflight: dict[Item, tuple[Any, Task]] = {}
        self.by_key: dict[str, Item] = {}
        self.completed = as_completed()
        self.failed: dict[Item, str] = {}
        self.results: dict[str, list[float]] = {}  # stage -> [tasks, task-seconds]
        self.kept: dict[Item, dict[str, Any]] = {}  # results the driver needs (stage 3 finish)
        self.wall: dict[str, list[float]] = {}  # stage -> [first submit, last completion]

    def submit(self, task: Task) -> None:
        item = (task.stage, task.item)
        if any(d in self.failed for d in task.deps):
            self.failed[item] = "skipped: an upstream task failed"
            self.on_done(task)
            return
        while len(self.inflight) >= self.window:
            self._drain(block=True)
        futures = [self.inflight[d][0] for d in task.deps if d in self.inflight]
        key = f"{task.stage}-{task.item}-{self.run_id}"
        f = self.client.submit(task.fn, *task.args, *futures, key=key, retries=self.retries, pure=False)
        self.inflight[item] = (f, task)
        self.by_key[f.key] = item
        self.completed.add(f)
        self.wall.setdefault(task.stage, [time.time(), time.time()])
        self._drain(block=False)

    def _drain(self, *, block: bool) -> None:
        for f in self.completed.next_batch(block=block and bool(self.inflight)):
            if f.status in ("lost", "pending"):
                # Its worker died after (or while) running it: Dask recomputes it; wait again.
                self.completed.add(f)
                continue
            item = self.by_key.pop(f.key)
            _, task = self.inflight.pop(item)
            if f.status == "finished":
                info = f.result()
                stat = self.results.setdefault(task.stage, [0, 0.0])
                stat[0] += 1
                stat[1] += float(info.get("seconds", 0.0))
                if task.item == "finish":
                    self.kept[item] = info
            elif any(d in self.failed for d in task.deps):
                self.failed[item] = "skipped: an upstream task failed"
            elif f.status == "cancelled":
                self.failed[item] = "cancelled by the scheduler (a worker died too often?)"
            else:
                exc = f.exception()
                self.failed[item] = f"{type(exc).__name__}: {exc}"
            self.wall[task.stage][1] = time.time()
            self.on_done(task)

    def barrier(self) -> None:
        """Wait for everything in flight."""
        while self.inflight:
            self._drain(block=True)
