"""Benchmark: emseg's pyramid, mesh and skeleton stages next to igneous's downsample, mesh and skeleton tasks.

Both work on copies of the same volume in the same run: the ground-truth labels of an emseg phantom
(neurite-like segments, uint64, compressed_segmentation, 64^3 chunks), with the same number of
workers (emseg: a local Dask cluster of N single-threaded processes; igneous: LocalTaskQueue with N
processes), the same block shape for meshing and the same simplification error bound (zmesh's
quadric simplifier in both). Throughput is megavoxels of the full-resolution volume per second of
wall time.

    python benchmarks/bench_postprocess.py [--shape 256] [--block 128] [--workers 2]

igneous pins versions that emseg's environment does not take (DracoPy < 2), so it runs in its own
interpreter: ``--igneous-python`` or ``$EMSEG_IGNEOUS_PYTHON`` (for example a venv made with
``python -m venv /tmp/igneous && /tmp/igneous/bin/pip install igneous-pipeline``), or this one when
it imports igneous. Without it, the igneous rows say so and emseg's numbers are still reported.
Results: ``benchmarks/results/postprocess_<shape>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IGNEOUS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from taskqueue import LocalTaskQueue
    import igneous, igneous.task_creation as tc
    path, levels, block, workers, error_nm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    parts = sys.argv[6].split(",")
    from importlib.metadata import version
    out = {"version": version("igneous-pipeline")}
    times = []
    for _ in range(int(sys.argv[7])):
        tq = LocalTaskQueue(parallel=workers, progress=False)
        t = time.perf_counter()
        tq.insert(tc.create_downsampling_tasks(path, mip=0, num_mips=levels, compress=False, factor=(2, 2, 2)))
        tq.execute(progress=False)
        times.append(time.perf_counter() - t)
    if times:
        out["downsample_runs_seconds"] = times
        out["downsample_seconds"] = sorted(times)[len(times) // 2]
    if "meshes" not in parts and "skeletons" not in parts:
        print("IGNEOUS " + json.dumps(out))
        sys.exit(0)
    if "meshes" in parts:
        tq = LocalTaskQueue(parallel=workers, progress=False)
        t = time.perf_counter()
        tq.insert(tc.create_meshing_tasks(path, mip=0, shape=(block, block, block), simplification=True,
                                          max_simplification_error=error_nm, mesh_dir="mesh", compress=False,
                                          spatial_index=False))
        tq.execute(progress=False)
        out["mesh_tasks_seconds"] = time.perf_counter() - t
        tq = LocalTaskQueue(parallel=workers, progress=False)
        t = time.perf_counter()
        tq.insert(tc.create_mesh_manifest_tasks(path, magnitude=3, mesh_dir="mesh"))
        tq.execute(progress=False)
        out["mesh_manifest_seconds"] = time.perf_counter() - t
    if "skeletons" in parts:
        tq = LocalTaskQueue(parallel=workers, progress=False)
        t = time.perf_counter()
        tq.insert(tc.create_skeletonizing_tasks(path, mip=0, shape=(block, block, block),
                                                teasar_params={"scale": 1.5, "const": 300}, dust_threshold=100,
                                                fix_borders=True, sharded=False, spatial_index=False))
        tq.execute(progress=False)
        out["skeleton_tasks_seconds"] = time.perf_counter() - t
        tq = LocalTaskQueue(parallel=workers, progress=False)
        t = time.perf_counter()
        tq.insert(tc.create_unsharded_skeleton_merge_tasks(path, dust_threshold=0, tick_threshold=0))
        tq.execute(progress=False)
        out["skeleton_merge_seconds"] = time.perf_counter() - t
    print("IGNEOUS " + json.dumps(out))
""")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


