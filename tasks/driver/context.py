"""What every task of a run receives: small, serialisable facts (no open stores, no models)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emseg.pipeline.geometry import Box, BlockGrid
from emseg.pipeline.stitching.seams import StitchRule

if TYPE_CHECKING:
    from emseg.pipeline.config import Config
    from emseg.pipeline.io.volume import Volume


@dataclass(frozen=True)
class RunContext:
    input_spec: dict[str, Any]  # tensorstore spec of the input volume
    output: str  # store URL of the output directory
    segmentation: str  # store URL of the precomputed segmentation layer
    roi: Box  # region of interest, zero-origin input voxels; the output covers exactly this box
    block_shape: tuple[int, int, int]
    halo: tuple[int, int, int]
    backend_name: str
    backend_params: dict[str, Any] = field(hash=False)
    stitch: dict[str, Any] = field(hash=False)
    #: odd blocks (checkerboard) take their face neighbours' labels in the overlap as prompts
    neighbour_prompts: bool = False
    #: keep every scratch object after use (postprocess and a complete run prune them otherwise)
    keep_scratch: bool = False
    #: distinguishes runs, so that worker caches never hand a store opened by an earlier run
    run_id: str = ""
    #: boundary backends (affinities): fragments + scored edges; ``threshold`` is the agglomeration
    #: threshold (edges with score <= threshold merge); None for instance backends
    boundary: bool = False
    threshold: float | None = None
    #: boundary backends: one agglomeration of the whole region graph (stage 3's first task) rather
    #: than one per 2 x 2 x 2 group of blocks with the group and one block around it as context (stage 2)
    global_agglomeration: bool = False
    #: boundary backends: ``agglomeration.enclosed`` as a dict (None = off): segments that one
    #: neighbour encloses merge after the threshold (global scope: stage 3's first task; blockwise:
    #: each 2 x 2 x 2 group's own edges, from its hood (BlockGrid.hood), in stage 3's first level)
    enclosed: dict[str, Any] | None = field(default=None, hash=False)
    #: boundary backends: ``agglomeration.small`` as a dict (None = off): segments under ``min_size``
    #: voxels merge along their best contact, after the enclosed ones (where the enclosed ones are made)
    small: dict[str, Any] | None = field(default=None, hash=False)
    #: input intensities mapped to 0..1 before the backend (config ``input_value_range``); None = as read
    value_range: tuple[float, float] | None = None
    #: boundary backends with ``write.affinities``: store URL of the affinities array and its dtype
    affinities: str | None = None
    affinities_dtype: str | None = None
    #: their attributes besides the geometry: ``{"emseg": {"model", "weights", "threshold"}}``, the
    #: model's own threshold, which a run from them (model.kind stored) defaults to
    affinities_attributes: dict[str, Any] | None = field(default=None, hash=False)
    #: ``cluster.model_resources``: the Dask worker resources of the tasks that run the model
    model_resources: dict[str, float] | None = field(default=None, hash=False)

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.roi, self.block_shape, self.halo)

    @property
    def rule(self) -> StitchRule:
        return StitchRule(**self.stitch)

    @property
    def input_key(self) -> str:
        return json.dumps(self.input_spec, sort_keys=True)

    @property
    def backend_key(self) -> str:
        return json.dumps({"name": self.backend_name, **self.backend_params}, sort_keys=True)


def new_run_id() -> str:
    """A fresh id for one execution of a run: part of every Dask task key and of the workers' cache
    keys, so that a rerun never picks up a previous execution's results or open stores."""
    import uuid

    return uuid.uuid4().hex


@dataclass
class ValidatedRun:
    """A run checked before any work (:func:`emseg.tasks.driver.run.validate`): the config, the context
    every task receives, the input volume's facts, the output's sharding, and the fingerprint that a
    resumed run must match."""

    config: Config
    ctx: RunContext
    input: Volume
    sharding: dict[str, Any] | None
    fingerprint: dict[str, Any] = field(default_factory=dict)
