"""The cluster recipes in deploy/: they parse, pin what they install, and render what they promise.

Nothing here needs docker, SLURM or Kubernetes: the Dockerfile is checked as text, the SLURM job
script is rendered by dask-jobqueue without submitting, and the Kubernetes manifests are parsed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "requirements.txt"
IMAGE = "emseg:0.1.0-cuda13.0"


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


# ------------------------------------------------------------------------------------------------
# Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _pip_installs() -> list[list[str]]:
    """The argument lists of every ``pip install`` in a RUN instruction."""
    out = []
    for kind, args in _instructions():
        if kind != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", ">"):
                if command[:2] == ["pip", "install"] or command[1:3] == ["pip", "install"]:
                    out.append(command[command.index("install") + 1:])
                command = []
            else:
                command.append(token)
    return out


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for kind, a in _instructions() if kind == "ARG" and "=" in a)


_VALUE_OPTIONS = {"-r", "-c", "--index-url", "--extra-index-url", "-i", "--requirement", "--constraint", "-f"}


def test_dockerfile_pins_its_base_image_and_the_versions_it_installs() -> None:
    args = _args()
    base = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z-]+-ubuntu\d+\.\d+", base), base
    froms = [a for kind, a in _instructions() if kind == "FROM"]
    assert froms and all(f.split()[0] == "${CUDA_IMAGE}" for f in froms)
    setup = (REPO / "scripts" / "setup.sh").read_text()  # the image's torch is the version the suite runs
    assert f"torch=={args['TORCH_VERSION']}" in setup and "/whl/cu" in args["TORCH_INDEX"]
    text = DOCKERFILE.read_text()
    for pin in ("sam2==1.1.0", "hydra-core==", "iopath==", "pillow==", "pip==", "SAM2_BUILD_CUDA=0",
                "--no-build-isolation --no-deps sam2"):
        assert pin in text, pin
    entry = [a for kind, a in _instructions() if kind == "ENTRYPOINT"]
    assert entry == ['["emseg"]']


def test_dockerfile_has_no_unpinned_pip_install() -> None:
    installs = _pip_installs()
    assert len(installs) >= 5
    for words in installs:
        requirements = []
        skip = False
        for w in words:
            if skip:
                skip = False
            elif w in _VALUE_OPTIONS:
                skip = True
            elif not w.startswith("-"):
                requirements.append(w)
        for req in requirements:
            if req.startswith("/"):  # emseg itself, from the copied source, without resolving anything
                assert "--no-deps" in words, words
            else:
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==(\d[\w.+]*|\$\{[A-Z_]+\})", req), f"unpinned: {req}"
        files = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-r", "-c")]
        assert all(f == "/tmp/requirements.txt" for f in files)


def test_dockerfile_installs_torch_first_then_sam2_then_emseg() -> None:
    order = [" ".join(w) for w in _pip_installs()]
    torch = next(i for i, c in enumerate(order) if "torch==" in c)
    sam2 = next(i for i, c in enumerate(order) if "sam2==" in c)
    deps = next(i for i, c in enumerate(order) if "-r /tmp/requirements.txt" in c)
    emseg = next(i for i, c in enumerate(order) if "/opt/emseg/src" in c)
    assert torch < sam2 < deps < emseg
    assert "--index-url" in order[torch] and "--no-deps" in order[sam2]


def test_requirements_are_all_pinned_and_satisfy_pyproject() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+!]+)", line.strip())
        assert m, f"not pinned with ==: {line!r}"
        pins[canonicalize_name(m[1])] = m[2]
    assert "torch" not in pins and "sam2" not in pins  # the Dockerfile installs these itself
    for name, version in re.findall(r"([A-Za-z][\w.\-]*)==(\d[\w.]*)", DOCKERFILE.read_text()):
        if canonicalize_name(name) in pins:
            assert pins[canonicalize_name(name)] == version, f"{name}: Dockerfile {version}, requirements.txt"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for r in project["optional-dependencies"]["ml"]]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, (f"{name} (a dependency in pyproject.toml) is not pinned in {REQUIREMENTS}: install it, "
                              "then python deploy/docker/freeze_requirements.py > deploy/docker/requirements.txt")
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {text!r}"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
    copied = [a.split()[0] for kind, a in _instructions() if kind == "COPY" and not a.startswith("--from")]
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is copied but excluded from the context"


# ------------------------------------------------------------------------------------------------
# SLURM


@pytest.fixture(scope="module")
def slurm() -> ModuleType:
    pytest.importorskip("dask_jobqueue")
    return _module(DEPLOY / "slurm" / "start_cluster.py")


def _settings(slurm: ModuleType, tmp_path: Path, **over: Any) -> Path:
    data = {
        "queue": "gpu-a100",
        "account": "lab42",
        "cores": 12,
        "memory": "96GB",
        "walltime": "06:30:00",
        "gpus_per_job": 3,
        "jobs": 5,
        "prologue": ["module load cuda/13.0", "source /shared/emseg/.venv/bin/activate"],
        "environment": {"EMSEG_S3_ENDPOINT": "http://minio.internal:9000"},
        "python": "/shared/emseg/.venv/bin/python",
        "job_directives": ["--constraint=a100"],
        "local_directory": "$TMPDIR",
    }
    data.update(over)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_slurm_job_script_has_the_requested_resources(slurm: ModuleType, tmp_path: Path) -> None:
    s = slurm.load_settings(_settings(slurm, tmp_path))
    script = slurm.job_script(s)
    for line in ("#SBATCH -p gpu-a100", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=12", "#SBATCH -t 06:30:00",
                 "#SBATCH --gres=gpu:3", "#SBATCH --constraint=a100", "module load cuda/13.0",
                 "source /shared/emseg/.venv/bin/activate", 'export EMSEG_S3_ENDPOINT="http://minio.internal:9000"'):
        assert line in script.splitlines(), line
    from dask.utils import parse_bytes
    from dask_jobqueue.slurm import slurm_format_bytes_ceil

    # the job asks for the memory the settings give, as dask-jobqueue writes it (96 GB = 90 GiB)
    assert f"#SBATCH --mem={slurm_format_bytes_ceil(parse_bytes('96GB'))}" in script.splitlines()
    worker = next(line for line in script.splitlines() if "dask_worker" in line or "dask worker" in line)
    assert worker.startswith("/shared/emseg/.venv/bin/python")
    assert "--nworkers 3" in worker and "--nthreads 1" in worker  # one worker per GPU, one block at a time
    assert f"--preload {DEPLOY / 'slurm' / 'pin_gpu.py'}" in worker and "--local-directory $TMPDIR" in worker
    assert "--resources GPU=1" in worker  # what cluster.model_resources: {GPU: 1} routes the model to
    # the prologue runs before the worker starts
    assert script.index("source /shared/emseg/.venv/bin/activate") < script.index(worker)


def test_slurm_cpu_jobs_and_the_example(slurm: ModuleType, tmp_path: Path) -> None:
    s = slurm.load_settings(_settings(slurm, tmp_path, gpus_per_job=0, workers_per_job=4, account=None))
    script = slurm.job_script(s)
    assert "--gres" not in script and "#SBATCH -A" not in script and "--preload" not in script
    assert "--resources" not in script
    assert "--nworkers 4" in script and "--nthreads 3" in script
    example = slurm.load_settings(DEPLOY / "slurm" / "cluster.example.yaml")
    assert example.gpus_per_job >= 1 and "#SBATCH --gres=gpu:" in slurm.job_script(example)


def test_slurm_launcher_dry_run_and_bad_settings(slurm: ModuleType, tmp_path: Path, capsys: Any) -> None:
    assert slurm.main([str(_settings(slurm, tmp_path)), "--dry-run", "--jobs", "2"]) == 0
    assert "#SBATCH --gres=gpu:3" in capsys.readouterr().out
    bad = _settings(slurm, tmp_path, walltime="6h", gpu=2)
    assert slurm.main([str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "walltime '6h' is not HH:MM:SS" in err and "unknown config key 'gpu'" in err


@contextlib.contextmanager
def _job_workers(tmp_path: Path, n: int, name: str, **env: str) -> Any:
    """A scheduler and ``dask worker --nworkers n --preload pin_gpu.py`` started as a SLURM job starts
    them, with ``env`` added; yields a client."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster, Client(cluster) as client:
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--nworkers", str(n),
             "--nthreads", "1", "--name", name, "--no-dashboard", "--preload",
             str(DEPLOY / "slurm" / "pin_gpu.py"), "--local-directory", str(tmp_path)],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(n, timeout=30)
            yield client
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            time.sleep(0.1)


