"""``sam2``: the slices of a block as video frames, objects carried through them by SAM2.1.

SAM2's video predictor follows objects from frame to frame with a memory bank. Here the slices along
the propagation axis (z by default) are the frames: objects are seeded automatically on key slices
(centres of the segments of a cheap interior estimate, ``watershed`` by default), propagated forward
and backward through the block in batches, re-seeded where uncovered interior remains, and resolved
to one label per voxel by the highest mask logit. See ``docs/sam2.md`` and :mod:`emseg.pipeline.backends.sam2`.

Importing this module imports neither torch nor sam2: :class:`Params` validates a config cheaply,
and the model is built (and its checkpoint read) when a worker first segments a block.
"""

from __future__ import annotations

import os

import threading
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from emseg.pipeline.backends.base import BackendParams
from emseg.pipeline.errors import CheckpointError, ConfigError, DtypeError, ShapeMismatchError
from emseg.pipeline.backends.device import Device, Precision

if TYPE_CHECKING:  # pragma: no cover
    from emseg.pipeline.backends.sam2.block import BlockResult

ModelName = Literal["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"]
_AXES = {"z": 0, "y": 1, "x": 2}


class Params(BackendParams):
    """Config keys of ``backend: {name: sam2, ...}``.

    Model and weights: ``model``, ``checkpoint`` (path or gs/s3/http(s) URL), ``random_weights``
    and ``random_seed`` (untrained model, tests only), ``image_size``. Execution: ``device``,
    ``precision``, ``compile_image_encoder``, ``offload``, ``batch_size``, ``encoder_batch``.
    Propagation: ``axis``, ``memory_frames``, ``max_pointers``, ``end_after_absent``. Prompts:
    ``seed_backend``, ``seed_params``, ``key_slices``, ``reprompt_slices``, ``max_objects``,
    ``min_seed_area``, ``min_seed_distance``, ``neighbour_prompts``. Output: ``mask_threshold``,
    ``min_size``, ``min_score``.
    """

    model: ModelName = "sam2.1_hiera_t"
    checkpoint: str | None = None
    random_weights: bool = False
    random_seed: int = 0
    image_size: int = Field(1024, ge=64)
    device: Device = "auto"
    precision: Precision = "auto"
    compile_image_encoder: bool = False
    offload: bool | None = None
    batch_size: int | None = Field(None, ge=1)
    encoder_batch: int = Field(4, ge=1)
    axis: Literal["z", "y", "x"] = "z"
    memory_frames: int = Field(6, ge=1, le=6)
    max_pointers: int = Field(16, ge=1, le=16)
    end_after_absent: int | None = Field(2, ge=1)
    #: the cheap labelling whose segment centres become prompts; "affinities" takes them from a
    #: boundary model's fragments + agglomeration (``seed_params`` holds that backend's keys)
    seed_backend: Literal["watershed", "threshold-cc", "affinities"] = "watershed"
    seed_params: dict[str, Any] = Field(default_factory=dict)
    key_slices: int = Field(1, ge=1)
    reprompt_slices: int = Field(4, ge=0)
    max_objects: int = Field(1024, ge=1)
    min_seed_area: int = Field(16, ge=1)
    min_seed_distance: float = Field(2.0, ge=0.0)
    neighbour_prompts: bool = False
    mask_threshold: float = 0.0
    min_size: int = Field(64, ge=0)
    min_score: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int) -> int:
        if value % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 (1024 for the released weights), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.checkpoint is not None and self.random_weights:
            raise ValueError("give either checkpoint or random_weights: true, not both")
        from emseg.pipeline import backends  # the seed backend's own keys, checked before any work

        try:
            backends.validate_params(self.seed_backend, self.seed_params)
        except ValueError as exc:
            raise ValueError(f"seed_params for {self.seed_backend}: {exc}") from None
        return self


