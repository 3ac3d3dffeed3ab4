"""``noop``: labels nothing (all background). For dry runs that measure the pipeline itself:
graph size, scheduling, I/O and stitching overheads without any segmentation cost."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from emseg.pipeline.backends.base import BackendParams


class Params(BackendParams):
    pass


class Backend:
    name: ClassVar[str] = "noop"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "uint32", "uint64", "float32", "float64")
    float_range: ClassVar[tuple[float, float] | None] = None
    min_halo: ClassVar[int] = 0
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 1, "min_iou": 0.0, "mutual_best": False}

    def __init__(self, params: Params) -> None:
        self.params = params

    def segment(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(image.shape, np.uint32)
