"""SAM2 and FFN take their seeds from a boundary model's segments (issue: every backend benefits)."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.pipeline import backends


def _cells() -> np.ndarray:
    labels = np.zeros((12, 24, 24), np.uint32)
    labels[:, :, :12] = 1
    labels[:, :, 12:] = 2
    labels[:, 16:, :] = 3
    return labels


def test_ffn_boundary_seeds_lie_inside_each_segment():
    params = backends.validate_params("ffn", {"seed_backend": "affinities",
                                              "seed_params": {"model": {"kind": "labels"}},
                                              "seed_min_distance": 2, "seed_min_depth": 1.0})
    ffn = backends.create("ffn", params)
    labels = _cells()
    seeds = ffn.boundary_seeds(labels, (100, 100, 100))  # a grid coarser than the block: peaks only
    hit = labels[tuple(seeds.T)]
    assert set(hit.tolist()) == {1, 2, 3}
    # every peak is inside its cell, not on a boundary: its face neighbours share its label
    for z, y, x in seeds:
        for dz, dy, dx in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
            zz, yy, xx = min(z + dz, 11), min(y + dy, 23), min(x + dx, 23)
            assert labels[zz, yy, xx] == labels[z, y, x]


def test_seed_params_are_checked_before_any_work():
    with pytest.raises(ValueError, match="seed_params for affinities"):
        backends.validate_params("ffn", {"seed_backend": "affinities", "seed_params": {"modle": {}}})
    with pytest.raises(ValueError, match="seed_params needs seed_backend"):
        backends.validate_params("ffn", {"seed_params": {"model": {"kind": "labels"}}})
    sam2 = backends.validate_params("sam2", {"random_weights": True, "seed_backend": "affinities",
                                             "seed_params": {"model": {"kind": "labels"}}})
    assert sam2.seed_backend == "affinities"
