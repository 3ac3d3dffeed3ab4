"""The ``hybrid`` option: the FFN's objects become SAM2's mask prompts (SAM2 itself is stubbed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from emseg.pipeline import backends
from emseg.pipeline.backends.ffn.backend import Backend
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.backends.ffn.config import ModelConfig


class HalfModel:
    """Object = the image's bright voxels (a threshold), whatever the object map."""

    def __call__(self, image: np.ndarray, pom: np.ndarray, centers: np.ndarray) -> np.ndarray:
        return np.where(image > 0, 8.0, -8.0).astype(np.float32)


class StubSam2:
    def __init__(self) -> None:
        self.prior: Any = None

    def segment(self, image: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        self.prior = prior
        return np.where(prior > 0, 7, 0).astype(np.uint64)


def test_hybrid_hands_ffn_objects_to_sam2_as_prompts() -> None:
    params = backends.validate_params("ffn", {"min_size": 1, "hybrid": {"sam2": {"random_weights": True}}})
    assert params.hybrid.sam2_params().neighbour_prompts is True
    image = np.zeros((9, 20, 20), np.uint8)
    image[2:7, 3:9, 3:9] = 255
    image[2:7, 12:18, 12:18] = 255
    stub = StubSam2()
    config = ModelConfig(fov_size=(5, 5, 5), step=(2, 2, 2), depth=1, width=2, image_mean=128, image_stddev=64)
    backend = Backend(params, predictor=HalfModel(), model_config=config, sam2=stub)
    out = backend.segment(image)
    assert stub.prior is not None and stub.prior.shape == image.shape
    assert len(np.unique(stub.prior)) == 3  # background and the two FFN objects
    assert out.dtype == np.uint32 and set(np.unique(out)) == {0, 7}


def test_hybrid_sam2_keys_are_checked_when_the_config_is_read() -> None:
    with pytest.raises((ConfigError, ValueError), match="hybrid.sam2"):
        backends.validate_params("ffn", {"hybrid": {"sam2": {"no_such_key": 1}}})