def test_pin_gpu_gives_each_worker_process_its_own_gpu(tmp_path: Path) -> None:
    """``dask worker --nworkers 2 --preload pin_gpu.py`` as in a 2-GPU job: each process sees one GPU."""
    pin = _module(DEPLOY / "slurm" / "pin_gpu.py")
    assert pin.gpu_for("SLURMCluster-3-1", "2,3") == "3"
    with _job_workers(tmp_path, 2, "emseg-worker-0", CUDA_VISIBLE_DEVICES="6,7") as client:
        seen = client.run(lambda dask_worker: (dask_worker.name, os.environ["CUDA_VISIBLE_DEVICES"]))
    assert sorted(seen.values()) == [("emseg-worker-0-0", "6"), ("emseg-worker-0-1", "7")]


def test_gpu_jobs_with_cpu_workers(slurm: ModuleType, tmp_path: Path) -> None:
    """``cpu_workers_per_job``: a GPU job runs its GPU workers and CPU-only ones, one thread each;
    the preload, not the command line, gives the GPU workers their resource."""
    script = slurm.job_script(slurm.load_settings(_settings(slurm, tmp_path, gpus_per_job=2, cpu_workers_per_job=9)))
    worker = next(line for line in script.splitlines() if "dask_worker" in line or "dask worker" in line)
    assert "--nworkers 11" in worker and "--nthreads 1" in worker and "--resources" not in worker
    assert f"--preload {DEPLOY / 'slurm' / 'pin_gpu.py'}" in worker
    assert 'export EMSEG_GPUS_PER_JOB="2"' in script.splitlines()
    for over, message in (({"gpus_per_job": 0, "cpu_workers_per_job": 4}, "set workers_per_job for CPU jobs"),
                          ({"cpu_workers_per_job": 4, "threads_per_worker": 2}, "one thread per worker"),
                          ({"cpu_workers_per_job": 10}, "13 workers per job need at least 13 cores")):
        with pytest.raises(slurm.SettingsError, match=message):
            slurm.load_settings(_settings(slurm, tmp_path, **over))