def make_volume(work: Path, shape: int, workers: int) -> Path:
    """The phantom's ground-truth labels as a single-scale precomputed segmentation (made once per
    shape: the shape is in the path, so a run with another ``--shape`` never reuses it)."""
    from emseg.pipeline.config import ClusterConfig, PhantomConfig
    from emseg.tasks.commands.phantom import write_phantom

    root = work / f"phantom_{shape}"
    labels = root / "labels"
    if not (labels / "info").exists():
        cfg = PhantomConfig(shape=(shape, shape, shape), seed=0, voxel_size_nm=(8.0, 8.0, 8.0))
        write_phantom(cfg, f"precomputed://{root / 'image'}", f"precomputed://{labels}",
                      cluster=ClusterConfig(workers=workers))
    return labels


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def run_emseg(store: Path, block: int, workers: int, error_voxels: float, parts: list[str],
              repeat: int = 1, between: Any = None) -> dict[str, Any]:
    """emseg's stage 5 (segmentation pyramid) and stage 6 (legacy meshes) on a local Dask cluster.

    ``between(rep)`` runs after each pyramid run (igneous's, so that both see the same machine load)."""
    import logging

    import numpy as np
    from distributed import Client, LocalCluster

    from emseg.pipeline.io import urls
    from emseg.pipeline.io.volume import open_volume
    from emseg.tasks import stage5_pyramid
    from emseg.pipeline.outputs.shardfile import plan_groups
    from emseg.tasks import stage6_meshes
    from emseg.tasks.driver import engine
    from emseg.tasks.driver.cluster import configure_workers
    from emseg.tasks.driver.postprocess import mesh_tasks, pyramid_tasks

    url = urls.store_url(str(store))
    vol = open_volume(f"precomputed://{store}")
    max_id = int(np.max(vol.read(vol.box)))
    out: dict[str, Any] = {}
    configure_workers()  # emseg's worker settings (tasks/driver/cluster.py), as a run's own cluster has them
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        def run(tasks: Any, run_id: str) -> engine.Streamer:
            """Every task through the run's engine; raises if one failed."""
            stream = engine.Streamer(client, run_id=run_id, retries=0, window=1000)
            stream.submit_all(tasks)
            stream.barrier()
            if stream.failed:
                raise RuntimeError(f"bench tasks failed: {stream.failures()[:3]}")
            return stream

        # Workers up and the modules imported before timing, as igneous's forked processes inherit its imports.
        client.run(lambda: [__import__(m) for m in ("emseg.tasks.stage5_pyramid", "emseg.tasks.stage6_meshes", "tinybrain")])
        times = []
        for rep in range(repeat):  # the same work each time (the scales are rewritten), median reported
            t = time.perf_counter()
            layer = stage5_pyramid.plan_layer(url, "segmentation", None)
            stream = run(pyramid_tasks(layer, f"bench{rep}"), f"bench{rep}")
            times.append(time.perf_counter() - t)
            if between is not None:
                between(rep)
        out["pyramid_runs_seconds"] = times
        out["pyramid_seconds"] = sorted(times)[len(times) // 2]
        out["pyramid_scales"] = [s.key for s in layer.scales]
        out["pyramid_tasks"] = int(stream.results[stage5_pyramid.STAGE][0])
        if "skeletons" in parts:
            out.update(_emseg_skeletons(client, url, layer.scales[0], block, max_id))
        if "meshes" not in parts:
            return out

        t = time.perf_counter()
        scale = layer.scales[0]
        shift, sharding = plan_groups(max_id, -(-scale.shape_zyx[0] // block) ** 3, "legacy")
        plan = stage6_meshes.MeshPlan(
            output=url, volume_spec={"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(url),
                                     "scale_metadata": {"key": scale.key}},
            scale=scale, block_shape=(block, block, block), mesh_dir=urls.join(url, "mesh"), format="legacy",
            shift=shift, sharding=sharding, reduction=10, max_error=error_voxels, lods=1, run_id="bench",
        )
        urls.open_kvstore(plan.mesh_dir).write("info", json.dumps(plan.info()).encode()).result()
        stream = run(mesh_tasks(plan, max_id, []), "bench-mesh")
        merges = list(stream.kept.values())  # the per-group merge tasks keep their results
        tasks, task_seconds, _ = stream.results[stage6_meshes.STAGE]
        out["mesh_seconds"] = time.perf_counter() - t
        out["mesh_merge_task_seconds"] = sum(r["seconds"] for r in merges)
        out["mesh_block_task_seconds"] = task_seconds - out["mesh_merge_task_seconds"]
        out["mesh_segments"] = sum(r["segments"] for r in merges)
        out["mesh_faces"] = sum(r["faces"] for r in merges)
        out["mesh_tasks"] = int(tasks)
    return out


def _emseg_skeletons(client: Any, url: str, scale: Any, block: int, max_id: int) -> dict[str, Any]:
    """emseg's stage 9 with the same TEASAR parameters, block shape and dust threshold as igneous's run."""
    from emseg.pipeline.io import urls
    from emseg.pipeline.outputs.shardfile import plan_groups
    from emseg.tasks import stage9_skeletons
    from emseg.tasks.driver import engine

    t = time.perf_counter()
    n_blocks = -(-scale.shape_zyx[0] // block) ** 3
    shift, _ = plan_groups(max_id, n_blocks, "legacy")
    plan = stage9_skeletons.SkeletonPlan(
        output=url, volume_spec={"driver": "neuroglancer_precomputed", "kvstore": urls.kvstore_spec(url),
                                 "scale_metadata": {"key": scale.key}},
        scale=scale, block_shape=(block, block, block), skeleton_dir=urls.join(url, "skeletons"), format="unsharded",
        shift=shift, sharding=None, teasar={"scale": 1.5, "const": 300.0}, dust_voxels=100, run_id="bench-skel",
    )
    urls.open_kvstore(plan.skeleton_dir).write("info", json.dumps(plan.info()).encode()).result()
    stream = engine.Streamer(client, run_id="bench-skel", retries=0, window=1000)
    tasks = [engine.Task(stage9_skeletons.STAGE, f"block-{b.id}", stage9_skeletons.skeleton_block_task, (plan, b.id))
             for b in plan.grid]
    stream.submit_all(tasks)
    stream.barrier()  # timed apart: the block phase, then the merges
    t_blocks = time.perf_counter() - t
    groups = range((max(max_id, 1) >> shift) + 1)
    stream.submit_all(engine.Task(stage9_skeletons.STAGE, f"group-{g}", stage9_skeletons.merge_group_task, (plan, g),
                                  keep=True) for g in groups)
    stream.barrier()
    if stream.failed:
        raise RuntimeError(f"bench tasks failed: {stream.failures()[:3]}")
    results = list(stream.kept.values())
    return {"skeleton_seconds": time.perf_counter() - t, "skeleton_block_wall_seconds": t_blocks,
            "skeleton_segments": sum(r["segments"] for r in results),
            "skeleton_vertices": sum(r["vertices"] for r in results), "skeleton_tasks": len(tasks) + len(groups)}


def igneous_python(arg: str | None) -> str | None:
    for candidate in (arg, os.environ.get("EMSEG_IGNEOUS_PYTHON")):
        if candidate:
            return candidate
    try:
        import igneous  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def run_igneous(python: str, store: Path, levels: int, block: int, workers: int, error_nm: float,
                parts: list[str], repeat: int = 1) -> dict[str, Any]:
    proc = subprocess.run([python, "-c", IGNEOUS_SCRIPT, f"file://{store}", str(levels), str(block), str(workers),
                           str(error_nm), ",".join(parts), str(repeat)], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("IGNEOUS ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"igneous failed (status {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(line[len("IGNEOUS "):])


def compare(emseg_store: Path, igneous_store: Path, levels: int) -> dict[str, Any]:
    """How far the two mode pyramids agree, and whether either adds ids (read by cloud-volume)."""
    import numpy as np
    from cloudvolume import CloudVolume

    out = {}
    base = None
    for mip in range(levels + 1):
        arrays = []
        for store in (emseg_store, igneous_store):
            cv = CloudVolume(f"file://{store}", mip=mip, progress=False, fill_missing=False)
            arrays.append(np.asarray(cv[cv.bounds]))
        if base is None:
            base = set(np.unique(arrays[0]).tolist())
            continue
        a, b = arrays
        out[f"mip{mip}"] = {"same_voxels": round(float(np.mean(a == b)), 4),
                            "emseg_new_ids": len(set(np.unique(a).tolist()) - base),
                            "igneous_new_ids": len(set(np.unique(b).tolist()) - base)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, default=256, help="edge of the cubic phantom (voxels)")
    ap.add_argument("--block", type=int, default=128, help="mesh block edge (voxels)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--error", type=float, default=1.0, help="simplification error bound (voxels)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-postprocess")
    ap.add_argument("--igneous-python", help="python that imports igneous (default $EMSEG_IGNEOUS_PYTHON)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/postprocess_<shape>.json)")
    ap.add_argument("--parts", default="pyramid,meshes,skeletons",
                    help="comma-separated: pyramid (always), meshes, skeletons")
    ap.add_argument("--repeat", type=int, default=5, help="pyramid runs per tool (median reported; the machine is shared)")
    args = ap.parse_args()
    if args.shape <= 64:  # the phantom's chunks are 64³: a volume of one chunk has no coarser scale
        ap.error(f"--shape {args.shape}: must be over 64 (the phantom's 64³ chunk), so that there is a pyramid to build")
    parts = args.parts.split(",")
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    started = machine()
    labels = make_volume(args.work, args.shape, args.workers)
    voxels = args.shape**3
    mv = voxels / 1e6

    emseg_store = fresh_copy(labels, args.work / "emseg" / "labels")
    from emseg.pipeline.outputs.downsample import pyramid
    from emseg.tasks.stage5_pyramid import base_scale, read_info

    levels = len(pyramid(base_scale(read_info(f"file://{labels}")), None)) - 1
    python = igneous_python(args.igneous_python)
    igneous: dict[str, Any] = {}
    ig_times: list[float] = []
    if python is None:
        igneous = {"error": "igneous is not installed: pass --igneous-python or set EMSEG_IGNEOUS_PYTHON"}
        between = None
    else:
        igneous_store = fresh_copy(labels, args.work / "igneous" / "labels")

        def between(rep: int) -> None:  # one igneous pyramid run after each of emseg's: the same load for both
            if "error" in igneous:
                return
            try:
                got = run_igneous(python, igneous_store, levels, args.block, args.workers, args.error * 8.0,
                                  ["pyramid"], 1)
            except RuntimeError as exc:
                igneous["error"] = str(exc)
                return
            igneous["version"] = got["version"]
            ig_times.extend(got["downsample_runs_seconds"])

    emseg = run_emseg(emseg_store, args.block, args.workers, args.error, parts, args.repeat, between)
    print("emseg:", json.dumps(emseg), flush=True)
    if python is not None and "error" not in igneous:
        igneous["downsample_runs_seconds"] = ig_times
        igneous["downsample_seconds"] = sorted(ig_times)[len(ig_times) // 2]
        if "meshes" in parts or "skeletons" in parts:
            try:
                igneous.update(run_igneous(python, igneous_store, levels, args.block, args.workers, args.error * 8.0,
                                           parts, 0))
            except RuntimeError as exc:
                igneous["error"] = str(exc)
        print("igneous:", json.dumps(igneous), flush=True)
        if "error" not in igneous:
            try:
                igneous["agreement"] = compare(emseg_store, igneous_store, levels)
            except Exception as exc:  # noqa: BLE001 - a comparison failure must not lose the timings
                igneous["agreement"] = {"error": f"{type(exc).__name__}: {exc}"}

    rows = [("emseg 5-pyramid (mode, %d scales)" % levels, emseg["pyramid_seconds"])]
    if "error" not in igneous:
        rows += [("igneous DownsampleTask (mode, %d mips)" % levels, igneous["downsample_seconds"])]
    if "meshes" in parts:
        rows += [("emseg 6-meshes (blocks + join per segment)", emseg["mesh_seconds"])]
        if "error" not in igneous:
            rows += [("igneous MeshTask", igneous["mesh_tasks_seconds"]),
                     ("igneous MeshTask + MeshManifestTask",
                      igneous["mesh_tasks_seconds"] + igneous["mesh_manifest_seconds"])]
    if "skeletons" in parts:
        rows += [("emseg 9-skeletons (blocks + join per segment)", emseg["skeleton_seconds"])]
        if "error" not in igneous and "skeleton_tasks_seconds" in igneous:
            rows += [("igneous SkeletonTask + UnshardedSkeletonMergeTask",
                      igneous["skeleton_tasks_seconds"] + igneous["skeleton_merge_seconds"])]
    print(f"\n{args.shape}^3 voxels ({mv:.1f} Mvoxel), {args.block}^3 mesh blocks, {args.workers} workers, "
          f"simplification error {args.error} voxel; {started['cpu']}, {started['cores']} cores, "
          f"load average at start {started['load_average_at_start']}")
    print(f"{'stage':<48} {'seconds':>9} {'Mvoxel/s':>9}")
    for name, seconds in rows:
        print(f"{name:<48} {seconds:9.2f} {mv / seconds:9.2f}")
    if "error" in igneous:
        print(f"igneous: {igneous['error']}")
    else:
        print("mode pyramids, emseg vs igneous:", json.dumps(igneous["agreement"]))
    if "meshes" in parts:
        print(f"emseg meshes: {emseg['mesh_segments']} segments, {emseg['mesh_faces']} triangles, block tasks "
              f"{emseg['mesh_block_task_seconds']:.1f} task-s, joins {emseg['mesh_merge_task_seconds']:.1f} task-s")

    result = {"shape": [args.shape] * 3, "block": args.block, "workers": args.workers,
              "simplification_error_voxels": args.error, "machine": started,
              "emseg": emseg, "igneous": igneous,
              "megavoxels_per_second": {name: round(mv / s, 3) for name, s in rows}}
    out = args.out or REPO / "benchmarks" / "results" / f"postprocess_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
