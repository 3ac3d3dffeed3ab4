"""Tune the ``watershed`` backend on FIB-25: a few settings, each scored against the ground truth.

Segments ``../shared/data/fib25_ts2.zarr/raw`` (250³, 10 nm) whole, in memory, with each setting
below (the backend's defaults plus overrides), and scores it with ``emseg.pipeline.quality.metrics`` against
``labels`` (ground-truth 0 ignored), for all bodies and for bodies of at least 1000 voxels.
VOI is in bits. For scale, Google's FFN scores VOI split 0.92 + merge 0.91, adapted Rand error
0.158 on this volume.

    python benchmarks/tune_watershed.py [--crop 128] [--only NAME ...]

Prints a table and writes ``benchmarks/results/watershed_fib25.json`` (whole volume only; with
``--only``, the rows of the other settings are kept from the previous run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from emseg.pipeline.backends.watershed import Backend, Params
from emseg.pipeline.quality.metrics import Contingency, scores

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULT = Path(__file__).parent / "results" / "watershed_fib25.json"

#: name -> overrides of the backend's defaults (the first row is the defaults)
SETTINGS: dict[str, dict[str, Any]] = {
    "mixed map, q25 < 0.4, min_size 500 (default)": {},
    "  ... min_size 100": {"min_size": 100},
    "  ... min_size 1000": {"min_size": 1000},
    "  ... no agglomeration, min_size 100": {"merge_threshold": None, "min_size": 100},
    "  ... q25 < 0.45, min_size 100": {"merge_threshold": 0.45, "min_size": 100},
    "  ... q25 < 0.5, min_size 100": {"merge_threshold": 0.5, "min_size": 100},
    "  ... q10 < 0.45, min_size 100": {"merge_threshold": 0.45, "merge_quantile": 0.1, "min_size": 100},
    "  ... mean < 0.475, min_size 100": {"merge_threshold": 0.475, "merge_quantile": None,
                                          "min_size": 100},
    "intensity map, mean < 0.57, min_size 100": {
        "boundary": "intensity", "interior_threshold": 0.55, "merge_threshold": 0.57,
        "merge_quantile": None, "min_size": 100},
    "tophat map, mean < 0.55, min_size 100": {
        "boundary": "tophat", "interior_threshold": 0.3, "merge_threshold": 0.55,
        "merge_quantile": None, "min_size": 100},
}


def score(seg: np.ndarray, gt: np.ndarray) -> dict[str, dict[str, float]]:
    table = Contingency()
    table.add(seg, gt)
    out = {}
    for label, min_size in (("all", 0), ("ge1000", 1000)):
        s = scores(table, min_size=min_size)
        out[label] = {k: round(float(s[k]), 4) for k in
                      ("voi_split", "voi_merge", "voi", "adapted_rand_error", "f1", "mean_iou")}
        out[label].update(n_gt=s["n_gt"], n_seg=s["n_seg"], n_matched=s["n_matched"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=None, help="score only the first N³ voxels")
    parser.add_argument("--only", nargs="*", default=None, help="names of settings to run")
    args = parser.parse_args()

    raw = zarr.open(str(DATA / "raw"), mode="r")[:]
    gt = zarr.open(str(DATA / "labels"), mode="r")[:]
    if args.crop:
        raw, gt = raw[: args.crop, : args.crop, : args.crop], gt[: args.crop, : args.crop, : args.crop]

    rows = []
    for name, overrides in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        params = Params(**overrides)
        start, cpu = time.perf_counter(), time.process_time()
        seg = Backend(params).segment(raw)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        s = score(seg, gt)
        rows.append({"name": name, "overrides": overrides, "params": params.model_dump(),
                     "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                     "segments": int(seg.max()), **s})
        a, b = s["all"], s["ge1000"]
        print(f"{name:45s} {wall:6.1f}s {int(seg.max()):5d} seg | all: split {a['voi_split']:.3f} "
              f"merge {a['voi_merge']:.3f} voi {a['voi']:.3f} ARE {a['adapted_rand_error']:.3f} "
              f"F1 {a['f1']:.3f} | >=1000: voi {b['voi']:.3f} ARE {b['adapted_rand_error']:.3f} "
              f"F1 {b['f1']:.3f}", flush=True)

    if args.crop:
        return
    # Rows of settings not run this time are kept from the last run (if still in SETTINGS).
    if RESULT.exists():
        ran = {row["name"] for row in rows}
        old = json.loads(RESULT.read_text())["settings"]
        rows += [row for row in old if row["name"] in SETTINGS and row["name"] not in ran]
        rows.sort(key=lambda row: list(SETTINGS).index(row["name"]))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "data": "fib25_ts2.zarr (250^3, 10 nm), whole volume in one block",
        "metric_notes": "VOI in bits; ground-truth label 0 ignored; F1 of one-to-one matching at IoU 0.5",
        "reference_ffn": {"voi_split": 0.92, "voi_merge": 0.91, "adapted_rand_error": 0.158},
        "machine": {"python": platform.python_version(), "processor": platform.processor() or None,
                    "cpus": os.cpu_count()},
        "timing_note": "one thread; seconds are wall time, cpu_seconds process time (wall time "
                       "grows when the machine is shared)",
        "settings": rows,
    }, indent=1) + "\n")
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
