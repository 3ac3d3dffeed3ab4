"""Inside a large volume: fragments + agglomeration on stored affinities, through the engine.

FIB-25's forest affinities (the bundled forest on the whole 250³ sample, predicted once here or
read from ``--affinities-file``) are mirrored to an N³ volume (each axis reflected at every 250
voxels: 0..249, 249..0, 0..249, ...) and stored as a zarr array (c, z, y, x), float32, beside FIB-25's
image mirrored the same way. The engine then runs the ``affinities`` backend with ``model.kind:
stored`` on them (local Dask cluster with emseg's worker settings, warmed by a small run that loads
every kernel once; threshold 0.7, the forest's card) in ``--block`` blocks, once per scope.

Reported per scope: each stage's task CPU seconds; stage 1's ``model_cpu_seconds`` (reading the
image and the stored affinities); the CPU work outside it (fragments, region graphs, seam edges,
agglomeration, the enclosed and small rules, union-find, relabel and writing the segmentation) in
Mvoxel per CPU-second; the same for the inner blocks alone (:func:`inner_rate`: those with the whole
fragment context on every side, which a larger volume is mostly made of); segments; wall seconds.
With two scopes, the VOI between their results.
The mirrored affinities are not those of a real N³ volume (each mirror plane flips which neighbour
an affinity points to), so the segments measure work, not accuracy.

    python benchmarks/bench_large.py [--size 500] [--block 128] [--scopes global blockwise] [--workers 2]
                                     [--affinities-file F.npy]

Prints a table; merges one row per (size, block) into ``benchmarks/results/large.json``. Needs
about 16 x size³ bytes of disk in the temp dir (2 GB at 500³) and 3 x size³ x 8 bytes of memory
for the VOI (3 GB at 500³).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FIB25", REPO.parent / "shared" / "data" / "fib25_ts2.zarr"))
RESULTS = Path(__file__).parent / "results"
THRESHOLD = 0.7  # the bundled forest's card
HALO = 16  # the fragment context: stored affinities need no image context


def mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into 0..n-1 with period 2n: ``n`` maps to ``n - 1``, ``2n`` back to 0.

    >>> mirror(np.arange(7), 3).tolist()
    [0, 1, 2, 2, 1, 0, 0]
    """
    i = np.asarray(index) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def write_inputs(root: Path, raw: np.ndarray, affs: np.ndarray, size: int) -> tuple[str, str]:
    """The mirrored image and affinities as zarr arrays under ``root``; their URLs."""
    import tensorstore as ts

    from emseg.pipeline.io.volume import create_zarr

    n = raw.shape[0]
    chunk = 64
    image = create_zarr(str(root / "raw.zarr"), dtype="uint8", shape_zyx=(size,) * 3, chunk_zyx=(chunk,) * 3,
                        voxel_size_nm=(10.0, 10.0, 10.0))
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(root / "affs.zarr")}, "create": True,
                     "metadata": {"shape": [3, size, size, size], "chunks": [3, chunk, chunk, chunk], "dtype": "<f4"}}
                    ).result()
    yx = mirror(np.arange(size), n)
    for z0 in range(0, size, chunk):
        z = mirror(np.arange(z0, min(size, z0 + chunk)), n)
        image.array[z0:z0 + len(z)].write(raw[z][:, yx][:, :, yx]).result()
        store[:, z0:z0 + len(z)].write(affs[:, z][:, :, yx][:, :, :, yx]).result()
    return f"zarr://{root / 'raw.zarr'}", f"zarr://{root / 'affs.zarr'}"


