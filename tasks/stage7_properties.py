"""Stage 7, segment properties: voxel count and bounding box of every segment, for the viewer.

Per block (the run's blocks, at full resolution) :func:`emseg.pipeline.outputs.segment_properties.block_stats`
goes to scratch (``post/stats/<block>``); one reduce task adds them up and writes
``<segmentation>/segment_properties/info``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import tensorstore as ts

from emseg.pipeline.io import urls
from emseg.pipeline.geometry import BlockGrid
from emseg.pipeline.outputs.segment_properties import SegmentStats, block_stats, largest, properties_info, reduce_stats
from emseg.tasks.driver import runtime

STAGE = "7-properties"
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


def reduce_task(plan: PropertiesPlan, *upstream: Any) -> dict[str, Any]:
    """Add up the block statistics and write the segment properties; returns the largest segments."""
    t0 = time.perf_counter()
    store = runtime.scratch(plan.output)
    parts = [SegmentStats.from_arrays(store.get_arrays(f"{PREFIX}{i}")) for i in range(plan.grid.num_blocks)]
    stats = reduce_stats(parts)
    info = properties_info(stats, plan.voxel_size_nm)
    kv = ts.KvStore.open(urls.kvstore_spec(plan.properties_dir), context=ts.Context(urls.CONTEXT)).result()
    kv.write("info", json.dumps(info, separators=(",", ":")).encode()).result()
    return {"seconds": time.perf_counter() - t0, "segments": len(stats), "largest": largest(stats, plan.top),
            "voxels": int(stats.counts.sum()) if len(stats) else 0}
