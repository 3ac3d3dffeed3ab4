"""Shared fixtures: a real local Dask cluster, real stores in temp dirs, a partition oracle."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIB25 = SHARED_DATA / "fib25_ts2.zarr"


@pytest.fixture(scope="session")
def dask_address() -> Any:
    """One real local cluster of two worker processes for the whole session."""
    from distributed import LocalCluster

    from emseg.tasks.driver.cluster import configure_workers

    configure_workers()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def write_zarr(path: Path, array: np.ndarray, chunks: tuple[int, int, int] = (32, 32, 32),
               voxel_size_nm: tuple[float, float, float] = (8.0, 8.0, 8.0)) -> str:
    """Write ``array`` as a zarr v2 array through tensorstore; return its URL."""
    from emseg.pipeline.io.volume import create_zarr

    vol = create_zarr(str(path), dtype=array.dtype.name, shape_zyx=array.shape, chunk_zyx=chunks,
                      voxel_size_nm=voxel_size_nm)
    vol.write(vol.box, array)
    return f"zarr://{path}"


def run_config(input_url: str, output: Path, address: str | None, **overrides: Any) -> Any:
    from emseg.pipeline.config import from_dict

    data: dict[str, Any] = {
        "input": input_url,
        "output": str(output),
        "backend": {"name": "threshold-cc", "threshold": 128},
        "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]},
        "write": {"chunk_shape": [8, 8, 8]},
        "cluster": {"address": address} if address else {"workers": 2},
        "postprocess": None,  # the engine's tests; viewing outputs have their own
    }
    data.update(overrides)
    return from_dict(data)


def read_output(output: Path) -> np.ndarray:
    from emseg.pipeline.io.volume import open_volume

    vol = open_volume(f"precomputed://{output}/segmentation")
    return vol.read(vol.box)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` split the voxels identically (ids may differ; 0 must match 0)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel().astype(np.uint64), b.ravel().astype(np.uint64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def blobs(shape: tuple[int, int, int], sigma: float, seed: int) -> np.ndarray:
    """Smoothed noise scaled to uint8: thresholding at 128 gives many separate blobby objects."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), sigma)
    img = (img - img.mean()) / (img.std() + 1e-9)
    return np.clip(128 + 60 * (img - 1.0), 0, 255).astype(np.uint8)  # 128 = one s.d. above the mean


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    logging.getLogger("emseg").setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