def inner_rate(size: int, block: int, infos: list[dict[str, Any]], stages: dict[str, float], voxels: int) -> dict[str, Any] | None:
    """The rate of the blocks that a volume of any size is mostly made of: those with the whole
    fragment context on every side. Blocks at the volume's faces cut fragments from a smaller box
    (at 500³ in 128³ blocks the boxes average 1.69 times their write boxes, an inner block's 1.95),
    so the whole run's rate is higher than a larger volume's would be. Stage 1 outside the reads
    (``cpu_seconds - model_cpu_seconds`` of each inner block's done marker) per Mvoxel of their
    write boxes, plus stages 2-4 per Mvoxel of the whole run; None without inner blocks. The
    context is the halo here (``HALO`` = the backend's ``fragment_context``).

    >>> inner_rate(256, 128, [], {}, 256 ** 3) is None   # 2 blocks per axis: none is inner
    True
    """
    from emseg.pipeline.geometry import BlockGrid, Box

    grid = BlockGrid(Box((0, 0, 0), (size,) * 3), (block,) * 3, (HALO,) * 3)
    inner = [b for b in range(grid.num_blocks)
             if grid.block(b).read_box == grid.block(b).write_box.grow(grid.halo)]
    if not inner or any("cpu_seconds" not in infos[b] for b in inner):
        return None
    cpu = sum(float(infos[b]["cpu_seconds"]) - float(infos[b].get("model_cpu_seconds", 0.0)) for b in inner)
    write = sum(int(np.prod(grid.block(b).write_box.shape)) for b in inner) / 1e6
    later = sum(v for k, v in stages.items() if not k.startswith("1-")) / (voxels / 1e6)
    per_mvoxel = cpu / write + later
    return {"blocks": len(inner), "stage1_outside_cpu_seconds_per_mvoxel": round(cpu / write, 4),
            "later_stages_cpu_seconds_per_mvoxel": round(later, 4),
            "mvoxel_per_cpu_second": round(1.0 / per_mvoxel, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=500, help="edge of the mirrored volume (voxels)")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--scopes", nargs="+", choices=("global", "blockwise"), default=["global", "blockwise"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--affinities-file", type=Path, default=None,
                    help="forest affinities of the whole 250³ sample saved earlier (.npy, (3, z, y, x) float32) "
                         "instead of predicting them again")
    a = ap.parse_args()

    import zarr

    from emseg.pipeline.config import ClusterConfig, from_dict
    from emseg.pipeline.io.scratch import Scratch
    from emseg.pipeline.io.volume import open_volume
    from emseg.pipeline.quality.metrics import evaluate_arrays
    from emseg.tasks.driver.cluster import connect
    from emseg.tasks.driver.run import segment

    raw = np.asarray(zarr.open_group(str(DATA), mode="r")["raw"][:])
    if a.affinities_file is not None:
        affs = np.load(a.affinities_file, mmap_mode="r")
        if affs.shape != (3, *raw.shape) or affs.dtype != np.float32:
            sys.exit(f"bench_large: {a.affinities_file} holds {affs.dtype} {affs.shape}, not float32 {(3, *raw.shape)}")
        made = {"predicted_earlier": str(a.affinities_file)}
    else:
        from emseg.pipeline.backends.affinities import Backend, Params

        t = time.perf_counter()
        affs, _ = Backend(Params(model={"kind": "forest"})).affinities(raw)
        made = {"predict_seconds_250": round(time.perf_counter() - t, 1)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_large_"))
    voxels = a.size ** 3
    row: dict[str, Any] = {
        "command": "python benchmarks/bench_large.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "workers": a.workers, "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "volume": {"size": a.size, "block": a.block, "halo": HALO, "threshold": THRESHOLD,
                   "affinities": {"model": "bundled forest on fib25_ts2 (250³), mirrored", **made}},
        "scopes": {},
    }
    try:
        t = time.perf_counter()
        image_url, affs_url = write_inputs(tmp, raw, np.asarray(affs), a.size)
        row["volume"]["write_inputs_seconds"] = round(time.perf_counter() - t, 1)
        del affs

        def config(out: Path, block: int, scope: str, address: str, roi: dict | None = None) -> Any:
            return from_dict({
                "input": image_url, "output": str(out), "roi": roi,
                "backend": {"name": "affinities", "model": {"kind": "stored", "affinities": affs_url}},
                "blocks": {"shape": [block] * 3, "halo": [HALO] * 3}, "write": {"chunk_shape": [64, 64, 64]},
                "cluster": {"address": address}, "postprocess": None,
                "agglomeration": {"threshold": THRESHOLD, "scope": scope},
            })

        outputs = {}
        with connect(ClusterConfig(workers=a.workers)) as client:
            address = client.scheduler.address
            t = time.perf_counter()
            warm = {"start": [0, 0, 0], "stop": [64, 128, 128]}  # 1 x 2 x 2 blocks: seams too, on each worker
            for scope in ("global", "blockwise"):
                segment(config(tmp / "warm", 64, scope, address, warm), restart=True, progress=False)
            row["warm_up_seconds"] = round(time.perf_counter() - t, 1)
            for scope in a.scopes:
                out = tmp / scope
                t = time.perf_counter()
                run = segment(config(out, a.block, scope, address), restart=True, progress=False)
                wall = time.perf_counter() - t
                scratch = Scratch(str(out))
                infos = [scratch.done_info("1-segment", b) or {} for b in range(run["blocks"]["total"])]
                read_cpu = sum(float(i.get("model_cpu_seconds", 0.0)) for i in infos)
                stages = {k: round(v["task_cpu_seconds"], 2) for k, v in run["stages"].items()}
                outside = sum(stages.values()) - read_cpu
                row["scopes"][scope] = {
                    "stage_cpu_seconds": stages, "read_cpu_seconds": round(read_cpu, 2),
                    "outside_cpu_seconds": round(outside, 2),
                    "mvoxel_per_cpu_second": round(voxels / 1e6 / outside, 3),
                    "segments": run["segments"], "blocks": run["blocks"]["total"], "wall_seconds": round(wall, 1),
                    "inner_blocks": inner_rate(a.size, a.block, infos, stages, voxels),
                }
                print(scope, row["scopes"][scope], flush=True)
                outputs[scope] = out
        if len(outputs) == 2:
            segs = []
            for out in outputs.values():
                vol = open_volume(f"precomputed://{out}/segmentation")
                segs.append(vol.read(vol.box))
            r = evaluate_arrays(segs[1], segs[0], ignore_gt_zero=False)
            row["voi_blockwise_vs_global"] = {k: round(float(r[k]), 4) for k in ("voi_split", "voi_merge")}
        row["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "large.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[f"{a.size}^3 in {a.block}^3 blocks"] = row
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{a.size}³ in {a.block}³ blocks, {a.workers} workers, stored forest affinities, threshold {THRESHOLD}")
    print(f"{'scope':<10} {'outside CPU-s':>13} {'Mvox/CPU-s':>10} {'inner blocks':>12} {'read CPU-s':>10} "
          f"{'segments':>8} {'wall s':>7}")
    for scope, s in row["scopes"].items():
        inner = "-" if s["inner_blocks"] is None else f"{s['inner_blocks']['mvoxel_per_cpu_second']:.2f}"
        print(f"{scope:<10} {s['outside_cpu_seconds']:>13.1f} {s['mvoxel_per_cpu_second']:>10.2f} {inner:>12} "
              f"{s['read_cpu_seconds']:>10.1f} {s['segments']:>8} {s['wall_seconds']:>7.1f}")
    print("inner blocks: Mvoxel per CPU-s of the blocks with the whole fragment context on every side "
          "(stage 1 of those blocks, stages 2-4 of the whole run)")
    if "voi_blockwise_vs_global" in row:
        v = row["voi_blockwise_vs_global"]
        print(f"VOI blockwise vs global: split {v['voi_split']:.3f}, merge {v['voi_merge']:.3f}")


if __name__ == "__main__":
    main()
