"""Start a Dask cluster on SLURM for emseg and print the scheduler address to run against.

    python deploy/slurm/start_cluster.py deploy/slurm/cluster.example.yaml           # submit, then wait
    python deploy/slurm/start_cluster.py deploy/slurm/cluster.example.yaml --dry-run # print the job script

The scheduler runs inside this process (run it in a small allocation or on a login node that allows
long-lived processes); every SLURM job runs one or more Dask workers that connect back to it. The
launcher prints ``tcp://HOST:PORT``; from any machine that reaches it::

    emseg segment CONFIG --cluster tcp://HOST:PORT

Ctrl-C (or SIGTERM, or the end of ``--hold``) cancels the worker jobs and stops the scheduler.

The settings file (YAML, unknown keys refused) names the SLURM resources of one job, how many jobs,
and the lines that prepare a job's environment; see ``deploy/slurm/cluster.example.yaml``. A job with
``gpus_per_job: G`` runs G worker processes, each pinned to one of the job's GPUs by
``deploy/slurm/pin_gpu.py`` (a Dask preload), each with ``threads_per_worker`` threads (1 by default
for GPU jobs: one block at a time per GPU). ``cpu_workers_per_job: K`` adds K CPU-only worker
processes to each GPU job, for the work outside the model: the GPU workers hold the Dask resource
``GPU=1``, which a run config's ``cluster.model_resources: {GPU: 1}`` routes the model's tasks to.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

HERE = Path(__file__).resolve().parent
PIN_GPU = HERE / "pin_gpu.py"


class SettingsError(ValueError):
    """The cluster settings are wrong; the message says which key and how to fix it."""


class Settings(BaseModel):
    """One SLURM job's resources, the number of jobs, and how a job prepares its environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: partition (``#SBATCH -p``)
    queue: str
    #: account to charge (``#SBATCH -A``), if the site needs one
    account: str | None = None
    #: CPU cores booked per job (``--cpus-per-task``)
    cores: int = Field(ge=1)
    #: memory per job, e.g. ``64GB``; Dask's memory limit is split between the job's workers
    memory: str
    #: wall-clock limit per job, ``HH:MM:SS`` or ``D-HH:MM:SS``
    walltime: str
    #: GPUs per job; each gets its own worker process
    gpus_per_job: int = Field(0, ge=0)
    #: how GPUs are requested; ``{gpus}`` is replaced (some sites use ``--gpus-per-node={gpus}``)
    gpu_directive: str = "--gres=gpu:{gpus}"
    #: worker processes per job (default: one per GPU, else 1)
    workers_per_job: int | None = Field(None, ge=1)
    #: GPU jobs: CPU-only worker processes beside the GPU workers, one thread each, for the work
    #: outside the model (a run config with cluster.model_resources: {GPU: 1} keeps the model on the
    #: GPU workers); they see no GPU
    cpu_workers_per_job: int = Field(0, ge=0)
    #: threads per worker process (default: 1 with GPUs, else cores / workers_per_job)
    threads_per_worker: int | None = Field(None, ge=1)
    #: number of jobs to submit
    jobs: int = Field(1, ge=1)
    #: shell lines run first in every job: modules, conda/venv activation, exports
    prologue: list[str] = Field(default_factory=list)
    #: environment variables exported in every job (no secrets here: use the site's secret store)
    environment: dict[str, str] = Field(default_factory=dict)
    #: the workers' Python (after the prologue); default: this launcher's interpreter
    python: str | None = None
    #: extra ``#SBATCH`` directives, e.g. ``--constraint=a100``
    job_directives: list[str] = Field(default_factory=list)
    #: network interface for workers and scheduler, e.g. ``ib0``; default: the hostname's address
    interface: str | None = None
    #: fast local disk for worker spill files, e.g. ``$TMPDIR``
    local_directory: str | None = None
    #: where SLURM writes the jobs' output files
    log_directory: str | None = None
    scheduler_port: int = Field(8786, ge=0, le=65535)
    #: the Dask dashboard port; null for none
    dashboard_port: int | None = Field(8787, ge=0, le=65535)
    job_name: str = "emseg-worker"

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        clock = v.split("-")[-1].split(":")
        if not (1 <= len(clock) <= 3 and all(part.isdigit() for part in clock)) or v.count("-") > 1:
            raise ValueError(f"walltime {v!r} is not HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)")
        return v

    @field_validator("gpu_directive")
    @classmethod
    def _directive(cls, v: str) -> str:
        if "{gpus}" not in v:
            raise ValueError(f"gpu_directive {v!r} must contain {{gpus}}, e.g. --gres=gpu:{{gpus}}")
        return v

    @model_validator(mode="after")
    def _split(self) -> Settings:
        if self.gpus_per_job and self.workers_per_job not in (None, self.gpus_per_job):
            raise ValueError(
                f"workers_per_job {self.workers_per_job} differs from gpus_per_job {self.gpus_per_job}: a GPU job "
                "runs one worker per GPU; remove workers_per_job (cpu_workers_per_job adds CPU-only workers)"
            )
        if self.cpu_workers_per_job and not self.gpus_per_job:
            raise ValueError(f"cpu_workers_per_job {self.cpu_workers_per_job} adds CPU workers to GPU jobs, but "
                             "gpus_per_job is 0; set workers_per_job for CPU jobs instead")
        if self.cpu_workers_per_job and self.threads_per_worker not in (None, 1):
            raise ValueError(f"threads_per_worker {self.threads_per_worker}: a job with cpu_workers_per_job runs "
                             "one thread per worker; remove threads_per_worker")
        if self.workers > self.cores:
            raise ValueError(f"{self.workers} workers per job need at least {self.workers} cores; raise cores")
        return self

    @property
    def workers(self) -> int:
        """Worker processes per job."""
        return self.workers_per_job or (self.gpus_per_job + self.cpu_workers_per_job) or 1

    @property
    def threads(self) -> int:
        """Threads per worker process."""
        if self.threads_per_worker:
            return self.threads_per_worker
        return 1 if self.gpus_per_job else max(1, self.cores // self.workers)


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a settings YAML with emseg's config loader; :class:`SettingsError` says what to fix."""
    from emseg.pipeline.config import read_yaml, validate
    from emseg.pipeline.errors import ConfigError

    try:
        return validate(Settings, read_yaml(path, "settings file"), where=os.fspath(path))
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None


def cluster_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for these settings."""
    directives = list(s.job_directives)
    if s.gpus_per_job:
        directives.insert(0, s.gpu_directive.format(gpus=s.gpus_per_job))
    environment = dict(s.environment)
    worker_args: list[str] = []
    if s.cpu_workers_per_job:  # pin_gpu.py gives GPU=1 to the first gpus_per_job workers, no GPU to the rest
        environment["EMSEG_GPUS_PER_JOB"] = str(s.gpus_per_job)
        worker_args += ["--preload", str(PIN_GPU)]
    elif s.gpus_per_job:  # one GPU per worker, what cluster.model_resources: {GPU: 1} asks for
        worker_args += ["--resources", "GPU=1"]
        if s.gpus_per_job > 1:
            worker_args += ["--preload", str(PIN_GPU)]
    prologue = list(s.prologue) + [f"export {k}={_shell_quote(v)}" for k, v in environment.items()]
    scheduler: dict[str, Any] = {"port": s.scheduler_port}
    if s.dashboard_port is None:  # no dashboard; the scheduler's small HTTP server takes any free port
        scheduler["dashboard"] = False
        scheduler["dashboard_address"] = ":0"
    else:
        scheduler["dashboard_address"] = f":{s.dashboard_port}"
    kwargs: dict[str, Any] = {
        "queue": s.queue,
        "account": s.account,
        "cores": s.workers * s.threads,  # Dask threads in the job
        "processes": s.workers,
        "job_cpu": s.cores,  # what SLURM books
        "memory": s.memory,
        "walltime": s.walltime,
        "job_name": s.job_name,
        "job_extra_directives": directives,
        "job_script_prologue": prologue,
        "worker_extra_args": worker_args,
        "scheduler_options": scheduler,
        "python": s.python or sys.executable,
        "interface": s.interface,
        "local_directory": s.local_directory,
        "log_directory": s.log_directory,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def _shell_quote(value: str) -> str:
    """Quote for a POSIX shell, leaving ``$VAR`` references alone when the value has no quotes.

    >>> _shell_quote("http://minio:9000"), _shell_quote("$TMPDIR/x"), _shell_quote("a b")
    ('"http://minio:9000"', '"$TMPDIR/x"', '"a b"')
    """
    if '"' in value or "\\" in value or "`" in value:
        return "'" + value.replace("'", "'\"'\"'") + "'"
    return f'"{value}"'


def build_cluster(s: Settings) -> Any:
    """A ``SLURMCluster`` for the settings (its scheduler starts; no job is submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SettingsError(
            "dask-jobqueue is not installed; install emseg with the cluster extra: pip install -e '.[cluster]'"
        ) from None
    return SLURMCluster(**cluster_kwargs(s))


def job_script(s: Settings) -> str:
    """The batch script one job would run (nothing is submitted; no SLURM needed).

    The scheduler it names listens on a free port for the moment it takes to render the script.
    """
    cluster = build_cluster(s.model_copy(update={"scheduler_port": 0, "dashboard_port": None}))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 for bad settings)."""
    parser = argparse.ArgumentParser(description="Start a Dask cluster on SLURM for emseg.")
    parser.add_argument("settings", help="YAML settings (see deploy/slurm/cluster.example.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the job script and exit; submit nothing")
    parser.add_argument("--jobs", type=int, help="override the number of jobs")
    parser.add_argument("--address-file", help="also write the scheduler address to this file")
    parser.add_argument("--hold", type=float, metavar="HOURS",
                        help="stop after this many hours (default: until Ctrl-C or SIGTERM)")
    args = parser.parse_args(argv)
    try:
        s = load_settings(args.settings)
        if args.jobs is not None:
            s = Settings.model_validate({**s.model_dump(), "jobs": args.jobs})
        if args.dry_run:
            print(job_script(s))
            return 0
        cluster = build_cluster(s)
    except (SettingsError, ValidationError) as exc:
        print(f"start_cluster: error: {exc}", file=sys.stderr)
        return 2

    stop = False

    def _stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cluster.scale(jobs=s.jobs)
        address = cluster.scheduler_address
        if args.address_file:
            Path(args.address_file).write_text(address + "\n")
        print(f"scheduler: {address}", flush=True)
        if cluster.dashboard_link:
            print(f"dashboard: {cluster.dashboard_link}", flush=True)
        print(f"submitted {s.jobs} job(s) of {s.workers} worker(s) x {s.threads} thread(s); run:\n"
              f"  emseg segment CONFIG --cluster {address}\n(Ctrl-C cancels the jobs)", flush=True)
        deadline = time.monotonic() + args.hold * 3600 if args.hold else None
        seen = -1
        while not stop and (deadline is None or time.monotonic() < deadline):
            n = len(cluster.scheduler_info.get("workers", {}))
            if n != seen:
                print(f"workers connected: {n}", flush=True)
                seen = n
            time.sleep(5)
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
