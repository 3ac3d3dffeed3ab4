"""Benchmark: chunked threshold-cc end to end against cc3d on the whole volume, in one run.

A blobby binary volume (smoothed noise, thresholded) is written to a zarr store; emseg segments it
with ``threshold-cc`` in blocks (reading the zarr input, writing the precomputed uint64 output through
a real local Dask cluster) and the result is checked to be the same partition as cc3d's connected
components of the whole volume in memory. Also timed: reading the uint8 input and writing the uint64
output once through tensorstore (the I/O floor).

    python benchmarks/bench_stitching.py                  # 512³, 128³ blocks, 2 workers
    python benchmarks/bench_stitching.py --size 256       # quicker

Prints a table and writes ``benchmarks/results/stitching_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cc3d
import fastremap
import numpy as np
from scipy import ndimage

from emseg.pipeline.config import from_dict
from emseg.pipeline.io.volume import create_precomputed, create_zarr, open_volume

RESULTS = Path(__file__).parent / "results"


def blobby(size: int, seed: int = 0, sigma: float = 4.0) -> np.ndarray:
    """Smoothed noise thresholded at one standard deviation above the mean, as uint8 0/255."""
    rng = np.random.default_rng(seed)
    noise = rng.random((size, size, size), dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma)
    return np.where(smooth > smooth.mean() + smooth.std(), 255, 0).astype(np.uint8)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact partition equality in O(voxels): each label of ``b`` maps to one label of ``a`` and back."""
    if not np.array_equal(a == 0, b == 0):
        return False
    forward = fastremap.component_map(b, a)
    if len(set(forward.values())) != len(forward):
        return False
    return bool(np.array_equal(fastremap.remap(b, forward, preserve_missing_labels=True).astype(a.dtype), a))


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--halo", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker process")
    ap.add_argument("--workdir", default=None, help="where the stores go (default: a temp dir)")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)

    from distributed import LocalCluster

    from emseg.tasks.driver.cluster import configure_workers
    from emseg.tasks.driver.run import segment

    work = Path(args.workdir or tempfile.mkdtemp(prefix="emseg-bench-"))
    n = args.size
    voxels = n**3
    rows: list[tuple[str, float]] = []

    t = time.perf_counter()
    img = blobby(n)
    t_gen = time.perf_counter() - t
    vol = create_zarr(str(work / "in.zarr"), dtype="uint8", shape_zyx=(n, n, n), chunk_zyx=(64, 64, 64),
                      voxel_size_nm=(8, 8, 8))
    vol.write(vol.box, img)

    # cc3d on the whole volume in memory (the reference partition).
    t = time.perf_counter()
    ref = cc3d.connected_components(img > 0, connectivity=26)
    t_cc3d = time.perf_counter() - t
    rows.append(("cc3d, whole volume in memory", t_cc3d))

    # The I/O floor: read the uint8 input once, write a uint64 output once.
    out_io = create_precomputed(str(work / "io_floor"), layer_type="segmentation", dtype="uint64",
                                shape_zyx=(n, n, n), voxel_size_nm=(8, 8, 8), chunk_zyx=(args.chunk,) * 3)
    src = open_volume(f"zarr://{work}/in.zarr")
    labels64 = ref.astype(np.uint64)
    t = time.perf_counter()
    src.read(src.box)
    t_read = time.perf_counter() - t
    out_io.write(out_io.box, labels64)
    t_io = time.perf_counter() - t
    rows.append(("tensorstore: read uint8 + write uint64 once", t_io))
    del labels64

    cfg = {
        "input": f"zarr://{work}/in.zarr",
        "output": str(work / "out"),
        "backend": {"name": "threshold-cc", "threshold": 128},
        "blocks": {"shape": [args.block] * 3, "halo": [args.halo] * 3},
        "write": {"chunk_shape": [args.chunk] * 3},
        "postprocess": None,  # stages 1-4 only: pyramids and meshes have their own benchmark
    }
    # Cold: the run starts its own local cluster (what `emseg segment` does).
    t = time.perf_counter()
    run_cold = segment(from_dict({**cfg, "cluster": {"workers": args.workers, "threads_per_worker": args.threads}}),
                       restart=True, progress=False)
    t_cold = time.perf_counter() - t
    rows.append((f"emseg threshold-cc, {args.block}³ blocks, incl. cluster start, {args.workers} worker(s)", t_cold))
    # Warm: the same run on an already running cluster, configured as emseg's own; also with the
    # other worker count, side by side (on 2 cores one worker process can beat two: tensorstore's
    # own threads encode and decode on the second core).
    configure_workers()
    runs = {}
    for workers in dict.fromkeys([args.workers, 1 if args.workers != 1 else 2]):
        with LocalCluster(n_workers=workers, threads_per_worker=args.threads, processes=True,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
            warm_cfg = from_dict({**cfg, "cluster": {"address": cluster.scheduler_address}})
            segment(warm_cfg, restart=True, progress=False)  # workers import and warm up
            t = time.perf_counter()
            runs[workers] = segment(warm_cfg, restart=True, progress=False)
            t_warm = time.perf_counter() - t
        rows.append((f"emseg threshold-cc, {args.block}³ blocks, running cluster, {workers} worker(s)", t_warm))
    run = runs[args.workers]

    out = open_volume(f"precomputed://{work}/out/segmentation")
    seg = out.read(out.box)
    equal = same_partition(seg, ref)
    ids = np.unique(seg)
    sequential = bool(ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids))))

    print(f"\n{n}³ = {voxels / 1e6:.1f} Mvoxels, {int(ref.max())} objects, {args.workers} workers x "
          f"{args.threads} threads, "
          f"{cpu_name()}, {os.cpu_count()} cores")
    print(f"{'what':<72} {'seconds':>8} {'Mvoxel/s':>9}")
    for name, secs in rows:
        print(f"{name:<72} {secs:8.2f} {voxels / 1e6 / secs:9.1f}")
    print(f"partition equal to cc3d: {equal}; final ids sequential: {sequential}; segments {len(ids) - 1}")
    print(f"per-stage task-seconds (running cluster, {args.workers} worker(s)): "
          + ", ".join(f"{k} {v['task_seconds']:.1f}" for k, v in run["stages"].items()))

    result = {
        "benchmark": "stitching",
        "size": n,
        "voxels": voxels,
        "objects": int(ref.max()),
        "block": args.block,
        "halo": args.halo,
        "chunk": args.chunk,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "seconds": {name: round(secs, 3) for name, secs in rows},
        "mvoxels_per_second": {name: round(voxels / 1e6 / secs, 2) for name, secs in rows},
        "partition_equal": equal,
        "sequential_ids": sequential,
        "stage_task_seconds": {k: v["task_seconds"] for k, v in run["stages"].items()},
        "cold_run_wall_seconds": run_cold["wall_seconds"],
        "generate_seconds": round(t_gen, 2),
        "io_floor_read_seconds": round(t_read, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"stitching_{n}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    if not equal:
        raise SystemExit("FAILED: the chunked result is not the whole-volume partition")


if __name__ == "__main__":
    main()
