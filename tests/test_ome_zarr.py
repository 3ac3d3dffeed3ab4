"""Stage 10, OME-Zarr output: NGFF 0.4 (zarr v2) and 0.5 (zarr v3) label images of every scale, read
back by ome-zarr-py's reader (the library napari's OME-Zarr plugin uses) and by emseg's own input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from emseg.pipeline.io.volume import open_volume
from emseg.tasks.driver.run import segment
from tests.conftest import blobs, run_config, write_zarr

SHAPE = (40, 36, 44)


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def ome_run(request, tmp_path_factory, dask_address) -> tuple[dict, Path, str]:
    root = tmp_path_factory.mktemp(f"ome_{request.param.replace('.', '')}")
    url = write_zarr(root / "in.zarr", blobs(SHAPE, sigma=2.5, seed=13), chunks=(16, 16, 16))
    # a region of interest that starts off the origin: every scale has its own voxel offset (odd ones too)
    cfg = run_config(url, root / "out", dask_address, blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]},
                     roi={"start": [2, 6, 6], "stop": [40, 36, 44]},
                     postprocess={"pyramid_levels": 2, "meshes": False, "seam_audit": False,
                                  "ome_zarr": request.param})
    run = segment(cfg, progress=False)
    assert run["postprocess"]["failures"] == []
    return run, root / "out", request.param


def _precomputed_scales(out: Path) -> list[tuple[np.ndarray, dict]]:
    info = json.loads((out / "segmentation" / "info").read_text())
    got = []
    for s in info["scales"]:
        arr = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{out}/segmentation/",
                       "scale_metadata": {"key": s["key"]}}).result()
        got.append((np.asarray(arr.read().result())[..., 0].transpose(2, 1, 0), s))
    return got


def test_ome_zarr_py_reads_the_label_pyramid(ome_run):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    run, out, version = ome_run
    path = out / "segmentation.ome.zarr"
    location = parse_url(str(path))
    assert location is not None, "ome-zarr does not recognise the group"
    assert location.version == version
    nodes = list(Reader(location)())
    node = nodes[0]
    assert node.load(Label) is not None and node.load(Multiscales) is not None, "not a multiscale label image"
    expected = _precomputed_scales(out)
    assert len(node.data) == len(expected) == 3
    for level, (data, (want, meta)) in enumerate(zip(node.data, expected)):
        np.testing.assert_array_equal(np.asarray(data), want, err_msg=f"scale {level}")
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"] and all(a["unit"] == "nanometer" for a in axes)
    transforms = node.metadata["coordinateTransformations"]
    for level, (t, (_, meta)) in enumerate(zip(transforms, expected)):
        scale = next(x["scale"] for x in t if x["type"] == "scale")
        assert scale == [float(v) for v in meta["resolution"][::-1]], f"scale {level}"


def test_emseg_reads_the_same_voxel_size_and_offset(ome_run):
    run, out, version = ome_run
    prefix = "zarr" if version == "0.4" else "zarr3"
    offsets: set[tuple[int, ...]] = set()
    for level, (want, meta) in enumerate(_precomputed_scales(out)):
        vol = open_volume(f"{prefix}://{out / 'segmentation.ome.zarr' / str(level)}")
        assert vol.voxel_size_nm == tuple(float(v) for v in meta["resolution"][::-1])
        assert vol.offset_zyx == tuple(meta["voxel_offset"][::-1])
        offsets.add(vol.offset_zyx)
        np.testing.assert_array_equal(vol.read(vol.box), want)
    assert offsets == {(2, 6, 6), (1, 3, 3), (0, 1, 1)}
    assert run["postprocess"]["ome_zarr"]["version"] == version


def test_a_multiscale_group_as_input_names_its_scales(ome_run, tmp_path, capsys):
    """Input from an OME-Zarr multiscale group: the URL chooses the scale's array; the group itself is
    refused with one line that lists the scales to choose from, with their voxel sizes."""
    import yaml

    from emseg.pipeline.errors import VolumeNotFoundError
    from emseg.tasks.cli import main

    _, out, version = ome_run
    group = out / "segmentation.ome.zarr"
    prefix = "zarr" if version == "0.4" else "zarr3"
    for url in (f"{prefix}://{group}", str(group)):
        with pytest.raises(VolumeNotFoundError) as exc:
            open_volume(url)
        text = str(exc.value)
        assert "OME-Zarr multiscale group" in text and f"{group}/1 (16 x 16 x 16 nm)" in text, text
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"input": f"{prefix}://{group}", "output": str(tmp_path / "o"),
                                   "backend": {"name": "threshold-cc"}}))
    assert main(["segment", str(cfg), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{group}/0 (8 x 8 x 8 nm)" in err
    assert not (tmp_path / "o").exists()
