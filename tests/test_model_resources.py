"""``cluster.model_resources``: the tasks that run the model ask for Dask worker resources, so that on
a cluster of GPU and CPU workers only the GPU workers run the model and every worker runs the rest.

Real clusters: a local one whose first worker holds the resources, and a scheduler with a worker
started by `dask worker --resources` as on a real cluster; run.json says which worker ran what.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest

from emseg.pipeline.errors import ConfigError
from tests.conftest import run_config, write_zarr


def _volume(tmp_path):
    """A 64³ image of dark membranes between three objects, and its labels."""
    labels = np.ones((64, 64, 64), np.uint32)
    labels[:, :, 30:] = 2
    labels[:, 34:, 30:] = 3
    image = np.full(labels.shape, 170, np.uint8)
    for axis in range(3):
        image[np.diff(labels, axis=axis, prepend=0) != 0] = 40
    image[:, :, 0] = 170
    return labels, write_zarr(tmp_path / "image.zarr", image, chunks=(32, 32, 32))


def _config(tmp_path, url, cluster, affinities, kind="forest"):
    return run_config(url, tmp_path / "out", None, backend={"name": "affinities", "model": {"kind": kind}},
                      blocks={"shape": [32, 32, 32], "halo": [23, 23, 23]},
                      write={"chunk_shape": [32, 32, 32], "affinities": affinities}, cluster=cluster)


@pytest.mark.parametrize("affinities", ["uint8", None])
def test_the_model_runs_on_the_local_worker_with_the_resources(tmp_path, affinities):
    """The bundled forest runs in worker 0 only (1-predict, or stage 1 without write.affinities)."""
    from emseg.tasks.driver.run import segment

    _, url = _volume(tmp_path)
    run = segment(_config(tmp_path, url, {"workers": 2, "model_resources": {"GPU": 1}}, affinities), progress=False)
    assert run["status"] == "complete" and run["segments"] >= 3
    model_stage = "1-predict" if affinities else "1-segment"
    assert run["stages"][model_stage]["workers"] == {"0": 8}  # worker 0 holds GPU=1, worker 1 none
    assert sum(run["stages"]["2-seams"]["workers"].values()) == run["stages"]["2-seams"]["ran"]


def test_the_model_waits_for_a_worker_with_the_resources_to_join(tmp_path, caplog):
    """A scheduler with a plain worker: the run says that no worker has the resources yet and waits;
    a worker started later with `dask worker --resources "GPU=1"`, as on a cluster whose GPU nodes
    come up after the CPU ones, runs every model task."""
    import threading

    from distributed import Client, LocalCluster

    from emseg.tasks.driver.run import segment

    _, url = _volume(tmp_path)
    done: dict = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        cfg = _config(tmp_path, url, {"address": cluster.scheduler_address, "model_resources": {"GPU": 1}}, "float32")
        runner = threading.Thread(target=lambda: done.update(run=segment(cfg, progress=False)))
        runner.start()
        deadline = time.time() + 120
        while "has cluster.model_resources {'GPU': 1.0} yet" not in caplog.text and time.time() < deadline:
            time.sleep(0.2)
        assert "(1 workers; resources: none)" in caplog.text and '--resources "GPU=1"' in caplog.text
        time.sleep(2)
        assert runner.is_alive()  # waiting, not refused and not run elsewhere
        gpu = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                "--nthreads", "1", "--name", "gpu-0", "--resources", "GPU=1", "--no-dashboard"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            runner.join(300)
            with Client(cluster.scheduler_address) as client:
                assert len(client.scheduler_info()["workers"]) == 2
        finally:
            gpu.terminate()
            gpu.wait(30)
    run = done["run"]
    assert run["status"] == "complete"
    assert run["stages"]["1-predict"]["workers"] == {"gpu-0": 8}


@pytest.mark.parametrize("kind", ["labels", "stored"])
def test_backends_without_a_model_ignore_the_resources(tmp_path, caplog, kind):
    from emseg.tasks.driver.run import validate

    labels, url = _volume(tmp_path)
    if kind == "stored":
        from emseg.pipeline.stitching.agglomeration import affinities_from_labels
        from tests.test_stored_affinities import _write

        url_affs = _write(tmp_path / "affs.zarr", affinities_from_labels(labels), [3, 32, 32, 32])
        cfg = run_config(url, tmp_path / "out", None, backend={"name": "affinities", "model": {"kind": "stored",
                                                                                               "affinities": url_affs}},
                         blocks={"shape": [32, 32, 32], "halo": [2, 2, 2]}, write={"chunk_shape": [32, 32, 32]},
                         cluster={"workers": 2, "model_resources": {"GPU": 1}})
    else:
        cfg = _config(tmp_path, write_zarr(tmp_path / "labels.zarr", labels), {"model_resources": {"GPU": 1}}, None, kind)
    assert validate(cfg).ctx.model_resources is None
    assert f"cluster.model_resources {{'GPU': 1.0}} is ignored: backend affinities with model.kind {kind} runs no model" \
        in caplog.text
    if kind == "labels":  # and the local cluster gives no worker the resources
        from emseg.tasks.driver.run import segment

        caplog.clear()
        caplog.set_level(logging.INFO, logger="emseg")
        assert segment(cfg, progress=False)["segments"] == 3
        assert "starting a local Dask cluster" in caplog.text and "local worker 0 holds" not in caplog.text


@pytest.mark.parametrize("bad", [{}, {"GPU": 0}, {"": 1}])
def test_malformed_resources_are_refused(tmp_path, bad):
    _, url = _volume(tmp_path)
    with pytest.raises(ConfigError, match="model_resources"):
        _config(tmp_path, url, {"workers": 2, "model_resources": bad}, None)
