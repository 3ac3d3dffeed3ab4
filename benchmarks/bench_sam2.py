"""Benchmark: batched SAM2 propagation against the stock per-object predictor loop.

For each object count, one block is prompted on its middle slice with one click per object, and the
objects are propagated forward and backward through every slice, twice on the same frames and
prompts with the same model: by :func:`emseg.pipeline.backends.sam2.propagate.propagate_batch` (objects in one
batch, image encoder once per frame) and by ``stock_propagate`` (tests/sam2_stock.py) (the stock
``SAM2VideoPredictor``, one object at a time). Both timings include the image encoder. Reported:
slices per second and object-slices per second, and the speed-up. A last row compares the masks of
a bf16 run with an fp32 run of the batched path (mean IoU over objects and slices).

Random weights unless ``--checkpoint`` is given (speed does not depend on the weights; the bf16 IoU
does, a little). Examples::

    nice -n 10 python benchmarks/bench_sam2.py --device cpu --image-size 256 --model sam2.1_hiera_t
    python benchmarks/bench_sam2.py --device cuda --image-size 1024 --model sam2.1_hiera_b+ \\
        --precision bf16 fp32 --frames 16

Results go to ``benchmarks/results/sam2_<device>_<model>_<size>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def device_name(device: str) -> str:
    """``"cpu: <model name>"`` or ``"cuda: <GPU name>"``."""
    import torch

    if device.startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {name}"


def block(frames: int, side: int, seed: int = 0) -> np.ndarray:
    """A noisy EM-like block: bright blobs, dark membranes (content does not change the speed)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(frames, side, side)), (1, 4, 4))
    image = np.where(np.abs(noise) < 0.02, 40.0, 190.0) + rng.normal(0, 8, noise.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def clicks(count: int, side: int) -> np.ndarray:
    """``count`` clicks on a jittered grid over the slice, (y, x)."""
    per_row = int(np.ceil(np.sqrt(count)))
    step = side / per_row
    grid = [(int((i + 0.5) * step), int((j + 0.5) * step)) for i in range(per_row) for j in range(per_row)]
    return np.array(grid[:count], dtype=np.int64)


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(predictor: Any, image: np.ndarray, points: np.ndarray, path: str, device: str,
        bf16: bool, batch_size: int) -> tuple[float, float, dict[tuple[int, int], np.ndarray]]:
    """Time one propagation: wall seconds, process CPU seconds, masks (object, slice) -> bool."""
    import torch

    from emseg.pipeline.backends.sam2.frames import FrameFeatures
    from emseg.pipeline.backends.sam2.propagate import propagate_batch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference lives with the tests
    from tests.sam2_stock import stock_propagate

    masks: dict[tuple[int, int], np.ndarray] = {}

    def sink_for(offset: int) -> Any:
        def sink(frame: int, rows: np.ndarray, logits: Any, scores: Any) -> None:
            binary = (logits > 0).cpu().numpy()
            for row, mask in zip(rows, binary):
                masks[(offset + int(row), frame)] = mask

        return sink

    frame = image.shape[0] // 2
    synchronise(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode(), torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, enabled=bf16
    ):
        if path == "batched":
            features = FrameFeatures(predictor, image)
            for start in range(0, len(points), batch_size):
                chunk = points[start : start + batch_size]
                propagate_batch(predictor, features, frame, chunk, sink_for(start))
        else:
            stock_propagate(predictor, image, frame, points, sink_for(0))
    synchronise(device)
    return time.perf_counter() - wall, time.process_time() - cpu, masks


def leaf_ops(predictor: Any, image: np.ndarray, points: np.ndarray, path: str, device: str,
             batch_size: int) -> int:
    """Leaf aten operations of one propagation: about the kernel launches on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(predictor, image, points, path, device, False, batch_size)
    return sum(
        1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children
    )


def mean_iou(a: dict, b: dict) -> tuple[float, float]:
    ious = []
    for key in a:
        union = (a[key] | b[key]).sum()
        ious.append(1.0 if union == 0 else (a[key] & b[key]).sum() / union)
    return float(np.mean(ious)), float(np.min(ious))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--checkpoint", help="weights to load (default: random weights)")
    parser.add_argument("--frames", type=int, default=8, help="slices in the block")
    parser.add_argument("--side", type=int, default=128, help="block side in y and x (voxels)")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--iou-objects", type=int, default=16, help="objects for bf16 vs fp32")
    parser.add_argument("--ops-objects", type=int, nargs="*", default=[1, 16],
                        help="object counts whose operations are counted (profiler, untimed)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="objects per batch (0: the backend's default for the device)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/sam2_<...>.json)")
    args = parser.parse_args(argv)

    import torch

    import sam2  # noqa: F401  (version below)
    from emseg.pipeline.backends.sam2.weights import get_predictor

    from emseg.pipeline.backends.sam2.propagate import default_batch_size

    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or default_batch_size(torch.device(args.device).type)
    predictor = get_predictor(
        args.model, args.checkpoint, args.checkpoint is None, args.image_size, args.device
    )
    image = block(args.frames, args.side)
    run(predictor, image, clicks(2, args.side), "batched", args.device, False, 2)  # warm-up
    run(predictor, image, clicks(1, args.side), "stock", args.device, False, 1)

    # On a GPU the wall clock is the measure. On a CPU shared with other jobs it is not: there the
    # rates come from the process's CPU time (one thread: what the wall clock would be on an idle core).
    basis = "wall_s" if args.device.startswith("cuda") else "cpu_s"
    rows = []
    for precision in args.precision:
        for count in args.objects:
            points = clicks(count, args.side)
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.repeats):  # alternate the two paths; keep each one's best
                for path in ("batched", "stock"):
                    wall, cpu, _ = run(predictor, image, points, path, args.device,
                                       precision == "bf16", args.batch_size)
                    old = best.get(path)
                    if old is None or {"wall_s": wall, "cpu_s": cpu}[basis] < old[basis]:
                        best[path] = {"wall_s": wall, "cpu_s": cpu}
            row: dict[str, Any] = {"objects": count, "precision": precision}
            for path, t in best.items():
                row[path] = {
                    "wall_s": round(t["wall_s"], 3),
                    "cpu_s": round(t["cpu_s"], 3),
                    "slices_per_s": round(args.frames / t[basis], 3),
                    "object_slices_per_s": round(count * args.frames / t[basis], 2),
                }
            row["speedup"] = round(best["stock"][basis] / best["batched"][basis], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)

    operations = []
    for count in args.ops_objects:  # untimed runs under the profiler
        points = clicks(count, args.side)
        ops = {path: leaf_ops(predictor, image, points, path, args.device, args.batch_size)
               for path in ("batched", "stock")}
        operations.append({"objects": count, **ops,
                           "per_object_slice": {k: round(v / (count * args.frames), 1)
                                                for k, v in ops.items()}})
        print(json.dumps(operations[-1]), flush=True)

    points = clicks(args.iou_objects, args.side)
    *_, fp32 = run(predictor, image, points, "batched", args.device, False, args.batch_size)
    *_, bf16 = run(predictor, image, points, "batched", args.device, True, args.batch_size)
    mean, worst = mean_iou(fp32, bf16)
    result = {
        "benchmark": "sam2 batched propagation vs stock SAM2VideoPredictor loop",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "weights": args.checkpoint or "random",
        "image_size": args.image_size,
        "block_zyx": [args.frames, args.side, args.side],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rate_basis": basis,
        "definition": "one click per object on the middle slice, propagated forward and backward "
                      "through every slice; times include the image encoder; rates use rate_basis "
                      "(the best of the repeats); object_slices_per_s = objects * slices / seconds",
        "rows": rows,
        "leaf_ops": operations,
        "leaf_ops_definition": "aten operations with no child operation in one untimed fp32 run "
                               "(about the kernel launches a GPU would see)",
        "bf16_vs_fp32": {"objects": args.iou_objects, "mean_iou": round(mean, 4),
                         "min_iou": round(worst, 4)},
        "command": "python benchmarks/bench_sam2.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(result["bf16_vs_fp32"]))
    kind = "cpu" if args.device == "cpu" else "cuda"
    out = Path(args.out) if args.out else (
        REPO / "benchmarks" / "results"
        / f"sam2_{kind}_{args.model.replace('sam2.1_hiera_', '').replace('+', 'plus')}_{args.image_size}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
