"""Stage 7, segment properties: voxel count and bounding box of every segment, for the viewer.

Per block (the run's blocks, at full resolution) :func:`emseg.pipeline.outputs.segment_properties.block_stats`
goes to scratch (``post/stats/<block>``); a tree of reduce tasks (:func:`partial_task`, at most
:data:`~emseg.tasks.driver.engine.FAN_IN` children each) adds them up, and the root
(:func:`reduce_task`) writes ``<segmentation>/segment_properties/info``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any


from emseg.pipeline.io import urls
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.outputs.segment_properties import SegmentStats, block_stats, largest, properties_info, reduce_stats
from emseg.tasks.driver import runtime
from emseg.tasks.driver.engine import children
from emseg.pipeline import stages

STAGE = stages.PROPERTIES
PREFIX = "post/stats/"


@dataclass(frozen=True)
class PropertiesPlan:
    output: str
    volume_spec: dict[str, Any]  # the full-resolution segmentation
    grid: BlockGrid  # absolute voxel coordinates
    offset_zyx: tuple[int, int, int]  # the segmentation's voxel offset
    voxel_size_nm: tuple[float, float, float]
    properties_dir: str  # kvstore URL of <segmentation>/segment_properties
    run_id: str = ""
    top: int = 20


def stats_task(plan: PropertiesPlan, block_id: int, *upstream: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    box = plan.grid.block(block_id).write_box
    vol = runtime.volume(json.dumps(plan.volume_spec), False, plan.run_id)
    labels = vol.read(box.shift([-o for o in plan.offset_zyx]))
    stats = block_stats(labels, box.start)
    runtime.scratch(plan.output).put_arrays(f"{PREFIX}{block_id}", stats.to_arrays())
    return {"seconds": time.perf_counter() - t0, "voxels": int(box.size), "segments": len(stats)}


def part_key(level: int, index: int) -> str:
    """Scratch key of a block's statistics (level 0) or of a partial reduce (level >= 1)."""
    return f"{PREFIX}{index}" if level == 0 else f"{PREFIX}L{level}/{index}"


def _read(store: Any, level: int, indices: range) -> SegmentStats:
    return reduce_stats([SegmentStats.from_arrays(store.get_arrays(part_key(level, i))) for i in indices])


def partial_task(plan: PropertiesPlan, level: int, index: int, below: int, *upstream: Any) -> dict[str, Any]:
    """One node of the reduce tree: add up its children on ``level - 1`` (``below`` tasks there)."""
    t0 = time.perf_counter()
    store = runtime.scratch(plan.output)
    stats = _read(store, level - 1, children(index, below))
    store.put_arrays(part_key(level, index), stats.to_arrays())
    return {"seconds": time.perf_counter() - t0, "segments": len(stats)}


def reduce_task(plan: PropertiesPlan, level: int, count: int, *upstream: Any) -> dict[str, Any]:
    """The root: add up the ``count`` parts on ``level`` and write the segment properties; returns
    the largest segments."""
    t0 = time.perf_counter()
    stats = _read(runtime.scratch(plan.output), level, range(count))
    info = properties_info(stats, plan.voxel_size_nm)
    kv = urls.open_kvstore(plan.properties_dir)
    kv.write("info", json.dumps(info, separators=(",", ":")).encode()).result()
    return {"seconds": time.perf_counter() - t0, "segments": len(stats), "largest": largest(stats, plan.top),
            "voxels": int(stats.counts.sum()) if len(stats) else 0}
