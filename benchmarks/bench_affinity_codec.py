"""The stored affinities' codec (``write.affinities``): what writing them and reading a block back costs.

With ``write.affinities`` each block's ``1-predict`` writes its write box's affinities, and its
stage 1 reads the write box and the fragment context around it back (16 voxels for the bundled
forest). Chunks are read whole, so an inner 64³ block in 64³ chunks decodes 27 chunks (192³
voxels) for its 96³. This times, in one thread, for blosc-zstd 3 with bit shuffle (emseg's other
zarr arrays, and its stored affinities before 2026-12) and blosc-lz4 5 with byte shuffle (since):

- writing the bundled forest's affinities of a 192³ crop of FIB-25 (``../shared/data/fib25_ts2.zarr``),
  float32 and uint8, in 64³ chunks: CPU seconds per Mvoxel;
- reading an inner 64³ block's write box and 16 voxels of context: CPU seconds per Mvoxel of the
  write box;
- the bytes stored per voxel (3 channels).

    python benchmarks/bench_affinity_codec.py [--repeat 5]

Prints a table and writes ``benchmarks/results/affinity_codec.json``; the minimum of the repeats.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fib25_ts2.zarr"
RESULTS = Path(__file__).parent / "results"
CROP = (slice(20, 212),) * 3
CODECS = {
    "blosc-zstd 3, bit shuffle (before)": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2},
    "blosc-lz4 5, byte shuffle (now)": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1},
    "none": None,
}


def forest_affinities() -> np.ndarray:
    import zarr

    from emseg.pipeline.backends.affinities import Backend, Params

    raw = np.asarray(zarr.open_group(str(DATA), mode="r")["raw"][CROP])
    affs, _ = Backend(Params(model={"kind": "forest", "weights": "bundled"})).affinities(raw, tuple(s.start for s in CROP))
    return affs


def measure(data: np.ndarray, compressor: dict | None, repeat: int) -> dict[str, float]:
    import tensorstore as ts

    one = {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}}
    work = tempfile.mkdtemp(prefix="emseg-codec-")
    try:
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": work}, "context": one,
                "metadata": {"shape": list(data.shape), "chunks": [3, 64, 64, 64], "dtype": data.dtype.str,
                             "compressor": compressor, "fill_value": 0}}
        arr = ts.open(spec, create=True).result()
        write, read = [], []
        for _ in range(repeat):
            c0 = time.process_time()
            arr.write(data).result()
            write.append(time.process_time() - c0)
            c0 = time.process_time()
            arr[:, 48:144, 48:144, 48:144].read().result()  # the block [64, 128)³ and 16 voxels around it
            read.append(time.process_time() - c0)
        nbytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(work) for f in fs if not f.startswith("."))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    voxels = data[0].size / 1e6
    return {"write_cpu_s_per_mvoxel": round(min(write) / voxels, 4),
            "read_block_cpu_s_per_mvoxel_of_write_box": round(min(read) / (64**3 / 1e6), 4),
            "bytes_per_voxel": round(nbytes / data[0].size, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    t0 = time.time()
    affs = forest_affinities()
    print(f"forest affinities of 192³ of FIB-25: {time.time() - t0:.0f} s")
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, one thread",
           "load_average_start": list(os.getloadavg()), "repeat": args.repeat, "rows": {}}
    print(f"{'dtype':8} {'codec':38} {'write CPU-s/Mvox':>17} {'read 64³ block CPU-s/Mvox':>26} {'bytes/voxel':>12}")
    for dtype in ("float32", "uint8"):
        data = affs if dtype == "float32" else np.rint(np.clip(affs, 0, 1) * 255).astype(np.uint8)
        for name, codec in CODECS.items():
            row = measure(data, codec, args.repeat)
            res["rows"][f"{dtype}, {name}"] = row
            print(f"{dtype:8} {name:38} {row['write_cpu_s_per_mvoxel']:17.4f} "
                  f"{row['read_block_cpu_s_per_mvoxel_of_write_box']:26.4f} {row['bytes_per_voxel']:12.2f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "affinity_codec.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
