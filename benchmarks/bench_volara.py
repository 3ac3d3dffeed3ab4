"""The peer, same work: volara against emseg on the same predicted affinities (FIB-25, 250³).

One run, one machine, the same number of workers, the same block shape:

1. Affinities: the bundled forest (``emseg.pipeline.backends.boundary.load_model("forest")``) predicts the whole of
   ``../shared/data/fib25_ts2.zarr/raw`` once, through the ``affinities`` backend's own intensity
   handling. (``--affinities standin``: affinities made from the ground truth, noised, for
   developing without a model.)
2. volara (PyPI, in its own venv ``.venv-volara``; see ``volara_runner.py``) stores them as a
   funlib zarr array and runs on it: ``ExtractFrags`` -> ``AffAgglom`` -> ``GraphMWS`` -> ``Relabel``
   on a local daisy run with ``--workers`` worker processes, with the parameters of volara's
   tutorial for nearest-neighbour affinities (bias -0.5, context 2). Its graph bias is swept; each
   bias reruns ``GraphMWS`` and ``Relabel`` only.
3. emseg: ``emseg.tasks.driver.run.segment`` with backend ``affinities``, ``model.kind: stored`` reading
   the very array volara read, end to end on a local Dask cluster of ``--workers`` processes x 1
   thread (halo = ``fragment_context``, 16); the threshold is swept by rerunning stages 3-4.

Both are scored on the validation part (z >= 170) with ``emseg.pipeline.quality.metrics`` as ``emseg evaluate``
does (label 0 of the ground truth ignored): VOI split / merge and adapted Rand error at each tool's
default and at its best threshold. emseg's threshold ``t`` merges edges whose score ``1 - mean
affinity`` is <= t; volara's graph bias ``b`` merges edges whose ``mean affinity + b`` is > 0, so
``b = t - 1`` is the same cut of the same statistic.

Speed is of fragments + agglomeration + relabel, without the model: emseg's stage-1 seconds minus
its ``model_seconds`` (reading the image and the stored affinities) plus stages 2-4; volara's blocks'
seconds minus ``ExtractFrags``' affinity read (its ``AffAgglom`` reads the affinities again; that
stays in).
Both are summed over blocks (worker-seconds) and also given as wall time.

    python benchmarks/bench_volara.py [--block 64] [--workers 2] [--affinities forest|standin]

Prints a table and writes ``benchmarks/results/volara.json`` (``volara_standin.json`` for the
stand-in). Needs ``.venv-volara`` (``python -m venv .venv-volara && .venv-volara/bin/pip install
volara zarr``); never install volara into emseg's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: the data lie beside the repository (``../shared/data``); FIB25 overrides, e.g. from a worktree
DATA = Path(os.environ.get("FIB25", REPO.parent / "shared" / "data" / "fib25_ts2.zarr"))
RESULTS = Path(__file__).parent / "results"
VOLARA_PY = REPO / ".venv-volara" / "bin" / "python"
VAL_Z = 170
THRESHOLDS = (0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)
VOLARA_DEFAULT_BIAS = -0.5  # volara's tutorial for nearest-neighbour affinities (fragments and graph)
KEYS = ("voi_split", "voi_merge", "adapted_rand_error")


def load_volume() -> tuple[np.ndarray, np.ndarray]:
    import zarr

    z = zarr.open_group(str(DATA), mode="r")
    return np.asarray(z["raw"][:]), np.asarray(z["labels"][:])


def standin_affinities(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Ground-truth affinities mapped to 0.1 / 0.9, plus Gaussian noise (sd 0.15), clipped to [0, 1]."""
    from emseg.pipeline.stitching.agglomeration import affinities_from_labels

    affs = 0.1 + 0.8 * affinities_from_labels(labels)
    affs += np.random.default_rng(seed).normal(0.0, 0.15, affs.shape).astype(np.float32)
    return np.clip(affs, 0.0, 1.0).astype(np.float32)


def forest_affinities(raw: np.ndarray, weights: str) -> tuple[np.ndarray, float, tuple[int, int, int], float]:
    """The whole volume through the affinities backend once: (affs, seconds, context, default threshold)."""
    from emseg.pipeline.backends.affinities import Backend, Params

    backend = Backend(Params(model={"kind": "forest", "weights": weights}))
    t = time.perf_counter()
    affs, _ = backend.affinities(raw)
    return affs, time.perf_counter() - t, backend.context_zyx, backend.default_threshold


