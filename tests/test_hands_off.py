"""Hands off the input: a full run leaves the input's files byte-identical, and an output that is the
input, lies inside it (or inside its zarr container) or contains it is refused before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from emseg.pipeline.io.volume import create_precomputed
from emseg.tasks.cli import main
from tests.conftest import blobs, run_config, write_zarr


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_full_run_leaves_the_input_byte_identical(tmp_path: Path, dask_address: str) -> None:
    from emseg.tasks.driver.run import segment

    shape = (40, 40, 40)
    vol = create_precomputed(str(tmp_path / "image"), layer_type="image", dtype="uint8", shape_zyx=shape,
                             voxel_size_nm=(8, 8, 8), offset_zyx=(2, 0, 4), chunk_zyx=(8, 8, 8))
    vol.write(vol.box, blobs(shape, sigma=2.5, seed=5))
    before = _snapshot(tmp_path / "image")
    assert len(before) > 10
    # Every post-processing stage on, the image pyramid asked for: the case that used to add scales to the input.
    cfg = run_config(f"precomputed://{tmp_path / 'image'}", tmp_path / "out", dask_address,
                     postprocess={"image_pyramid": True})
    run = segment(cfg, progress=False)
    assert run["status"] == "complete" and run["postprocess"]["failures"] == []
    assert _snapshot(tmp_path / "image") == before, "the run wrote into its input"
    # The pyramid went under the output instead, and the viewer state shows it.
    info = json.loads((tmp_path / "out" / "image" / "info").read_text())
    assert len(info["scales"]) >= 3
    assert run["postprocess"]["image"] == f"precomputed://file://{tmp_path / 'out' / 'image'}"
    sources = [layer["source"] for layer in run["neuroglancer"]["layers"]]
    assert any(str(tmp_path / "out" / "image") in s for s in sources), sources
    # Resume and --restart leave the input alone too.
    segment(cfg, progress=False)
    segment(cfg, restart=True, progress=False)
    assert _snapshot(tmp_path / "image") == before


def _cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], input_url: str, output: Path) -> tuple[int, str]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"input": input_url, "output": str(output), "backend": {"name": "threshold-cc"},
                                   "blocks": {"shape": [16, 16, 16], "halo": [1, 1, 1]},
                                   "write": {"chunk_shape": [8, 8, 8]}, "cluster": {"workers": 1}}))
    rc = main(["segment", str(cfg), "--no-progress", "-q"])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("where, message", [
    ("in.zarr/raw", "is the input itself"),
    ("in.zarr/raw/out", "lies inside the input"),
    ("in.zarr/seg", "lies inside"),  # beside the array, inside the zarr container the input belongs to
    ("in.zarr", "lies inside"),
    (".", "lies inside the output"),  # the input lies inside the output, which --restart clears
])
def test_output_overlapping_the_input_is_refused(where: str, message: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    url = write_zarr(data / "in.zarr" / "raw", np.zeros((16, 16, 16), np.uint8))
    before = _snapshot(data)
    rc, err = _cli(tmp_path, capsys, url, data / where)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("emseg: error:") and message in err, err
    assert "choose" in err  # says how to fix it
    assert _snapshot(data) == before, "something was written"
    assert not (data / where).exists() or where in ("in.zarr/raw", "in.zarr", ".")


def test_a_symlinked_path_to_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = write_zarr(tmp_path / "in.zarr", np.zeros((16, 16, 16), np.uint8))
    (tmp_path / "alias").symlink_to(tmp_path / "in.zarr")
    before = _snapshot(tmp_path / "in.zarr")
    rc, err = _cli(tmp_path, capsys, url, tmp_path / "alias" / "out")
    assert rc == 2 and "lies inside the input" in err
    assert _snapshot(tmp_path / "in.zarr") == before
