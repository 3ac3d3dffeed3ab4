"""``emseg evaluate``: score a segmentation against ground truth, slab by slab (bounded memory).

The two volumes are aligned by their voxel offsets: the segmentation's domain (for an emseg output,
the region of interest) is scored where the ground truth covers it. Both must have the same voxel size:
voxel i of one is compared with voxel i of the other, so volumes at different resolutions are refused
(:class:`~emseg.pipeline.errors.ShapeMismatchError`, naming both voxel sizes) rather than scored wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emseg.pipeline.errors import RegionError, ShapeMismatchError
from emseg.pipeline.geometry import Box
from emseg.pipeline.quality.metrics import Contingency, scores
from emseg.pipeline.io.volume import Source, Volume, open_volume


def check_same_grid(seg_name: str, seg_voxel: tuple[float, ...], seg_known: bool, gt: Volume,
                    resample: bool = False) -> None:
    """Refuse a ground truth whose voxel size differs from the segmentation's (or is unknown beside a known one).

    With ``resample``, voxel sizes that differ by whole factors on every axis are accepted
    (:func:`fine_grid` says how the two are put on one grid).
    """
    gt_known = gt.voxel_size_source is not None
    if seg_known != gt_known:
        missing = gt.source if not gt_known else seg_name
        raise ShapeMismatchError(
            f"{missing} has no voxel size in its metadata, so emseg cannot tell whether it matches the other "
            "volume's; add the voxel size to its metadata (e.g. attribute resolution_nm)"
        )
    if not seg_known or np.allclose(seg_voxel, gt.voxel_size_nm, rtol=1e-6):
        return
    if resample:
        fine_grid(seg_name, seg_voxel, gt.source, gt.voxel_size_nm)
        return
    raise ShapeMismatchError(
        f"the segmentation {seg_name} has voxels of {_nm(seg_voxel)} but the ground truth {gt.source} has "
        f"{_nm(gt.voxel_size_nm)} (z, y, x); scoring compares voxel i with voxel i, so resample one of them "
        "to the other's voxel size first, or score on the finer grid with --resample (evaluate.resample: true)"
    )


def fine_grid(seg_name: str, seg_voxel: tuple[float, ...], gt_name: str, gt_voxel: tuple[float, ...]
              ) -> tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...]]:
    """The finer of two voxel sizes per axis, and each volume's whole factor to it.

    Returns ``(fine_nm, seg_factor, gt_factor)``, z, y, x. Raises
    :class:`~emseg.pipeline.errors.ShapeMismatchError` where one size is not a whole multiple of the other.

    >>> fine_grid("s", (8.0, 8.0, 8.0), "g", (4.0, 8.0, 16.0))
    ((4.0, 8.0, 8.0), (2, 1, 1), (1, 1, 2))
    """
    fine = tuple(min(a, b) for a, b in zip(seg_voxel, gt_voxel))
    factors = []
    for voxel in (seg_voxel, gt_voxel):
        k = [v / f for v, f in zip(voxel, fine)]
        if any(abs(x - round(x)) > 1e-6 for x in k):
            raise ShapeMismatchError(
                f"the segmentation {seg_name} ({_nm(seg_voxel)}) and the ground truth {gt_name} ({_nm(gt_voxel)}) "
                "have voxel sizes that are not whole multiples of each other on every axis; resample one of them "
                "to the other's voxel size first"
            )
        factors.append(tuple(int(round(x)) for x in k))
    return fine, factors[0], factors[1]


def check_groundtruth(groundtruth: Source, vol: Volume, roi: Box, resample: bool = False) -> None:
    """Before a run with ``evaluate``: the ground truth opens, has the input's voxel size and covers the roi."""
    gt = open_volume(groundtruth)
    check_same_grid(vol.source, vol.voxel_size_nm, True, gt, resample)
    seg_world = _fine_box(roi.shift(list(vol.offset_zyx)), vol.voxel_size_nm, gt.voxel_size_nm, resample)
    gt_world = _fine_box(Box.from_shape(gt.shape_zyx, gt.offset_zyx), gt.voxel_size_nm, vol.voxel_size_nm, resample)
    if not gt_world.contains(seg_world):
        raise RegionError(
            f"evaluate.groundtruth {gt.source} spans voxels {list(gt_world.start)}..{list(gt_world.stop)} but the run "
            f"segments {list(seg_world.start)}..{list(seg_world.stop)} (z, y, x, offsets included"
            f"{', on the finer grid' if resample else ''}); give a ground truth that covers the region, or shrink the roi"
        )


