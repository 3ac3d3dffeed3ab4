"""``emseg import``: TIFF stacks and HDF5 datasets into precomputed / zarr, box by box, with voxel size
and offset carried over (or asked for), read back by emseg, tensorstore and cloud-volume."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from emseg.pipeline.io.volume import open_volume
from emseg.tasks.cli import main
from emseg.tasks.commands.import_volume import import_volume
from tests.conftest import blobs

SHAPE = (24, 40, 36)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return blobs(SHAPE, sigma=2.0, seed=21)


def _tiff_stack(path: Path, vol: np.ndarray, *, resolution_nm: tuple[float, float, float] | None) -> Path:
    import tifffile

    path.mkdir()
    for z, plane in enumerate(vol):
        kw = {}
        if resolution_nm is not None:  # ImageJ metadata: pixels per unit in x/y, spacing in z
            kw = {"imagej": True, "resolution": (1 / resolution_nm[2], 1 / resolution_nm[1]),
                  "metadata": {"spacing": resolution_nm[0], "unit": "nm"}}
        tifffile.imwrite(path / f"slice_{z}.tif", plane, **kw)  # natural order: slice_10 after slice_9
    return path


def test_tiff_stack_to_precomputed_carries_the_voxel_size(tmp_path, volume, capsys):
    src = _tiff_stack(tmp_path / "stack", volume, resolution_nm=(30.0, 4.0, 5.0))
    rc = main(["import", str(src), f"precomputed://{tmp_path / 'em'}", "--chunk", "8", "16", "16", "--no-progress"])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    assert got["voxel_size_nm"] == pytest.approx([30.0, 4.0, 5.0]) and got["shape_zyx"] == list(SHAPE)
    vol = open_volume(f"precomputed://{tmp_path / 'em'}")
    assert vol.voxel_size_nm == pytest.approx((30.0, 4.0, 5.0))
    np.testing.assert_array_equal(vol.read(vol.box), volume)
    from cloudvolume import CloudVolume

    cv = CloudVolume(f"file://{tmp_path / 'em'}", progress=False)
    np.testing.assert_array_equal(np.asarray(cv[cv.bounds])[..., 0].transpose(2, 1, 0), volume)
    assert list(cv.resolution) == pytest.approx([5.0, 4.0, 30.0])


def test_tiff_without_voxel_size_is_asked_for(tmp_path, volume, capsys):
    src = _tiff_stack(tmp_path / "stack", volume, resolution_nm=None)
    rc = main(["import", str(src), str(tmp_path / "em"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "give it with --voxel-size" in err
    assert not (tmp_path / "em").exists() or not any((tmp_path / "em").iterdir())
    assert main(["import", str(src), str(tmp_path / "em"), "--voxel-size", "8", "8", "8", "--offset", "1", "2", "3",
                 "--no-progress"]) == 0
    vol = open_volume(f"precomputed://{tmp_path / 'em'}")
    assert vol.voxel_size_nm == (8.0, 8.0, 8.0) and vol.offset_zyx == (1, 2, 3)
    np.testing.assert_array_equal(vol.read(vol.box), volume)


def test_hdf5_dataset_to_zarr_box_by_box(tmp_path, volume):
    import h5py

    big = np.tile(volume, (4, 4, 4))  # 96 x 160 x 144 = 2.2 MB
    with h5py.File(tmp_path / "em.h5", "w") as f:
        ds = f.create_dataset("volumes/raw", data=big, chunks=(8, 16, 16))
        ds.attrs["element_size_um"] = [0.04, 0.008, 0.008]  # ilastik / Fiji convention
        ds.attrs["offset"] = [10, 0, 4]
        f.create_dataset("volumes/other", data=np.zeros((4, 4), np.uint8))  # 2-D: not a candidate
    # A first import loads the modules an import uses, so that the measured peak is voxels, not code.
    import_volume(str(tmp_path / "em.h5"), f"zarr://{tmp_path / 'warm.zarr'}", chunk_zyx=(8, 16, 16),
                  block_zyx=(8, 16, 16), voxel_size_nm=(8, 8, 8), progress=False, dataset="volumes/raw")
    tracemalloc.start()
    got = import_volume(str(tmp_path / "em.h5"), f"zarr://{tmp_path / 'em.zarr'}", chunk_zyx=(8, 16, 16),
                        block_zyx=(8, 80, 48), progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert got["boxes"] == 12 * 2 * 3
    # a box is 30 kB (a few are alive at once: the one read, the writes in flight); the rest is fixed overhead
    assert peak < big.nbytes / 4, f"import held {peak} bytes at once for a {big.nbytes}-byte volume"
    vol = open_volume(f"zarr://{tmp_path / 'em.zarr'}")
    assert vol.voxel_size_nm == pytest.approx((40.0, 8.0, 8.0)) and vol.offset_zyx == (10, 0, 4)
    np.testing.assert_array_equal(vol.read(vol.box), big)


def test_imported_volume_segments(tmp_path, volume, dask_address):
    """The imported store is a valid emseg input (and --segmentation makes a label layer)."""
    import h5py

    from emseg.tasks.driver.run import segment
    from tests.conftest import read_output, run_config

    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["raw"] = volume
        f["raw"].attrs["resolution"] = [8.0, 8.0, 8.0]
        f["seg"] = (volume > 128).astype(np.uint64)
    import_volume(f"{tmp_path / 'em.h5'}:raw", str(tmp_path / "raw"), chunk_zyx=(8, 8, 8), progress=False)
    got = import_volume(str(tmp_path / "em.h5"), str(tmp_path / "seg"), dataset="seg", voxel_size_nm=(8, 8, 8),
                        layer_type="segmentation", chunk_zyx=(8, 8, 8), progress=False)
    assert json.loads((tmp_path / "seg" / "info").read_text())["type"] == "segmentation"
    assert got["dtype"] == "uint64"
    run = segment(run_config(f"precomputed://{tmp_path / 'raw'}", tmp_path / "out", dask_address,
                             blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]}), progress=False)
    assert run["status"] == "complete"
    assert np.array_equal(read_output(tmp_path / "out") > 0, volume >= 128)


@pytest.mark.parametrize("case, message", [
    ("exists", "already holds data"),
    ("inside", "overlaps the source"),
    ("missing", "no HDF5 file"),
    ("two datasets", "name one with --dataset"),
])
def test_bad_import_is_one_line(case, message, tmp_path, volume, capsys):
    import h5py

    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["a"] = volume
        f["a"].attrs["resolution"] = [8.0, 8.0, 8.0]
        if case == "two datasets":
            f["b"] = volume
    dest = tmp_path / "em"
    src = str(tmp_path / "em.h5")
    if case == "exists":
        dest.mkdir()
        (dest / "info").write_text("{}")
    if case == "inside":
        src = _tiff_stack(tmp_path / "stack", volume, resolution_nm=(8.0, 8.0, 8.0))
        dest = src / "em"
    if case == "missing":
        src = str(tmp_path / "nothing.h5")
    rc = main(["import", str(src), str(dest), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
