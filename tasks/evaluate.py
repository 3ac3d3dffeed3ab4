"""``emseg evaluate``: score a segmentation against ground truth, slab by slab (bounded memory).

The two volumes are aligned by their voxel offsets: the segmentation's domain (for an emseg output,
the region of interest) is scored where the ground truth covers it. Both must have the same voxel size:
voxel i of one is compared with voxel i of the other, so volumes at different resolutions are refused
(:class:`~pipeline.errors.ShapeMismatchError`, naming both voxel sizes) rather than scored wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import RegionError, ShapeMismatchError
from pipeline.geometry import Box
from pipeline.metrics import Contingency, scores
from pipeline.volume import Source, Volume, open_volume


def check_same_grid(seg_name: str, seg_voxel: tuple[float, ...], seg_known: bool, gt: Volume) -> None:
    """Refuse a ground truth whose voxel size differs from the segmentation's (or is unknown beside a known one)."""
    gt_known = gt.voxel_size_source is not None
    if seg_known and gt_known and not np.allclose(seg_voxel, gt.voxel_size_nm, rtol=1e-6):
        raise ShapeMismatchError(
            f"the segmentation {seg_name} has voxels of {_nm(seg_voxel)} but the ground truth {gt.source} has "
            f"{_nm(gt.voxel_size_nm)} (z, y, x); scoring compares voxel i with voxel i, so resample one of them "
            "to the other's voxel size first"
        )
    if seg_known != gt_known:
        missing = gt.source if not gt_known else seg_name
        raise ShapeMismatchError(
            f"{missing} has no voxel size in its metadata, so emseg cannot tell whether it matches the other "
            "volume's; add the voxel size to its metadata (e.g. attribute resolution_nm)"
        )


def check_groundtruth(groundtruth: Source, vol: Volume, roi: Box) -> None:
    """Before a run with ``evaluate``: the ground truth opens, has the input's voxel size and covers the roi."""
    gt = open_volume(groundtruth)
    check_same_grid(vol.source, vol.voxel_size_nm, True, gt)
    world = roi.shift(list(vol.offset_zyx))
    gt_world = Box.from_shape(gt.shape_zyx, gt.offset_zyx)
    if not gt_world.contains(world):
        raise RegionError(
            f"evaluate.groundtruth {gt.source} spans voxels {list(gt_world.start)}..{list(gt_world.stop)} but the run "
            f"segments {list(world.start)}..{list(world.stop)} (z, y, x, offsets included); give a ground truth "
            "that covers the region, or shrink the roi"
        )


def _nm(v: tuple[float, ...]) -> str:
    return " x ".join(f"{x:g}" for x in v) + " nm"


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
    check_same_grid(seg.source, seg.voxel_size_nm, seg.voxel_size_source is not None, gt)
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
