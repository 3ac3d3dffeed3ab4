"""Predicting first (``write.affinities``) against one pass, on FIB-25 with the bundled forest.

One pass: each block's stage 1 asks the model for its write box and the fragment context around it,
so neighbouring blocks classify their shared context twice or more. With ``write.affinities`` the
model classifies each write box once (``1-predict``), stores it, and stage 1 reads its write box and
context back. This runs the validation part of ``../shared/data/fib25_ts2.zarr/raw`` (z >= 170,
80 x 250 x 250 voxels) in 64³ and 128³ blocks, each way, on one warm local cluster, in alternating
rounds, and reports per run:

- the model's CPU seconds (one pass: stage 1's ``model_cpu_seconds``; predicting first: ``1-predict``'s
  task CPU seconds, reading and writing included) and everything else's, and the wall time;
- segments, VOI and adapted Rand against the ground truth, whether the segmentation is the one-pass
  one voxel for voxel, and the bytes of the stored affinities.

    python benchmarks/bench_predict_first.py [--rounds 2] [--workers 2]
    python benchmarks/bench_predict_first.py --whole    # the whole 250³ volume end to end, each way

Prints a table and writes ``benchmarks/results/predict_first.json`` (``--whole``:
``predict_first_whole.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULTS = Path(__file__).parent / "results"
VALIDATION = {"start": [170, 0, 0], "stop": [250, 250, 250]}
MODES = {"one pass": None, "predict first, float32": "float32", "predict first, uint8": "uint8"}


def _run(out: Path, block: int, affinities: str | None, address: str | None,
         roi: dict[str, Any] | None = VALIDATION) -> dict[str, Any]:
    """One run; ``address`` None starts a cluster of its own (2 workers), as ``emseg segment`` does."""
    from emseg.pipeline.config import from_dict
    from emseg.tasks.driver.run import segment

    return segment(from_dict({
        "input": f"zarr://{DATA}/raw", "output": str(out),
        "backend": {"name": "affinities", "model": {"kind": "forest", "weights": "bundled"}},
        "blocks": {"shape": [block] * 3, "halo": [24, 24, 24]},
        "write": {"chunk_shape": [64, 64, 64], "affinities": affinities},
        "cluster": {"address": address} if address else {"workers": 2}, "roi": roi, "postprocess": None,
    }), progress=False, restart=True)


def _whole(work: Path, res: dict[str, Any]) -> None:
    """The whole 250³ volume in 128³ blocks, each way, each on a cluster of its own (its start
    included in ``seconds_with_cluster_start``), as ``emseg segment configs/fib25_local.yaml`` runs."""
    from emseg.tasks.commands.evaluate import evaluate

    rows = res.setdefault("whole_250", {})
    for name, affinities in (("one pass", None), ("predict first, float32", "float32")):
        out = work / f"whole-{affinities}"
        t = time.perf_counter()
        run = _run(out, 128, affinities, None, roi=None)
        row = {"seconds_with_cluster_start": round(time.perf_counter() - t, 1), **_measure(run, out)}
        s = evaluate(f"precomputed://{out}/segmentation", f"zarr://{DATA}/labels")
        row.update({k: round(float(s[k]), 4) for k in ("voi_split", "voi_merge", "adapted_rand_error")})
        row["mvoxel_per_s_end_to_end"] = round(250 ** 3 / 1e6 / row["seconds_with_cluster_start"], 3)
        rows[name] = row
        print(f"whole 250³ {name:<24} {row['seconds_with_cluster_start']} s with the cluster's start, forest "
              f"{row['model_cpu_seconds']} CPU-s, the rest {row['other_cpu_seconds']}, {row['segments']} segments, "
              f"ARand {row['adapted_rand_error']}", flush=True)
    rows["predict first, float32"]["same_as_one_pass"] = bool(
        np.array_equal(read_output(work / "whole-float32"), read_output(work / "whole-None")))


def read_output(out: Path) -> np.ndarray:
    from emseg.pipeline.io.volume import open_volume

    vol = open_volume(f"precomputed://{out}/segmentation")
    return vol.read(vol.box)


def _measure(run: dict[str, Any], out: Path) -> dict[str, Any]:
    from emseg.pipeline import stages
    from emseg.pipeline.io.scratch import Scratch

    per = run["stages"]
    cpu = sum(s["task_cpu_seconds"] for s in per.values())
    if stages.PREDICT in per:
        model = per[stages.PREDICT]["task_cpu_seconds"]
    else:
        s = Scratch(str(out))
        model = sum((s.done_info(stages.SEGMENT, i) or {}).get("model_cpu_seconds", 0.0)
                    for i in range(run["blocks"]["total"]))
    stored = out / "affinities"
    nbytes = sum(f.stat().st_size for f in stored.rglob("*") if f.is_file()) if stored.exists() else 0
    return {"model_cpu_seconds": round(model, 2), "other_cpu_seconds": round(cpu - model, 2),
            "cpu_seconds": round(cpu, 2), "wall_seconds": round(run["wall_seconds"], 2),
            "segments": run["segments"], "affinities_bytes": nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--blocks", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--whole", action="store_true", help="only the whole 250³ volume end to end (writes predict_first_whole.json)")
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs {DATA}")
    from emseg.pipeline.config import ClusterConfig
    from emseg.tasks.driver.cluster import connect

    from emseg.tasks.commands.evaluate import evaluate

    work = Path(tempfile.mkdtemp(prefix="emseg-predict-first-"))
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_start": list(os.getloadavg()),
                           "machine": f"{platform.processor() or platform.machine()}, {args.workers} worker processes",
                           "roi": VALIDATION, "halo": [24, 24, 24], "rounds": {}}
    if args.whole:
        res.pop("rounds")
        res["roi"] = {"start": [0, 0, 0], "stop": [250, 250, 250]}  # the whole volume, in 128³ blocks
        try:
            _whole(work, res)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "predict_first_whole.json").write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {RESULTS / 'predict_first_whole.json'}")
        return
    try:
        # one cluster for all runs, started as a run starts its own (emseg's worker settings)
        with connect(ClusterConfig(workers=args.workers)) as client:
            address = client.scheduler.address
            _run(work / "warm", 64, None, address)  # numba kernels and the model, once per worker
            gt = f"zarr://{DATA}/labels"
            for r in range(args.rounds):
                for block in args.blocks:
                    modes = list(MODES.items()) if r % 2 == 0 else list(MODES.items())[::-1]
                    for name, affinities in modes:
                        out = work / f"b{block}-{affinities}"
                        run = _run(out, block, affinities, address)
                        row = _measure(run, out)
                        s = evaluate(f"precomputed://{out}/segmentation", gt)
                        row.update({k: round(float(s[k]), 4) for k in ("voi_split", "voi_merge", "adapted_rand_error")})
                        res["rounds"].setdefault(str(r), {}).setdefault(f"{block}", {})[name] = row
                        print(f"round {r} {block}³ {name:<24} model {row['model_cpu_seconds']:7.1f} CPU-s  "
                              f"other {row['other_cpu_seconds']:6.1f}  wall {row['wall_seconds']:6.1f} s  "
                              f"{row['segments']} segments  ARand {row['adapted_rand_error']:.4f}", flush=True)
                    one = read_output(work / f"b{block}-None")
                    for name, affinities in MODES.items():
                        if affinities:
                            same = bool(np.array_equal(read_output(work / f"b{block}-{affinities}"), one))
                            res["rounds"][str(r)][f"{block}"][name]["same_as_one_pass"] = same
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(res)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict_first.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {RESULTS / 'predict_first.json'}")


def _print(res: dict[str, Any]) -> None:
    print("\nmedian over rounds: CPU-s of the model / of the rest / wall s; segments; ARand; same as one pass")
    blocks = res["rounds"]["0"].keys()
    for block in blocks:
        base = None
        for name in MODES:
            rows = [res["rounds"][r][block][name] for r in res["rounds"]]
            med = {k: float(np.median([row[k] for row in rows])) for k in ("model_cpu_seconds", "other_cpu_seconds",
                                                                              "wall_seconds")}
            base = base or med
            ratio = med["model_cpu_seconds"] / base["model_cpu_seconds"]
            print(f"{block}³ {name:<24} {med['model_cpu_seconds']:7.1f} ({ratio:.2f}x) / {med['other_cpu_seconds']:5.1f} / "
                  f"{med['wall_seconds']:6.1f}; {rows[0]['segments']}; {rows[0]['adapted_rand_error']:.4f}; "
                  f"{rows[0].get('same_as_one_pass', '-')}; stored {rows[0]['affinities_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
