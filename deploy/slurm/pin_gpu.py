"""Dask worker preload: give each worker process of a multi-GPU job its own GPU.

SLURM shows every GPU of a job to every process in it (``CUDA_VISIBLE_DEVICES=0,1,2,3``). With
``dask worker --nworkers G`` the processes are named ``NAME-0`` .. ``NAME-{G-1}``; this preload,
passed as ``--preload deploy/slurm/pin_gpu.py`` (``start_cluster.py`` does so when
``gpus_per_job > 1``), narrows ``CUDA_VISIBLE_DEVICES`` of process ``i`` to the job's ``i``-th GPU
before any task runs, so each worker's backend sees one GPU, as ``cuda:0``. emseg imports torch
only inside tasks, so CUDA is not initialised yet when this runs.

A job with CPU-only workers too (``cpu_workers_per_job``) exports ``EMSEG_GPUS_PER_JOB=G``: then
processes ``0 .. G-1`` get a GPU each and the Dask resource ``GPU=1`` (what ``cluster.model_resources:
{GPU: 1}`` asks for), and the others no GPU (``CUDA_VISIBLE_DEVICES`` empty) and no resource. The
resource is set before the worker registers with the scheduler.
"""

from __future__ import annotations

import os
from typing import Any


def process_index(name: Any) -> int:
    """The process index ``dask worker --nworkers`` appends to a worker's name (0 without one)."""
    last = str(name).rsplit("-", 1)[-1]
    return int(last) if last.isdigit() else 0


def gpu_for(name: Any, visible: str | None) -> str:
    """The device a worker named ``name`` should see, from the job's ``CUDA_VISIBLE_DEVICES``.

    >>> gpu_for("emseg-worker-12-1", "4,5,6,7"), gpu_for(0, "GPU-a1,GPU-b2"), gpu_for("w-3", None)
    ('5', 'GPU-a1', '3')
    """
    index = process_index(name)
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()]
    if not devices:
        return str(index)
    return devices[index % len(devices)]


def role(name: Any, visible: str | None, gpus: int | None) -> tuple[str, dict[str, float]]:
    """``CUDA_VISIBLE_DEVICES`` and the Dask resources of the worker named ``name`` in a job with
    ``gpus`` GPU workers and CPU-only ones after them (``gpus`` None: every worker has a GPU, and the
    resources come from the command line).

    >>> role("emseg-worker-12-1", "4,5", 2), role("emseg-worker-12-2", "4,5", 2), role("w-1", "4,5", None)
    (('5', {'GPU': 1.0}), ('', {}), ('5', {}))
    """
    if gpus is not None and process_index(name) >= gpus:
        return "", {}
    return gpu_for(name, visible), ({} if gpus is None else {"GPU": 1.0})


def dask_setup(worker: Any) -> None:
    """Called by Dask in the worker process before it registers with the scheduler and accepts tasks."""
    gpus = os.environ.get("EMSEG_GPUS_PER_JOB")
    visible, resources = role(worker.name, os.environ.get("CUDA_VISIBLE_DEVICES"), int(gpus) if gpus else None)
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    for name, amount in resources.items():  # registration sends these to the scheduler
        worker.state.total_resources[name] = amount
        worker.state.available_resources[name] = amount
