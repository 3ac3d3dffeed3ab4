"""Training-time augmentation of (z, y, x) EM patches: geometry and intensity.

Geometry: flips along each axis and, when the two in-plane axes have the same voxel size, a y/x
transpose; applied to image and labels together. Intensity (image in [0, 1]): a contrast gain and
brightness offset around the patch's mid-grey, a gamma, additive Gaussian noise, then clipping to
[0, 1] — the variations between FIB-SEM volumes of different labs and settings that a model must
not depend on. Optional missing sections: a few z planes replaced by mid-grey.

All draws come from the ``numpy.random.Generator`` passed in, so a fixed seed repeats a run.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class IntensityAugment(BaseModel):
    """Ranges of the intensity augmentation (uniform draws; gamma drawn log-uniformly)."""

    model_config = ConfigDict(extra="forbid")

    contrast: tuple[float, float] = (0.5, 1.5)
    brightness: tuple[float, float] = (-0.15, 0.15)
    gamma: tuple[float, float] = (0.6, 1.6)
    noise_sigma: tuple[float, float] = (0.0, 0.04)
    missing_section_probability: float = Field(0.0, ge=0.0, le=1.0)


def intensity(image: np.ndarray, rng: np.random.Generator, params: IntensityAugment) -> np.ndarray:
    """A randomly re-contrasted, gamma-mapped, noisy copy of a float image in [0, 1] (float32)."""
    image = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(*params.contrast)
    offset = rng.uniform(*params.brightness)
    gamma = float(np.exp(rng.uniform(np.log(params.gamma[0]), np.log(params.gamma[1]))))
    sigma = rng.uniform(*params.noise_sigma)
    out = (image - 0.5) * np.float32(gain) + np.float32(0.5 + offset)
    np.clip(out, 0.0, 1.0, out=out)
    out **= np.float32(gamma)
    if sigma > 0:
        out += rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
        np.clip(out, 0.0, 1.0, out=out)
    if params.missing_section_probability > 0 and out.shape[0] > 2:
        missing = rng.random(out.shape[0]) < params.missing_section_probability
        out[missing] = 0.5
    return out


def geometry(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, transpose: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips (each axis) and in-plane y/x transpose of an image and its labels."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    if transpose and rng.random() < 0.5:
        image, labels = image.transpose(0, 2, 1), labels.transpose(0, 2, 1)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
