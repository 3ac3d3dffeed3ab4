"""The exactness oracle: chunked threshold-cc equals connected components of the whole volume."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from emseg.tasks.driver.run import segment
from tests.conftest import blobs, read_output, run_config, same_partition, write_zarr

SHAPE = (50, 61, 47)  # divisible by none of the block shapes


@pytest.fixture(scope="module")
def blob_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    img = blobs(SHAPE, sigma=2.5, seed=1)
    url = write_zarr(tmp_path_factory.mktemp("blobs") / "in.zarr", img)
    return url, img


@pytest.mark.parametrize(
    ("block", "halo", "connectivity"),
    [
        ((16, 16, 16), (1, 1, 1), 26),
        ((32, 16, 24), (2, 2, 2), 26),
        ((24, 40, 8), (1, 3, 2), 6),
        ((8, 8, 8), (4, 4, 4), 18),
    ],
)
def test_chunked_equals_whole_volume(blob_volume, tmp_path, dask_address, block, halo, connectivity):
    url, img = blob_volume
    cfg = run_config(url, tmp_path / "out", dask_address,
                     backend={"name": "threshold-cc", "threshold": 128, "connectivity": connectivity},
                     blocks={"shape": list(block), "halo": list(halo)})
    run = segment(cfg, progress=False)
    out = read_output(tmp_path / "out")
    expected = cc3d.connected_components(img >= 128, connectivity=connectivity)
    assert expected.max() > 20  # the volume has many objects, several crossing seams
    assert same_partition(out, expected)
    # Final ids are sequential from 1.
    ids = np.unique(out)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    assert run["segments"] == len(ids) - 1 == expected.max()
    assert run["status"] == "complete" and run["failures"] == []


def _snakes(shape: tuple[int, int, int]) -> np.ndarray:
    """Thin objects that wander through many blocks, including through block corners only."""
    img = np.zeros(shape, np.uint8)
    n = min(shape)
    # A diagonal line: consecutive voxels touch only at corners, so it crosses every block corner
    # it meets through a single corner contact (26-connected, not 6- or 18-connected).
    d = np.arange(n)
    img[d, d, d] = 255
    # A 6-connected random walk with long straight runs, through many blocks.
    rng = np.random.default_rng(7)
    p = np.array([1, shape[1] - 2, 1])
    for _ in range(4000):
        axis = rng.integers(3)
        step = rng.choice([-1, 1])
        for _ in range(rng.integers(1, 6)):
            q = p.copy()
            q[axis] = np.clip(q[axis] + step, 0, shape[axis] - 1)
            p = q
            img[tuple(p)] = 200
    # Isolated voxels exactly at block corners.
    img[15, 15, 15] = img[16, 16, 16] = 255
    img[31, 32, 31] = 255
    return img


@pytest.mark.parametrize("connectivity", [26, 6])
def test_snakes_through_corners(tmp_path, dask_address, connectivity):
    img = _snakes((48, 48, 48))
    url = write_zarr(tmp_path / "snake.zarr", img, chunks=(16, 16, 16))
    cfg = run_config(url, tmp_path / "out", dask_address,
                     backend={"name": "threshold-cc", "threshold": 128, "connectivity": connectivity},
                     blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]})
    segment(cfg, progress=False)
    out = read_output(tmp_path / "out")
    expected = cc3d.connected_components(img >= 128, connectivity=connectivity)
    assert same_partition(out, expected)
    # The diagonal is one object with 26-connectivity and falls apart with 6 (the walk may join
    # some of its voxels).
    diag = out[np.arange(48), np.arange(48), np.arange(48)]
    n_diag = len(np.unique(diag))
    assert n_diag == 1 if connectivity == 26 else n_diag > 24


def test_region_of_interest(blob_volume, tmp_path, dask_address):
    url, img = blob_volume
    cfg = run_config(url, tmp_path / "out", dask_address,
                     roi={"start": [5, 8, 3], "stop": [45, 56, 40]})
    run = segment(cfg, progress=False)
    out = read_output(tmp_path / "out")
    crop = img[5:45, 8:56, 3:40]
    assert out.shape == crop.shape
    assert same_partition(out, cc3d.connected_components(crop >= 128, connectivity=26))
    from emseg.pipeline.io.volume import open_volume

    seg = open_volume(f"precomputed://{tmp_path}/out/segmentation")
    assert seg.offset_zyx == (5, 8, 3) and seg.voxel_size_nm == (8.0, 8.0, 8.0)
    assert run["roi"] == {"start": [5, 8, 3], "stop": [45, 56, 40]}


def test_roi_in_nanometres(blob_volume, tmp_path, dask_address):
    url, _ = blob_volume
    cfg = run_config(url, tmp_path / "out", dask_address,
                     roi={"start": [40, 64, 24], "stop": [360, 448, 320], "units": "nm"})
    run = segment(cfg, progress=False)
    assert run["roi"] == {"start": [5, 8, 3], "stop": [45, 56, 40]}
