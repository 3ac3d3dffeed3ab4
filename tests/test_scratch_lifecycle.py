"""Scratch with a lifecycle: faces deleted as the seams consume them, a complete run pruned to what a
later step needs, resume still exact (rerun of a complete run, a kill in the middle of stage 2, a
union-find rerun from the kept scratch alone), ``emseg clean``, and ``keep_scratch``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cc3d
import numpy as np
import pytest
import yaml

from emseg.pipeline.io.scratch import Scratch, TRANSIENT
from emseg.pipeline.stitching.seams import pair_centroids
from emseg.tasks.cli import main
from emseg.tasks.driver.run import segment
from tests.conftest import REPO, blobs, read_output, run_config, same_partition, write_zarr

SHAPE = (48, 40, 44)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _parts(out: Path) -> set[str]:
    """Top-level scratch parts present (``uf/<x>`` for union-find's)."""
    root = out / "scratch"
    parts = {p.name for p in root.iterdir() if p.is_dir() and p.name != "uf" and any(p.rglob("*"))}
    if (root / "uf").exists():
        parts |= {f"uf/{p.name}" for p in (root / "uf").iterdir() if not p.is_dir() or any(p.rglob("*"))}
    return parts


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, Path]:
    root = tmp_path_factory.mktemp("lifecycle")
    img = blobs(SHAPE, sigma=2.0, seed=11)
    return write_zarr(root / "in.zarr", img, chunks=(16, 16, 16)), img, root


@pytest.fixture(scope="module")
def complete(volume, dask_address) -> tuple[object, dict, Path]:
    url, _, root = volume
    cfg = run_config(url, root / "out", dask_address,
                     postprocess={"meshes": False, "pyramid_levels": 1, "seam_audit_margin": 1.0})
    return cfg, segment(cfg, progress=False), root / "out"


def test_complete_run_keeps_only_what_a_later_step_needs(complete, volume):
    _, run, out = complete
    url, img, _ = volume
    assert run["status"] == "complete"
    assert _parts(out) == {"done", "labels", "edges", "uf/table", "uf/offsets"}
    assert not any((out / "scratch" / prefix).exists() and any((out / "scratch" / prefix).rglob("*"))
                   for prefix in TRANSIENT)
    sc = run["scratch"]
    assert sc["pruned"] is True and sc["bytes"]["total"] > 0 and "faces" not in sc["bytes"]
    on_disk = sum(p.stat().st_size for p in (out / "scratch").rglob("*") if p.is_file())
    assert sc["bytes"]["total"] == on_disk
    assert sc["kept_fraction_of_segmentation"] == pytest.approx(on_disk / sc["segmentation_bytes"], abs=1e-3)
    # The seam audit ran from the centroids stage 2 kept, the faces being gone.
    audit = run["postprocess"]["seam_audit"]
    assert audit["points"] > 0 and run["postprocess"]["failures"] == []
    # And the result is still exactly connected components of the whole volume.
    assert same_partition(read_output(out), cc3d.connected_components(img >= 128, connectivity=26))


def test_rerun_of_a_complete_run_recomputes_nothing(complete):
    cfg, _, out = complete
    before = _files(out / "segmentation")
    again = segment(cfg, progress=False)
    assert all(s["ran"] == 0 for s in again["stages"].values()), again["stages"]
    assert again["postprocess"].get("skipped_done") is True
    assert _files(out / "segmentation") == before


def test_new_union_find_from_the_kept_scratch_alone(complete, volume, tmp_path):
    """What a new merge threshold does: rerun union-find and relabel from the pruned scratch."""
    cfg, _, out = complete
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    expected = read_output(out)
    shutil.rmtree(copy / "scratch" / "done" / "3-unionfind")
    shutil.rmtree(copy / "scratch" / "done" / "4-relabel")
    shutil.rmtree(copy / "scratch" / "uf")
    shutil.rmtree(copy / "segmentation")
    cfg2 = cfg.model_copy(update={"output": str(copy)})
    run = segment(cfg2, progress=False)
    assert run["stages"]["1-segment"]["ran"] == 0 and run["stages"]["2-seams"]["ran"] == 0
    assert run["stages"]["3-unionfind"]["ran"] > 0 and run["stages"]["4-relabel"]["ran"] > 0
    np.testing.assert_array_equal(read_output(copy), expected)


def test_keep_scratch_keeps_the_faces_and_the_kept_centroids_match_them(volume, dask_address, tmp_path):
    url, _, _ = volume
    cfg = run_config(url, tmp_path / "out", dask_address, keep_scratch=True)
    segment(cfg, progress=False)
    assert {"faces", "uf/up", "uf/down"} <= _parts(tmp_path / "out")
    scratch = Scratch(str(tmp_path / "out"))
    grid = cfg_grid(cfg)
    checked = 0
    for block in grid:
        edges = scratch.get_arrays(f"edges/{block.id}")
        for axis, nb in grid.forward_neighbours(block):
            mine = scratch.get_arrays(f"faces/{block.id}/{'zyx'[axis]}+")["labels"]
            theirs = scratch.get_arrays(f"faces/{nb.id}/{'zyx'[axis]}-")["labels"]
            sel = (edges["b"] >> np.uint64(32)) == nb.id
            a = (edges["a"][sel] & np.uint64(0xFFFFFFFF))
            b = (edges["b"][sel] & np.uint64(0xFFFFFFFF))
            want = pair_centroids(mine, theirs, a, b) + np.array((block.read_box & nb.read_box).start)
            np.testing.assert_allclose(edges["pos"][sel], want, atol=1e-3)
            checked += int(sel.sum())
    assert checked > 20


def cfg_grid(cfg):
    from emseg.tasks.driver.run import validate

    return validate(cfg).ctx.grid


def test_kill_in_the_middle_of_stage_2_then_resume(volume, dask_address, tmp_path):
    url, img, _ = volume
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "input": url, "output": str(out), "backend": {"name": "threshold-cc", "threshold": 128},
        "blocks": {"shape": [8, 8, 8], "halo": [1, 1, 1]}, "write": {"chunk_shape": [8, 8, 8]},
        "cluster": {"workers": 2}, "postprocess": None}))
    cmd = [sys.executable, "-m", "emseg.tasks.cli", "segment", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seams = out / "scratch" / "done" / "2-seams"
    deadline = time.time() + 180
    while (not seams.exists() or len(os.listdir(seams)) < 15) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_blocks = 6 * 5 * 6
    assert 0 < len(os.listdir(seams)) < n_blocks, "the kill must land in the middle of stage 2"
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resume: 2-seams skips" in again.stderr
    assert same_partition(read_output(out), cc3d.connected_components(img >= 128, connectivity=26))
    assert "faces" not in _parts(out)


def test_emseg_clean(complete, volume, tmp_path, capsys):
    cfg, _, out = complete
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    seg = _files(copy / "segmentation")
    assert main(["clean", str(copy)]) == 0
    said = capsys.readouterr().out
    assert "removed" in said and "scratch objects" in said
    assert not (copy / "scratch").exists() or not any(p.is_file() for p in (copy / "scratch").rglob("*"))
    assert _files(copy / "segmentation") == seg  # the segmentation stays
    assert json.loads((copy / "run.json").read_text())["scratch"]["cleaned"] is True
    # A later run into it starts over and gives the same segmentation.
    run = segment(cfg.model_copy(update={"output": str(copy)}), progress=False)
    assert run["stages"]["1-segment"]["ran"] > 0
    np.testing.assert_array_equal(read_output(copy), read_output(out))


def test_emseg_clean_refuses_a_path_that_is_no_output(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["clean", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no emseg output" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
