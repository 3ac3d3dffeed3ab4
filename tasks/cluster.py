"""The Dask client of a run: a local cluster of worker processes by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from pipeline.config import ClusterConfig

log = logging.getLogger("emseg")


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator["distributed.Client"]:  # noqa: F821
    import dask
    from distributed import Client, LocalCluster

    # Worker processes inherit this config: keep their start/stop chatter out of the run's log.
    dask.config.set({"distributed.logging.distributed": "error"})
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if cfg.address:
        log.info("connecting to the Dask scheduler at %s", cfg.address)
        with Client(cfg.address) as client:
            yield client
        return
    log.info("starting a local Dask cluster: %d worker processes x %d threads", cfg.workers, cfg.threads_per_worker)
    with LocalCluster(
        n_workers=cfg.workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client
