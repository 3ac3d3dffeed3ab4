"""Boundary backend on FIB-25: block invariance, accuracy, a threshold sweep and speed, in one run.

Segments the validation part of ``../shared/data/fib25_ts2.zarr/raw`` (z >= 170, 80 x 250 x 250
voxels at 10 nm; the bundled models were trained on z < 150) with the ``affinities`` backend through
the real pipeline (local Dask cluster, zarr in, precomputed out), and reports:

- block invariance: VOI between the result in 64³ blocks, in 128³ blocks and in one block (global
  agglomeration), and in 64³ blocks with blockwise agglomeration;
- accuracy against the ground truth (``emseg evaluate``'s code, label 0 ignored) at the default
  threshold, beside ``watershed`` run in the same session and the recorded bundled-FFN and published
  Google FFN numbers;
- a threshold sweep (VOI split against merge) that reruns only union-find and relabel;
- speed: model voxels/s, the CPU work outside the model (fragments, merge tree, seam edges,
  union-find, relabel) in Mvoxel/s per core (from task CPU seconds), measured on one local cluster
  that a small warm-up run has readied (each worker has loaded numba's kernels and the model once;
  that one-time cost is reported as ``warm_up``), and end-to-end Mvoxel/s of the whole 250³ volume
  in 128³ blocks on a cluster of its own, its start included.

    python benchmarks/bench_affinities.py [--model forest] [--weights bundled] [--workers 2]

Prints tables, writes ``benchmarks/results/affinities_<model>.json`` and the sweep plot
``docs/images/threshold_sweep_<model>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from emseg.pipeline.config import from_dict

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULTS = Path(__file__).parent / "results"
VALIDATION = {"start": [170, 0, 0], "stop": [250, 250, 250]}
KEYS = ("voi_split", "voi_merge", "adapted_rand_error", "f1")
GOOGLE = {"voi_split": 0.92, "voi_merge": 0.91, "adapted_rand_error": 0.158, "note": "published, whole sample"}


def _config(backend: dict[str, Any], out: Path, block: list[int], halo: list[int], workers: int | str,
            roi: dict | None = VALIDATION, threshold: float | None = None, scope: str = "auto") -> Any:
    """A run's config; ``workers``: the local cluster's worker count, or the address of a running
    scheduler (str)."""
    return from_dict({
        "input": f"zarr://{DATA}/raw",
        "output": str(out),
        "backend": backend,
        "blocks": {"shape": block, "halo": halo},
        "write": {"chunk_shape": [64, 64, 64]},
        "cluster": {"address": workers} if isinstance(workers, str) else {"workers": workers},
        "roi": roi,
        "agglomeration": {"threshold": threshold, "scope": scope},
        "postprocess": None,
    })


def _halo(backend: dict[str, Any]) -> list[int]:
    from emseg.pipeline import backends

    b = backends.create(backend["name"], backends.validate_params(backend["name"], {k: v for k, v in backend.items() if k != "name"}))
    return [c + 1 for c in b.context_zyx], b.default_threshold


def _model_seconds(out: Path, n_blocks: int, key: str = "model_seconds") -> float:
    from emseg.pipeline import stages
    from emseg.pipeline.io.scratch import Scratch

    s = Scratch(str(out))
    return sum((s.done_info(stages.SEGMENT, i) or {}).get(key, 0.0) for i in range(n_blocks))


def _scores(seg: str, gt: str, **kw: Any) -> dict[str, float]:
    from emseg.tasks.commands.evaluate import evaluate

    s = evaluate(seg, gt, **kw)
    return {k: round(float(s[k]), 4) for k in KEYS if k in s}


def _speed(run: dict[str, Any], out: Path) -> dict[str, float]:
    """Model and outside-the-model seconds of a run's stages 1-4, wall (task seconds: inflated by
    other load on the machine) and CPU (each worker process's CPU time during its tasks: one thread
    per worker, so this is the work itself). "Per core" rates divide by CPU seconds."""
    voxels = 1
    for a, b in zip(run["roi"]["start"], run["roi"]["stop"]):
        voxels *= b - a
    stages = run["stages"]
    model = _model_seconds(out, run["blocks"]["total"])
    model_cpu = _model_seconds(out, run["blocks"]["total"], "model_cpu_seconds")
    outside = sum(stages[s]["task_seconds"] for s in stages) - model
    outside_cpu = sum(stages[s]["task_cpu_seconds"] for s in stages) - model_cpu
    return {"voxels": voxels, "model_task_seconds": round(model, 2), "model_cpu_seconds": round(model_cpu, 2),
            "other_task_seconds": round(outside, 2), "other_cpu_seconds": round(outside_cpu, 2),
            "model_voxels_per_cpu_s": round(voxels / max(model_cpu, 1e-9)),
            "other_mvoxel_per_s_per_core": round(voxels / 1e6 / max(outside_cpu, 1e-9), 2),
            "wall_seconds": round(run["wall_seconds"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="forest", choices=["forest", "unet"])
    ap.add_argument("--weights", default="bundled")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--skip-watershed", action="store_true")
    ap.add_argument("--skip-whole", action="store_true", help="skip the end-to-end 250³ run")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs {DATA}")
    backend = {"name": "affinities", "model": {"kind": args.model, "weights": args.weights}}
    halo, default_t = _halo(backend)
    gt = f"zarr://{DATA}/labels"
    work = Path(tempfile.mkdtemp(prefix="emseg-aff-"))
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_start": list(os.getloadavg()),
                           "model": args.model, "weights": args.weights, "halo": halo,
                           "default_threshold": default_t, "workers": args.workers,
                           "machine": f"{platform.processor() or platform.machine()}, {args.workers} worker processes"}
    stack = contextlib.ExitStack()
    try:
        runs: dict[str, dict[str, Any]] = {}
        from emseg.pipeline import stages
        from emseg.tasks.driver.run import segment

        # The measured runs share one local cluster, as a lab's long-running cluster would: each
        # worker process loads numba's cached kernels (about 0.5 CPU-s, most of it numba importing
        # cffi's C parser) and the model once, in the warm-up run, instead of in every measured
        # run's first tasks. The first process to use the kernels also compiles them into numba's
        # disk cache (a few CPU-s, docs/agglomeration.md). The end-to-end run below starts a cluster
        # of its own and so includes all of it. The cluster is the one a run starts (emseg's worker
        # settings: a LocalCluster of Dask's defaults sets MALLOC_TRIM_THRESHOLD_, which made the
        # forest 30 % slower here; tasks/driver/cluster.py).
        from emseg.pipeline.config import ClusterConfig
        from emseg.tasks.driver.cluster import connect

        address = stack.enter_context(connect(ClusterConfig(workers=args.workers))).scheduler.address
        warm = work / "warm_up"
        t = time.perf_counter()
        # 1 x 2 x 2 blocks: every worker gets blocks of its own, and the seams' kernels run too (one
        # 64³ block, used before, left the other worker and the seams to the first measured run)
        run = segment(_config(backend, warm, [64] * 3, halo, address,
                              roi={"start": [170, 0, 0], "stop": [234, 128, 128]}), restart=True, progress=False)
        res["warm_up"] = {"voxels": 64 * 128 * 128, "blocks": run["blocks"]["total"],
                          "seconds": round(time.perf_counter() - t, 1),
                          "task_cpu_seconds": round(sum(v["task_cpu_seconds"] for v in run["stages"].values()), 2)}
        shutil.rmtree(warm, ignore_errors=True)
        for name, block, scope in (("64", [64] * 3, "global"), ("128", [128] * 3, "global"),
                                   ("one block", [128, 256, 256], "global"), ("64 blockwise", [64] * 3, "blockwise")):
            out = work / name.replace(" ", "_")
            t = time.perf_counter()
            run = segment(_config(backend, out, block, halo, address, scope=scope), restart=True, progress=False)
            runs[name] = {"segments": run["segments"], "blocks": run["blocks"]["total"],
                          "seconds": round(time.perf_counter() - t, 1), "speed": _speed(run, out),
                          "vs_groundtruth": _scores(f"precomputed://{out}/segmentation", gt)}
            print(f"{_label(name)}: {runs[name]}", flush=True)
        seg = {k: f"precomputed://{work / k.replace(' ', '_')}/segmentation" for k in runs}
        res["runs"] = runs
        res["block_invariance"] = {}
        for k in ("64", "128", "64 blockwise"):
            d = _scores(seg[k], seg["one block"], ignore_gt_zero=False)
            res["block_invariance"][f"{k} vs one block"] = {**d, "voi": round(d["voi_split"] + d["voi_merge"], 4)}
        # threshold sweep on the 128³ output: union-find and relabel only
        sweep = []
        for t in [float(v) for v in args.thresholds.split(",")]:
            run = segment(_config(backend, work / "128", [128] * 3, halo, address, threshold=t, scope="global"),
                          progress=False)
            assert run["stages"][stages.SEGMENT]["ran"] == 0, "a threshold change must not rerun inference"
            s = _scores(seg["128"], gt)
            sweep.append({"threshold": t, "segments": run["segments"], **s})
            print(f"threshold {t:.2f}: {sweep[-1]}", flush=True)
        res["sweep"] = sweep
        if not args.skip_watershed:
            out = work / "watershed"
            run = segment(_config({"name": "watershed"}, out, [128] * 3, [16] * 3, address), restart=True,
                          progress=False)
            res["watershed"] = {"segments": run["segments"], "wall_seconds": round(run["wall_seconds"], 1),
                                **_scores(f"precomputed://{out}/segmentation", gt)}
        ffn = json.loads((RESULTS / "ffn_validation.json").read_text())["backends"]["ffn"]["all_bodies"]
        res["ffn_recorded"] = {k: ffn[k] for k in ("voi_split", "voi_merge", "adapted_rand_error")}
        res["google_ffn_published"] = GOOGLE
        stack.close()  # the shared cluster: the end-to-end run starts its own
        if not args.skip_whole:
            out = work / "whole"
            t = time.perf_counter()
            run = segment(_config(backend, out, [128] * 3, halo, args.workers, roi=None), restart=True, progress=False)
            res["whole_250"] = {"seconds_with_cluster_start": round(time.perf_counter() - t, 1),
                                "speed": _speed(run, out), "segments": run["segments"]}
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    res["load_average_end"] = list(os.getloadavg())
    _print(res)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"affinities_{args.model}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")
    _plot(res, REPO / "docs" / "images" / f"threshold_sweep_{args.model}.png")


def _label(run: str) -> str:
    """``"64"`` -> ``"64³ blocks"``, ``"64 blockwise"`` -> ``"64³ blocks, blockwise"``, ``"one block"`` as it is."""
    size, _, rest = run.partition(" ")
    return f"{size}³ blocks" + (f", {rest}" if rest else "") if size.isdigit() else run


def _print(res: dict[str, Any]) -> None:
    print(f"\nFIB-25 validation part (z >= 170), affinities backend, model {res['model']} ({res['weights']}), "
          f"halo {res['halo']}, default threshold {res['default_threshold']}")
    print(f"{'':<46} {'VOI split':>9} {'VOI merge':>9} {'VOI sum':>8} {'ARand':>7}")
    rows = [(f"{res['model']} + agglomeration, {_label(k)}", r["vs_groundtruth"]) for k, r in res["runs"].items()]
    if "watershed" in res:
        rows.append(("watershed, 128³ blocks", res["watershed"]))
    rows += [("bundled ffn (recorded)", res["ffn_recorded"]), ("Google FFN (published, whole)", res["google_ffn_published"])]
    for name, s in rows:
        print(f"{name:<46} {s['voi_split']:9.3f} {s['voi_merge']:9.3f} {s['voi_split'] + s['voi_merge']:8.3f} "
              f"{s['adapted_rand_error']:7.3f}")
    print("\nblock invariance (VOI between results):")
    for k, d in res["block_invariance"].items():
        print(f"  {k:<20} VOI {d['voi']:.4f} (split {d['voi_split']:.4f}, merge {d['voi_merge']:.4f})")
    print("\nspeed:")
    for k, r in res["runs"].items():
        print(f"  {_label(k)}: {r['speed']}")
    if "whole_250" in res:
        w = res["whole_250"]
        print(f"  whole 250³ in 128³ blocks: {w['speed']['voxels'] / 1e6 / w['seconds_with_cluster_start']:.2f} "
              f"Mvoxel/s end to end ({w['seconds_with_cluster_start']} s with cluster start)")


def _plot(res: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    xs = [s["voi_merge"] for s in res["sweep"]]
    ys = [s["voi_split"] for s in res["sweep"]]
    ax.plot(xs, ys, "o-", label=f"{res['model']} + agglomeration")
    for s in res["sweep"]:
        ax.annotate(f"{s['threshold']:.1f}", (s["voi_merge"], s["voi_split"]), fontsize=7)
    for name, d, m in (("watershed", res.get("watershed"), "s"), ("bundled ffn", res["ffn_recorded"], "^"),
                       ("Google FFN", res["google_ffn_published"], "*")):
        if d:
            ax.plot([d["voi_merge"]], [d["voi_split"]], m, label=name)
    ax.set_xlabel("VOI merge")
    ax.set_ylabel("VOI split")
    ax.set_title("FIB-25 z >= 170: threshold sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
