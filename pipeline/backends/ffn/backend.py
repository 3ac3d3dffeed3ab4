"""``ffn``: flood-filling network segmentation, one object at a time (see :mod:`emseg.pipeline.backends.ffn`).

Config keys (``backend: {name: ffn, ...}``), all optional::

    checkpoint: bundled          # or a path / file:// / http(s):// / gs:// / s3:// URL
    device: auto                 # auto | cpu | cuda
    precision: auto              # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    batch_size: null             # objects flooded at once; null: 8 on CPU, 32 on CUDA
    step: null                   # FOV movement [z, y, x]; null: the checkpoint's
    move_threshold: 0.9          # move where the object map on a face reaches this
    segment_threshold: 0.6       # voxels at or above this belong to the object
    min_size: 100                # smaller objects are dropped (their voxels stay 0)
    max_fovs_per_object: 2000
    seed_sigma: 1.0              # interior estimate: gaussian(image) > seed_threshold
    seed_threshold: 0.0          #   (normalised image units)
    seed_min_distance: 3         # distance-transform peaks this far apart
    seed_min_depth: 2.0          # and at least this deep
    grid_spacing: null           # fallback seed grid; null: twice the step
    seed_backend: null           # "affinities": interior estimate from a boundary model's
    seed_params: {}              #   segmentation (seed_params: that backend's keys) instead of the image
    threads: null                # torch CPU threads per worker
    hybrid: null                 # {sam2: {...}}: FFN objects become SAM2's mask prompts (below)

``hybrid``: the FFN's objects are handed to the ``sam2`` backend as mask prompts (its ``prior``,
with ``neighbour_prompts`` on), and SAM2 carries them through z as video frames; SAM2 also seeds
what they leave uncovered with its own seed backend. ``hybrid.sam2`` takes the sam2 backend's keys.

Images are uint8 (0..255) or float32 (0..1, as the other backends read float input); the model's
own normalisation (mean and standard deviation of its training image) is applied on top.

This module imports no torch: the model is loaded on the first :meth:`Backend.segment` call and
cached per process (worker).
"""

from __future__ import annotations

import os

import threading
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from emseg.pipeline import backends
from emseg.pipeline.backends.base import BackendParams
from emseg.pipeline.errors import CheckpointError, DtypeError
from emseg.pipeline.backends.device import Device, Precision

Vec3 = tuple[int, int, int]


class HybridParams(BackendParams):
    """``hybrid: {sam2: {...}}``: SAM2 carries the FFN's objects through z."""

    sam2: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sam2_keys(self) -> HybridParams:
        self.sam2_params()  # refuse bad sam2 keys when the config is read, not on a worker
        return self

    def sam2_params(self) -> Any:
        """The sam2 backend's validated params, with the FFN's objects as mask prompts."""
        from emseg.pipeline import backends

        try:
            return backends.validate_params("sam2", {**self.sam2, "neighbour_prompts": True})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"hybrid.sam2.{where}: {first['msg']} (keys of the sam2 backend)") from None


class Params(BackendParams):
    checkpoint: str = "bundled"
    device: Device = "auto"
    precision: Precision = "auto"
    batch_size: int | None = Field(None, ge=1)
    step: Vec3 | None = None
    move_threshold: float = Field(0.9, gt=0, lt=1)
    segment_threshold: float = Field(0.6, gt=0, lt=1)
    min_size: int = Field(100, ge=1)
    max_fovs_per_object: int = Field(2000, ge=1)
    seed_sigma: float = Field(1.0, ge=0)
    seed_threshold: float = 0.0
    seed_min_distance: int = Field(3, ge=1)
    seed_min_depth: float = Field(2.0, ge=0)
    grid_spacing: Vec3 | None = None
    #: None: the interior estimate is the thresholded image; "affinities": the interior of a boundary
    #: model's segments (fragments + agglomeration at its default threshold)
    seed_backend: Literal["affinities"] | None = None
    seed_params: dict[str, Any] = Field(default_factory=dict)
    threads: int | None = Field(None, ge=1)
    hybrid: HybridParams | None = None

    @model_validator(mode="after")
    def _seed_keys(self) -> Params:
        if self.seed_backend is not None:  # the seed backend's own keys, checked before any work
            try:
                backends.validate_params(self.seed_backend, self.seed_params)
            except ValueError as exc:
                raise ValueError(f"seed_params for {self.seed_backend}: {exc}") from None
        elif self.seed_params:
            raise ValueError("seed_params needs seed_backend: affinities")
        return self


_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def _load_predictor(params: Params) -> Any:
    """The torch predictor for ``params``, loaded once per process."""
    from emseg.pipeline.backends.device import resolve_device, resolve_precision
    from emseg.pipeline.backends.ffn.model import TorchPredictor
    from emseg.pipeline.backends.ffn.weights import build_model, load_checkpoint

    import torch

    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device)
    key = (params.checkpoint, str(device), precision)
    with _LOCK:
        if key not in _CACHE:
            if params.threads is not None:
                torch.set_num_threads(params.threads)
            net = build_model(load_checkpoint(params.checkpoint))
            _CACHE[key] = TorchPredictor(net, device, precision)
        return _CACHE[key]


