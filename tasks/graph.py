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

from pipeline.geometry import BlockGrid
from pipeline.unionfind import children, groups, levels
from tasks import stage3_unionfind as stage3
from tasks.context import RunContext
from tasks.stage1_segment import segment_block
from tasks.stage2_seams import seams_block
from tasks.stage4_relabel import relabel_block

Item = tuple[str, Any]  # (stage, item)


@dataclass
class Task:
    stage: str
    item: Any
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]
    deps: list[Item] = field(default_factory=list)


def _forward_max(grid: BlockGrid) -> np.ndarray:
    """For each block, the largest id among itself and its forward face neighbours."""
    return np.maximum(np.arange(grid.num_blocks), grid.forward_ids().max(axis=1))


def streaming_tasks(ctx: RunContext, todo: dict[str, list[Any]]) -> Iterator[Task]:
    """The bottom-up part of a run (stages 1, 2 and stage 3's ``up``), dependencies first."""
    grid = ctx.grid
    seg = set(todo["1-segment"])
    seams = set(todo["2-seams"])
    uf = bool(todo["3-unionfind"])
    # Position in the stage-1 stream after which each task may be submitted.
    seam_pos = _forward_max(grid)
    streams: list[Iterator[tuple[int, int, Any]]] = [iter((b, 0, ("seg", b)) for b in range(grid.num_blocks) if b in seg)]
    order = np.argsort(seam_pos, kind="stable")
    streams.append(iter((int(seam_pos[c]), 1, ("seams", int(c))) for c in order if int(c) in seams))
    if uf:
        top = levels(grid.grid_shape)
        pos: dict[tuple[int, tuple[int, int, int]], int] = {}
        for level in range(1, top + 1):
            entries = []
            for group in groups(grid.grid_shape, level):
                kids = children(group, level, grid.grid_shape)
                if level == 1:
                    p = max(int(seam_pos[grid.block_id(k)]) for k in kids)
                else:
                    p = max(pos[(level - 1, k)] for k in kids)
                pos[(level, group)] = p
                entries.append((p, 1 + level, ("up", level, group)))
            entries.sort(key=lambda e: e[0])
            streams.append(iter(entries))
    for _, _, what in heapq.merge(*streams, key=lambda e: (e[0], e[1])):
        if what[0] == "seg":
            yield Task("1-segment", what[1], segment_block, (ctx, what[1]))
        elif what[0] == "seams":
            block = grid.block(what[1])
            deps = [("1-segment", j) for j in [block.id, *(nb.id for _, nb in grid.forward_neighbours(block))]]
            yield Task("2-seams", what[1], seams_block, (ctx, what[1]), deps)
        else:
            _, level, group = what
            kids = children(group, level, grid.grid_shape)
            if level == 1:
                members = {grid.block_id(k) for k in kids}
                sources = members | {nb.id for m in members for _, d, nb in grid.neighbours(grid.block(m)) if d < 0}
                deps = [("2-seams", i) for i in sorted(sources)]
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
            else:
                exc = f.exception()
                self.failed[item] = f"{type(exc).__name__}: {exc}"
            self.wall[task.stage][1] = time.time()
            self.on_done(task)

    def barrier(self) -> None:
        """Wait for everything in flight."""
        while self.inflight:
            self._drain(block=True)
