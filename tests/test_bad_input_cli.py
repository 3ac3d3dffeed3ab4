"""Every user error of issue 12 through the real command line: exit 2, one line, no traceback, nothing written.

Each case runs ``python -m emseg.tasks.cli`` in a subprocess (so that anything a library prints reaches
stderr as a user would see it) without ``-q``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import yaml

from emseg.pipeline.io.volume import create_precomputed
from tests.conftest import REPO, write_zarr


def _base(tmp: Path, **over: object) -> dict:
    url = write_zarr(tmp / "in.zarr", np.zeros((32, 32, 32), np.uint8))
    cfg = {"input": url, "output": str(tmp / "out"), "backend": {"name": "threshold-cc"},
           "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]}, "write": {"chunk_shape": [8, 8, 8]},
           "postprocess": None}
    cfg.update(over)
    return cfg


def _segment(cfg: dict, *args: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        full = {**_base(tmp), **cfg}
        for key, value in list(full.items()):
            if callable(value):
                full[key] = value(tmp)
            elif isinstance(value, dict):
                full[key] = {k: v(tmp) if callable(v) else v for k, v in value.items()}
        (tmp / "cfg.yaml").write_text(yaml.safe_dump(full))
        return ["segment", str(tmp / "cfg.yaml"), "--no-progress", *args]
    return make


def _bare_zarr(tmp: Path) -> str:
    ts.open({"driver": "zarr", "kvstore": f"file://{tmp}/bare.zarr/",
             "metadata": {"shape": [32, 32, 32], "chunks": [16, 16, 16], "dtype": "|u1"}},
            create=True).result()[...].write(np.zeros((32, 32, 32), np.uint8)).result()
    return f"zarr://{tmp}/bare.zarr"


def _float_255(tmp: Path) -> str:
    return write_zarr(tmp / "f.zarr", np.linspace(0, 255, 32 ** 3, dtype=np.float32).reshape(32, 32, 32))


def _holed(tmp: Path) -> str:
    vol = create_precomputed(str(tmp / "img"), layer_type="image", dtype="uint8", shape_zyx=(32, 32, 32),
                             voxel_size_nm=(8, 8, 8), chunk_zyx=(16, 16, 16))
    vol.write(vol.box, np.full((32, 32, 32), 200, np.uint8))
    os.remove(tmp / "img" / "8_8_8" / "16-32_0-16_16-32")
    return f"precomputed://{tmp}/img"


def _gt_4nm(tmp: Path) -> str:
    return write_zarr(tmp / "gt.zarr", np.zeros((64, 64, 64), np.uint64), voxel_size_nm=(4, 4, 4))


def _huge(tmp: Path) -> str:
    ts.open({"driver": "zarr", "kvstore": f"file://{tmp}/huge.zarr/",
             "metadata": {"shape": [1024, 1024, 2048], "chunks": [64, 64, 64], "dtype": "|u1"}}, create=True).result()
    (tmp / "huge.zarr" / ".zattrs").write_text(json.dumps({"resolution_nm": [8, 8, 8]}))
    return f"zarr://{tmp}/huge.zarr"


def _two_channels(tmp: Path) -> str:
    root = tmp / "img.ome.zarr"
    ts.open({"driver": "zarr", "kvstore": f"file://{root}/0/",
             "metadata": {"shape": [2, 16, 16, 16], "chunks": [1, 16, 16, 16], "dtype": "|u1"}}, create=True).result()
    (root / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": [{"name": "c", "type": "channel"}] + [
            {"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 8, 8, 8]}]}]}]}))
    return f"zarr://{root}/0"


def _corrupt(tmp: Path) -> str:
    url = write_zarr(tmp / "c.zarr", np.zeros((8, 8, 8), np.uint8))
    (tmp / "c.zarr" / ".zarray").write_text("{not json")
    return url


def _stored(shape: tuple[int, ...], value: float, drop: str | None = None) -> Callable[[Path], dict]:
    """A ``backend`` of stored affinities: a float32 zarr array of ``shape``, one chunk removed."""
    def make(tmp: Path) -> dict:
        arr = ts.open({"driver": "zarr", "kvstore": f"file://{tmp}/affs.zarr/", "create": True,
                       "metadata": {"shape": list(shape), "chunks": [3, 16, 16, 16], "dtype": "<f4"}}).result()
        arr.write(np.full(shape, value, np.float32)).result()
        if drop is not None:
            os.remove(tmp / "affs.zarr" / drop)
        return {"name": "affinities", "model": {"kind": "stored", "affinities": f"zarr://{tmp}/affs.zarr"}}
    return make


def _output_file(tmp: Path) -> list[str]:
    (tmp / "out").write_text("not a directory")
    return _segment({})(tmp)


def _evaluate_resolutions(tmp: Path) -> list[str]:
    seg = write_zarr(tmp / "s.zarr", np.array([[[1, 2]]], np.uint64), chunks=(1, 1, 2), voxel_size_nm=(8, 8, 8))
    gt = write_zarr(tmp / "g.zarr", np.array([[[1, 1, 2, 2]]], np.uint64), chunks=(1, 1, 4), voxel_size_nm=(4, 4, 4))
    return ["evaluate", "--segmentation", seg, "--groundtruth", gt]


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "7 evaluate.groundtruth missing": (
        _segment({"evaluate": {"groundtruth": "zarr:///nonexistent/gt.zarr"}}), "no volume at"),
    "7 local SAM2 checkpoint missing": (
        _segment({"backend": {"name": "sam2", "checkpoint": "/nonexistent/sam2.1_hiera_tiny.pt"},
                  "blocks": {"shape": [16, 16, 16], "halo": [8, 8, 8]}}), "no SAM2 checkpoint at '/nonexistent"),
    "7 output is an existing file": (_output_file, "is a file, not a directory"),
    "7 bad YAML in --set": (_segment({}, "--set", "blocks.shape=[64,64"), "not valid YAML"),
    "7 list of two for blocks.shape": (_segment({}, "--set", "blocks.shape=[64,64]"),
                                       "blocks.shape takes 3 values, got [64, 64]"),
    "2 no voxel size": (_segment({"input": _bare_zarr}), "set input_voxel_size_nm"),
    "2 input_voxel_size_nm contradicts the metadata": (
        _segment({"input_voxel_size_nm": [40, 8, 8]}), "disagrees with the input's attribute resolution_nm"),
    "2 second channel": (_segment({"input": _two_channels}), "has c = 2 besides z, y, x"),
    "4 float 0..255": (_segment({"input": _float_255, "backend": {"name": "watershed"},
                                 "blocks": {"shape": [16, 16, 16], "halo": [8, 8, 8]}}),
                       "set input_value_range: [0, 255]"),
    "4 two value ranges": (_segment({"input": _float_255, "input_value_range": [0, 255],
                                     "backend": {"name": "watershed", "value_range": [0, 255]},
                                     "blocks": {"shape": [16, 16, 16], "halo": [8, 8, 8]}}), "keep one"),
    "5 missing input chunk": (_segment({"input": _holed}), "16-32_0-16_16-32"),
    "6 groundtruth at another voxel size": (_segment({"evaluate": {"groundtruth": _gt_4nm}}),
                                            "ground truth"),
    "6 evaluate across resolutions": (_evaluate_resolutions, "8 x 8 x 8 nm but the ground truth"),
    "block ids past 2^31": (_segment({"input": _huge, "blocks": {"shape": [1, 1, 1], "halo": [1, 1, 1]},
                                      "write": {"chunk_shape": [1, 1, 1]}}), "below 2^31"),
    "corrupt metadata": (_segment({"input": _corrupt}), "cannot open"),
    "stored affinities smaller than the input": (_segment({"backend": _stored((3, 32, 16, 32), 0.5)}),
                                                  "cover voxels [0, 0, 0]..[32, 16, 32]"),
    "stored affinities missing a chunk": (_segment({"backend": _stored((3, 32, 32, 32), 0.5, drop="0.1.1.1")}),
                                          "chunk of the stored affinities"),
    "stored affinities as 0..255 floats": (_segment({"backend": _stored((3, 32, 32, 32), 255.0)}),
                                           "emseg reads float affinities in [0, 1]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2_nothing_written(case, tmp_path):
    make, message = CASES[case]
    argv = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out_before = (tmp_path / "out").read_bytes() if (tmp_path / "out").is_file() else None
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "emseg.tasks.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
    assert err.startswith("emseg: error: ") and message in err, err
    assert proc.stdout == ""
    if out_before is None:
        assert not (tmp_path / "out").exists()
    else:
        assert (tmp_path / "out").read_bytes() == out_before
    assert sorted(p.name for p in tmp_path.iterdir()) == before