class Backend:
    name: ClassVar[str] = "ffn"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "float32")
    float_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    #: the least overlap that stitching needs; give at least the FOV radius (8 for the bundled
    #: model) so that an object crossing a seam is flooded with full context on both sides
    min_halo: ClassVar[int] = 4
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 20, "min_iou": 0.2, "mutual_best": True}

    @classmethod
    def preflight(cls, params: Params) -> None:
        """Refuse, before any work, a local checkpoint file that is not there."""
        location = params.checkpoint
        if location == "bundled" or ("://" in location and not location.startswith("file://")):
            return
        path = os.path.expanduser(location.removeprefix("file://"))
        if not os.path.isfile(path):
            raise CheckpointError(
                f"no FFN checkpoint at {path!r}; set backend.checkpoint to a path or URL, or train one with "
                "`emseg train-ffn CONFIG`"
            )

    def __init__(self, params: Params, predictor: Any = None, model_config: Any = None, sam2: Any = None) -> None:
        """Build the backend; ``predictor`` and ``model_config`` inject a stand-in model, ``sam2`` a
        stand-in for the hybrid's SAM2 stage (tests)."""
        self.params = params
        self._predictor = predictor
        self._model_config = model_config
        self._sam2 = sam2
        self._seeder: Any = None
        #: :class:`emseg.pipeline.backends.ffn.inference.FloodStats` of the last :meth:`segment` call
        self.last_stats: Any = None

    def _model(self) -> tuple[Any, Any]:
        if self._predictor is None:
            self._predictor = _load_predictor(self.params)
            self._model_config = self._predictor.net.config
        return self._predictor, self._model_config

    def boundary_seeds(self, image: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
        """Seeds from a boundary model: distance-transform peaks inside its segments, then the grid."""
        from emseg.pipeline.backends.ffn.seeds import grid_seeds, peak_seeds

        if self._seeder is None:
            name = self.params.seed_backend
            self._seeder = backends.create(name, backends.validate_params(name, self.params.seed_params))
        labels = self._seeder.segment(image)
        inner = labels != 0
        for axis in range(3):  # voxels whose face neighbours all carry their label
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -1), slice(1, None)
            same = labels[tuple(lo)] == labels[tuple(hi)]
            inner[tuple(lo)] &= same
            inner[tuple(hi)] &= same
        peaks = peak_seeds(inner, self.params.seed_min_distance, self.params.seed_min_depth)
        return np.concatenate([peaks, grid_seeds(image.shape, grid)], axis=0)  # type: ignore[arg-type]

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Flood-fill every object of ``image`` (z, y, x); uint32 labels of the same shape."""
        from emseg.pipeline.backends.ffn.inference import FloodSettings, flood_fill
        from emseg.pipeline.backends.ffn.seeds import seed_points

        if image.ndim != 3:
            raise DtypeError(f"ffn takes a 3D (z, y, x) block, got shape {image.shape}")
        if image.dtype.name not in self.input_dtypes:
            raise DtypeError(
                f"ffn takes uint8 (0..255) or float32 (0..1) images, got {image.dtype}; convert the volume"
            )
        predictor, config = self._model()
        p = self.params
        step = p.step or config.step
        scaled = image.astype(np.float32) * (255.0 if image.dtype == np.float32 else 1.0)
        normalised = (scaled - config.image_mean) / config.image_stddev
        grid = p.grid_spacing or tuple(2 * s for s in step)
        if p.seed_backend is None:
            seeds = seed_points(normalised, p.seed_sigma, p.seed_threshold, p.seed_min_distance, p.seed_min_depth,
                                grid)
        else:
            seeds = self.boundary_seeds(image, grid)
        device = getattr(predictor, "device", None)
        batch = p.batch_size or (32 if getattr(device, "type", "cpu") == "cuda" else 8)
        settings = FloodSettings(
            fov_size=config.fov_size,
            step=step,
            init_logit=config.init_logit,
            seed_logit=config.seed_logit,
            move_threshold=p.move_threshold,
            segment_threshold=p.segment_threshold,
            min_size=p.min_size,
            max_fovs_per_object=p.max_fovs_per_object,
            batch_size=batch,
        )
        labels, self.last_stats = flood_fill(normalised, seeds, predictor, settings)
        if p.hybrid is not None:
            if self._sam2 is None:
                from emseg.pipeline import backends

                self._sam2 = backends.create("sam2", p.hybrid.sam2_params())
            labels = np.asarray(self._sam2.segment(image, prior=labels), dtype=np.uint32)
        return labels
