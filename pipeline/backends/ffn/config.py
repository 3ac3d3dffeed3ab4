"""FFN configurations: the model's (stored in every checkpoint) and the training run's.

Both are pydantic models with unknown keys rejected. This module imports no torch, so that the engine
can validate configs cheaply.

>>> ModelConfig(fov_size=(9, 9, 9), step=(2, 2, 2), depth=1, width=4).fov_radius
(4, 4, 4)
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from emseg.pipeline.backends.device import Device, Precision
from emseg.pipeline.config import Region

Vec3 = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The network and the geometry it was trained for.

    Parameters
    ----------
    fov_size
        Field of view, voxels (z, y, x); odd on every axis so that it has a centre voxel.
    step
        How far the FOV moves, voxels (z, y, x); at most half the FOV on every axis.
    depth
        Number of residual modules (two 3x3x3 convolutions each) after the two-convolution stem.
    width
        Feature channels of every convolution.
    image_mean, image_stddev
        The image is fed as ``(image - image_mean) / image_stddev``.
    pom_init, pom_seed
        Object probability of unexplored voxels and of the seed voxel.
    """

    fov_size: Vec3 = (17, 17, 17)
    step: Vec3 = (4, 4, 4)
    depth: int = Field(3, ge=1, le=32)
    width: int = Field(16, ge=1, le=256)
    image_mean: float = 128.0
    image_stddev: float = Field(33.0, gt=0)
    pom_init: float = Field(0.05, gt=0, lt=1)
    pom_seed: float = Field(0.95, gt=0, lt=1)

    @field_validator("fov_size")
    @classmethod
    def _odd_fov(cls, value: Vec3) -> Vec3:
        if any(s < 3 or s % 2 == 0 for s in value):
            raise ValueError(f"fov_size must be odd and at least 3 on every axis, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _step_fits(self) -> ModelConfig:
        for s, f in zip(self.step, self.fov_size):
            if s < 1 or s > f // 2:
                raise ValueError(
                    f"step {list(self.step)} must be between 1 and half the fov_size "
                    f"{list(self.fov_size)} on every axis"
                )
        return self

    @property
    def fov_radius(self) -> Vec3:
        return tuple(s // 2 for s in self.fov_size)  # type: ignore[return-value]

    @property
    def init_logit(self) -> float:
        return _logit(self.pom_init)

    @property
    def seed_logit(self) -> float:
        return _logit(self.pom_seed)


class TrainConfig(_Strict):
    """A training run of ``emseg train-ffn CONFIG``.

    Parameters
    ----------
    image, labels
        URLs or paths of the image (uint8) and of dense instance labels (0 = unlabelled, ignored).
    output
        Directory for checkpoints (``ffn_step{N}.pt``, ``ffn_last.pt``) and the log (``train.log``).
    train_region, val_region
        Boxes of the volume to train and to validate on; the whole volume and none by default.
    model
        The network (see :class:`ModelConfig`).
    init_checkpoint
        Start from this checkpoint's weights (a path or URL, as ``backend.checkpoint``; ``bundled``
        for the bundled model): fine-tuning. The network, its normalisation included, is then the
        checkpoint's; keys given under ``model`` must equal the checkpoint's.
    normalise_from_data
        Set ``model.image_mean`` / ``image_stddev`` from the training region's image (not with
        ``init_checkpoint``, whose weights were trained with the checkpoint's normalisation).
    steps, batch_size, learning_rate, lr_final_fraction
        Adam for ``steps`` steps; the rate decays on a cosine to ``lr_final_fraction`` of its start.
    interior_fraction
        Share of FOVs centred on object interiors; the rest are centred on boundary voxels.
    moves
        FOV moves per sample after the first prediction (0: only the seeded first step); each move
        feeds the network its own previous prediction, as flood-fill inference does.
    augment
        Random flips and (for equal FOV sides) axis permutations.
    seed
        Seed of all random draws (sampling, augmentation, initial weights).
    device, precision
        ``auto`` uses CUDA when present, with bf16 autocast there; fp32 on CPU.
    threads
        Torch CPU threads (``None``: torch's default).
    max_minutes
        Stop early, with a final checkpoint, after this wall time.
    """

    image: str
    labels: str
    output: str
    train_region: Region | None = None
    val_region: Region | None = None
    model: ModelConfig = ModelConfig()
    init_checkpoint: str | None = None
    normalise_from_data: bool = True
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_final_fraction: float = Field(0.1, ge=0, le=1)
    interior_fraction: float = Field(0.5, ge=0, le=1)
    moves: int = Field(1, ge=0, le=8)
    augment: bool = True
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(25, ge=1)
    val_every: int = Field(250, ge=1)
    val_samples: int = Field(64, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    max_minutes: float | None = Field(None, gt=0)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))