def score(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """``emseg evaluate``'s scores of one segmentation on the validation part (gt label 0 ignored)."""
    from emseg.pipeline.quality.metrics import evaluate_arrays

    r = evaluate_arrays(seg[VAL_Z:], gt[VAL_Z:], ignore_gt_zero=True)
    big = evaluate_arrays(seg[VAL_Z:], gt[VAL_Z:], ignore_gt_zero=True, min_size=1000)
    out = {k: round(float(r[k]), 4) for k in KEYS}
    out.update({f"{k}_ge1000": round(float(big[k]), 4) for k in KEYS})
    return out


def run_volara(affs_path: Path, work: Path, block: int, workers: int, biases: list[float],
               frag_bias: float = VOLARA_DEFAULT_BIAS) -> dict[str, Any]:
    if not VOLARA_PY.exists():
        sys.exit(f"bench_volara: {VOLARA_PY} is missing; make it with `python -m venv .venv-volara && "
                 ".venv-volara/bin/pip install volara zarr`")
    args = {
        "work": str(work), "affs": str(affs_path), "voxel_size": [10, 10, 10], "block": [block] * 3,
        "workers": workers, "frag_bias": [frag_bias] * 3, "context": [2, 2, 2],
        "remove_debris": 0, "graph_biases": biases,
    }
    t = time.perf_counter()
    proc = subprocess.run([str(VOLARA_PY), str(Path(__file__).parent / "volara_runner.py"), json.dumps(args)],
                          cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_volara: volara failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads((work / "volara.json").read_text())
    result["subprocess_seconds"] = round(time.perf_counter() - t, 3)
    result["parameters"] = {k: v for k, v in args.items() if k not in ("work", "affs")}
    return result


def read_zarr(path: str) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_array(path, mode="r")[:])


def volara_speed(v: dict[str, Any], voxels: int) -> dict[str, Any]:
    ops = v["operation_seconds"]
    tasks = ("extract-frags", "aff-agglom", "lut_0-graph-mws", "segments_0-relabel")
    blocks = sum(s for k, s in ops.items() if k.endswith("/ Process Block") and any(t in k for t in tasks))
    setup = sum(s for k, s in ops.items() if k.endswith("/ Process Block Setup") and any(t in k for t in tasks))
    work = blocks + setup - v["read_affs_seconds"]
    wall = sum(v["task_wall_seconds"].values())
    return {
        "worker_seconds": round(work, 2),
        "worker_seconds_note": "Process Block + Process Block Setup of the four tasks, minus ExtractFrags' Read Affs",
        "mvoxel_per_worker_second": round(voxels / work / 1e6, 3),
        "wall_seconds": round(wall, 2),
        "wall_seconds_without_affinity_read": round(wall - v["read_affs_seconds"] / v["workers"], 2),
        "mvoxel_per_second_wall": round(voxels / (wall - v["read_affs_seconds"] / v["workers"]) / 1e6, 3),
    }


def run_emseg(work: Path, block: int, halo: int, address: str, affs_url: str, default_t: float) -> dict[str, Any]:
    from emseg.pipeline.config import from_dict
    from emseg.pipeline.io.scratch import Scratch
    from emseg.pipeline.io.volume import open_volume
    from emseg.tasks.driver.run import segment

    def config(threshold: float) -> Any:
        return from_dict({
            "input": f"zarr://{DATA}/raw",
            "output": str(work / "emseg"),
            "backend": {"name": "affinities", "model": {"kind": "stored", "affinities": affs_url}},
            "blocks": {"shape": [block] * 3, "halo": [halo] * 3},
            "write": {"chunk_shape": [64, 64, 64]},
            "cluster": {"address": address},
            "agglomeration": {"threshold": threshold},
            "postprocess": None,
        })

    t = time.perf_counter()
    run = segment(config(default_t), restart=True, progress=False)
    wall = time.perf_counter() - t
    scratch = Scratch(str(work / "emseg"))
    infos = [scratch.done_info("1-segment", b) or {} for b in range(run["blocks"]["total"])]
    model = sum(float(i.get("model_seconds", 0.0)) for i in infos)
    stages = run["stages"]
    task = {s: stages[s]["task_seconds"] for s in stages}
    work_s = task["1-segment"] - model + task["2-seams"] + task["3-unionfind"] + task["4-relabel"]
    threshold = run["config"]["agglomeration"]["threshold"]
    seg_url = f"precomputed://{work / 'emseg'}/segmentation"

    def read() -> np.ndarray:
        vol = open_volume(seg_url)
        return vol.read(vol.box)

    segs = {"default": read()}
    sweep_seconds = {}
    for t_ in THRESHOLDS:
        t0 = time.perf_counter()
        segment(config(t_), progress=False)
        sweep_seconds[str(t_)] = round(time.perf_counter() - t0, 2)
        segs[str(t_)] = read()
    return {
        "run": {"wall_seconds": round(wall, 2), "run_json_wall_seconds": run["wall_seconds"],
                "stages": stages, "segments": run["segments"], "blocks": run["blocks"],
                "default_threshold": threshold},
        "model_seconds": round(model, 2),
        "worker_seconds": round(work_s, 2),
        "rerun_seconds": sweep_seconds,
        "segmentations": segs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--affinities", choices=("forest", "standin"), default="forest")
    ap.add_argument("--weights", default="bundled", help="the forest: 'bundled' or a path (model.weights)")
    ap.add_argument("--affinities-file", type=Path, default=None,
                    help="forest affinities of the whole volume saved earlier (.npy, (3, z, y, x) float32, made "
                         "by the same backend call as --affinities forest) instead of predicting them again")
    ap.add_argument("--frag-biases", type=float, nargs="*", default=[],
                    help="volara: also score fragments made with these ExtractFrags biases (accuracy only)")
    a = ap.parse_args()

    raw, gt = load_volume()
    voxels = int(raw.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_volara_"))
    out: dict[str, Any] = {
        "command": "python benchmarks/bench_volara.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "volume": {"data": "fib25_ts2.zarr", "shape_zyx": list(raw.shape), "voxel_size_nm": [10, 10, 10],
                   "validation": f"z >= {VAL_Z}, ground-truth label 0 ignored"},
        "block": a.block, "workers": a.workers, "affinities": a.affinities,
    }
    try:
        # 1. affinities, once
        if a.affinities == "forest" and a.affinities_file is not None:
            from emseg.pipeline.backends.affinities import Backend, Params

            backend = Backend(Params(model={"kind": "forest", "weights": a.weights}))
            affs = np.load(a.affinities_file)
            if affs.shape != (3, *raw.shape) or affs.dtype != np.float32:
                sys.exit(f"bench_volara: {a.affinities_file} holds {affs.dtype} {affs.shape}, not float32 {(3, *raw.shape)}")
            context, default_t = backend.context_zyx, backend.default_threshold
            out["affinities_info"] = {"model": f"forest, weights {a.weights}", "predicted_earlier": str(a.affinities_file),
                                      "context_zyx": list(context), "default_threshold": default_t}
        elif a.affinities == "forest":
            affs, model_s, context, default_t = forest_affinities(raw, a.weights)
            out["affinities_info"] = {"model": f"forest, weights {a.weights}", "predict_seconds_whole_volume": round(model_s, 2),
                                      "context_zyx": list(context), "default_threshold": default_t}
        else:
            affs = standin_affinities(gt)
            context, default_t = (0, 0, 0), 0.5
            out["affinities_info"] = {"model": "stand-in: ground-truth affinities as 0.1 / 0.9, noise sd 0.15"}
        affs_path = tmp / "affs.npy"
        np.save(affs_path, affs)

        # 2. volara, same affinities
        biases = [VOLARA_DEFAULT_BIAS] + [round(t - 1.0, 3) for t in THRESHOLDS if round(t - 1.0, 3) != VOLARA_DEFAULT_BIAS]
        (tmp / "volara").mkdir()
        v = run_volara(affs_path, tmp / "volara", a.block, a.workers, biases)
        vol_scores = {b: score(read_zarr(p), gt) for b, p in v["segmentations"].items()}
        best_b = min(vol_scores, key=lambda b: vol_scores[b]["voi_split"] + vol_scores[b]["voi_merge"])
        out["volara"] = {
            "versions": v["versions"], "parameters": v["parameters"], "fragments": v["fragments"],
            "edges": v["edges"], "task_wall_seconds": v["task_wall_seconds"],
            "read_affs_seconds": v["read_affs_seconds"],
            "read_affs_frags_graph_seconds": v["read_affs_frags_graph_seconds"],
            "operation_seconds": v["operation_seconds"],
            "speed": volara_speed(v, voxels),
            "default": {"graph_bias": VOLARA_DEFAULT_BIAS, **vol_scores[str(VOLARA_DEFAULT_BIAS)]},
            "best": {"graph_bias": float(best_b), **vol_scores[best_b]},
            "sweep": {b: vol_scores[b] for b in vol_scores},
        }
        # fragments at other biases: volara's fragments already merge what its bias joins, so a graph
        # bias below the fragment bias cannot split them; these runs let the fragments split more
        for fb in a.frag_biases:
            wdir = tmp / f"volara_frag{fb}"
            wdir.mkdir()
            ex = run_volara(affs_path, wdir, a.block, a.workers, [round(t - 1.0, 3) for t in THRESHOLDS], fb)
            ex_scores = {b: score(read_zarr(p), gt) for b, p in ex["segmentations"].items()}
            best = min(ex_scores, key=lambda b: ex_scores[b]["voi_split"] + ex_scores[b]["voi_merge"])
            out["volara"].setdefault("fragment_bias_sweep", {})[str(fb)] = {
                "fragments": ex["fragments"], "edges": ex["edges"],
                "best": {"graph_bias": float(best), **ex_scores[best]}, "sweep": ex_scores}
            shutil.rmtree(wdir, ignore_errors=True)

        # 3. emseg on the array volara read (zarr v2 or v3, as funlib wrote it), same block, same workers
        from emseg.pipeline.config import ClusterConfig
        from emseg.tasks.driver.cluster import connect

        store = tmp / "volara" / "volara.zarr" / "affs"
        affs_url = f"{'zarr3' if (store / 'zarr.json').exists() else 'zarr'}://{store}"
        halo = 16  # the fragment context: a stored affinity needs no image context
        # the cluster a run starts, with emseg's worker settings (tasks/driver/cluster.py)
        with connect(ClusterConfig(workers=a.workers)) as client:
            e = run_emseg(tmp, a.block, halo, client.scheduler.address, affs_url, default_t)
        segs = e.pop("segmentations")
        em_scores = {k: score(s, gt) for k, s in segs.items()}
        sweep = {k: em_scores[k] for k in em_scores if k != "default"}
        best_t = min(sweep, key=lambda k: sweep[k]["voi_split"] + sweep[k]["voi_merge"])
        wall = e["run"]["run_json_wall_seconds"]  # stages overlap in the graph: the run's own wall time
        wall_wo = wall - e["model_seconds"] / a.workers
        out["emseg"] = {
            **e, "halo": halo, "affinities": "model.kind stored: " + affs_url.replace(str(tmp), "<tmp>"),
            "speed": {
                "worker_seconds": e["worker_seconds"],
                "worker_seconds_note": "stage task seconds, minus stage 1's model_seconds (reading the image "
                                       "and the stored affinities)",
                "mvoxel_per_worker_second": round(voxels / e["worker_seconds"] / 1e6, 3),
                "wall_seconds": round(wall, 2),
                "wall_seconds_without_model": round(wall_wo, 2),
                "mvoxel_per_second_wall": round(voxels / wall_wo / 1e6, 3),
            },
            "default": {"threshold": e["run"]["default_threshold"], **em_scores["default"]},
            "best": {"threshold": float(best_t), **sweep[best_t]},
            "sweep": sweep,
        }
        out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(exist_ok=True)
    name = "volara.json" if a.affinities == "forest" else "volara_standin.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)


def print_table(out: dict[str, Any]) -> None:
    print(f"FIB-25 250³, {out['affinities']} affinities, block {out['block']}³, {out['workers']} workers; "
          f"validation z >= {VAL_Z}; load {out['machine']['load_average_start']}")
    print(f"{'tool':<28} {'at':<16} {'VOI split':>9} {'VOI merge':>9} {'ARAND':>7}")
    rows = []
    if "emseg" in out:
        e = out["emseg"]
        rows += [("emseg (fragments + agglomeration)", f"t={e['default']['threshold']} default", e["default"]),
                 ("", f"t={e['best']['threshold']} best", e["best"])]
    v = out["volara"]
    rows += [("volara (mws + graph mws)", f"b={v['default']['graph_bias']} default", v["default"]),
             ("", f"b={v['best']['graph_bias']} best", v["best"])]
    for fb, ex in v.get("fragment_bias_sweep", {}).items():
        rows.append((f"  fragments at bias {fb}", f"b={ex['best']['graph_bias']} best", ex["best"]))
    for tool, at, s in rows:
        print(f"{tool:<28} {at:<16} {s['voi_split']:>9.3f} {s['voi_merge']:>9.3f} {s['adapted_rand_error']:>7.3f}")
    print(f"{'speed (no model)':<28} {'worker-s':>10} {'Mvox/worker-s':>14} {'wall s':>8} {'Mvox/s wall':>12}")
    for tool in ("emseg", "volara"):
        if tool in out:
            s = out[tool]["speed"]
            w = s.get("wall_seconds_without_model", s.get("wall_seconds_without_affinity_read"))
            print(f"{tool:<28} {s['worker_seconds']:>10.1f} {s['mvoxel_per_worker_second']:>14.3f} {w:>8.1f} "
                  f"{s['mvoxel_per_second_wall']:>12.3f}")


if __name__ == "__main__":
    main()