def test_pin_gpu_gives_the_gpu_resource_to_the_gpu_workers_only(tmp_path: Path) -> None:
    """``dask worker --nworkers 3 --preload pin_gpu.py`` with ``EMSEG_GPUS_PER_JOB=1``, as in a job
    with one GPU and two CPU workers: only the first holds ``GPU=1`` and sees the GPU, and a task
    that asks for the resource runs there."""
    from distributed import get_worker

    with _job_workers(tmp_path, 3, "emseg-worker-5", CUDA_VISIBLE_DEVICES="3", EMSEG_GPUS_PER_JOB="1") as client:
        seen = client.run(lambda dask_worker: (dask_worker.name, os.environ["CUDA_VISIBLE_DEVICES"]))
        resources = {w["name"]: w["resources"] for w in client.scheduler_info()["workers"].values()}
        ran = {client.submit(lambda i: get_worker().name, i, resources={"GPU": 1}, pure=False).result() for i in range(6)}
    assert sorted(seen.values()) == [("emseg-worker-5-0", "3"), ("emseg-worker-5-1", ""), ("emseg-worker-5-2", "")]
    assert resources == {"emseg-worker-5-0": {"GPU": 1.0}, "emseg-worker-5-1": {}, "emseg-worker-5-2": {}}
    assert ran == {"emseg-worker-5-0"}


# ------------------------------------------------------------------------------------------------
# Kubernetes


def _k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _containers(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "containers" and isinstance(v, list):
                found += v
            else:
                found += _containers(v)
    elif isinstance(node, list):
        for v in node:
            found += _containers(v)
    return found


def test_kubernetes_manifests_have_the_expected_kinds_and_image() -> None:
    from emseg.pipeline.config import from_dict

    docs = _k8s()
    kinds = {d["kind"]: d for d in docs}
    assert {"DaskCluster", "DaskWorkerGroup", "ConfigMap", "Job"} <= set(kinds)
    assert kinds["DaskCluster"]["apiVersion"] == "kubernetes.dask.org/v1"
    name = kinds["DaskCluster"]["metadata"]["name"]
    assert kinds["DaskWorkerGroup"]["spec"]["cluster"] == name
    containers = _containers(docs)
    assert containers and {c["image"] for c in containers} == {IMAGE}
    assert f"-t {IMAGE}" in DOCKERFILE.read_text()  # the tag the Dockerfile's build line makes

    spec = kinds["DaskCluster"]["spec"]
    assert spec["scheduler"]["service"]["selector"] == {"dask.org/cluster-name": name,
                                                        "dask.org/component": "scheduler"}
    assert any(p["port"] == 8786 for p in spec["scheduler"]["service"]["ports"])
    worker = spec["worker"]["spec"]["containers"][0]
    assert worker["command"] == ["dask", "worker"]  # the image's entrypoint is emseg
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    assert worker["args"][worker["args"].index("--resources") + 1] == "GPU=1"

    driver = kinds["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert driver["args"][:2] == ["segment", "/etc/emseg/run.yaml"]
    assert driver["args"][driver["args"].index("--cluster") + 1] == f"tcp://{name}-scheduler:8786"
    run = from_dict(yaml.safe_load(kinds["ConfigMap"]["data"]["run.yaml"]))  # a valid emseg config
    assert run.backend.name == "sam2"
    assert run.cluster.model_resources == {"GPU": 1}  # what the GPU workers above advertise
    cpu = next(d for d in docs if d["kind"] == "DaskWorkerGroup")["spec"]["worker"]["spec"]["containers"][0]
    assert "--resources" not in cpu["args"] and "nvidia.com/gpu" not in str(cpu.get("resources"))


@pytest.mark.parametrize("name", ["slurm/pin_gpu.py", "slurm/start_cluster.py", "docker/freeze_requirements.py"])
def test_deploy_doctests(name: str) -> None:
    import doctest

    if name.endswith("start_cluster.py"):
        pytest.importorskip("dask_jobqueue")
    result = doctest.testmod(_module(DEPLOY / name))
    assert result.failed == 0 and (result.attempted > 0 or name.endswith("start_cluster.py"))
