"""FFN benchmarks: inference speed (CPU here, GPU bf16 vs fp32 when there is one) and validation scores.

    python benchmarks/bench_ffn.py speed [--shape 64 128 128] [--threads 1]
        FFN inference on a crop of fib25_ts2's validation part: voxels/s and FOVs/s on this machine;
        on CUDA also bf16 against fp32 (speed, and VOI between the two outputs). Writes
        benchmarks/results/ffn_speed_<device>.json.

    python benchmarks/bench_ffn.py validate [--workers 1]
        `emseg segment configs/ffn_fib25.yaml` (roi = the validation part, z >= 170, scored with
        `emseg evaluate` against the ground truth) for the ffn backend and for watershed; writes
        benchmarks/results/ffn_validation.json with VOI split/merge and adapted Rand error, for all
        bodies and for bodies of 1000 voxels or more.

Run from the repository root, with ../shared/data/fib25_ts2.zarr beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULTS = ROOT / "benchmarks" / "results"
#: the validation part of fib25_ts2 (the bundled model trained on z < 150)
VAL_START = (170, 0, 0)
VAL_STOP = (250, 250, 250)
KEYS = ("voi_split", "voi_merge", "voi", "adapted_rand_error", "precision", "recall", "n_seg", "n_gt")


def _device_name(device: str) -> str:

    from emseg.pipeline.backends.device import describe

    return describe(device)


def _segment_timed(image: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    from emseg.pipeline import backends

    backend = backends.create("ffn", backends.validate_params("ffn", params))
    backend.segment(image[:20, :40, :40])  # load the model and warm up
    predictor = backend._predictor  # noqa: SLF001 - the benchmark reads its FOV counter
    fovs0 = predictor.fovs
    if getattr(predictor, "device", None) is not None and predictor.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    labels = backend.segment(image)
    seconds = time.perf_counter() - t0
    stats = backend.last_stats
    return labels, {
        "seconds": round(seconds, 3),
        "voxels_per_s": round(image.size / seconds, 1),
        "fovs": predictor.fovs - fovs0,
        "fovs_per_s": round((predictor.fovs - fovs0) / seconds, 1),
        "objects": stats.objects,
        "seeds_tried": stats.seeds_tried,
    }


def cmd_speed(args: argparse.Namespace) -> int:
    import torch

    from emseg.pipeline.quality.metrics import evaluate_arrays
    from emseg.pipeline.io.volume import open_volume

    torch.set_num_threads(args.threads)
    box_stop = tuple(s + n for s, n in zip(VAL_START, args.shape))
    from emseg.pipeline.geometry import Box

    image = open_volume(str(DATA / "raw")).read(Box(VAL_START, box_stop))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    import yaml

    # the backend keys of the validation config (step, thresholds...), on this device
    configured = dict(yaml.safe_load((ROOT / "configs" / "ffn_fib25.yaml").read_text())["backend"])
    configured.pop("name", None)
    base = {**configured, "checkpoint": args.checkpoint, "device": device, "threads": args.threads}
    if args.step is not None:
        base["step"] = args.step
    runs: dict[str, Any] = {}
    outputs: dict[str, np.ndarray] = {}
    precisions = ["fp32", "bf16"] if device == "cuda" or args.cpu_bf16 else ["fp32"]
    for precision in precisions:
        batches = args.batches or ([1, 8] if device == "cpu" else [1, 32])
        for batch in batches:
            name = f"{precision}_batch{batch}"
            labels, result = _segment_timed(image, {**base, "precision": precision, "batch_size": batch})
            runs[name] = result
            outputs[name] = labels
            print(name, json.dumps(result), flush=True)
    comparison = None
    pair = next((f"_batch{b}" for b in sorted({int(k.rsplit("batch", 1)[1]) for k in outputs})
                 if f"bf16_batch{b}" in outputs and f"fp32_batch{b}" in outputs), None)
    if pair is not None:
        bf16, fp32 = outputs["bf16" + pair], outputs["fp32" + pair]
        s = evaluate_arrays(bf16, fp32, ignore_gt_zero=False)
        comparison = {
            "batch": int(pair.removeprefix("_batch")),
            "voi_split": round(s["voi_split"], 4),
            "voi_merge": round(s["voi_merge"], 4),
            "voxels_differing": int((bf16 != fp32).sum()),
            "note": "bf16 output scored against the fp32 output as if it were ground truth",
        }
    from emseg.pipeline import backends

    ws = backends.create("watershed", backends.validate_params("watershed", {}))
    t0 = time.perf_counter()
    ws.segment(image)
    ws_seconds = time.perf_counter() - t0
    result = {
        "benchmark": "ffn inference, one block (backend.segment), fib25_ts2 validation crop",
        "crop": {"start": list(VAL_START), "shape": list(args.shape)},
        "checkpoint": args.checkpoint,
        "backend_params": {k: v for k, v in base.items() if k not in ("precision", "batch_size")},
        "device": _device_name(device),
        "torch": torch.__version__,
        "runs": runs,
        "bf16_vs_fp32": comparison,
        "watershed_seconds_same_crop": round(ws_seconds, 3),
        "gpu": "measured" if device == "cuda" else "not measured: no GPU was available to this run",
        "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine_cpus": os.cpu_count(),
        "reference": "google/ffn: about 7 min for 250^3 on one P100, about 37k voxels/s",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"ffn_speed_{device}{args.suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _emseg(*argv: str) -> None:
    cmd = [sys.executable, "-m", "emseg.tasks.cli", *argv]
    print("$ emseg " + " ".join(argv[0:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def cmd_validate(args: argparse.Namespace) -> int:
    from emseg.tasks.commands.evaluate import evaluate

    results: dict[str, Any] = {
        "data": "fib25_ts2, validation part z >= 170 (all y, x): voxels [170,0,0]..[250,250,250]",
        "training_part": "z < 150 (the bundled FFN never saw z >= 150)",
        "pipeline": "emseg segment configs/ffn_fib25.yaml (blocks 128^3, halo 8, Dask) then emseg evaluate",
        "reference": "google/ffn published segmentation of the whole sample: VOI 1.83 (split 0.92, merge 0.91), "
        "adapted Rand error 0.158",
        "backends": {},
    }
    backends_to_run = {"ffn": f"backend.checkpoint={args.checkpoint}", "watershed": "backend={name: watershed}"}
    for name in args.backends:
        output = ROOT / "runs" / f"ffn_validation_{name}"
        t0 = time.perf_counter()
        _emseg(
            "segment", "configs/ffn_fib25.yaml", "--restart", "--no-progress",
            "--set", backends_to_run[name], "--set", f"output={output}", "--set", f"cluster.workers={args.workers}",
        )
        seconds = time.perf_counter() - t0
        seg = str(output / "segmentation")
        scored = {}
        for label, min_size in (("all_bodies", 0), ("bodies_1000_voxels_or_more", 1000)):
            s = evaluate(f"precomputed://{seg}" if not seg.startswith("precomputed://") else seg,
                         str(DATA / "labels"), min_size=min_size)
            scored[label] = {k: (round(s[k], 4) if isinstance(s[k], float) else s[k]) for k in KEYS if k in s}
        run = json.loads((output / "run.json").read_text())
        results["backends"][name] = {"backend": run["config"]["backend"], "wall_seconds": round(seconds, 1),
                                     "segments": run.get("segments"), **scored}
        print(name, json.dumps(results["backends"][name]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "ffn_validation.json"
    if out.exists() and set(args.backends) != {"ffn", "watershed"}:
        previous = json.loads(out.read_text())
        results["backends"] = {**previous.get("backends", {}), **results["backends"]}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", default="bundled")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU")
    p.add_argument("--step", type=int, nargs=3, help="FOV step (default: configs/ffn_fib25.yaml's)")
    p.add_argument("--suffix", default="", help="appended to the result file's name")
    p.add_argument("--batches", type=int, nargs="+", help="objects flooded at once (default: 1 8 on CPU, 1 32 on CUDA)")
    p.set_defaults(func=cmd_speed)
    p = sub.add_parser("validate")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--checkpoint", default="bundled")
    p.add_argument("--backends", nargs="+", default=["ffn", "watershed"], choices=["ffn", "watershed"])
    p.set_defaults(func=cmd_validate)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
