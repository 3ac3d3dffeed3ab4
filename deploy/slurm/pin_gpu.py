"""Dask worker preload: give each worker process of a multi-GPU job its own GPU.

SLURM shows every GPU of a job to every process in it (``CUDA_VISIBLE_DEVICES=0,1,2,3``). With
``dask worker --nworkers G`` the processes are named ``NAME-0`` .. ``NAME-{G-1}``; this preload,
passed as ``--preload deploy/slurm/pin_gpu.py`` (``start_cluster.py`` does so when
``gpus_per_job > 1``), narrows ``CUDA_VISIBLE_DEVICES`` of process ``i`` to the job's ``i``-th GPU
before any task runs, so each worker's backend sees one GPU, as ``cuda:0``. emseg imports torch
only inside tasks, so CUDA is not initialised yet when this runs.
"""

from __future__ import annotations

import os
from typing import Any


def gpu_for(name: Any, visible: str | None) -> str:
    """The device a worker named ``name`` should see, from the job's ``CUDA_VISIBLE_DEVICES``.

    >>> gpu_for("emseg-worker-12-1", "4,5,6,7"), gpu_for(0, "GPU-a1,GPU-b2"), gpu_for("w-3", None)
    ('5', 'GPU-a1', '3')
    """
    text = str(name)
    index = int(text.rsplit("-", 1)[-1]) if text.rsplit("-", 1)[-1].isdigit() else 0
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()]
    if not devices:
        return str(index)
    return devices[index % len(devices)]


def dask_setup(worker: Any) -> None:
    """Called by Dask in the worker process before it accepts tasks."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for(worker.name, os.environ.get("CUDA_VISIBLE_DEVICES"))
