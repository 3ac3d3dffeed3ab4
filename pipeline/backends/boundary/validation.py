"""Validation of a boundary model: affinities -> fragments + agglomeration -> VOI and adapted Rand.

The segmentation step is :func:`emseg.pipeline.stitching.agglomeration.segment` when this emseg has it (the
`affinities` backend's own fragments + agglomeration), else ``waterz.agglomerate`` with its default
mean-affinity score, which is what that function wraps. Scores come from :mod:`emseg.pipeline.quality.metrics`
(VOI split/merge in bits, adapted Rand error; ground-truth label 0 ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def segment(affs: np.ndarray, threshold: float) -> np.ndarray:
    """uint32 labels (z, y, x) of (3, z, y, x) affinities agglomerated up to ``threshold``.

    The threshold is on waterz's ``OneMinus<MeanAffinity>`` score: neighbouring regions merge while
    1 - (mean affinity on their contact) <= ``threshold`` (so 0.5 merges mean affinity >= 0.5, and a
    larger threshold merges more).
    """
    try:
        from emseg.pipeline.stitching.agglomeration import segment as product_segment
    except ImportError:
        product_segment = None
    if product_segment is not None:
        return np.asarray(product_segment(affs, threshold))
    import waterz

    affs = np.ascontiguousarray(affs, dtype=np.float32)
    seg = next(iter(waterz.agglomerate(affs, [float(threshold)])))
    return np.asarray(seg).astype(np.uint32)


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
