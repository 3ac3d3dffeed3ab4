"""End to end: ``emseg segment`` with the sam2 backend on a small zarr volume, through a local Dask
cluster of worker processes, with a random-weight checkpoint saved to disk (so that the workers read
it through the real loading path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")


def cells(shape: tuple[int, int, int], count: int, seed: int) -> np.ndarray:
    """Bright Voronoi cells with dark membranes (anisotropic, like serial-section EM), uint8."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform((0, 0, 0), shape, size=(count, 3))
    grid = np.indices(shape).reshape(3, -1).T.astype(np.float32)
    scale = np.array([4.0, 1.0, 1.0], np.float32)
    owner = np.argmin((((grid[:, None] - centres[None]) * scale) ** 2).sum(-1), axis=1).reshape(shape)
    edge = np.zeros(shape, bool)
    for axis in range(3):
        edge |= np.diff(owner, axis=axis, prepend=np.take(owner, [0], axis=axis)) != 0
    image = ndimage.gaussian_filter(np.where(edge, 40.0, 200.0), 0.7) + rng.normal(0, 5, shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("neighbour_prompts", [False, True], ids=["alone", "neighbour-prompts"])
def test_emseg_segment_with_the_sam2_backend(tmp_path: Path, neighbour_prompts: bool) -> None:
    from emseg.pipeline.io.scratch import Scratch
    from emseg.pipeline.backends.sam2.weights import build_model, save_checkpoint
    from emseg.pipeline.io.volume import create_zarr, open_volume
    from emseg.tasks.cli import main

    image = cells((12, 64, 64), count=12, seed=3)
    raw = tmp_path / "em.zarr" / "raw"
    vol = create_zarr(str(raw), dtype="uint8", shape_zyx=image.shape, chunk_zyx=(12, 32, 32),
                      voxel_size_nm=(32.0, 8.0, 8.0))
    vol.write(vol.box, image)

    # Random weights, except that the object-score head always says "present": the test follows
    # the plumbing (checkpoint on disk, workers, blocks, stitching), not the model's judgement.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("sam2.1_hiera_t", 128, "cpu")
    head = model.sam_mask_decoder.pred_obj_score_head
    with torch.no_grad():
        head.layers[-1].weight.zero_()
        head.layers[-1].bias.fill_(5.0)
    save_checkpoint(model, str(tmp_path / "tiny.pt"))

    output = tmp_path / "run"
    config = {
        "input": f"zarr://file://{raw}",
        "output": str(output),
        "backend": {
            "name": "sam2", "model": "sam2.1_hiera_t", "checkpoint": str(tmp_path / "tiny.pt"),
            "image_size": 128, "device": "cpu", "max_objects": 6, "reprompt_slices": 1,
            "min_size": 20, "min_score": 0.0, "neighbour_prompts": neighbour_prompts,
        },
        "blocks": {"shape": [12, 32, 64], "halo": [0, 8, 0]},
        "write": {"chunk_shape": [12, 16, 32]},
        "cluster": {"workers": 1},
    }
    path = tmp_path / "sam2.yaml"
    path.write_text(yaml.safe_dump(config))

    status = main(["segment", str(path), "--set", "cluster.workers=2", "--no-progress", "-q"])
    assert status == 0

    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "complete" and run["blocks"]["total"] == 2
    assert run["config"]["backend"]["name"] == "sam2"
    seg = open_volume(f"precomputed://{output}/segmentation")
    labels = seg.read(seg.box)
    assert labels.shape == image.shape
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) > 2
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))  # sequential from 1
    assert run["segments"] == len(ids) - 1

    # Block 1 (odd) ran after block 0 and took block 0's labels in the overlap as prompts.
    infos = [Scratch(f"file://{output}").done_info("1-segment", b) for b in (0, 1)]
    assert "neighbour_labels" not in infos[0]
    if neighbour_prompts:
        assert infos[1]["neighbour_labels"] > 0
    else:
        assert "neighbour_labels" not in infos[1]
