"""The Dask client of a run: a local cluster of worker processes by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from emseg.pipeline.config import ClusterConfig

log = logging.getLogger("emseg")


def configure_workers(verbose: bool = False) -> None:
    """Dask settings for this driver and the worker processes it starts (they inherit them).

    - Quiet: the workers' start/stop chatter stays out of the run's log (unless ``verbose``).
    - No ``MALLOC_TRIM_THRESHOLD_``: Dask sets it so that idle workers hand memory back, but setting
      it turns off glibc's adaptive mmap threshold, so every block-sized array is mapped and
      page-faulted anew. For emseg's tasks (allocate a few block-sized arrays, free them, repeat)
      that cost a quarter of the stitching benchmark's throughput (17.8 vs 23.2 Mvoxel/s, 512³).
    - A short ``distributed.admin.low-level-log-length`` (Dask's default is 1000): every batched
      comm keeps that many recent batches, and the driver's batches to the scheduler carry whole
      pickled tasks. Streaming a million-block dry run on a local cluster, the driver grew by
      about 1.1 KB per task (449 to 543 MB over 85,000 tasks); with a log of 20, by about 0.5 KB
      (425 to 473 MB over 90,000). The rest is mostly the in-process scheduler's; see "How far it
      scales" in docs/cluster.md.
    """
    import dask

    dask.config.set({
        "distributed.logging.distributed": "info" if verbose else "error",
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.admin.low-level-log-length": 20,
    })


@contextlib.contextmanager
def connect(cfg: ClusterConfig) -> Iterator["distributed.Client"]:  # noqa: F821
    # Dask's own logs (workers starting, comms closing) only with `--verbose` (emseg's logger at DEBUG).
    verbose = log.isEnabledFor(logging.DEBUG)
    configure_workers(verbose)
    level = logging.INFO if verbose else logging.ERROR
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(level)
    tornado_log = logging.getLogger("tornado.application")
    tornado_log.addFilter(_sync_cancel_race)
    try:
        with _client(cfg, level) as client:
            yield client
    finally:
        tornado_log.removeFilter(_sync_cancel_race)


@contextlib.contextmanager
def _client(cfg: ClusterConfig, level: int) -> Iterator["distributed.Client"]:  # noqa: F821
    from distributed import Client, LocalCluster

    if cfg.address:
        log.info("connecting to the Dask scheduler at %s", cfg.address)
        with Client(cfg.address) as client:
            yield client
        return
    log.info("starting a local Dask cluster: %d worker processes x %d threads", cfg.workers, cfg.threads_per_worker)
    with _workers_ignore_ctrl_c():
        cluster = LocalCluster(
            # with cluster.model_resources the workers are added below, the first one with them
            n_workers=0 if cfg.model_resources else cfg.workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            memory_limit=cfg.memory_limit,
            dashboard_address=":0",
            # A failed task is reported once, by the driver (one line; run.json lists every failure):
            # the workers' own "Compute Failed" dumps (a traceback per attempt and block, 85 lines for
            # one missing chunk met by 4 blocks) only with --verbose
            silence_logs=level if level <= logging.INFO else logging.CRITICAL,
        )
        if cfg.model_resources:
            plain = cluster.new_spec  # the worker spec LocalCluster made from the arguments above
            cluster.worker_spec.update({i: plain for i in range(1, cfg.workers)})
            cluster.worker_spec[0] = {"cls": plain["cls"], "options": {**plain["options"],
                                                                       "resources": dict(cfg.model_resources)}}
            try:  # start them as LocalCluster starts its own: here, ignoring Ctrl-C, and a failure raises
                cluster.sync(cluster._correct_state)
            except BaseException:
                cluster.close()
                raise
            log.info("local worker 0 holds cluster.model_resources %s: the model runs there", cfg.model_resources)
    with cluster, Client(cluster) as client:
        try:
            yield client
        except KeyboardInterrupt:
            _quiet_workers(client)
            raise


def _sync_cancel_race(record: logging.LogRecord) -> bool:
    """Drop tornado's report of distributed's ``sync`` cancel callback failing with a NameError.

    A Ctrl-C that lands while ``distributed.utils.sync`` has queued a call but not yet started it
    makes its cancel callback read a variable not yet assigned (distributed 2026.8.0); tornado
    logs that as a 10-line traceback before emseg's one-line "interrupted" message. The run has
    stopped as asked, so the report is dropped; every other record passes.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, NameError) and "sync.<locals>.cancel" in record.getMessage())


def _silence() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    for name in ("distributed.worker", "distributed.core", "distributed.comm", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_workers(client: "distributed.Client") -> None:  # noqa: F821
    """Before an interrupted run shuts its local cluster down: no worker logs the closing connections."""
    _silence()
    try:
        client.run(_silence)
    except BaseException:  # noqa: BLE001 - a second Ctrl-C or a dead worker: shut down regardless
        pass


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with SIGINT ignored: Ctrl-C stops the driver, which shuts them down.

    A terminal's Ctrl-C goes to every process of the foreground group, the workers included; each
    would print its own KeyboardInterrupt traceback (about 40 lines for two workers) before the
    driver's one-line message. A spawned Python keeps an ignored SIGINT ignored, so the workers
    started here never see it; the driver's handler is restored as soon as they are up.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def warn_without_model_resources(client: "distributed.Client", cfg: ClusterConfig) -> None:  # noqa: F821
    """Say so when no worker of the cluster has ``cluster.model_resources`` yet: the model's tasks
    wait until one joins (a SLURM job or a GPU pod still starting), and forever if none will."""
    want = cfg.model_resources or {}
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any(all(w.get("resources", {}).get(k, 0) >= v for k, v in want.items()) for w in workers):
        return
    have = sorted({f"{k}={v:g}" for w in workers for k, v in w.get("resources", {}).items()})
    amounts = " ".join(f"{k}={v:g}" for k, v in want.items())
    log.warning("no worker of the Dask cluster at %s (%d workers; resources: %s) has cluster.model_resources %s yet: "
                "the model's tasks wait until one joins; start the model's workers with `dask worker ... --resources "
                "\"%s\"`, or stop (Ctrl-C) and set cluster.model_resources: null", cfg.address, len(workers),
                ", ".join(have) or "none", want, amounts)
