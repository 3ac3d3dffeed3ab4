"""``cluster.model_resources``: the tasks that run the model ask for Dask worker resources, so that on
a cluster of GPU and CPU workers only the GPU workers run the model and every worker runs the rest.

Real clusters: a local one whose first worker holds the resources, and a scheduler with a worker
started by `dask worker --resources` as on a real cluster; run.json says which worker ran what.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from emseg.pipeline.errors import ConfigError
from tests.conftest import read_output, run_config, write_zarr


def _labels(tmp_path):
    labels = np.zeros((32, 32, 32), np.uint32)
    labels[:, :, 12:] = 1
    labels[:, 14:, 12:] = 2
    labels[20:, :10, :10] = 3
    return labels, write_zarr(tmp_path / "labels.zarr", labels, chunks=(8, 8, 8))


def _config(tmp_path, url, cluster, affinities):
    return run_config(url, tmp_path / "out", None, backend={"name": "affinities", "model": {"kind": "labels"}},
                      blocks={"shape": [16, 16, 16], "halo": [2, 2, 2]},
                      write={"chunk_shape": [16, 16, 16], "affinities": affinities}, cluster=cluster)


@pytest.mark.parametrize("affinities", ["uint8", None])
def test_the_model_runs_on_the_local_worker_with_the_resources(tmp_path, affinities):
    from emseg.tasks.driver.run import segment

    labels, url = _labels(tmp_path)
    run = segment(_config(tmp_path, url, {"workers": 2, "model_resources": {"GPU": 1}}, affinities), progress=False)
    assert run["status"] == "complete" and run["segments"] == 3
    assert np.array_equal(read_output(tmp_path / "out") > 0, labels > 0)
    model_stage = "1-predict" if affinities else "1-segment"
    assert run["stages"][model_stage]["workers"] == {"0": 8}  # worker 0 holds GPU=1, worker 1 none
    assert sum(run["stages"]["2-seams"]["workers"].values()) == run["stages"]["2-seams"]["ran"]


def test_a_worker_started_with_the_resources_runs_the_model(tmp_path):
    """A scheduler, a plain worker and one started with `dask worker --resources "GPU=1"`, as on a
    cluster of CPU and GPU nodes."""
    from distributed import Client, LocalCluster

    from emseg.tasks.driver.run import segment

    labels, url = _labels(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        gpu = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                "--nthreads", "1", "--name", "gpu-0", "--resources", "GPU=1", "--no-dashboard"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(cluster.scheduler_address) as client:
                client.wait_for_workers(2, timeout=60)
            cfg = _config(tmp_path, url, {"address": cluster.scheduler_address, "model_resources": {"GPU": 1}}, "float32")
            run = segment(cfg, progress=False)
        finally:
            gpu.terminate()
            gpu.wait(30)
    assert run["status"] == "complete" and run["segments"] == 3
    assert run["stages"]["1-predict"]["workers"] == {"gpu-0": 8}


def test_resources_no_worker_has_are_one_clear_error(tmp_path, dask_address):
    from emseg.tasks.driver.run import segment

    _, url = _labels(tmp_path)
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"no worker of the Dask cluster at .* \(2 workers; resources: none\) has "
                                          r"cluster.model_resources \{'GPU': 1.0\}.*--resources \"GPU=1\""):
        segment(_config(tmp_path, url, {"address": dask_address, "model_resources": {"GPU": 1}}, "uint8"), progress=False)
    assert time.time() - t0 < 60  # refused at once, not left waiting for a worker


@pytest.mark.parametrize("bad", [{}, {"GPU": 0}, {"": 1}])
def test_malformed_resources_are_refused(tmp_path, bad):
    _, url = _labels(tmp_path)
    with pytest.raises(ConfigError, match="model_resources"):
        _config(tmp_path, url, {"workers": 2, "model_resources": bad}, None)