class Backend:
    """The ``sam2`` backend; see the module docstring."""

    name: ClassVar[str] = "sam2"
    input_dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "float32", "float64")
    float_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    min_halo: ClassVar[int] = 8
    default_stitch: ClassVar[dict[str, Any]] = {"min_overlap": 32, "min_iou": 0.5, "mutual_best": True}

    @classmethod
    def preflight(cls, params: Params) -> None:
        """Refuse, before any work, weights that no worker could load: none set, or a local file that is not there."""
        from emseg.pipeline.backends.sam2.weights import OFFICIAL_CHECKPOINTS, RELEASE_URL

        if params.checkpoint is None:
            if not params.random_weights:
                raise CheckpointError(
                    f"backend.checkpoint is not set; download {OFFICIAL_CHECKPOINTS[params.model]} from "
                    f"{RELEASE_URL} and set backend.checkpoint to its path or URL"
                )
            return
        location = params.checkpoint.removeprefix("file://")
        if "://" not in location and not os.path.isfile(os.path.expanduser(location)):
            raise CheckpointError(
                f"no SAM2 checkpoint at {location!r}; download the SAM2.1 weights from {RELEASE_URL} and set "
                "backend.checkpoint to their path or URL"
            )

    def __init__(self, params: Params) -> None:
        self.params = params
        self._seeder: Any = None

    # -- what the worker resolves on first use ------------------------------------------------
    def device(self) -> str:
        """The compute device: ``params.device``, or cuda when there is one and cpu otherwise."""
        from emseg.pipeline.backends.device import resolve_device

        return resolve_device(self.params.device)

    def bf16(self) -> bool:
        """Whether to run under bf16 autocast (default: on CUDA only)."""
        from emseg.pipeline.backends.device import resolve_precision

        return resolve_precision(self.params.precision, self.device()) == "bf16"

    def predictor(self) -> Any:
        """The worker's cached ``SAM2VideoPredictor`` (built and loaded on first call)."""
        from emseg.pipeline.backends.sam2.weights import get_predictor

        p = self.params
        return get_predictor(
            p.model, p.checkpoint, p.random_weights, p.image_size, self.device(),
            p.compile_image_encoder, p.random_seed,
        )

    def interior(self, image: np.ndarray) -> np.ndarray:
        """Labels of the interior estimate (the seed backend) for ``image``."""
        if self._seeder is None:
            from emseg.pipeline import backends

            params = backends.validate_params(self.params.seed_backend, self.params.seed_params)
            self._seeder = backends.create(self.params.seed_backend, params)
        return self._seeder.segment(image)

    def _offload(self, shape: tuple[int, ...]) -> bool:
        if self.params.offload is not None:
            return self.params.offload
        device = self.device()
        if not device.startswith("cuda"):
            return False
        import torch

        side = self.params.image_size
        per_frame = 2 * (32 * (side // 4) ** 2 + 64 * (side // 8) ** 2 + 256 * (side // 16) ** 2)
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return shape[0] * per_frame > free // 4

    # -- the protocol -------------------------------------------------------------------------
    def segment(self, image: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """Label one block: ``image`` (z, y, x) in, uint32 labels of the same shape out.

        ``prior`` (same shape, 0 = unknown) carries labels of finished neighbours in the overlap;
        they become mask prompts when ``neighbour_prompts`` is on.
        """
        return self.segment_detailed(image, prior).labels

    def segment_detailed(self, image: np.ndarray, prior: np.ndarray | None = None) -> BlockResult:
        """:meth:`segment` with the prompts, tracks and scores (labels in z, y, x).

        Frames and points in the result's table count along the propagation axis.
        """
        if image.ndim != 3:
            raise ConfigError(
                f"the sam2 backend labels 3D blocks (z, y, x), got shape {image.shape}; "
                "check blocks.shape in the config"
            )
        if image.dtype.name not in self.input_dtypes:
            raise DtypeError(
                f"the sam2 backend takes {' or '.join(self.input_dtypes)} images, got "
                f"{image.dtype}; convert the volume"
            )
        if prior is not None and prior.shape != image.shape:
            raise ShapeMismatchError(
                f"prior labels of shape {prior.shape} do not cover the block {image.shape}; pass the "
                "neighbours' labels cut to this block's read box (0 where unknown)"
            )
        import torch

        from emseg.pipeline.backends.sam2.block import segment_block

        axis = _AXES[self.params.axis]
        interior = np.moveaxis(self.interior(image), axis, 0)
        slices = np.moveaxis(image, axis, 0)
        known = None if prior is None else np.moveaxis(prior, axis, 0)
        predictor = self.predictor()
        device = torch.device(self.device())
        with _lock(predictor), torch.inference_mode(), torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=self.bf16()
        ):
            result = segment_block(
                predictor, slices, interior, self.params, prior=known,
                offload=self._offload(slices.shape),
            )
        result.labels = np.ascontiguousarray(np.moveaxis(result.labels, 0, axis))
        return result


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(predictor: Any) -> threading.Lock:
    """One lock per model: worker threads sharing a model take turns with it."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(predictor), threading.Lock())
