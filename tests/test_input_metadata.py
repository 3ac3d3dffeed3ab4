"""Every format emseg reads x every place it keeps axis order, voxel size and offset (docs/input.md).

Each row writes the same anisotropic (40 x 8 x 4 nm), offset (3, 5, 7 voxels), non-cubic (10 x 14 x 18)
volume in z, y, x, stored the way that row's format and metadata say, then checks that emseg opens it
as z, y, x with the right voxel size and offset, and that a whole run puts every label in place: the
output's info has the input's resolution and offset, and its labels are the connected components of
the z, y, x image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import pytest
import tensorstore as ts

from emseg.pipeline.io.volume import create_precomputed, open_volume
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, read_output, run_config, same_partition

SHAPE = (10, 14, 18)  # z, y, x
VOXEL = (40.0, 8.0, 4.0)  # nm, z, y, x
OFFSET = (3, 5, 7)  # voxels, z, y, x
IMAGE = blobs(SHAPE, sigma=1.5, seed=3)
XYZ = (2, 1, 0)  # z, y, x -> x, y, z


def _zarr(path: Path, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
    arr = ts.open({"driver": "zarr", "kvstore": f"file://{path}/",
                   "metadata": {"shape": list(data.shape), "chunks": [8] * data.ndim, "dtype": "|u1"}},
                  create=True).result()
    arr[...].write(data).result()
    if attrs is not None:
        (path / ".zattrs").write_text(json.dumps(attrs))


def _zarr3(path: Path, data: np.ndarray, names: list[str] | None, attrs: dict[str, Any] | None = None) -> None:
    meta: dict[str, Any] = {"shape": list(data.shape), "data_type": "uint8",
                            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8] * data.ndim}}}
    if names is not None:
        meta["dimension_names"] = names
    ts.open({"driver": "zarr3", "kvstore": f"file://{path}/", "metadata": meta}, create=True).result()[...].write(
        data).result()
    if attrs is not None:
        doc = json.loads((path / "zarr.json").read_text())
        doc["attributes"] = attrs
        (path / "zarr.json").write_text(json.dumps(doc))


def _n5(path: Path, data_xyz: np.ndarray, extra_meta: dict[str, Any] | None = None,
        attrs: dict[str, Any] | None = None) -> None:
    meta = {"dimensions": list(data_xyz.shape), "blockSize": [8, 8, 8], "dataType": "uint8",
            "compression": {"type": "raw"}, **(extra_meta or {})}
    ts.open({"driver": "n5", "kvstore": f"file://{path}/", "metadata": meta}, create=True).result()[...].write(
        data_xyz).result()
    if attrs:
        doc = json.loads((path / "attributes.json").read_text())
        doc.update(attrs)
        (path / "attributes.json").write_text(json.dumps(doc))


def _ngff_axes(names: str, unit: str) -> list[dict[str, str]]:
    return [{"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space", "unit": unit} for n in names]


# Each row: (format, where the metadata is) -> writer(tmp_path) returning (URL, extra config keys).
def row_precomputed(tmp: Path) -> tuple[str, dict]:
    vol = create_precomputed(str(tmp / "img"), layer_type="image", dtype="uint8", shape_zyx=SHAPE,
                             voxel_size_nm=VOXEL, offset_zyx=OFFSET, chunk_zyx=(8, 8, 8))
    vol.write(vol.box, IMAGE)
    return f"precomputed://{tmp}/img", {}


def row_zarr_resolution_nm(tmp: Path) -> tuple[str, dict]:
    _zarr(tmp / "v.zarr" / "raw", IMAGE, {"resolution_nm": list(VOXEL), "voxel_offset": list(OFFSET)})
    return f"zarr://{tmp}/v.zarr/raw", {}


def row_zarr_resolution(tmp: Path) -> tuple[str, dict]:
    _zarr(tmp / "v.zarr" / "raw", IMAGE, {"resolution": list(VOXEL), "voxel_offset": list(OFFSET)})
    return f"zarr://{tmp}/v.zarr/raw", {}


def row_zarr_xarray_dims(tmp: Path) -> tuple[str, dict]:
    # Stored x, y, z; the xarray attribute names the dimensions, the lists follow the stored order.
    _zarr(tmp / "v.zarr" / "raw", IMAGE.transpose(XYZ),
          {"_ARRAY_DIMENSIONS": ["x", "y", "z"], "resolution_nm": list(VOXEL[::-1]), "voxel_offset": list(OFFSET[::-1])})
    return f"zarr://{tmp}/v.zarr/raw", {}


def row_zarr_funlib(tmp: Path) -> tuple[str, dict]:
    # funlib.persistence / daisy: axis_names, voxel_size and offset (world units) in the stored order y, x, z.
    order = (1, 2, 0)
    _zarr(tmp / "v.zarr" / "raw", IMAGE.transpose(order),
          {"axis_names": ["y", "x", "z"], "units": ["nm", "nm", "nm"],
           "voxel_size": [VOXEL[i] for i in order], "offset": [OFFSET[i] * VOXEL[i] for i in order]})
    return f"zarr://{tmp}/v.zarr/raw", {}


def row_zarr_config_voxel_size(tmp: Path) -> tuple[str, dict]:
    # No voxel size in the metadata: the config's input_voxel_size_nm gives it.
    _zarr(tmp / "v.zarr" / "raw", IMAGE, {"voxel_offset": list(OFFSET)})
    return f"zarr://{tmp}/v.zarr/raw", {"input_voxel_size_nm": list(VOXEL)}


def row_zarr3_dimension_names(tmp: Path) -> tuple[str, dict]:
    _zarr3(tmp / "v.zarr" / "raw", IMAGE.transpose(XYZ), ["x", "y", "z"],
           {"resolution_nm": list(VOXEL[::-1]), "voxel_offset": list(OFFSET[::-1])})
    return f"zarr3://{tmp}/v.zarr/raw", {}


def row_n5_pixel_resolution(tmp: Path) -> tuple[str, dict]:
    # n5 without axes: its dimensions (and every list) are x, y, z.
    _n5(tmp / "v.n5" / "raw", IMAGE.transpose(XYZ),
        attrs={"pixelResolution": {"dimensions": list(VOXEL[::-1]), "unit": "nm"}, "voxel_offset": list(OFFSET[::-1])})
    return f"n5://{tmp}/v.n5/raw", {}


def row_n5_pixel_resolution_um(tmp: Path) -> tuple[str, dict]:
    _n5(tmp / "v.n5" / "raw", IMAGE.transpose(XYZ),
        attrs={"pixelResolution": {"dimensions": [v / 1000 for v in VOXEL[::-1]], "unit": "um"},
               "voxel_offset": list(OFFSET[::-1])})
    return f"n5://{tmp}/v.n5/raw", {}


def row_n5_axes_units(tmp: Path) -> tuple[str, dict]:
    # tensorstore / n5-viewer: axes, resolution and units attributes.
    _n5(tmp / "v.n5" / "raw", IMAGE.transpose(XYZ),
        {"axes": ["x", "y", "z"], "units": ["nm", "nm", "nm"], "resolution": list(VOXEL[::-1])},
        attrs={"voxel_offset": list(OFFSET[::-1])})
    return f"n5://{tmp}/v.n5/raw", {}


def row_ngff_04(tmp: Path) -> tuple[str, dict]:
    # OME-NGFF 0.4: scale and translation (micrometres) of dataset s0 in the group's .zattrs.
    root = tmp / "img.ome.zarr"
    _zarr(root / "s0", IMAGE)
    _zarr(root / "s1", IMAGE[:, ::2, ::2])
    um = [v / 1000 for v in VOXEL]
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": _ngff_axes("zyx", "micrometer"),
        "datasets": [
            {"path": "s0", "coordinateTransformations": [
                {"type": "scale", "scale": um}, {"type": "translation", "translation": [o * v for o, v in zip(OFFSET, um)]}]},
            {"path": "s1", "coordinateTransformations": [
                {"type": "scale", "scale": [um[0], 2 * um[1], 2 * um[2]]}]}]}]}))
    return f"zarr://{tmp}/img.ome.zarr/s0", {}


def row_ngff_04_channel_global(tmp: Path) -> tuple[str, dict]:
    # c, z, y, x with one channel; a multiscale-level scale applies after the dataset's.
    root = tmp / "img.ome.zarr"
    _zarr(root / "0", IMAGE[None])
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": _ngff_axes("czyx", "nanometer"),
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 2, 1]},
            {"type": "translation", "translation": [0, OFFSET[0], OFFSET[1] * 2, OFFSET[2]]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1, VOXEL[0], VOXEL[1] / 2, VOXEL[2]]}]}]}))
    return f"zarr://{tmp}/img.ome.zarr/0", {}


def row_ngff_05(tmp: Path) -> tuple[str, dict]:
    # OME-NGFF 0.5 (zarr v3): multiscales under "ome" in the group's zarr.json.
    root = tmp / "img.ome.zarr"
    _zarr3(root / "0", IMAGE, ["z", "y", "x"])
    (root / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"ome": {
        "version": "0.5", "multiscales": [{
            "axes": _ngff_axes("zyx", "nanometer"),
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": list(VOXEL)},
                {"type": "translation", "translation": [o * v for o, v in zip(OFFSET, VOXEL)]}]}]}]}}}))
    return f"zarr3://{tmp}/img.ome.zarr/0", {}


ROWS: dict[str, Callable[[Path], tuple[str, dict]]] = {
    "precomputed info": row_precomputed,
    "zarr v2 .zattrs resolution_nm + voxel_offset": row_zarr_resolution_nm,
    "zarr v2 .zattrs resolution + voxel_offset": row_zarr_resolution,
    "zarr v2 _ARRAY_DIMENSIONS (xarray), x y z stored": row_zarr_xarray_dims,
    "zarr v2 funlib axis_names + voxel_size + offset": row_zarr_funlib,
    "zarr v2 no voxel size + input_voxel_size_nm": row_zarr_config_voxel_size,
    "zarr v3 dimension_names + attributes": row_zarr3_dimension_names,
    "n5 pixelResolution (nm) + voxel_offset, no axes": row_n5_pixel_resolution,
    "n5 pixelResolution (um)": row_n5_pixel_resolution_um,
    "n5 axes + resolution + units": row_n5_axes_units,
    "OME-NGFF 0.4 scale + translation": row_ngff_04,
    "OME-NGFF 0.4 c,z,y,x + multiscale-level scale": row_ngff_04_channel_global,
    "OME-NGFF 0.5 (zarr v3)": row_ngff_05,
}


@pytest.mark.parametrize("row", list(ROWS))
def test_every_place_metadata_lives(row, tmp_path, dask_address):
    url, extra = ROWS[row](tmp_path)
    vol = open_volume(url)
    assert vol.shape_zyx == SHAPE, row
    np.testing.assert_array_equal(vol.read(vol.box), IMAGE)
    if "input_voxel_size_nm" not in extra:
        assert vol.voxel_size_source is not None, row
        np.testing.assert_allclose(vol.voxel_size_nm, VOXEL, rtol=1e-9)
    assert vol.offset_zyx == OFFSET, row

    out = tmp_path / "out"
    run = segment(run_config(url, out, dask_address, **extra), progress=False)
    assert run["status"] == "complete"
    info = json.loads((out / "segmentation" / "info").read_text())["scales"][0]
    assert info["size"] == list(SHAPE[::-1]) and info["voxel_offset"] == list(OFFSET[::-1]), info
    np.testing.assert_allclose(info["resolution"], VOXEL[::-1], rtol=1e-9)
    want = cc3d.connected_components(IMAGE >= 128, connectivity=26)
    assert want.max() > 3  # the check has objects to put in place
    assert same_partition(read_output(out), want)


def test_upper_case_dimension_names(tmp_path):
    _zarr3(tmp_path / "v.zarr", IMAGE.transpose(XYZ), ["X", "Y", "Z"], {"resolution_nm": list(VOXEL[::-1])})
    vol = open_volume(f"zarr3://{tmp_path}/v.zarr")
    assert vol.shape_zyx == SHAPE and vol.voxel_size_nm == VOXEL
    np.testing.assert_array_equal(vol.read(vol.box), IMAGE)


def test_disagreeing_places_are_refused(tmp_path):
    from emseg.pipeline.errors import ConfigError

    _zarr(tmp_path / "v.zarr" / "raw", IMAGE, {"resolution_nm": [40, 8, 4], "resolution": [8, 8, 8]})
    with pytest.raises(ConfigError, match=r"attribute resolution_nm gives a voxel size .* but the attribute resolution"):
        open_volume(f"zarr://{tmp_path}/v.zarr/raw")


def test_a_second_channel_is_refused(tmp_path):
    from emseg.pipeline.errors import ConfigError

    root = tmp_path / "img.ome.zarr"
    _zarr(root / "0", np.stack([IMAGE, IMAGE]))
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": _ngff_axes("czyx", "nanometer"),
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 40, 8, 4]}]}]}]}))
    with pytest.raises(ConfigError, match="has c = 2 besides z, y, x"):
        open_volume(f"zarr://{root}/0")
