"""End to end: ``emseg``'s Dask pipeline with the ``ffn`` backend, checked against an oracle.

The checkpoint holds a hand-set "threshold" FFN: whatever the object map, it returns logits
``10 * (image - 127.5)``. Flood filling with it from every seed gives the 6-connected components of
``image >= 128`` (every voxel is a fallback seed, ``min_size`` is 1), so the chunked, stitched result
must equal the connected components of the whole volume, like the threshold-cc oracle. The workers
load the checkpoint from its path with ``weights_only=True``, as in a real run.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emseg.pipeline.backends.ffn.config import ModelConfig  # noqa: E402
from emseg.pipeline.backends.ffn.model import FFN  # noqa: E402
from emseg.pipeline.backends.ffn.weights import save_checkpoint  # noqa: E402
from emseg.tasks.driver.run import segment  # noqa: E402
from tests.conftest import blobs, read_output, run_config, same_partition, write_zarr  # noqa: E402


def threshold_ffn(path: Path) -> None:
    """Write an FFN whose output is ``normalised image`` (= 10 * (image - 127.5)), for any object map.

    Stem conv 1 (centre taps only) makes [relu(x), relu(-x), relu(pom), relu(-pom)]; conv 2 and the
    residual module pass them on; the head sums them as x - pom, and the network adds pom back.
    """
    config = ModelConfig(fov_size=(9, 9, 9), step=(4, 4, 4), depth=1, width=4,
                         image_mean=127.5, image_stddev=0.1)
    net = FFN(config)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        conv1, conv2 = net.stem[0], net.stem[2]
        for out_ch, in_ch, sign in ((0, 0, 1.0), (1, 0, -1.0), (2, 1, 1.0), (3, 1, -1.0)):
            conv1.weight[out_ch, in_ch, 1, 1, 1] = sign
            conv2.weight[out_ch, out_ch, 1, 1, 1] = 1.0
        net.head.weight[0, :, 0, 0, 0] = torch.tensor([1.0, -1.0, -1.0, 1.0])
    save_checkpoint(path, net, {"note": "hand-set threshold model for tests"})


def test_threshold_model_is_what_it_claims(tmp_path: Path) -> None:
    from emseg.pipeline.backends.ffn.weights import build_model, load_checkpoint

    threshold_ffn(tmp_path / "t.pt")
    net = build_model(load_checkpoint(tmp_path / "t.pt"))
    image = torch.tensor([120.0, 127.0, 128.0, 200.0]).reshape(1, 1, 1, 1, 4)
    pom = torch.tensor([3.0, -3.0, 0.5, -2.0]).reshape(1, 1, 1, 1, 4)
    out = net((image - 127.5) / 0.1, pom)
    assert torch.allclose(out.flatten(), torch.tensor([-75.0, -5.0, 5.0, 725.0]))


def test_ffn_pipeline_through_dask_equals_whole_volume_components(tmp_path: Path, dask_address: str) -> None:
    shape = (16, 32, 32)
    image = blobs(shape, sigma=2.0, seed=5)
    url = write_zarr(tmp_path / "in.zarr", image)
    checkpoint = tmp_path / "threshold_ffn.pt"
    threshold_ffn(checkpoint)
    cfg = run_config(
        url, tmp_path / "out", dask_address,
        backend={"name": "ffn", "checkpoint": str(checkpoint), "device": "cpu", "min_size": 1,
                 "seed_sigma": 0.0, "seed_min_depth": 0.0, "seed_min_distance": 1,
                 "grid_spacing": [2, 2, 2], "threads": 1},
        blocks={"shape": [16, 16, 16], "halo": [4, 4, 4]},
        stitch={"min_overlap": 1, "min_iou": 0.0, "mutual_best": False},
    )
    run = segment(cfg, progress=False)
    assert run["status"] == "complete" and run["failures"] == []
    out = read_output(tmp_path / "out")
    expected = cc3d.connected_components(image >= 128, connectivity=6)
    assert expected.max() > 5 and run["blocks"]["total"] == 4
    assert same_partition(out, expected)
    ids = np.unique(out)
    assert np.array_equal(ids, np.arange(len(ids)))