def _fine_box(world: Box, voxel: tuple[float, ...], other: tuple[float, ...], resample: bool) -> Box:
    """``world`` (voxels of ``voxel``) on the finer grid of the two sizes (itself without ``resample``)."""
    if not resample:
        return world
    k = [int(round(v / min(v, o))) for v, o in zip(voxel, other)]
    return Box([s * f for s, f in zip(world.start, k)], [e * f for e, f in zip(world.stop, k)])


def _read_fine(vol: Volume, fine: Box, factor: tuple[int, ...]) -> np.ndarray:
    """The labels of ``vol`` on the fine-grid box ``fine`` (world voxels), each voxel repeated ``factor`` times."""
    start = [s // k for s, k in zip(fine.start, factor)]
    stop = [-(-e // k) for e, k in zip(fine.stop, factor)]
    coarse = vol.read(Box(start, stop).shift([-o for o in vol.offset_zyx]))
    for axis, k in enumerate(factor):
        if k > 1:
            coarse = np.repeat(coarse, k, axis=axis)
    cut = tuple(slice(s - a * k, e - a * k) for s, e, a, k in zip(fine.start, fine.stop, start, factor))
    return coarse[cut]


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
    resample: bool = False,
    also_min_size: int | None = None,
) -> dict[str, Any]:
    """Score ``segmentation`` against ``groundtruth`` (VOI, adapted Rand, matches; :func:`emseg.pipeline.quality.metrics.scores`).

    Both must have the same voxel size, or, with ``resample``, sizes that are whole multiples of each
    other per axis: then both are scored on the finer grid, each coarse voxel standing for the fine
    voxels it covers (nearest neighbour), so every fine voxel counts once. Raises
    :class:`~emseg.pipeline.errors.ShapeMismatchError` for voxel sizes that do not fit and
    :class:`~emseg.pipeline.errors.RegionError` when the ground truth does not cover the segmentation.
    """
    seg = open_volume(segmentation)
    gt = open_volume(groundtruth)
    check_same_grid(seg.source, seg.voxel_size_nm, seg.voxel_size_source is not None, gt, resample)
    same = seg.voxel_size_source is None or np.allclose(seg.voxel_size_nm, gt.voxel_size_nm, rtol=1e-6)
    if same:
        seg_k = gt_k = (1, 1, 1)
    else:
        _, seg_k, gt_k = fine_grid(seg.source, seg.voxel_size_nm, gt.source, gt.voxel_size_nm)
    seg_world = _fine_box(Box.from_shape(seg.shape_zyx, seg.offset_zyx), seg.voxel_size_nm, gt.voxel_size_nm, not same)
    gt_world = _fine_box(Box.from_shape(gt.shape_zyx, gt.offset_zyx), gt.voxel_size_nm, seg.voxel_size_nm, not same)
    if not gt_world.contains(seg_world):
        raise RegionError(
            f"the ground truth {gt.source} spans voxels {gt_world.start}..{gt_world.stop} but the segmentation "
            f"{seg.source} spans {seg_world.start}..{seg_world.stop}"
            f"{'' if same else ' (on the finer grid)'}; score a segmentation inside the ground truth"
        )
    table = Contingency()
    z0, z1 = seg_world.start[0], seg_world.stop[0]
    for z in range(z0, z1, slab):
        world = Box((z, *seg_world.start[1:]), (min(z + slab, z1), *seg_world.stop[1:]))
        table.add(_read_fine(seg, world, seg_k), _read_fine(gt, world, gt_k))
    result = scores(table, iou_threshold=iou_threshold, ignore_gt_zero=ignore_gt_zero, min_size=min_size)
    if also_min_size is not None and also_min_size > min_size:
        # the same table scored again with only the objects of at least also_min_size voxels
        large = scores(table, iou_threshold=iou_threshold, ignore_gt_zero=ignore_gt_zero, min_size=also_min_size)
        result["large_objects"] = {k: large[k] for k in _LARGE_KEYS}
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
    if not same:
        result["resampled_to_nm"] = list(fine_grid(seg.source, seg.voxel_size_nm, gt.source, gt.voxel_size_nm)[0])
    return result


#: what ``evaluate(..., also_min_size=N)`` reports under ``large_objects``
_LARGE_KEYS = ("min_size", "voi_split", "voi_merge", "adapted_rand_error", "precision", "recall", "f1",
               "n_gt", "n_seg", "n_matched")


def _name(source: Source) -> Any:
    return source if isinstance(source, str) else dict(source) if isinstance(source, Mapping) else str(source)
