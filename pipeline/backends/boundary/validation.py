"""Validation of a boundary model: affinities -> fragments + agglomeration -> VOI and adapted Rand.

The segmentation step is :func:`emseg.pipeline.stitching.agglomeration.segment`, the `affinities`
backend's own fragments + agglomeration on the whole region. Training (forest and U-Net) reads its
regions and validates through this module. Scores come from :mod:`emseg.pipeline.quality.metrics`
(VOI split/merge in bits, adapted Rand error; ground-truth label 0 ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emseg.pipeline.errors import DtypeError

if TYPE_CHECKING:
    from emseg.pipeline.backends.boundary.config import Region, TrainConfig


def segment(affs: np.ndarray, threshold: float) -> np.ndarray:
    """uint32 labels (z, y, x) of (3, z, y, x) affinities agglomerated up to ``threshold``.

    The threshold is on waterz's ``OneMinus<MeanAffinity>`` score: neighbouring regions merge while
    1 - (mean affinity on their contact) <= ``threshold`` (so 0.5 merges mean affinity >= 0.5, and a
    larger threshold merges more).
    """
    from emseg.pipeline.stitching.agglomeration import segment as product_segment

    return np.asarray(product_segment(affs, threshold))


def score_thresholds(
    affs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """VOI split/merge and adapted Rand error (see :mod:`emseg.pipeline.quality.metrics`) at each threshold.

    Parameters
    ----------
    affs
        (3, z, y, x) affinities of the region.
    labels
        (z, y, x) ground truth of the same region (0 = unlabelled, ignored).
    """
    from emseg.pipeline.quality.metrics import evaluate_arrays

    rows = []
    for t in thresholds:
        seg = segment(affs, t)
        s = evaluate_arrays(seg, np.asarray(labels))
        rows.append({
            "threshold": float(t), "voi_split": s["voi_split"], "voi_merge": s["voi_merge"],
            "voi": s["voi_split"] + s["voi_merge"], "adapted_rand_error": s["adapted_rand_error"],
            "segments": int(s["n_seg"]),
        })
    return rows


def to_unit(image: np.ndarray) -> np.ndarray:
    """float32 intensities in [0, 1]: uint8 / 255, uint16 / 65535, floats as they are."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32)
    raise DtypeError(f"training images must be uint8, uint16 or float in [0, 1], got {image.dtype}; convert the volume")


def read(url: str, region: Region | None, grow: int = 0) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The region (grown by ``grow`` voxels, clipped to the volume) and the slices of the region in it."""
    from emseg.pipeline.errors import RegionError
    from emseg.pipeline.geometry import Box
    from emseg.pipeline.io.volume import open_volume

    volume = open_volume(url)
    box = volume.box if region is None else Box(region.start, region.stop)
    if not volume.box.contains(box):
        raise RegionError(
            f"region {list(box.start)}..{list(box.stop)} lies outside {url} of shape {list(volume.shape_zyx)}; "
            "give a region inside the volume"
        )
    start = [max(a, s - grow) for a, s in zip(volume.box.start, box.start)]
    stop = [min(b, e + grow) for b, e in zip(volume.box.stop, box.stop)]
    data = np.asarray(volume.read(Box(tuple(start), tuple(stop))))
    inner = tuple(slice(s - a, e - a) for s, e, a in zip(box.start, box.stop, start))
    return data, inner


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the lowest VOI sum."""
    return min(rows, key=lambda r: r["voi"])


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Scores at each threshold on one line, for the training log."""
    return "  ".join(
        f"t={r['threshold']:.2f} voi {r['voi_split']:.3f}/{r['voi_merge']:.3f} arand {r['adapted_rand_error']:.3f}"
        for r in rows
    )


def validate(model: Any, config: TrainConfig) -> list[dict[str, Any]] | None:
    """Scores of ``model`` on ``config.val_region`` at ``config.thresholds`` (None: no validation region)."""
    if config.val_region is None:
        return None
    grow = max(model.context_zyx) + 1
    image, inner = read(config.image, config.val_region, grow=grow)
    labels, _ = read(config.labels, config.val_region)
    origin = tuple(int(r - s.start) for r, s in zip(config.val_region.start, inner))
    affs = model.predict(to_unit(image), origin_zyx=origin)[(slice(None),) + inner]
    return score_thresholds(affs, labels, config.thresholds)
