"""Volume I/O: every URL form opens, metadata is honoured, and cloud-volume reads what emseg writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts

from emseg.pipeline.io import urls
from emseg.pipeline.errors import UnsupportedURLError, VolumeNotFoundError
from emseg.pipeline.geometry import Box
from emseg.pipeline.io.volume import create_precomputed, open_volume
from emseg.tasks.driver.run import segment
from tests.conftest import FIB25, blobs, read_output, run_config, write_zarr


def _data() -> np.ndarray:
    return np.arange(6 * 7 * 8, dtype=np.uint16).reshape(6, 7, 8)


@pytest.mark.parametrize("driver", ["zarr", "zarr3", "n5"])
def test_formats_by_url_and_bare_path(tmp_path, driver):
    path = tmp_path / f"v.{driver}"
    ts.open({"driver": driver, "kvstore": f"file://{path}/", "metadata": _meta(driver)}, create=True).result()[
        ...
    ].write(_data()).result()
    for url in (f"{driver}://{path}", f"{driver}://file://{path}", str(path)):
        vol = open_volume(url)
        # n5 lists its dimensions x, y, z (tensorstore keeps that order): emseg turns them to z, y, x
        want = _data().transpose(2, 1, 0) if driver == "n5" else _data()
        assert vol.shape_zyx == want.shape and vol.dtype == np.uint16, url
        np.testing.assert_array_equal(vol.read(vol.box), want)


def _meta(driver: str) -> dict:
    if driver == "zarr":
        return {"shape": [6, 7, 8], "chunks": [4, 4, 4], "dtype": "<u2"}
    if driver == "zarr3":
        return {"shape": [6, 7, 8], "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 4, 4]}},
                "data_type": "uint16"}
    return {"dimensions": [6, 7, 8], "blockSize": [4, 4, 4], "dataType": "uint16"}


def test_precomputed_is_xyz_on_disk_and_zyx_in_code(tmp_path):
    vol = create_precomputed(str(tmp_path / "img"), layer_type="image", dtype="uint16", shape_zyx=(6, 7, 8),
                             voxel_size_nm=(40, 4, 5), offset_zyx=(1, 2, 3), chunk_zyx=(4, 4, 4))
    vol.write(vol.box, _data())
    info = json.loads((tmp_path / "img" / "info").read_text())
    scale = info["scales"][0]
    assert scale["size"] == [8, 7, 6] and scale["resolution"] == [5, 4, 40] and scale["voxel_offset"] == [3, 2, 1]
    again = open_volume(f"precomputed://{tmp_path}/img")
    assert again.voxel_size_nm == (40.0, 4.0, 5.0) and again.offset_zyx == (1, 2, 3)
    np.testing.assert_array_equal(again.read(Box((0, 0, 0), (6, 7, 8))), _data())


def test_zarr_attributes_give_voxel_size(tmp_path):
    url = write_zarr(tmp_path / "a.zarr", np.zeros((4, 4, 4), np.uint8), voxel_size_nm=(30, 4, 4))
    assert open_volume(url).voxel_size_nm == (30.0, 4.0, 4.0)


@pytest.mark.skipif(not FIB25.exists(), reason="needs ../shared/data/fib25_ts2.zarr")
def test_fib25_metadata():
    vol = open_volume(f"zarr://{FIB25}/raw")
    assert vol.shape_zyx == (250, 250, 250) and vol.dtype == np.uint8 and vol.voxel_size_nm == (10.0, 10.0, 10.0)


def test_tensorstore_spec_mapping(tmp_path):
    url = write_zarr(tmp_path / "a.zarr", np.ones((4, 4, 4), np.uint8))
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "a.zarr") + "/"}}
    assert open_volume(spec).read(Box((0, 0, 0), (4, 4, 4))).sum() == 64
    assert open_volume(url).shape_zyx == (4, 4, 4)


def test_url_errors(tmp_path):
    with pytest.raises(UnsupportedURLError, match="unknown URL scheme 'ftp://'"):
        open_volume("ftp://host/x")
    with pytest.raises(UnsupportedURLError, match="does not say its format"):
        open_volume("gs://bucket/x")
    with pytest.raises(VolumeNotFoundError, match="holds no volume"):
        open_volume(str(tmp_path))
    with pytest.raises(VolumeNotFoundError, match="no volume at"):
        open_volume(f"precomputed://{tmp_path}/missing")
    assert urls.parse("zarr2://s3://bucket/x").driver == "zarr"


@pytest.mark.parametrize("sharded", [False, True])
def test_cloudvolume_reads_emseg_output(tmp_path, dask_address, sharded):
    from cloudvolume import CloudVolume

    img = blobs((40, 48, 56), sigma=2.0, seed=5)
    url = write_zarr(tmp_path / "in.zarr", img)
    write = {"chunk_shape": [8, 8, 8], "sharded": sharded}
    cfg = run_config(url, tmp_path / "out", dask_address, write=write, roi={"start": [2, 0, 4], "stop": [40, 48, 52]})
    segment(cfg, progress=False)
    ours = read_output(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "segmentation" / "info").read_text())
    assert info["type"] == "segmentation" and info["data_type"] == "uint64"
    assert info["scales"][0]["encoding"] == "compressed_segmentation"
    assert ("sharding" in info["scales"][0]) == sharded
    # Unsharded, every chunk is stored (even all-background ones); tensorstore leaves background
    # chunks out of shards, which readers treat as background when told to fill missing chunks.
    cv = CloudVolume(f"file://{tmp_path}/out/segmentation", fill_missing=sharded, progress=False)
    assert list(cv.bounds.minpt) == [4, 0, 2] and list(cv.bounds.maxpt) == [52, 48, 40]
    theirs = np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.max() > 5
