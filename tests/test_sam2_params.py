"""The sam2 backend's config keys, its import cost, and the pure-numpy pieces (prompts, resolution)."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from emseg.pipeline import backends
from emseg.pipeline.backends.sam2.backend import Backend, Params
from emseg.pipeline.errors import ConfigError
from emseg.pipeline.backends.sam2.prompts import best_uncovered_slice, key_slices, seeds_on_slice


def test_importing_the_backend_imports_neither_torch_nor_sam2() -> None:
    code = (
        "import sys, emseg.pipeline.backends.sam2.backend as m, emseg.pipeline.backends.sam2.prompts, emseg.pipeline.backends.sam2.resolve;"
        "m.Params.model_validate({'checkpoint': 'gs://b/sam2.1_hiera_tiny.pt'});"
        "print(sorted(n for n in ('torch', 'sam2', 'hydra') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_params_through_the_registry() -> None:
    p = backends.validate_params("sam2", {"model": "sam2.1_hiera_b+", "checkpoint": "/w/b.pt"})
    assert isinstance(p, Params) and p.axis == "z" and p.precision == "auto"
    assert backends.module("sam2").Backend is Backend and Backend.min_halo >= 1


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"image_size": 1000}, "multiple of 32"),
        ({"device": "gpu"}, "auto, cpu, cuda or cuda:N"),
        ({"model": "sam2_hiera_huge"}, "sam2.1_hiera_t"),
        ({"checkpoint": "x.pt", "random_weights": True}, "not both"),
        ({"memory_frames": 9}, "less than or equal to 6"),
        ({"resolution": 3}, "Extra inputs are not permitted"),
        ({"seed_backend": "threshold-cc", "seed_params": {"level": 3}}, "seed_params for threshold-cc"),
    ],
)
def test_bad_params_are_refused(bad: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Params.model_validate(bad)


def test_cpu_runs_fp32_by_default() -> None:
    assert not Backend(Params(device="cpu")).bf16()
    assert Backend(Params(device="cpu", precision="bf16")).bf16()
    from emseg.pipeline.backends.device import resolve_precision

    assert resolve_precision("auto", "cuda:1") == "bf16"  # what Backend.bf16() applies on a GPU
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():  # a GPU asked for and absent: one clear error before any work
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            Backend(Params(device="cuda:0")).device()


@pytest.mark.parametrize(
    "name", ["frames", "prompts", "propagate", "resolve", "weights"]
)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"emseg.pipeline.backends.sam2.{name}")
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_seeds_sit_at_segment_centres_and_skip_covered_interior() -> None:
    labels = np.zeros((20, 30), np.int64)
    labels[1:12, 1:12] = 1  # a square, centre (6, 6)
    labels[1:19, 14:29] = 2  # a rectangle
    labels[15:18, 2:5] = 3  # too small to seed
    covered = np.zeros(labels.shape, bool)
    seeds = seeds_on_slice(labels, covered, 4, min_area=16, min_distance=2.0)
    assert seeds.frame == 4 and seeds.segments.tolist() == [1, 2]
    assert seeds.points[0].tolist() == [6, 6]
    covered[:, 14:] = True
    assert seeds_on_slice(labels, covered, 4, min_area=16).segments.tolist() == [1]


def test_uncovered_rounds_pick_the_slice_with_most_free_interior() -> None:
    labels = np.zeros((4, 20, 20), np.int64)
    labels[:, 2:18, 2:18] = 5
    labels[2, 2:18, 2:10] = 6
    covered = np.zeros(labels.shape, bool)
    covered[[0, 1, 3]] = True
    covered[2, :, :10] = True  # label 6 covered on slice 2, label 5 partly free
    seeds = best_uncovered_slice(labels, covered, min_area=8)
    assert seeds is not None and seeds.frame == 2 and seeds.segments.tolist() == [5]
    assert best_uncovered_slice(labels, covered, min_area=8, exclude={2}) is None
    assert key_slices(16, 3) == [2, 8, 13]


def test_the_example_config_validates() -> None:
    from pathlib import Path

    from emseg.pipeline import config

    path = Path(__file__).resolve().parents[1] / "configs" / "sam2.yaml"
    cfg = config.load(str(path), [])
    assert cfg.backend.name == "sam2" and cfg.backend.to_dict()["checkpoint"].endswith(".pt")


def test_bad_blocks_are_refused_before_any_model_work() -> None:
    from emseg.pipeline.errors import ConfigError, DtypeError, ShapeMismatchError

    backend = Backend(Params(random_weights=True, device="cpu"))
    with pytest.raises(ConfigError, match="3D blocks"):
        backend.segment(np.zeros((4, 4), np.uint8))
    with pytest.raises(DtypeError, match="uint8 or uint16 or float32 or float64"):
        backend.segment(np.zeros((2, 4, 4), np.int16))
    with pytest.raises(ShapeMismatchError, match="do not cover the block"):
        backend.segment(np.zeros((2, 4, 4), np.uint8), prior=np.zeros((2, 4, 5), np.uint32))
