"""The protocol every segmentation backend implements.

A backend takes one image block, ``(z, y, x)`` uint8 or float, and returns uint32 instance labels of
the same shape, 0 for background. Labels are local to the block: stitching makes them global.

A backend module exposes two names: ``Params``, a pydantic model of its config keys (unknown keys
rejected), and ``Backend``, a class built from those params. Models are loaded lazily, on the first
call of :meth:`Backend.segment` in a worker, never at import time.

What the engine guarantees the image a backend gets (stage 1, :mod:`emseg.pipeline.io.intensity`):

- No NaN or infinite voxels: they are no data, filled before the call with the backend's
  ``nodata_value()`` (an optional method: the value it takes for "not an object", in its own units)
  or else from the nearest finite voxel, and given label 0 after it, whatever the backend returns there.
  A backend with ``takes_nodata = True`` also gets the mask, ``segment(image, nodata=mask)``, so that it
  can keep its segments from growing through the gap (``watershed`` floods only voxels with data).
- Float images lie in :attr:`Backend.float_range` (0..1 unless the backend says otherwise, None for a
  backend that takes any values): the run maps ``input_value_range`` to 0..1 when the config sets it,
  and otherwise refuses, before any work, a float input whose sampled values lie outside the range.

Voxel size: a backend whose ``Params`` has a key ``voxel_size_zyx: tuple[float, float, float] | None``
with default None receives the input's voxel size there (z, y, x, nm), filled in by the engine before
the run when the config leaves it unset (:func:`emseg.pipeline.backends.with_voxel_size`); ``run.json``'s
``config.backend`` shows the value used. A backend that smooths, measures distances or sizes windows
should take it, so that anisotropic data (e.g. 40 x 8 x 8 nm) is handled in physical units.

Checks before work: an optional classmethod ``preflight(params)`` raises an
:class:`~emseg.pipeline.errors.EmsegError` for what no worker could get past (a local checkpoint that is
not there); the engine calls it while planning, before any task runs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict


class BackendParams(BaseModel):
    """Base of every backend's ``Params``: strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(Protocol):
    #: the name used in configs, ``backend: {name: ...}``
    name: ClassVar[str]
    #: numpy dtype names the backend accepts as input
    input_dtypes: ClassVar[tuple[str, ...]]
    #: the float intensities it takes, (low, high); None when any values will do (threshold-cc)
    float_range: ClassVar[tuple[float, float] | None]
    #: the smallest halo (voxels, every axis) for which stitching makes sense
    min_halo: ClassVar[int]
    #: the stitching rule used when the config gives none (keys of ``emseg.pipeline.stitching.seams.StitchRule``)
    default_stitch: ClassVar[dict[str, Any]]

    def __init__(self, params: Any) -> None: ...

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Label one block: ``image`` (z, y, x) in, uint32 labels of the same shape out."""
        ...
