"""``model.kind: stored``: affinities predicted earlier, read from a volume instead of a model.

The oracle runs through it (affinities of ground-truth labels, stored as a real zarr array, give the
labels back for any block shape); the channel axis is found in every layout emseg reads; bad stores
are refused before any work with one line.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pytest
import tensorstore as ts
import yaml

from emseg.pipeline.backends.boundary.stored import StoredAffinities
from emseg.pipeline.errors import ConfigError, VolumeReadError
from emseg.pipeline.geometry import Box
from emseg.pipeline.io.volume import open_channels, open_volume
from emseg.pipeline.stitching.agglomeration import affinities_from_labels
from emseg.tasks.cli import main
from emseg.tasks.driver.run import segment, validate
from tests.conftest import read_output, run_config, same_partition, write_zarr
from tests.test_affinities_oracle import _touching_cells

SHAPE = (45, 53, 39)


def _write(path: Path, data: np.ndarray, chunks: list[int], driver: str = "zarr", **extra) -> str:
    """Write (c, z, y, x) ``data`` (or any order ``extra`` says) as a real tensorstore array; its URL."""
    metadata = {"shape": list(data.shape), "dtype": data.dtype.str}
    if driver == "zarr":
        metadata["chunks"] = chunks
    else:
        metadata = {"shape": list(data.shape), "data_type": data.dtype.name,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}}, **extra}
    t = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": str(path)}, "metadata": metadata,
                 "create": True}).result()
    t.write(data).result()
    return f"{'zarr' if driver == 'zarr' else 'zarr3'}://{path}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    """An image (random: it only gives the grid) and the affinities of touching cells, float32 (c, z, y, x)."""
    root = tmp_path_factory.mktemp("stored")
    labels = _touching_cells(SHAPE, seed=3)
    image = np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)
    img = write_zarr(root / "img.zarr", image, chunks=(16, 16, 16))
    affs = _write(root / "affs.zarr", affinities_from_labels(labels), [3, 16, 16, 16])
    return img, affs, labels


def _model(affs: str, **extra) -> dict:
    return {"name": "affinities", "model": {"kind": "stored", "affinities": affs}, **extra}


@pytest.mark.parametrize(("block", "halo", "scope"),
                         [((16, 16, 16), (1, 1, 1), "global"), ((32, 16, 24), (2, 1, 3), "blockwise")])
def test_stored_oracle_affinities_give_the_labels_back(stored, tmp_path, dask_address, block, halo, scope):
    img, affs, labels = stored
    cfg = run_config(img, tmp_path / "out", dask_address, backend=_model(affs, fragments="zwatershed"),
                     blocks={"shape": list(block), "halo": list(halo)}, agglomeration={"scope": scope})
    run = segment(cfg, progress=False)
    out = read_output(tmp_path / "out")
    expected = cc3d.connected_components(labels, connectivity=6)
    inside = labels > 0  # an unlabelled voxel has affinity 0 to everything: a segment of its own
    assert same_partition(out[inside], expected[inside])
    assert run["segments"] == expected.max() + int((~inside).sum())
    assert run["status"] == "complete" and validate(cfg).ctx.threshold == 0.5  # kind stored's default


def test_the_channel_axis_is_found_in_each_layout(tmp_path):
    """zarr v2 c, z, y, x; zarr v3 with the channel last by name; uint8 affinities scale to 0..1."""
    affs = np.random.default_rng(1).random((3, 6, 7, 8)).astype(np.float32)
    first = open_channels(_write(tmp_path / "a.zarr", affs, [3, 4, 4, 4]))
    assert first.channels == 3 and first.shape_zyx == (6, 7, 8)
    assert np.array_equal(first.array.read().result(), affs)
    last = np.ascontiguousarray(np.moveaxis(affs, 0, -1))
    url = _write(tmp_path / "b.zarr", last, [4, 4, 4, 3], driver="zarr3", dimension_names=["z", "y", "x", "c"])
    second = open_channels(url)
    assert second.shape_zyx == (6, 7, 8) and np.array_equal(second.array.read().result(), affs)
    as_bytes = np.round(affs * 255).astype(np.uint8)
    model = StoredAffinities(_write(tmp_path / "c.zarr", as_bytes, [3, 4, 4, 4]))
    got = model.predict(np.zeros((4, 5, 6), np.float32), origin_zyx=(1, 1, 1))
    want = as_bytes[:, 1:5, 1:6, 1:7] / np.float32(255)
    assert want[0, 0].all() and want[2, :, :, 0].all()  # the box's first planes keep their stored values
    assert got.dtype == np.float32 and np.array_equal(got, want)
    corner = model.predict(np.zeros((4, 5, 6), np.float32), origin_zyx=(0, 1, 0))
    at_origin = as_bytes[:, 0:4, 1:6, 0:6] / np.float32(255)
    at_origin[0, 0], at_origin[2, :, :, 0] = 0, 0  # the volume's first planes along z and x: no voxel before them
    assert np.array_equal(corner, at_origin)
    only = model.predict(np.zeros((4, 5, 6), np.float32), origin_zyx=(1, 1, 1),
                         region=(slice(1, 3), slice(1, 4), slice(2, 5)))
    assert np.array_equal(only[:, 1:3, 1:4, 2:5], want[:, 1:3, 1:4, 2:5])
    outside = np.ones(only.shape, bool)
    outside[:, 1:3, 1:4, 2:5] = False
    assert not only[outside].any()  # nothing read outside the region


def test_float_affinities_are_clipped_and_nan_reads_as_zero(tmp_path):
    affs = np.full((3, 4, 4, 4), 0.5, np.float32)
    affs[0, 2, 2, 2], affs[1, 2, 2, 2], affs[2, 2, 2, 2] = np.nan, 1.5, -0.5
    got = StoredAffinities(_write(tmp_path / "a.zarr", affs, [3, 4, 4, 4])).predict(np.zeros((4, 4, 4)))
    assert got[0, 2, 2, 2] == 0.0 and got[1, 2, 2, 2] == 1.0 and got[2, 2, 2, 2] == 0.0


def test_bad_stores_are_refused(tmp_path, stored):
    img, _, _ = stored
    two = _write(tmp_path / "two.zarr", np.zeros((2, *SHAPE), np.float32), [2, 16, 16, 16])
    with pytest.raises(ConfigError, match="2 channel"):
        StoredAffinities(two)
    ints = _write(tmp_path / "ints.zarr", np.zeros((3, *SHAPE), np.int32), [3, 16, 16, 16])
    with pytest.raises(ConfigError, match="int32"):
        StoredAffinities(ints)
    with pytest.raises(ConfigError, match="channel axis"):
        open_channels(img)  # a 3D volume
    small = _write(tmp_path / "small.zarr", np.zeros((3, 40, 53, 39), np.float32), [3, 16, 16, 16])
    image = open_volume(img)
    with pytest.raises(ConfigError, match=r"cover voxels \[0, 0, 0\]..\[40, 53, 39\] .* region is \[0, 0, 0\]..\[45, 53, 39\]"):
        StoredAffinities(small).check_geometry(image, image.box)
    StoredAffinities(small).check_geometry(image, Box((0, 0, 0), (40, 53, 39)))  # a region inside them: fine
    hole = tmp_path / "hole.zarr"
    t = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(hole)}, "create": True,
                 "metadata": {"shape": [3, 8, 8, 8], "chunks": [3, 4, 4, 4], "dtype": "<f4"}}).result()
    t[:, :4].write(np.ones((3, 4, 8, 8), np.float32)).result()
    model = StoredAffinities(f"zarr://{hole}")
    assert model.predict(np.zeros((4, 8, 8))).max() == 1.0
    with pytest.raises(VolumeReadError, match="chunk of the stored affinities .* is missing"):
        model.predict(np.zeros((8, 8, 8)))  # never the fill value: a prediction that did not finish


@pytest.mark.parametrize(("model", "message"), [
    ({"kind": "stored"}, "set backend.model.affinities"),
    ({"kind": "forest", "affinities": "zarr:///x"}, "read only with kind stored"),
    ({"kind": "stored", "affinities": "zarr:///x", "weights": "w.pt"}, "weights has no use"),
])
def test_model_keys_are_checked(tmp_path, stored, model, message):
    img, _, _ = stored
    with pytest.raises(Exception, match=message):
        run_config(img, tmp_path / "out", None, backend={"name": "affinities", "model": model})


def test_mismatched_store_is_one_line_before_any_work(tmp_path, stored, capsys):
    img, _, _ = stored
    small = _write(tmp_path / "small.zarr", np.zeros((3, 40, 53, 39), np.float32), [3, 16, 16, 16])
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "out"
    cfg.write_text(yaml.safe_dump({"input": img, "output": str(out), "backend": _model(small),
                                   "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]},
                                   "write": {"chunk_shape": [8, 8, 8]}, "cluster": {"workers": 1}}))
    rc = main(["segment", str(cfg), "--no-progress", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "stored affinities" in err and "[45, 53, 39]" in err, err
    assert not out.exists()


def test_output_inside_the_stored_affinities_is_refused(tmp_path, stored):
    img, affs, _ = stored
    inside = affs.removeprefix("zarr://") + "/out"
    with pytest.raises(ConfigError, match="lies inside the stored affinities"):
        validate(run_config(img, Path(inside), None, backend=_model(affs)))
    assert not Path(inside).exists()


def test_a_thin_halo_is_warned_about(tmp_path, stored, caplog):
    img, affs, _ = stored
    validate(run_config(img, tmp_path / "out", None, backend=_model(affs),
                        blocks={"shape": [16, 16, 16], "halo": [4, 4, 4]}))
    assert "smaller than backend.fragment_context (16)" in caplog.text
    assert "copies" not in caplog.text


def test_copying_stored_affinities_is_warned_about(tmp_path, stored, caplog):
    img, affs, _ = stored
    validate(run_config(img, tmp_path / "out", None, backend=_model(affs), write={"affinities": "uint8", "chunk_shape": [16] * 3}))
    assert f"copies {affs} into the output's affinities" in caplog.text


def test_soft_stored_affinities_do_not_depend_on_the_halo(tmp_path, dask_address):
    """A stored affinity is the same wherever a block's box starts: with a halo of at least the
    fragment context, blocks cut the same fragments for any halo (a box's first planes keep their
    stored values; zeroing them, as a model's output has them, changes the fragments near faces
    when the halo is the fragment context)."""
    labels = _touching_cells(SHAPE, seed=5)
    rng = np.random.default_rng(2)
    soft = np.clip(0.15 + 0.7 * affinities_from_labels(labels) + rng.normal(0, 0.1, (3, *SHAPE)), 0, 1)
    img = write_zarr(tmp_path / "img.zarr", np.zeros(SHAPE, np.uint8), chunks=(16, 16, 16))
    affs = _write(tmp_path / "soft.zarr", soft.astype(np.float32), [3, 16, 16, 16])
    out = {}
    for halo in (2, 5):
        cfg = run_config(img, tmp_path / f"h{halo}", dask_address, backend=_model(affs, fragment_context=2),
                         blocks={"shape": [24, 24, 24], "halo": [halo] * 3},
                         agglomeration={"threshold": 0.3, "small": None, "enclosed": None})
        segment(cfg, progress=False)
        out[halo] = read_output(tmp_path / f"h{halo}")
    assert len(np.unique(out[2])) > 20
    assert same_partition(out[2], out[5])


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_written_affinities_are_read_back_as_stored(stored, tmp_path, dask_address, dtype):
    """Predict once, agglomerate again: a run with ``write.affinities`` stores its blocks' affinities
    (here the labels oracle's, over a region of interest), and a second run reads them with
    ``model.kind: stored``, lined up by their offset, and gives the same segmentation."""
    img, _, labels = stored
    lab = write_zarr(tmp_path / "labels.zarr", labels, chunks=(16, 16, 16))
    roi = {"start": [8, 16, 0], "stop": [40, 48, 32]}
    first = run_config(lab, tmp_path / "first", dask_address, backend={"name": "affinities", "model": {"kind": "labels"}},
                       blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]}, roi=roi, write={"chunk_shape": [8, 8, 8],
                                                                                          "affinities": dtype})
    run = segment(first, progress=False)
    assert run["affinities"] == f"zarr://file://{tmp_path / 'first' / 'affinities'}"
    written = open_channels(run["affinities"])
    assert written.dtype.name == dtype and written.shape_zyx == (32, 32, 32) and written.offset_zyx == (8, 16, 0)
    assert written.attributes["emseg"] == {"model": "labels", "threshold": 0.5} and run["threshold"] == 0.5
    want = affinities_from_labels(labels)[:, 8:40, 16:48, 0:32] * (255 if dtype == "uint8" else 1)
    want[0, 0], want[1, :, 0], want[2, :, :, 0] = 0, 0, 0  # the first plane of the region: the run's first plane
    assert np.array_equal(written.array.read().result(), want.astype(dtype))
    again = run_config(lab, tmp_path / "again", dask_address,
                       backend=_model(f"zarr://{tmp_path / 'first' / 'affinities'}", fragments="zwatershed"),
                       blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]}, roi=roi)
    assert validate(again).config.backend.params.model.affinities_shift_zyx == (-8, -16, 0)
    segment(again, progress=False)
    inside = labels[8:40, 16:48, 0:32] > 0  # the labels run masks label 0 out; here each such voxel stands alone
    assert same_partition(read_output(tmp_path / "again")[inside], read_output(tmp_path / "first")[inside])
    wider = run_config(lab, tmp_path / "wider", None, backend=_model(f"zarr://{tmp_path / 'first' / 'affinities'}"),
                       roi={"start": [0, 16, 0], "stop": [40, 48, 32]})
    with pytest.raises(ConfigError, match=r"cover voxels \[8, 16, 0\]..\[40, 48, 32\] .* region is \[0, 16, 0\]"):
        validate(wider)
    if dtype == "float32":  # --restart without write.affinities removes the store, folders included
        plain = first.model_copy(update={"write": first.write.model_copy(update={"affinities": None})})
        segment(plain, progress=False, restart=True)
        assert not (tmp_path / "first" / "affinities").exists()
        assert (tmp_path / "first" / "segmentation" / "info").exists()


def test_write_affinities_needs_a_boundary_backend(stored, tmp_path):
    img, _, _ = stored
    with pytest.raises(ConfigError, match="write.affinities stores a boundary backend's affinities"):
        validate(run_config(img, tmp_path / "out", None, write={"chunk_shape": [8, 8, 8], "affinities": "uint8"}))


def _zattrs(url: str, attrs: dict) -> str:
    (Path(url.removeprefix("zarr://")) / ".zattrs").write_text(__import__("json").dumps(attrs))
    return url


def test_three_entry_attributes_of_a_channel_volume_are_read(tmp_path, stored):
    """Lists of three (z, y, x in the array's own order) on a 4D array: a voxel size that
    contradicts the input's is refused, offsets place the store, funlib's channel-last layout works."""
    img, _, _ = stored
    image = open_volume(img)  # 8 nm
    zeros = np.zeros((3, *SHAPE), np.float32)
    wrong = _zattrs(_write(tmp_path / "wrong.zarr", zeros, [3, 16, 16, 16]), {"resolution_nm": [10, 10, 10]})
    with pytest.raises(ConfigError, match=r"voxels of \[10.0, 10.0, 10.0\] nm \(attribute resolution_nm\)"):
        StoredAffinities(wrong).check_geometry(image, image.box)
    part = _zattrs(_write(tmp_path / "part.zarr", zeros[:, 5:], [3, 16, 16, 16]), {"voxel_offset": [5, 0, 0]})
    assert open_channels(part).offset_zyx == (5, 0, 0)
    last = np.ascontiguousarray(np.moveaxis(zeros, 0, -1))
    funlib = _zattrs(_write(tmp_path / "funlib.zarr", last, [16, 16, 16, 3]),
                     {"axis_names": ["z", "y", "x", "c^"], "voxel_size": [8, 8, 8], "offset": [16, 0, 8],
                      "units": ["nm", "nm", "nm"]})
    vol = open_channels(funlib)
    assert vol.channels == 3 and vol.voxel_size_nm == (8.0, 8.0, 8.0) and vol.offset_zyx == (2, 0, 1)


def test_questionable_stores_are_refused_before_any_work(tmp_path, stored):
    img, affs, _ = stored
    scaled = _write(tmp_path / "scaled.zarr", np.full((3, *SHAPE), 200.0, np.float32), [3, 16, 16, 16])
    with pytest.raises(ConfigError, match=r"values from 200 to 200; emseg reads float affinities in \[0, 1\]"):
        validate(run_config(img, tmp_path / "o1", None, backend=_model(scaled)))
    holed = tmp_path / "holed.zarr"
    _write(holed, np.full((3, *SHAPE), 0.5, np.float32), [3, 16, 16, 16])
    (holed / "0.0.0.0").unlink()
    with pytest.raises(VolumeReadError, match="chunk of the stored affinities .* is missing"):
        validate(run_config(img, tmp_path / "o2", None, backend=_model(f"zarr://{holed}")))
    unnamed = _write(tmp_path / "unnamed.zarr", np.zeros((*SHAPE, 3), np.float32), [16, 16, 16, 3])
    with pytest.raises(ConfigError, match=r"read as \(c, z, y, x\) = \[45, 53, 39, 3\], as their axes have no names"):
        StoredAffinities(unnamed)
    offset = _zattrs(_write(tmp_path / "offset.zarr", np.full((3, *SHAPE), 0.5, np.float32), [3, 16, 16, 16]),
                     {"voxel_offset": [0, 0, 0]})
    cfg = run_config(img, tmp_path / "o3", None,
                     backend={"name": "affinities", "model": {"kind": "stored", "affinities": offset,
                                                              "affinities_shift_zyx": [1, 0, 0]}})
    with pytest.raises(ConfigError, match=r"affinities_shift_zyx \[1, 0, 0\] disagrees .* give \[0, 0, 0\]"):
        validate(cfg)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_the_model_threshold_travels_with_written_affinities(tmp_path, stored):
    img, _, _ = stored
    made = _zattrs(_write(tmp_path / "made.zarr", np.full((3, *SHAPE), 0.5, np.float32), [3, 16, 16, 16]),
                   {"emseg": {"model": "forest", "threshold": 0.35}})
    assert validate(run_config(img, tmp_path / "out", None, backend=_model(made))).ctx.threshold == 0.35
