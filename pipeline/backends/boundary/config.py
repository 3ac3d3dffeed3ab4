"""The configuration of ``emseg train CONFIG`` for boundary models (forest or U-Net).

A pydantic model, unknown keys rejected; ``model.kind`` picks the model and its own keys. This
module imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emseg.pipeline.backends.boundary.augment import IntensityAugment
from emseg.pipeline.backends.boundary.unet import UNetConfig
from emseg.pipeline.backends.device import Device, Precision
from emseg.pipeline.config import Region

Vec3 = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForestSpec(_Strict):
    """The boundary forest (see :mod:`emseg.pipeline.backends.boundary.forest`).

    Parameters
    ----------
    classifier
        ``hgb`` (scikit-learn HistGradientBoostingClassifier), ``rf`` (RandomForestClassifier),
        ``extra-trees`` (ExtraTreesClassifier) or ``mlp`` (StandardScaler + MLPClassifier).
    params
        Keyword arguments of the classifier, over emseg's defaults (:func:`forest.make_classifier`).
    voxels_per_class
        Training voxels drawn per class (boundary, interior) in all, spread over the image copies.
    augmented_copies
        Intensity-augmented copies of the training image added to the original (0: none).
    """

    kind: Literal["forest"]
    classifier: Literal["hgb", "rf", "extra-trees", "mlp"] = "hgb"
    params: dict[str, int | float | str | None | list[int]] = Field(default_factory=dict)
    voxels_per_class: int = Field(100_000, ge=10)
    augmented_copies: int = Field(2, ge=0, le=16)


class UNetSpec(UNetConfig):
    """The 3D U-Net (see :mod:`emseg.pipeline.backends.boundary.unet`); network keys as :class:`UNetConfig`."""

    kind: Literal["unet"]

    def network(self) -> UNetConfig:
        """The network part of the spec."""
        return UNetConfig.model_validate(self.model_dump(exclude={"kind"}))


class TrainConfig(_Strict):
    """A training run of ``emseg train CONFIG``.

    Parameters
    ----------
    image, labels
        URLs or paths of the image (uint8, uint16 or float in [0, 1]) and of dense instance labels
        (0 = unlabelled, ignored), any volume emseg reads.
    output
        Directory for the model, checkpoints, ``train.log`` and ``summary.json``.
    train_region, val_region
        Boxes to train and validate on (split the volume by a z range, with a gap); the whole volume
        and no validation by default.
    model
        ``{kind: forest, ...}`` or ``{kind: unet, ...}``.
    augment, intensity
        Geometric augmentation (flips, y/x transposes; U-Net) and the intensity augmentation ranges.
    thresholds
        Agglomeration thresholds the validation scores (waterz ``OneMinus<MeanAffinity>`` scores).
    seed
        Seed of every random draw.
    steps, batch_size, patch, learning_rate
        U-Net: Adam steps, patches per step, patch shape (z, y, x; a multiple of the pooling grid).
    boundary_weight
        U-Net: the loss weighs each class (affinity 0 / 1) to this share of the total, 0.5 = balanced.
    long_range_weight, lsd_weight
        U-Net: weights of the auxiliary losses.
    device, precision, threads
        U-Net: ``auto`` is CUDA when present with bf16 autocast there, fp32 on the CPU.
    log_every, val_every, checkpoint_every, max_minutes
        U-Net: steps between log lines, validations and checkpoints; stop early (with a checkpoint)
        after this wall time.
    resume
        U-Net: a checkpoint to continue from (model, optimiser, step); ``auto`` = ``<output>/unet_last.pt``
        when it exists.
    """

    image: str
    labels: str
    output: str
    train_region: Region | None = None
    val_region: Region | None = None
    model: Annotated[Union[ForestSpec, UNetSpec], Field(discriminator="kind")]
    augment: bool = True
    intensity: IntensityAugment = IntensityAugment()
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8], min_length=1)
    seed: int = 0
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(1, ge=1)
    patch: Vec3 = (32, 96, 96)
    learning_rate: float = Field(5e-4, gt=0)
    boundary_weight: float = Field(0.5, gt=0, lt=1)
    long_range_weight: float = Field(0.5, ge=0)
    lsd_weight: float = Field(0.5, ge=0)
    device: Device = "auto"
    precision: Precision = "auto"
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    val_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    resume: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if any(not 0 < t < 1 for t in self.thresholds):
            raise ValueError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        if isinstance(self.model, UNetSpec):
            grid = self.model.total_factor
            if any(p % g for p, g in zip(self.patch, grid)):
                raise ValueError(
                    f"patch {list(self.patch)} must be a multiple of the U-Net's pooling grid {list(grid)} "
                    "on each axis"
                )
        return self
