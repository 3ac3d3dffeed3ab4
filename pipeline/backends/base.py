"""The protocol every segmentation backend implements.

A backend takes one image block, ``(z, y, x)`` uint8 or float, and returns uint32 instance labels of
the same shape, 0 for background. Labels are local to the block: stitching makes them global.

A backend module exposes two names: ``Params``, a pydantic model of its config keys (unknown keys
rejected), and ``Backend``, a class built from those params. Models are loaded lazily, on the first
call of :meth:`Backend.segment` in a worker, never at import time.
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
    #: the smallest halo (voxels, every axis) for which stitching makes sense
    min_halo: ClassVar[int]
    #: the stitching rule used when the config gives none (keys of ``pipeline.seams.StitchRule``)
    default_stitch: ClassVar[dict[str, Any]]

    def __init__(self, params: Any) -> None: ...

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Label one block: ``image`` (z, y, x) in, uint32 labels of the same shape out."""
        ...
