"""``emseg evaluate``: score a segmentation against ground truth, slab by slab (bounded memory).

The two volumes are aligned by their voxel offsets: the segmentation's domain (for an emseg output,
the region of interest) is scored where the ground truth covers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.errors import RegionError
from pipeline.geometry import Box
from pipeline.metrics import Contingency, scores
from pipeline.volume import Source, open_volume


def evaluate(
    segmentation: Source,
    groundtruth: Source,
    *,
    iou_threshold: float = 0.5,
    min_size: int = 0,
    ignore_gt_zero: bool = True,
    slab: int = 64,
) -> dict[str, Any]:
    seg = open_volume(segmentation)
    gt = open_volume(groundtruth)
    seg_world = Box.from_shape(seg.shape_zyx, seg.offset_zyx)
    gt_world = Box.from_shape(gt.shape_zyx, gt.offset_zyx)
    if not gt_world.contains(seg_world):
        raise RegionError(
            f"the ground truth {gt.source} spans voxels {gt_world.start}..{gt_world.stop} but the segmentation "
            f"{seg.source} spans {seg_world.start}..{seg_world.stop}; score a segmentation inside the ground truth"
        )
    table = Contingency()
    z0, z1 = seg_world.start[0], seg_world.stop[0]
    for z in range(z0, z1, slab):
        world = Box((z, *seg_world.start[1:]), (min(z + slab, z1), *seg_world.stop[1:]))
        table.add(seg.read(world.shift([-o for o in seg.offset_zyx])), gt.read(world.shift([-o for o in gt.offset_zyx])))
    result = scores(table, iou_threshold=iou_threshold, ignore_gt_zero=ignore_gt_zero, min_size=min_size)
    result.update(
        {
            "segmentation": _name(segmentation),
            "groundtruth": _name(groundtruth),
            "voxels": seg_world.size,
            "iou_threshold": iou_threshold,
            "min_size": min_size,
            "ignore_gt_zero": ignore_gt_zero,
        }
    )
    return result


def _name(source: Source) -> Any:
    return source if isinstance(source, str) else dict(source) if isinstance(source, Mapping) else str(source)
