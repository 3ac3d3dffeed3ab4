"""``threshold-cc``: foreground = ``image >= threshold``, labelled by connected components.

It is the exactness oracle of the stitching: chunked, it must give the connected components of the
whole volume. With a halo of at least one voxel on every axis, two voxels adjacent across a seam are
always both inside one block's read box, and keeping every overlap edge (the default rule below)
reproduces the whole-volume components exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import cc3d
import numpy as np

from emseg.pipeline.backends.base import BackendParams


class Params(BackendParams):
    threshold: float = 128
    connectivity: Literal[6, 18, 26] = 26


class Backend:
    name: ClassVar[str] = "threshold-cc"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "float32", "float64")
    float_range: ClassVar[tuple[float, float] | None] = None
    min_halo: ClassVar[int] = 1
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 1, "min_iou": 0.0, "mutual_best": False}

    def __init__(self, params: Params) -> None:
        self.params = params

    def nodata_value(self) -> float:
        """What no-data (NaN) voxels become: below any threshold, so they are background."""
        return float("-inf")

    def segment(self, image: np.ndarray) -> np.ndarray:
        foreground = image >= self.params.threshold
        return cc3d.connected_components(
            foreground, connectivity=self.params.connectivity, out_dtype=np.uint32
        )
