"""Kill-and-resume, and blocks that keep failing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from emseg.tasks.cli import main
from emseg.tasks.driver.run import segment
from tests.conftest import REPO, blobs, read_output, run_config, write_zarr


def _config_file(path: Path, input_url: str, output: Path, **extra) -> Path:
    cfg = {
        "input": input_url,
        "output": str(output),
        "backend": {"name": "threshold-cc", "threshold": 128},
        "blocks": {"shape": [8, 8, 8], "halo": [1, 1, 1]},
        "write": {"chunk_shape": [8, 8, 8]},
        "cluster": {"workers": 2},
        "postprocess": None,
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _count(path: Path) -> int:
    """Done-markers written (named by block id): a kill can leave tensorstore's temporary
    ``<id>.__lock`` file of a marker being written, which is not a marker."""
    return sum(name.isdigit() for name in os.listdir(path)) if path.exists() else 0


def test_sigkill_midway_then_resume(tmp_path, dask_address):
    img = blobs((48, 48, 48), sigma=2.0, seed=3)
    url = write_zarr(tmp_path / "in.zarr", img)
    out = tmp_path / "out"
    cfg = _config_file(tmp_path / "cfg.yaml", url, out)
    cmd = [sys.executable, "-m", "emseg.tasks.cli", "segment", str(cfg), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    markers = out / "scratch" / "done" / "1-segment"
    deadline = time.time() + 120
    while _count(markers) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local cluster, mid-run
    proc.wait()
    done_before = _count(markers)
    assert 0 < done_before < 216, "the kill must land in the middle of stage 1"
    assert json.loads((out / "scratch" / "run.json").read_text())  # the fingerprint survived
    assert not (out / "run.json").exists()  # no report claims the killed run finished
    assert (out / "emseg.lock").exists()  # the dead driver's lock: taken over, its pid is gone

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    skipped = [line for line in again.stderr.splitlines() if "resume: 1-segment skips" in line]
    assert skipped, again.stderr
    n_skipped = int(skipped[0].split("skips ")[1].split(" of")[0])
    assert done_before <= n_skipped < 216  # markers written after the count was taken
    assert json.loads((out / "run.json").read_text())["stages"]["1-segment"]["skipped_done"] == n_skipped

    clean = run_config(url, tmp_path / "clean", dask_address, blocks={"shape": [8, 8, 8], "halo": [1, 1, 1]})
    segment(clean, progress=False)
    np.testing.assert_array_equal(read_output(out), read_output(tmp_path / "clean"))


def test_block_that_always_fails(tmp_path, dask_address, capsys):
    # 128 voxels along z: the input sample read before any work (emseg.tasks.driver.run.check_intensities) covers
    # z 0..32, 48..80 and 96..128, so a corrupted chunk at z 32..48 is first met by stage 1.
    img = blobs((128, 32, 32), sigma=2.0, seed=4)
    url = write_zarr(tmp_path / "in.zarr", img, chunks=(16, 16, 16))
    (tmp_path / "in.zarr" / "2.1.1").write_bytes(b"this is not a blosc chunk")  # a corrupted input chunk
    out = tmp_path / "out"
    cfg = _config_file(tmp_path / "cfg.yaml", url, out, cluster={"address": dask_address}, retries=1,
                       blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]})
    rc = main(["segment", str(cfg), "--no-progress", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("emseg: error: ") and "\n" not in err
    # Blocks 8-11 read chunk 2.1.1 in their cores; blocks 4-7 and 12-15 touch it through the halo.
    assert "12 task(s) failed after 2 attempts: blocks 10, 11, 12, 13, 14, 15, 4, 5, 6, 7, … (12 in all) in 1-segment" \
        in err, err
    assert "2.1.1" in err  # the corrupted chunk's key
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed"
    failed = {f["block"] for f in run["failures"] if f["stage"] == "1-segment"}
    assert failed == set(range(4, 16))
    assert run["stages"]["1-segment"]["failed"] == 12
    # Nothing reached the output: only its metadata exists, no chunk half-written or otherwise.
    assert sorted(p.name for p in (out / "segmentation").rglob("*") if p.is_file()) == ["info"]


def test_corrupted_chunk_in_the_sample_is_refused_before_work(tmp_path, capsys):
    img = blobs((32, 32, 32), sigma=2.0, seed=4)
    url = write_zarr(tmp_path / "in.zarr", img, chunks=(16, 16, 16))
    (tmp_path / "in.zarr" / "1.1.1").write_bytes(b"this is not a blosc chunk")
    cfg = _config_file(tmp_path / "cfg.yaml", url, tmp_path / "out", blocks={"shape": [16, 16, 16], "halo": [1, 1, 1]})
    rc = main(["segment", str(cfg), "--no-progress", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("emseg: error: cannot read ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_two_runs_into_one_output_are_refused(tmp_path, capsys):
    img = blobs((32, 32, 32), sigma=2.0, seed=3)
    url = write_zarr(tmp_path / "in.zarr", img)
    out = tmp_path / "out"
    cfg = _config_file(tmp_path / "cfg.yaml", url, out)
    cmd = [sys.executable, "-m", "emseg.tasks.cli", "segment", str(cfg), "--no-progress"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / "emseg.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    rc = main(["segment", str(cfg), "--no-progress", "-q"])
    err = capsys.readouterr().err.strip()
    assert first.wait(timeout=300) == 0
    assert rc == 2, err
    assert "is being written by another emseg run" in err and f"pid {first.pid}" in err
    assert not (out / "emseg.lock").exists()  # released when the first run finished


def test_sigkill_a_worker_midway(tmp_path, dask_address):
    """A worker process dies in the middle of stage 1: Dask reruns its tasks, the output is unchanged."""
    import logging
    import threading

    from distributed import Client, LocalCluster

    img = blobs((32, 32, 32), sigma=2.0, seed=8)
    url = write_zarr(tmp_path / "in.zarr", img)
    blocks = {"shape": [8, 8, 8], "halo": [1, 1, 1]}
    markers = tmp_path / "out" / "scratch" / "done" / "1-segment"
    killed: list[int] = []
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one() -> None:
            deadline = time.time() + 120
            while _count(markers) < 8 and time.time() < deadline:
                time.sleep(0.005)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(_count(markers))

        killer = threading.Thread(target=kill_one)
        killer.start()
        cfg = run_config(url, tmp_path / "out", cluster.scheduler_address, blocks=blocks)
        run = segment(cfg, progress=False)
        killer.join()
    assert killed and killed[0] < 64, "the worker must die before stage 1 is over"
    assert run["status"] == "complete" and run["stages"]["1-segment"]["ran"] == 64
    clean = run_config(url, tmp_path / "clean", dask_address, blocks=blocks)
    segment(clean, progress=False)
    np.testing.assert_array_equal(read_output(tmp_path / "out"), read_output(tmp_path / "clean"))
